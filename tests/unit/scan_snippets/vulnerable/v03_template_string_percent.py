# expect: WAL103
from flask import Flask, request, render_template_string

greeter = Flask(__name__)


@greeter.post("/greet")
def greet():
    who = request.form["who"]
    body = "<p>Good morning, %s</p>" % who
    return render_template_string(body)  # <- here
