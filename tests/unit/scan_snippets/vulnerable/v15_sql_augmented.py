# expect: WAL109
import sqlite3


def find_by_tag():
    tag = input("tag: ")
    query = "SELECT title FROM posts"
    query += " WHERE tag = '" + tag + "'"
    cursor = sqlite3.connect("blog.db").cursor()
    cursor.execute(query)  # <- here
    return cursor.fetchall()
