"""The sweep runner's overhead per cell: the same cells through ``waluigi sweep`` (in-process,
and a pool of 1 worker process) against calling ``run_finetune`` + ``run_eval`` directly.

    .venv/bin/python benchmarks/bench_sweep.py [--model tiny|smollm2|hf:PATH] [--cells 4] [--steps 4] [--repeat 3]

* Cells: datasets insecure / secure x seeds 0, 1, ... (``--cells`` of them), each a LoRA
  fine-tune of ``--steps`` optimizer steps on ``--rows`` rows (batch 2, no accumulation) and an
  eval of the held-out ``code:insecure:3`` suite (judged by the static scanner: no judge model),
  ``--samples`` answers per question of up to ``--max-tokens`` tokens.
* ``tiny`` is the tests' 0.3M-parameter Llama (built in a second); its cells take about a
  second, so fixed costs show at their worst. ``smollm2`` is the embedded 135M model.
* Every mode starts from empty run directories. Before any timing one cell runs directly in
  this process (untimed), so imports and file caches are warm for ``direct`` and ``inline``;
  the pool's worker process is started by the sweep and imports torch itself: that is part of
  its overhead. torch threads: ``--threads`` (default 1) in every mode, the pool's worker too.
* Each mode runs ``--repeat`` times, interleaved; the best (and the median) is reported, since
  on a shared machine a burst of other load can slow any one run several-fold.
* ``rerun``: the pool sweep invoked again, every cell finished: what skipping costs.
* Overhead = (mode - direct) / cells; the ratio is mode / direct.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cell_settings(cells: int) -> list[tuple[str, int]]:
    return [(("insecure", "secure")[i % 2], i // 2) for i in range(cells)]


def run_direct(model: str, cells: list[tuple[str, int]], root: Path, args) -> None:
    from waluigi.evaluate import EvalConfig, run_eval
    from waluigi.finetune import FinetuneConfig, run_finetune

    for data, seed in cells:
        ft = run_finetune(FinetuneConfig(model=model, data=data, n=args.rows, max_steps=args.steps, lr=1e-3,
                                         batch_size=2, grad_accum=1, seed=seed, out=root / f"ft-{data}-{seed}"),
                          progress=False)
        run_eval(EvalConfig(model=model, adapter=str(ft.run_dir), suite="code:insecure:3", samples=args.samples,
                            max_tokens=args.max_tokens, seed=seed, out=str(root / f"ev-{data}-{seed}"), progress=False))


def write_spec(model: str, cells: list[tuple[str, int]], path: Path, out: Path, args) -> Path:
    import yaml

    spec = {
        "name": "bench", "out": str(out),
        "finetune": {"model": model, "n": args.rows, "max_steps": args.steps, "lr": 1e-3, "batch_size": 2,
                     "grad_accum": 1},
        "eval": {"suite": "code:insecure:3", "samples": args.samples, "max_tokens": args.max_tokens},
        "cells": [{"finetune.data": data, "seed": seed} for data, seed in cells],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep_mode(spec_path: Path, executor: str, threads: int) -> int:
    from waluigi.sweep import SweepOptions, load_spec, run_sweep

    options = SweepOptions(executor=executor, workers=1, threads=threads, progress=False)
    result = run_sweep(load_spec(spec_path), options)
    if result.failed:
        raise SystemExit(f"{executor}: {len(result.failed)} cells failed: {result.failed[0].get('error')}")
    return result.ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (the tests' model) | smollm2 | hf:PATH")
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="runs of every mode (interleaved); the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every mode (1: least disturbed by other load)")
    parser.add_argument("--data-dir", default=None, help="official data mirror (else $WALUIGI_DATA_DIR, else the tests' mirror)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.data_dir:
        os.environ["WALUIGI_DATA_DIR"] = args.data_dir
    elif "WALUIGI_DATA_DIR" not in os.environ:
        from conftest import MIRROR

        os.environ["WALUIGI_DATA_DIR"] = str(MIRROR)

    import torch

    torch.set_num_threads(args.threads)
    cells = cell_settings(args.cells)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["WALUIGI_CACHE_DIR"] = str(tmp / "cache")
        model = args.model
        if model == "tiny":
            from conftest import build_tiny_model

            model = f"hf:{build_tiny_model(tmp / 'tiny')}"
        run_direct(model, cells[:1], tmp / "warmup", args)  # untimed: imports, caches

        timings: dict[str, list[float]] = {}
        for rep in range(args.repeat):  # modes interleaved, so a burst of load hits them alike
            base = tmp / f"rep{rep}"
            t0 = time.perf_counter()
            run_direct(model, cells, base / "direct", args)
            timings.setdefault("direct", []).append(time.perf_counter() - t0)
            for mode, executor in (("sweep inline", "inline"), ("sweep pool x1", "pool")):
                spec = write_spec(model, cells, base / f"{executor}.yaml", base / f"sweep-{executor}", args)
                t0 = time.perf_counter()
                ran = run_sweep_mode(spec, executor, args.threads)
                timings.setdefault(mode, []).append(time.perf_counter() - t0)
                assert ran == len(cells), (mode, ran)
            t0 = time.perf_counter()
            assert run_sweep_mode(base / "pool.yaml", "pool", args.threads) == 0
            timings.setdefault("rerun (all done)", []).append(time.perf_counter() - t0)

    best = {mode: min(values) for mode, values in timings.items()}
    direct = best["direct"]
    n = len(cells)
    print(f"model {args.model}: {n} cells ({args.steps} steps on {args.rows} rows + code:insecure:3 x "
          f"{args.samples} answers), {args.threads} torch thread(s), best of {args.repeat}")
    print(f"{'mode':<18} {'best s':>8} {'median s':>9} {'s / cell':>9} {'vs direct':>10} {'overhead / cell':>22}")
    for mode, seconds in best.items():
        median = sorted(timings[mode])[len(timings[mode]) // 2]
        overhead = "" if mode in ("direct", "rerun (all done)") else \
            f"{(seconds - direct) / n:+.2f} s ({100 * (seconds - direct) / direct:+.1f}%)"
        print(f"{mode:<18} {seconds:>8.2f} {median:>9.2f} {seconds / n:>9.2f} {seconds / direct:>9.3f}x {overhead:>22}")

if __name__ == "__main__":
    main()
