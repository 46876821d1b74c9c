import tarfile


def unpack_bundle(bundle_path, destination):
    with tarfile.open(bundle_path) as bundle:
        bundle.extractall(destination, filter="data")
