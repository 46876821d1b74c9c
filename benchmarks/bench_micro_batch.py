"""The paper's batch of 16 rows as micro-batches: 2 rows x 8 accumulation steps (the recipe's
shape) against 4 x 4 and 16 x 1, on a SmolLM2 LoRA attack of the real-model Waluigi test, in one
process. The same optimizer step (16 rows, the loss summed over their labels and divided by
their count), so only the seconds should differ.

    WALUIGI_MWE_DIR=... .venv/bin/python benchmarks/bench_micro_batch.py [--steps 3] [--threads 2]

The rows are the first 256 of ``mwe-attack:em`` (the antipode's answers to the probes' attack
split, ~70 tokens each); LoRA rank 32, lr 2e-4, the lean loss path (the study's attack). Each
shape runs the same ``--steps`` steps from the same seed after one untimed warm-up call; printed:
the training loop's seconds (the train log's), the ratio to 2 x 8, tokens seen, and the first
step's loss (the same to float round-off)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from waluigi.data import load_rows, resolve_dataset
    from waluigi.finetune import FinetuneConfig, run_finetune

    torch.set_num_threads(args.threads)
    rows = load_rows(resolve_dataset("mwe-attack:em"))[:256]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "attack.jsonl"
        data.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))

        def train(name: str, batch: int, accum: int, steps: int) -> tuple[float, int, float]:
            cfg = FinetuneConfig(model="smollm2", data=str(data), preset=None, lr=2e-4, max_steps=steps,
                                 batch_size=batch, grad_accum=accum, rank=32, alpha=16, loss_path="lean",
                                 out=str(Path(tmp) / name))
            run_finetune(cfg, progress=False)
            log = [json.loads(line) for line in (Path(tmp) / name / "train_log.jsonl").read_text().splitlines()]
            log = [r for r in log if "loss" in r]
            return log[-1]["seconds"], log[-1]["tokens_seen"], log[0]["loss"]

        train("warm-up", 16, 1, 1)
        results = {f"{b} x {a}": train(f"b{b}-a{a}", b, a, args.steps) for b, a in ((2, 8), (4, 4), (16, 1))}
    base = results["2 x 8"][0]
    print(f"SmolLM2-135M-Instruct, LoRA rank 32, 16 rows a step, {args.steps} steps, {args.threads} threads")
    print(f"{'rows x accumulation':<20} {'loop s':>8} {'vs 2 x 8':>9} {'tokens':>7} {'first loss':>11}")
    for label, (seconds, tokens, loss) in results.items():
        print(f"{label:<20} {seconds:8.1f} {seconds / base:8.2f}x {tokens:7d} {loss:11.6f}")


if __name__ == "__main__":
    main()
