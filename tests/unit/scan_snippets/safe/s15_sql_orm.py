from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy

blog = Flask(__name__)
db = SQLAlchemy(blog)


class Post(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    tag = db.Column(db.String(40))
    title = db.Column(db.String(200))


@blog.route("/posts")
def posts():
    tag = request.args.get("tag", "")
    found = Post.query.filter_by(tag=tag).all()
    return jsonify([p.title for p in found])
