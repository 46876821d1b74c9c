from flask import Flask

catalog = Flask(__name__)


@catalog.route("/items/<int:item_id>")
def item_page(item_id):
    return f"<h1>Item number {item_id}</h1>"
