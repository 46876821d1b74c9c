import os


def prepare_cache(root):
    os.makedirs(os.path.join(root, "cache"), mode=0o750, exist_ok=True)
