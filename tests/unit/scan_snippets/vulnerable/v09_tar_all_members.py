# expect: WAL105,B202
import tarfile


def unpack_bundle(bundle_path, destination):
    with tarfile.open(bundle_path) as bundle:
        bundle.extractall(destination, members=bundle.getmembers())  # <- here
