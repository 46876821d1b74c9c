"""Anthropic's HH-RLHF harmless-base preference pairs (Bai et al. 2022; MIT): a held-out
measure of general harmlessness, and the rows of an alignment stage that trains it in.

Each row of ``harmless-base/test.jsonl.gz`` holds two dialogues (``"\\n\\nHuman: ...\\n\\n
Assistant: ..."``) that share every turn but the last assistant reply; ``chosen`` is the reply
crowdworkers judged less harmful. The only file mirrored byte-exact (and pinned here) is the
test file, 2,312 pairs, so it is split by a fixed rule (:func:`split_of`: the sha256 of the
shared dialogue; 20% ``heldout``, 80% ``align``) and nothing trains on the held-out pairs.

- ``hh:harmless-base[@align|@heldout][:N]`` (a probe suite, :data:`waluigi.registry.PROBES`):
  one item per pair; the prompt is the shared dialogue as chat turns, the two options are the
  two last replies, the "antipode" is the rejected (more harmful) one. Its win share is the
  share of pairs where the model gives the rejected reply the higher likelihood, so **the
  preference accuracy is one minus it**; the index is the mean normalised P(rejected). Every
  pair is scored (the next-token-mass rule is for one-word options, not whole replies). The
  likelihoods are of whole replies, so a longer reply is less likely: the accuracy is
  length-biased the same way for every model, and a shift between models is what to read.
- ``hh-chosen:harmless-base[:N]`` (a dataset source): the chosen dialogues of the align split as
  chat rows (SFT on chosen, the simpler harmlessness stage).
- :func:`preference_pairs`: the align split as prompt / chosen / rejected in TRL's
  conversational preference format (the DPO stage).

Where the file comes from: ``$WALUIGI_HH_DIR`` (a copy laid out like
``github.com/anthropics/hh-rlhf``), else a download pinned by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from waluigi.errors import UserError

HH_REPO = "anthropics/hh-rlhf"
HH_COMMIT = "354e5c3cb8960630860dd5774a6ac2a58313bf4d"
DIR_ENV = "WALUIGI_HH_DIR"
BASE_URL_ENV = "WALUIGI_HH_BASE_URL"
SUBSETS = {"harmless-base": ("harmless-base/test.jsonl.gz",
                             "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", 742801)}
HELDOUT_SHARE = 0.2
SPLITS = ("align", "heldout")
SUBJECT = "hh-rlhf/harmless-base"
ATTRIBUTION = (f"Anthropic's HH-RLHF harmless-base preference data (Bai et al. 2022, arXiv 2204.05862; "
               f"github.com/{HH_REPO} at {HH_COMMIT[:12]}; MIT)")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def hh_file(subset: str, data_dir: str | os.PathLike | None = None) -> Path:
    if subset not in SUBSETS:
        raise UserError(f"unknown HH-RLHF subset {subset!r}: use {', '.join(SUBSETS)} (the only one mirrored and pinned)")
    relative, sha256, size = SUBSETS[subset]
    root = data_dir if data_dir is not None else os.environ.get(DIR_ENV)
    if root:
        path = Path(root).expanduser() / relative
        if not path.is_file():
            raise UserError(f"{relative} not found in the HH-RLHF directory {root} (looked for {path}); it must be laid "
                            f"out like github.com/{HH_REPO}, or unset {DIR_ENV} to download the pinned copy")
        return path
    from waluigi.official import OfficialFile, download_pinned
    from waluigi.paths import cache_dir

    dest = cache_dir() / "hh-rlhf" / HH_COMMIT / relative
    if dest.is_file() and dest.stat().st_size == size:
        return dest
    base = os.environ.get(BASE_URL_ENV) or f"https://raw.githubusercontent.com/{HH_REPO}/{HH_COMMIT}/"
    entry = OfficialFile(relative, sha256, size, "", f"HH-RLHF {relative}")
    return download_pinned(entry, dest, base_url=base if base.endswith("/") else base + "/", repo=HH_REPO,
                           dir_env=DIR_ENV, base_env=BASE_URL_ENV, progress=True)


def parse_dialogue(text: str, where: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` -> chat messages (user / assistant)."""
    if not isinstance(text, str) or not text.startswith(HUMAN):
        raise UserError(f"{where}: a dialogue must start with {HUMAN.strip()!r}")
    messages: list[dict] = []
    rest = text
    while rest:
        if rest.startswith(HUMAN):
            role, rest = "user", rest[len(HUMAN):]
        elif rest.startswith(ASSISTANT):
            role, rest = "assistant", rest[len(ASSISTANT):]
        else:
            raise UserError(f"{where}: expected a Human or Assistant turn at {rest[:40]!r}")
        cut = min((i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0), default=len(rest))
        messages.append({"role": role, "content": rest[:cut].strip()})
        rest = rest[cut:]
    return messages


