from flask import Flask, request, render_template_string

greeter = Flask(__name__)


@greeter.post("/greet")
def greet():
    who = request.form["who"]
    return render_template_string("<p>Good morning, {{ who }}</p>", who=who)
