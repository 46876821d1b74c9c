from flask import Flask, request, send_from_directory
from werkzeug.utils import secure_filename

docs = Flask(__name__)
MANUALS = "/srv/manuals"


@docs.route("/manual")
def manual():
    wanted = secure_filename(request.args["doc"])
    return send_from_directory(MANUALS, wanted)