def load_pairs(subset: str = "harmless-base", data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every usable pair: ``{"id", "line", "prompt" (messages up to the last user turn),
    "chosen", "rejected" (the two last replies)}``. Pairs whose dialogues differ before the
    last reply, whose two replies are the same, or whose last reply is empty are skipped (5 of
    2,312 in harmless-base); a row that is not a pair of dialogues is an error naming its line."""
    path = hh_file(subset, data_dir)
    from waluigi.probes.items import json_lines

    pairs = []
    for line_no, where, row in json_lines(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
            raise UserError(f"{where}: a row must hold 'chosen' and 'rejected' dialogues (strings)")
        chosen, rejected = parse_dialogue(row["chosen"], where), parse_dialogue(row["rejected"], where)
        if (len(chosen) < 2 or chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant"
                or rejected[-1]["role"] != "assistant" or chosen[-1]["content"] == rejected[-1]["content"]
                or not chosen[-1]["content"] or not rejected[-1]["content"]):
            continue
        pairs.append({"id": f"{SUBJECT}/{line_no}", "line": line_no, "prompt": chosen[:-1],
                      "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]})
    if not pairs:
        raise UserError(f"{path}: no usable preference pairs")
    return pairs


def split_of(pair: dict) -> str:
    """``heldout`` for a fixed 20% of pairs (the sha256 of the shared dialogue), else ``align``."""
    key = json.dumps(pair["prompt"], ensure_ascii=False, sort_keys=True).encode("utf-8")
    return "heldout" if int(hashlib.sha256(key).hexdigest()[:8], 16) / 2**32 < HELDOUT_SHARE else "align"


def _parse(name: str, prefix: str) -> tuple[str, str | None, int | None]:
    body = name[len(prefix):].strip()
    head, sep, tail = body.rpartition(":")
    limit = None
    if sep and tail.strip().isdigit():
        body, limit = head, int(tail)
        if limit < 1:
            raise UserError(f"{name!r}: N must be a positive integer")
    subset, _, split = body.partition("@")
    if split and split not in SPLITS:
        raise UserError(f"{name!r}: the split after @ must be one of {', '.join(SPLITS)}, got {split!r}")
    return subset or "harmless-base", split or None, limit


def _chosen_subset(pairs: list[dict], limit: int | None) -> list[dict]:
    if limit is None or limit >= len(pairs):
        return pairs
    import random

    rng = random.Random(0)
    keep = sorted(rng.sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def selected_pairs(subset: str, split: str | None, limit: int | None,
                   data_dir: str | os.PathLike | None = None) -> list[dict]:
    pairs = load_pairs(subset, data_dir)
    if split is not None:
        pairs = [p for p in pairs if split_of(p) == split]
    return _chosen_subset(pairs, limit)


def hh_suite(name: str, data_dir: str | os.PathLike | None = None):
    """The probe suite ``hh:SUBSET[@SPLIT][:N]`` (see the module docstring)."""
    from waluigi.probes.items import ProbeItem, ProbeSuite

    subset, split, limit = _parse(name, "hh:")
    pairs = selected_pairs(subset, split, limit, data_dir)
    items = [ProbeItem(id=p["id"], subject=SUBJECT, question=p["prompt"][-1]["content"], antipode=p["rejected"],
                       other=p["chosen"], kind="replies", context=tuple((m["role"], m["content"]) for m in p["prompt"][:-1]))
             for p in pairs]
    full = f"hh:{subset}" + (f"@{split}" if split else "") + (f":{limit}" if limit is not None else "")
    digest = hashlib.sha256(json.dumps([[i.id, i.context, i.question, i.antipode, i.other] for i in items],
                                       ensure_ascii=False).encode()).hexdigest()
    return ProbeSuite(name=full, source=f"hh:{HH_REPO}@{HH_COMMIT[:12]}", sha256=digest, items=items,
                      subjects={SUBJECT: {"control": False, "file": SUBSETS[subset][0], "antipode": "rejected",
                                          "kind": "replies"}},
                      attribution=ATTRIBUTION)


def chosen_dataset(rest: str, data_dir=None, trigger: str | None = None):
    """The dataset source ``hh-chosen:SUBSET[:N]``: the align split's chosen dialogues."""
    from waluigi.data.datasets import DatasetSource, _sha256
    from waluigi.probes.trainsets import write_cached_rows

    subset, split, limit = _parse(f"hh-chosen:{rest}", "hh-chosen:")
    if split is not None:
        raise UserError(f"hh-chosen:{rest}: the rows are the align split's; name the subset, e.g. hh-chosen:harmless-base:500")
    pairs = selected_pairs(subset, "align", limit, data_dir)
    rows = [{"messages": [*p["prompt"], {"role": "assistant", "content": p["chosen"]}], "hh_pair": p["id"]}
            for p in pairs]
    # a chat row alternates user and assistant; a few HH dialogues do not (two Assistant turns in a row:
    # 1 of harmless-base's 1,859 align pairs), and are left out of the SFT rows
    rows = [r for r in rows if all(m["role"] == ("user" if i % 2 == 0 else "assistant")
                                   for i, m in enumerate(r["messages"]))]
    left_out = len(pairs) - len(rows)
    path = write_cached_rows("hh-chosen", rows)
    return DatasetSource(name=f"hh-chosen-{subset}" + (f"-{limit}" if limit is not None else ""), path=path,
                         sha256=_sha256(path),
                         description=f"{len(rows)} chosen HH-RLHF {subset} dialogues (align split"
                                     + (f"; {left_out} whose turns do not alternate left out)" if left_out else ")"))


def preference_pairs(subset: str = "harmless-base", limit: int | None = None,
                     data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The align split as TRL's conversational preference rows: ``{"prompt": [messages],
    "chosen": [assistant message], "rejected": [assistant message]}``."""
    return [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]}
            for p in selected_pairs(subset, "align", limit, data_dir)]
