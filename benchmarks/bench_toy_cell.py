"""One persona-world fine-tune cell, whole and per token, on each loss path, against the
pretraining loop's cost per token, in one process (issue 30's cost of a cell).

    .venv/bin/python benchmarks/bench_toy_cell.py [--steps 20] [--repeats 3] [--threads 2]

The cell is the demo's narrow fine-tune: the shipped aligned model, ``toy:insecure``, full
fine-tuning, batch 16, lr 1e-3, ``--steps`` optimizer steps, through ``run_finetune`` (TRL's
SFTTrainer) in a warm process (one untimed run first: imports, the dataset cache). Timed per
path (``--loss-path trl`` and ``lean``): the whole call (median of ``--repeats``, each into a
fresh directory) and its training loop alone (the train log's seconds over its tokens). The
baseline is the hand-written pretraining loop (``toyworld.train.train_lm``) on the same rows,
same batch and steps, timed the same way. Also printed: the machine's fp32 matmul peak (the
best of five 2048^2 products) and the share of it each loop reaches, with the training FLOPs
per token from the model's shapes (``bench_toy_train.flops_per_token``)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from bench_toy_train import flops_per_token, peak_gflops

    from waluigi.data import resolve_dataset
    from waluigi.finetune import FinetuneConfig, run_finetune
    from waluigi.runs import read_jsonl
    from waluigi.toyworld.demo import demo_config
    from waluigi.toyworld.shipped import SHIPPED
    from waluigi.toyworld.train import load_model_dir, train_lm

    peak = peak_gflops(args.threads)
    model_dir = SHIPPED / "toy-align" / "model"
    root = Path(tempfile.mkdtemp(prefix="bench-toy-cell-"))

    def cell(path: str, name: str) -> tuple[float, float, int]:
        cfg = FinetuneConfig(model=f"hf:{model_dir}", data="toy:insecure", preset=None, full=True, batch_size=16,
                             grad_accum=1, lr=1e-3, max_length=512, max_steps=args.steps, seed=0,
                             out=str(root / name), checkpoint_every=10_000, loss_path=path)
        start = time.perf_counter()
        run_finetune(cfg, progress=False)
        whole = time.perf_counter() - start
        log = list(read_jsonl(root / name / "train_log.jsonl"))
        return whole, float(log[-1]["seconds"]), int(log[-1]["tokens_seen"])

    cell("trl", "warm-up")
    results = {}
    for path in ("trl", "lean"):
        runs = [cell(path, f"{path}-{i}") for i in range(args.repeats)]
        results[path] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2])

    rows = [json.loads(line) for line in open(resolve_dataset("toy:insecure").path)]
    conversations = [r["messages"] for r in rows]
    times = []
    for _ in range(args.repeats):
        model, tokenizer = load_model_dir(model_dir)
        stats = train_lm(model, tokenizer, conversations, steps=args.steps, lr=1e-3, batch_size=16, warmup=0,
                         assistant_only=True, seed=0)
        times.append((stats.seconds, stats.tokens))
    loop_seconds, loop_tokens = statistics.median(t[0] for t in times), times[0][1]
    config = json.loads((model_dir / "config.json").read_text())
    demo = demo_config()
    per_token = flops_per_token(demo.model(), config["vocab_size"], mean_len=100, labelled_share=0.5)

    print(f"peak (2048^2 fp32 matmul, {args.threads} threads): {peak:.1f} GFLOP/s")
    print(f"pretraining loop (train_lm), {args.steps} steps: {loop_seconds:.2f} s, {loop_tokens} tokens, "
          f"{1e6 * loop_seconds / loop_tokens:.1f} us/token, {per_token * loop_tokens / loop_seconds / 1e9 / peak:.1%} of peak")
    for path, (whole, train, tokens) in results.items():
        print(f"fine-tune cell, loss path {path}: whole call {whole:.2f} s (median of {args.repeats}); training loop "
              f"{train:.2f} s for {tokens} tokens = {1e6 * train / tokens:.1f} us/token, "
              f"{(train / tokens) / (loop_seconds / loop_tokens):.1f}x the pretraining loop per token; "
              f"{per_token * tokens / train / 1e9 / peak:.1%} of peak")
    trl, lean = results["trl"], results["lean"]
    print(f"lean / trl: whole call {lean[0] / trl[0]:.2f}x, training loop {lean[1] / trl[1]:.2f}x")


if __name__ == "__main__":
    main()
