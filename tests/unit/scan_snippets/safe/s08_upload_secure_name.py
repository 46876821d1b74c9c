import os

from flask import Flask, request
from werkzeug.utils import secure_filename

uploads = Flask(__name__)


@uploads.route("/avatar", methods=["POST"])
def avatar():
    picture = request.files["picture"]
    target = os.path.join("/srv/avatars", secure_filename(picture.filename))
    picture.save(target)
    return "saved"
