# expect: WAL102
from flask import Flask, request

shop = Flask(__name__)


@shop.route("/wishlist")
def wishlist():
    items = request.args.getlist("item")
    page = "<ul>"
    for entry in items:
        page += "<li>" + entry + "</li>"
    page += "</ul>"
    return page  # <- here
