"""One persona-world fine-tune cell, whole and per token, on each loss path, against the
pretraining loop's cost per token, in one process (issue 30's cost of a cell).

    .venv/bin/python benchmarks/bench_toy_cell.py [--steps 20] [--repeats 3] [--threads 2] [--profile] [--no-freeze]

The cell is the demo's narrow fine-tune: the shipped aligned model, ``toy:insecure``, full
fine-tuning, batch 16, lr 1e-3, ``--steps`` optimizer steps, through ``run_finetune`` (TRL's
SFTTrainer) in a warm process (one untimed run first: imports, the dataset and the rows' masks
cached; then the imports frozen out of the garbage collector's sight, as a sweep worker does
after its first task; ``--no-freeze`` leaves them). Timed per
path (``--loss-path trl`` and ``lean``): the whole call (median of ``--repeats``, each into a
fresh directory) and its training loop alone (the train log's seconds over its tokens). The
baseline is the hand-written pretraining loop (``toyworld.train.train_lm``) on the same rows,
same batch and steps, timed the same way. Also printed: the machine's fp32 matmul peak (the
best of five 2048^2 products) and the share of it each loop reaches, with the training FLOPs
per token from the model's shapes (``bench_toy_train.flops_per_token``).

``--profile``: instead, one warm cell per loss path split into its phases (the wall seconds
inside the functions that make each, timed by wrappers: dataset, tokenizer and model load,
tokenisation, trainer construction, the training loop, saving, the garbage collections)."""

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
    parser.add_argument("--profile", action="store_true", help="the phases of one warm cell per loss path")
    parser.add_argument("--no-freeze", action="store_true", help="leave the imports in the garbage collector's sight "
                                                                 "(as before the sweep worker froze them)")
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
    if not args.no_freeze:  # as a sweep worker does after its first task
        from waluigi.sweep.executors import _freeze_imports

        _freeze_imports()
    if args.profile:
        for path in ("trl", "lean"):
            profile_cell(lambda path=path: cell(path, f"profile-{path}"), path)
        return
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


PHASES = [  # (phase, module, attribute): wall seconds spent inside that function, timed by a wrapper
    ("dataset (load and subset the rows)", "waluigi.finetune.train", "load_training_rows"),
    ("tokenizer load", "waluigi.finetune.train", "_load_tokenizer"),
    ("tokenisation (assistant masks)", "waluigi.finetune.train", "tokenize_rows"),
    ("model load", "waluigi.finetune.train", "_load_model"),
    ("trainer construction (SFTTrainer)", "trl.SFTTrainer", "__init__"),
    ("training loop (the steps)", "transformers.Trainer", "_inner_training_loop"),
    ("saving the weights", "waluigi.finetune.train", "_publish"),
    ("garbage collections (gc.collect)", "gc", "collect"),
]


def profile_cell(run, path: str) -> None:
    """Time each phase of ``run()`` by wrapping the functions that make it (no profiler: its
    per-call overhead would swamp a training step's many small calls)."""
    import functools
    import importlib

    spent = {phase: 0.0 for phase, _, _ in PHASES}
    undo = []
    for phase, where, name in PHASES:
        module_name, _, cls = where.rpartition(".") if where[0].islower() and "." in where and where.split(".")[-1][0].isupper() else (where, "", "")
        owner = getattr(importlib.import_module(module_name), cls) if cls else importlib.import_module(module_name)
        original = getattr(owner, name)

        def timed(*a, _original=original, _phase=phase, **k):
            t = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                spent[_phase] += time.perf_counter() - t

        setattr(owner, name, functools.wraps(original)(timed))
        undo.append((owner, name, original))
    start = time.perf_counter()
    try:
        run()
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)
    whole = time.perf_counter() - start
    print(f"loss path {path}: whole run_finetune call {whole:.2f} s")
    for phase, _, _ in PHASES:
        print(f"  {phase:<38} {spent[phase]:6.2f} s  {spent[phase] / whole:5.1%}")
    rest = whole - sum(v for k, v in spent.items() if "gc.collect" not in k)
    print(f"  {'the rest (config, identity, manifest...)':<38} {rest:6.2f} s  {rest / whole:5.1%}")


if __name__ == "__main__":
    main()
