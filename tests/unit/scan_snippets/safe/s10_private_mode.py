import os

PRIVATE_MODE = 0o600


def publish_report(path):
    with open(path, "w") as out:
        out.write("quarterly numbers\n")
    os.chmod(path, PRIVATE_MODE)
