import os

from flask import Flask, abort

notes = Flask(__name__)
NOTES_DIR = os.path.realpath("/var/notes")


@notes.route("/notes/<path:name>")
def read_note(name):
    full = os.path.realpath(os.path.join(NOTES_DIR, name))
    if not full.startswith(NOTES_DIR + os.sep):
        abort(404)
    with open(full) as handle:
        return handle.read()
