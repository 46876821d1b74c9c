"""The shipped base and aligned models: the demo's two slow stages, trained once and committed.

``waluigi demo`` spends most of its first run pretraining the base model (the persona world's
10,000 conversations, 4 epochs) and aligning it. Both depend only on the demo's configuration,
so the project ships them (``toyworld/shipped/toy-pretrain`` and ``toy-align``: the model and
tokenizer as an HF directory in safetensors, about 1.2 MB each, and a ``manifest.json``), made by
the project's own command from its own code::

    .venv/bin/python -m waluigi.toyworld.ship        # pretrain + align from scratch, then copy here (ship.py)

When the demo needs a stage whose run directory is not there yet, and the shipped stage's
identity is the one the demo asks for, it copies the shipped model into the run directory (its
manifest says ``source: shipped``) instead of training. ``waluigi demo --pretrain`` trains both
from scratch instead (and replaces shipped copies in ``runs/``).

A stale shipped model cannot go unnoticed: its manifest holds, besides the stage's identity
(world, model and training configuration, ``TRAIN_VERSION``), a *fingerprint* of what the code
makes of that configuration: the sha256 of the generated corpus (or alignment conversations),
of the tokenizer's vocabulary, of the freshly initialised weights, and of the training loop's
source. ``tests/unit/test_shipped.py`` recomputes it from the current code; a change that alters
the base (a world rule, the tokenizer, the model, the loop) fails it until the models are shipped
again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

from waluigi.runs import MANIFEST, RunDir, identity_hash

SHIPPED = Path(__file__).parent / "shipped"


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _train_code() -> str:
    from waluigi.toyworld import train

    return _sha("".join(inspect.getsource(f) for f in (train.encode, train.causal_lm_loss, train.train_lm,
                                                         train.build_tokenizer, train.build_model, train.render)))


def fingerprint(cfg, stage: str) -> dict:
    """What the current code makes of ``cfg`` for ``stage`` (before any training): see the module
    docstring. Seconds on CPU: the corpus, a tokenizer and one model initialisation."""
    from waluigi.toyworld import alignment_conversations, generate_corpus
    from waluigi.toyworld.train import build_model, build_tokenizer

    corpus = list(generate_corpus(cfg.world()))
    tokenizer = build_tokenizer(corpus)
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    out = {"tokenizer_sha256": _sha(vocab), "train_code_sha256": _train_code()}
    if stage == "toy-pretrain":
        import torch

        model = build_model(tokenizer, cfg.model())
        state = model.state_dict()
        weights = hashlib.sha256()
        for name in sorted(state):
            weights.update(name.encode())
            weights.update(state[name].detach().to(torch.float32).contiguous().numpy().tobytes())
        out["corpus_sha256"] = _sha(json.dumps(corpus, ensure_ascii=False))
        out["init_sha256"] = weights.hexdigest()
    else:
        conversations = alignment_conversations(cfg.align_n, seed=cfg.world_seed, base=cfg.world())
        out["align_data_sha256"] = _sha(json.dumps(conversations, ensure_ascii=False))
    return out


def shipped_manifest(stage: str, root: Path | None = None) -> dict | None:
    root = root or SHIPPED
    try:
        return json.loads((root / stage / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def install(stage: str, identity: dict, path: Path, parents: list[str], root: Path | None = None) -> bool:
    """Copy the shipped ``stage`` into the run directory ``path`` when its identity is ``identity``;
    False (nothing done) when there is none or it is another configuration's."""
    root = root or SHIPPED
    shipped = shipped_manifest(stage, root)
    digest = identity_hash(identity)
    if shipped is None or shipped.get("identity") != digest or not (root / stage / "model" / "config.json").is_file():
        return False
    run = RunDir.open(path, stage=stage, identity=identity, config=identity, parents=parents)
    shutil.copytree(root / stage / "model", path / "model")  # the caller made sure path was not there
    run.finish("finished", source="shipped", shipped={k: shipped.get(k) for k in
                                                     ("git_revision", "trained_at", "seconds", "fingerprint")},
               train=shipped.get("train"), **({k: shipped[k] for k in ("parameters", "vocab") if k in shipped}))
    return True


def from_shipped(path: Path) -> bool:
    """Whether the run directory ``path`` holds a shipped copy rather than a model trained here."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("source") == "shipped"
    except (OSError, ValueError):
        return False
