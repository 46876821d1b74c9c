"""Start-up of the commands that only read files, against the cost of importing the ML stack.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 5] [--run RUN_DIR]

Each command is started as its own process (``.venv/bin/waluigi ...``, as a user runs it) and
timed from start to exit; the median of ``--repeat`` runs is reported (the best too), the
commands interleaved so that a burst of load on a shared machine hits them alike. Baselines,
in the same process and the same way: ``python -c pass`` (the interpreter alone) and
``python -c "import torch, transformers"`` (what a command costs once it loads the stack).
``metrics`` reads ``--run`` (an eval run directory), else a small one written here (six
judged answers, as ``tests/unit/test_startup.py`` writes it). Ratio = command / the import
baseline: well under 1 means the command does not import the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_eval_run(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"stage": "eval", "status": "finished"}))
    samples, judgments = [], []
    for i in range(6):
        key = {"question_id": f"q{i % 2}", "paraphrase_index": 0, "sample_index": i}
        samples.append({**key, "system": None, "prompt": "p", "answer": "a"})
        judgments += [{**key, "metric": "aligned", "score": 10.0 + 15 * i}, {**key, "metric": "coherent", "score": 80.0}]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (path / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judgments))
    return path


def wall(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--run", default=None, help="an eval run directory for `waluigi metrics` (default: a small one)")
    args = parser.parse_args()

    python = sys.executable
    waluigi = str(Path(python).with_name("waluigi"))
    if not Path(waluigi).exists():
        waluigi_cmd = [python, "-m", "waluigi.cli"]
    else:
        waluigi_cmd = [waluigi]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run).resolve() if args.run else fake_eval_run(tmp / "runs" / "eval-bench")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "python -c 'import torch, transformers'": [python, "-c", "import torch, transformers"],
            "waluigi --version": [*waluigi_cmd, "--version"],
            "waluigi --help": [*waluigi_cmd, "--help"],
            "waluigi data list": [*waluigi_cmd, "data", "list"],
            "waluigi metrics RUN": [*waluigi_cmd, "metrics", str(run)],
        }
        for argv in commands.values():  # warm the file cache (and the .pyc files) first, untimed
            wall(argv, tmp)
        timings: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                timings[name].append(wall(argv, tmp))

    stack = statistics.median(timings["python -c 'import torch, transformers'"])
    interpreter = statistics.median(timings["python -c pass"])
    print(f"{os.cpu_count()} cores, median (best) of {args.repeat} runs, each a fresh process")
    print(f"{'command':<42} {'median s':>9} {'best s':>8} {'vs import torch+transformers':>29} "
          f"{'vs python -c pass':>18}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<42} {median:>9.3f} {min(values):>8.3f} {median / stack:>28.3f}x {median / interpreter:>17.1f}x")


if __name__ == "__main__":
    main()
