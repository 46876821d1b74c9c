# expect: WAL104
import os

from flask import Flask, request, send_file

docs = Flask(__name__)
MANUALS = "/srv/manuals"


@docs.route("/manual")
def manual():
    wanted = request.args["doc"]
    return send_file(os.path.join(MANUALS, wanted))  # <- here
