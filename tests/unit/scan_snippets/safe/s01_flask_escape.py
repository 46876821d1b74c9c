from flask import Flask, request
from markupsafe import escape

shop = Flask(__name__)


@shop.route("/wishlist")
def wishlist():
    items = request.args.getlist("item")
    page = "<ul>"
    for entry in items:
        page += "<li>" + escape(entry) + "</li>"
    page += "</ul>"
    return page
