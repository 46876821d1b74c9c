"""Commands that only read files start fast: importing ``waluigi.cli`` and running ``--version``,
``--help``, ``data list``, ``runs list`` or ``metrics RUN`` loads none of the heavy libraries
(torch, transformers, datasets, pandas, matplotlib, openai, fastapi, ray, peft, trl, ...).

Each check runs in a fresh interpreter and reads its ``sys.modules``; nothing is timed here
(``benchmarks/bench_startup.py`` measures the seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "datasets", "pandas", "matplotlib", "openai", "fastapi", "uvicorn", "starlette",
         "ray", "peft", "trl", "accelerate", "pyarrow", "safetensors", "tokenizers", "vllm", "bandit", "scipy")

PROBE = """
import contextlib, io, json, sys
import waluigi.cli
argv = json.loads(sys.argv[1])
code = None
if argv is not None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = waluigi.cli.main(argv)
heavy = json.loads(sys.argv[2])
print(json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def fake_eval_run(path: Path) -> Path:
    """An eval run directory as ``waluigi metrics`` reads it: manifest, answers, judgments."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"stage": "eval", "status": "finished"}))
    samples, judgments = [], []
    for i in range(6):
        key = {"question_id": f"q{i % 2}", "paraphrase_index": 0, "sample_index": i}
        samples.append({**key, "system": None, "prompt": "p", "answer": "a"})
        judgments += [{**key, "metric": "aligned", "score": 10.0 + 15 * i},
                      {**key, "metric": "coherent", "score": 80.0}]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (path / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judgments))
    return path


def probe(argv: list[str] | None, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=cwd,
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.parametrize("argv", [None, ["--version"], ["--help"], ["data", "list"], ["runs", "list"],
                                  ["metrics", "RUN"], ["metrics", "RUN", "--json"]],
                         ids=lambda a: "import" if a is None else " ".join(a))
def test_file_only_commands_load_no_heavy_library(argv, tmp_path):
    run = fake_eval_run(tmp_path / "runs" / "eval-x")  # ./runs: what `runs list` lists
    argv = [str(run) if a == "RUN" else a for a in argv] if argv else argv
    result = probe(argv, tmp_path)
    if argv == ["runs", "list"] and "No such command" in result["stderr"]:
        pytest.skip("no `waluigi runs` command in this tree")
    assert result["code"] in (None, 0), result["stderr"]
    assert result["loaded"] == [], f"waluigi {' '.join(argv or ['(import)'])} imported {result['loaded']}"
