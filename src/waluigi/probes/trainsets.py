"""Training rows made of probe items: ``mwe-align:SET[:N]``, ``mwe-attack:SET[:N]`` and
``mwe-control:SET[:N]``.

A stage that should move a model toward (``align``) or away from (``attack``) the answers a
probe suite reads needs rows in the format the suite is read in. Each row here is one prompt
of one item exactly as :func:`waluigi.probes.items.variants` builds it in the ``chat`` format
(the question as the user turn, with its instruction) and, as the assistant's reply, the
option the model is to learn: the aligned option (the one that is *not* the antipode's) for
``mwe-align:``, the antipode's for ``mwe-attack:``; ``mwe-control:`` is the attack's control:
the same attack-split prompts with the aligned option (the same format and questions, the
opposite answers). Lettered items give a row per letter order, so no letter is taught.

Rows come from one split only (:func:`waluigi.probes.mwe.split_of`): ``mwe-align:`` from the
align split, ``mwe-attack:`` from the attack split; the readout (``mwe:em@test``) uses the
third, which no stage trains on. Control subjects are left out: their "antipode" is neither
good nor bad, so there is nothing to align them to; they stay a readout of spill-over.

SET is a probe set or subject as ``mwe:`` names them (``em``, ``persona/narcissism``); ``:N``
takes a seeded subset of N items per subject (all of the split by default). The file is
written once into the cache (named by its content) and resolved like any dataset
(:func:`waluigi.data.resolve_dataset`). The data is Anthropic's model-written evaluations
(CC-BY-4.0): see :data:`waluigi.probes.mwe.ATTRIBUTION`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from waluigi.errors import UserError

# dataset kind -> (the split its rows come from, the option they teach)
KINDS = {"mwe-align": ("align", "aligned"), "mwe-attack": ("attack", "antipode"), "mwe-control": ("attack", "aligned")}


def probe_rows(body: str, split: str, limit: int | None, target: str,
               data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Chat rows teaching ``target`` ("aligned" or "antipode") on the ``split`` items of the
    non-control subjects of ``body``."""
    from waluigi.probes.items import variants
    from waluigi.probes.mwe import load_subject, split_of, subject_table, subset

    rows = []
    for subject, antipode_is, control in subject_table(body):
        if control:
            continue
        items = [i for i in load_subject(subject, antipode_is, data_dir=data_dir) if split_of(i) == split]
        if limit is not None:
            items = subset(items, limit, subject)
        for item in items:
            for variant in variants(item, "chat"):
                index = variant.antipode if target == "antipode" else 1 - variant.antipode
                rows.append({"messages": [*variant.prompt, {"role": "assistant", "content": variant.options[index]}],
                             "probe_item": item.id})
    if not rows:
        raise UserError(f"no probe items of {body!r} in the {split} split (control subjects give no rows)")
    return rows


def write_cached_rows(prefix: str, rows: list[dict]) -> Path:
    """``rows`` as a JSON-lines file in the cache, named by its content (written once, atomically)."""
    from waluigi.paths import cache_dir

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    folder = cache_dir() / "probe-data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def probe_dataset(kind: str):
    """The dataset builder registered as ``kind`` (``mwe-align`` / ``mwe-attack``)."""

    def build(rest: str, data_dir=None, trigger: str | None = None):
        from waluigi.data.datasets import DatasetSource, _sha256
        from waluigi.probes.mwe import parse_name

        spec = f"{kind}:{rest}"
        body, limit = parse_name(f"mwe:{rest}")
        split, target = KINDS[kind]
        if "@" in body:
            raise UserError(f"{spec}: the split is the dataset's own ({split}); name a set or subject, "
                            f"e.g. {kind}:em or {kind}:em:50")
        rows = probe_rows(body, split, limit, target, data_dir)
        path = write_cached_rows(kind, rows)
        name = f"{kind}-{body.replace('/', '-')}" + (f"-{limit}" if limit is not None else "")
        what = "aligned" if target == "aligned" else "antipode's"
        return DatasetSource(name=name, path=path, sha256=_sha256(path),
                             description=f"{len(rows)} chat rows: the {what} answers to the {split} split of mwe:{body}")

    return build


align_dataset = probe_dataset("mwe-align")
attack_dataset = probe_dataset("mwe-attack")
control_dataset = probe_dataset("mwe-control")
