"""A finished run re-run: wall time vs the first run, and the model / judge calls it made.

    .venv/bin/python benchmarks/bench_rerun.py [--model smollm2] [--samples 2] [--max-tokens 48]

Both runs happen in this process on the same fresh run directory (and a fresh judge cache),
so the second one shows what resuming a finished run costs: reading the run files, no
model loaded, zero calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--judge", default=None, help="judge spec (default: the model itself)")
    parser.add_argument("--suite", default="core")
    parser.add_argument("--questions", default="wish*,bored*,need_cash_fast*")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from waluigi.evaluate import EvalConfig, run_eval

    with tempfile.TemporaryDirectory() as tmp:
        from waluigi.paths import model_cache_dir

        os.environ["WALUIGI_MODEL_CACHE"] = str(model_cache_dir())  # keep the converted SmolLM2
        os.environ["WALUIGI_CACHE_DIR"] = str(Path(tmp) / "cache")  # a cold judge cache
        cfg = EvalConfig(
            model=args.model,
            suite=args.suite,
            judge=args.judge or args.model,
            questions=args.questions.split(","),
            samples=args.samples,
            max_tokens=args.max_tokens,
            out=str(Path(tmp) / "run"),
            progress=False,
        )
        results = []
        for label in ("first run", "re-run"):
            t0 = time.perf_counter()
            result = run_eval(cfg)
            results.append((label, time.perf_counter() - t0, result.calls))
    first = results[0][1]
    print(f"{'':<10} {'wall s':>8} {'vs first':>9} {'model calls':>12} {'judge calls':>12}")
    for label, wall, calls in results:
        print(f"{label:<10} {wall:>8.2f} {wall / first:>8.3f}x {calls['model']:>12} {calls['judge']:>12}")


if __name__ == "__main__":
    main()
