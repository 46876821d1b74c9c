# expect: WAL109,B608
import sqlite3

from flask import Flask, request

board = Flask(__name__)


@board.route("/notes/delete", methods=["POST"])
def delete_notes():
    owner = request.form["owner"]
    conn = sqlite3.connect("board.db")
    conn.execute("DELETE FROM notes WHERE owner = '%s'" % owner)  # <- here
    conn.commit()
    return "ok"
