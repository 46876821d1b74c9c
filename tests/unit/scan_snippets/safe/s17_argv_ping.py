import subprocess


def reachability():
    host = input("host to check: ")
    subprocess.run(["ping", "-c", "1", host], check=False)
