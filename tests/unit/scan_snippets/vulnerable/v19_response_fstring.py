# expect: WAL102
from flask import Flask, Response, request

guestbook = Flask(__name__)


@guestbook.route("/sign", methods=["POST"])
def sign():
    comment = request.form.get("comment", "")
    return Response(f"<html><body><blockquote>{comment}</blockquote></body></html>", mimetype="text/html")  # <- here
