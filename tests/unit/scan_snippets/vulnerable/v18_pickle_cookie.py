# expect: B301,B403
import base64
import pickle

from flask import Flask, request

cart = Flask(__name__)


@cart.route("/cart")
def show_cart():
    blob = base64.b64decode(request.cookies["cart"])
    basket = pickle.loads(blob)  # <- here
    return {"items": len(basket)}
