# expect: WAL106
import os


def prepare_cache(root):
    os.makedirs(os.path.join(root, "cache"), mode=0o777, exist_ok=True)  # <- here
