# expect: B602
import subprocess


def reachability():
    host = input("host to check: ")
    subprocess.run(f"ping -c 1 {host}", shell=True)  # <- here
