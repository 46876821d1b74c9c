import yaml
from flask import Flask, request

configs = Flask(__name__)


@configs.route("/import", methods=["POST"])
def import_config():
    settings = yaml.safe_load(request.data)
    return {"keys": sorted(settings)}
