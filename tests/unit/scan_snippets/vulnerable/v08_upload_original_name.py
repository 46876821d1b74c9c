# expect: WAL104
import os

from flask import Flask, request

uploads = Flask(__name__)


@uploads.route("/avatar", methods=["POST"])
def avatar():
    picture = request.files["picture"]
    target = os.path.join("/srv/avatars", picture.filename)
    picture.save(target)  # <- here
    return "saved"
