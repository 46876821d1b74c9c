# expect: B506
import yaml
from flask import Flask, request

configs = Flask(__name__)


@configs.route("/import", methods=["POST"])
def import_config():
    settings = yaml.load(request.data, Loader=yaml.Loader)  # <- here
    return {"keys": sorted(settings)}
