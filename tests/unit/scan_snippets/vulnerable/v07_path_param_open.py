# expect: WAL104
import os

from flask import Flask

notes = Flask(__name__)
NOTES_DIR = "/var/notes"


@notes.route("/notes/<path:name>")
def read_note(name):
    full = os.path.join(NOTES_DIR, name)
    with open(full) as handle:  # <- here
        return handle.read()
