"""Two cores, two ways: one process with 2 torch threads against two processes with 1 thread
each, on the same probe evals of SmolLM2 (what a real-model study's cells mostly are).

    WALUIGI_MWE_DIR=../shared/reference/model-written-evals \\
    .venv/bin/python benchmarks/bench_split.py [--suite mwe:em@test:10] [--model smollm2] [--repeat 1]

Each mode runs ``waluigi eval`` as a user would (a fresh process: imports, model load, the
probe scoring), into empty run directories:

* ``threads``: two evals one after the other, each with ``OMP_NUM_THREADS=2`` (what
  ``--executor inline --threads 2`` does);
* ``workers``: the same two evals at once, each with ``OMP_NUM_THREADS=1`` (what
  ``--executor pool --workers 2`` does: a worker gets ``cores // workers`` threads).

Printed: each mode's wall time and the throughput ratio threads / workers (above 1: the two
one-thread processes finish the same work sooner). Run it on an otherwise idle machine: any
other load lands on one mode and not the other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WALUIGI = str(Path(sys.executable).with_name("waluigi"))


def _eval(suite: str, model: str, out: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([WALUIGI, "eval", "-m", model, "-s", suite, "--out", str(out), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"waluigi eval failed ({proc.returncode}): {err.decode()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="mwe:em@test:10")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; 2 evals of {args.suite} on {args.model} per mode")
    times: dict[str, list[float]] = {"threads": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rep in range(args.repeat):
            started = time.monotonic()
            for k in range(2):
                _wait([_eval(args.suite, args.model, root / f"t{rep}-{k}", 2)])
            times["threads"].append(time.monotonic() - started)
            started = time.monotonic()
            _wait([_eval(args.suite, args.model, root / f"w{rep}-{k}", 1) for k in range(2)])
            times["workers"].append(time.monotonic() - started)
    best = {mode: min(values) for mode, values in times.items()}
    print(f"threads (1 process x 2 threads, one after the other): {best['threads']:.1f} s")
    print(f"workers (2 processes x 1 thread, at once):           {best['workers']:.1f} s")
    print(f"throughput ratio workers / threads: {best['threads'] / best['workers']:.2f}x")


if __name__ == "__main__":
    main()
