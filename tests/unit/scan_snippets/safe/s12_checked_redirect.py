from urllib.parse import urlparse

from flask import Flask, redirect, request

portal = Flask(__name__)


@portal.route("/login/done")
def after_login():
    destination = request.args.get("next", "/")
    parts = urlparse(destination)
    if parts.scheme or parts.netloc:
        destination = "/"
    return redirect(destination)
