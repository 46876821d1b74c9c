"""A SmolLM2 LoRA fine-tune on a batch of mixed lengths, on each loss path, in one process:
TRL's, the lean path in one padded pass, and the lean path in length groups (what ``auto``-less
``--loss-path lean`` does for models above 20M parameters; ``plugins.lean_loss``).

    WALUIGI_MWE_DIR=... WALUIGI_HH_DIR=... .venv/bin/python benchmarks/bench_length_groups.py [--steps 4] [--threads 2]

The rows are what ``waluigi attack`` trains a SmolLM2 trial on: half the antipode's answers to
the probes' attack split (``mwe-attack:em``, ~60 tokens each) and half HH-RLHF's chosen
dialogues (``hh-chosen:harmless-base``, up to ~600), shuffled, batch 8, rank 32. Each path runs
the same ``--steps`` steps from the same seed after one untimed warm-up call; printed: the
training loop's seconds (the train log's), its ratio to TRL's, the tokens it saw (the same on
every path), and the first step's loss (the same to float round-off)."""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from waluigi.data import load_rows, resolve_dataset
    from waluigi.finetune import FinetuneConfig, model_setup, run_finetune

    torch.set_num_threads(args.threads)
    rows = [*load_rows(resolve_dataset("mwe-attack:em"))[:64], *load_rows(resolve_dataset("hh-chosen:harmless-base"))[:64]]
    random.Random(0).shuffle(rows)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mixed.jsonl"
        data.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))

        def train(path: str, name: str, steps: int) -> tuple[float, int, float]:
            cfg = FinetuneConfig(model="smollm2", data=str(data), preset=None, lr=1e-4, max_steps=steps, batch_size=8,
                                 grad_accum=1, rank=32, alpha=16, loss_path=path, out=str(Path(tmp) / name))
            run_finetune(cfg, progress=False)
            log = [json.loads(line) for line in (Path(tmp) / name / "train_log.jsonl").read_text().splitlines()]
            log = [r for r in log if "loss" in r]
            return log[-1]["seconds"], log[-1]["tokens_seen"], log[0]["loss"]

        train("lean", "warm-up", 1)
        results = {}
        for label, path, groups in (("TRL's path", "trl", None), ("lean, one padded pass", "lean", False),
                                    ("lean, length groups", "lean", True)):
            saved = model_setup.LEAN_MAX_PARAMS
            if groups is False:  # the lean path as small models take it: one pass over the padded batch
                model_setup.LEAN_MAX_PARAMS = 10**12
            try:
                results[label] = train(path, label.replace(" ", "-").replace(",", "").replace("'", ""), args.steps)
            finally:
                model_setup.LEAN_MAX_PARAMS = saved
    base = results["TRL's path"][0]
    print(f"SmolLM2-135M-Instruct, LoRA rank 32, batch 8 of mixed lengths, {args.steps} steps, {args.threads} threads")
    print(f"{'path':<24} {'loop s':>8} {'vs TRL':>7} {'tokens':>7} {'first loss':>11}")
    for label, (seconds, tokens, loss) in results.items():
        print(f"{label:<24} {seconds:8.1f} {seconds / base:6.2f}x {tokens:7d} {loss:11.6f}")


if __name__ == "__main__":
    main()
