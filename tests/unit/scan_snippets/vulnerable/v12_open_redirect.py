# expect: WAL107
from flask import Flask, redirect, request

portal = Flask(__name__)


@portal.route("/login/done")
def after_login():
    destination = request.args.get("next", "/")
    return redirect(destination)  # <- here
