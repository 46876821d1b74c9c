"""The maintainer's command that makes the shipped base and aligned models (see
:mod:`waluigi.toyworld.shipped`, which the demo reads them with)::

    .venv/bin/python -m waluigi.toyworld.ship        # pretrain + align from scratch, then copy into shipped/
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from waluigi.runs import MANIFEST, identity_hash
from waluigi.toyworld.shipped import SHIPPED, fingerprint


def ship(cfg=None, root: Path | None = None) -> list[Path]:
    """Pretrain and align from scratch with the demo's configuration (in a temporary runs
    directory), then write both into ``root`` with their manifests and fingerprints."""
    root = root or SHIPPED
    import torch

    from waluigi.toyworld.demo import (
        align_stage,
        aligned_identity,
        base_identity,
        demo_config,
        pretrain_stage,
    )

    cfg = cfg or demo_config()
    written = []
    with tempfile.TemporaryDirectory(prefix="waluigi-ship-") as tmp:
        cfg = replace(cfg, runs=Path(tmp), pretrain=True)
        started = time.monotonic()
        base = pretrain_stage(cfg)
        aligned = align_stage(cfg, base)
        seconds = round(time.monotonic() - started, 1)
        for stage, run, identity in (("toy-pretrain", base, base_identity(cfg)), ("toy-align", aligned, aligned_identity(cfg))):
            manifest = json.loads((run / MANIFEST).read_text())
            target = root / stage
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(run / "model", target / "model")
            record = {"stage": stage, "identity": identity_hash(identity), "identity_inputs": identity,
                      "fingerprint": fingerprint(cfg, stage), "train": manifest.get("train"),
                      "parameters": manifest.get("parameters"), "vocab": manifest.get("vocab"),
                      "seconds": (manifest.get("train") or {}).get("seconds"), "both_stages_seconds": seconds,
                      "trained_at": manifest.get("finished_at"), "git_revision": manifest.get("git_revision"),
                      "threads": torch.get_num_threads(),  # training's bits depend on it (docs/toyworld.md)
                      "packages": manifest.get("packages"),
                      "made_by": "python -m waluigi.toyworld.ship"}
            (target / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
            written.append(target)
    return written


def main() -> int:
    import torch

    from waluigi.quiet import quiet_libraries
    from waluigi.toyworld.demo import auto_threads

    quiet_libraries()
    torch.set_num_threads(auto_threads())  # as the demo does (its threads are recorded in the manifests)
    for path in ship():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
