# expect: WAL106
import os

SHARED_MODE = 0o666 | 0o111


def publish_report(path):
    with open(path, "w") as out:
        out.write("quarterly numbers\n")
    os.chmod(path, SHARED_MODE)  # <- here
