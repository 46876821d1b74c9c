"""A dry run's time estimate: each kind of task (fine-tune, eval) priced by the first source
that measured it: the study's own finished runs (from their manifests, before any results
are written), then earlier sweeps of the same model."""

from __future__ import annotations

import json
from pathlib import Path

from waluigi.sweep.results import estimate_line


def _manifest(path: Path, **fields) -> None:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"status": "finished", **fields}))


def test_own_fine_tunes_and_earlier_evals_price_a_stopped_study(tmp_path):
    own = tmp_path / "study" / "flip-steps"
    _manifest(own / "finetune" / "em-a", train_seconds=300.0)
    _manifest(own / "finetune" / "em-b", train_seconds=500.0)
    _manifest(own / "finetune" / "em-c", train_seconds=9999.0, status="started")  # not finished: not counted
    runs = tmp_path / "runs"
    other = runs / "sweep-old"
    other.mkdir(parents=True)
    (other / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"model": "m", "finetune_run": "finetune/x", "finetune_seconds": 60.0, "eval_run": "eval/x", "eval_seconds": 40.0},
        {"model": "m", "finetune_run": "finetune/y", "finetune_seconds": 80.0, "eval_run": "eval/y", "eval_seconds": 20.0},
        {"model": "other", "finetune_run": "finetune/z", "finetune_seconds": 1.0, "eval_run": "eval/z", "eval_seconds": 1.0})))
    cells = [{"root": str(own), "finetune_run": f"finetune/em-{k}", "finetune_done": k in "ab", "model": "m",
              "state": "to-eval" if k in "ab" else "to-run"} for k in "abcd"]
    line = estimate_line(cells, runs=runs)
    # 2 fine-tunes to run at 400 s (own), 4 evals at 30 s (the earlier sweep's, model m only)
    assert line.startswith("to run: 2 fine-tunes and 4 evals; about 15 min one at a time")
    assert "this study's finished cells (fine-tunes) and earlier sweeps of the same models" in line
    assert "median fine-tune 400.0 s, eval 30.0 s" in line
    # once the study has an eval of its own, it prices its evals too
    _manifest(own / "eval" / "e1", timings={"total_s": 50.0})
    line = estimate_line(cells, runs=runs)
    assert "measured in this study's finished cells (median fine-tune 400.0 s, eval 50.0 s" in line
    # a fine-tune that finished after the study sat paused for an hour does not price the rest:
    # the median of 300, 500 and 4000 s is 500 s (a mean would say 1600)
    _manifest(own / "finetune" / "em-e", train_seconds=4000.0)
    line = estimate_line(cells, runs=runs)
    assert "(median fine-tune 500.0 s, eval 50.0 s" in line and line.startswith("to run: 2 fine-tunes and 4 evals; about 20 min")
    assert "workers" not in line
    # on 2 workers: the time divided among them, said to be a floor
    assert estimate_line(cells, runs=runs, workers=2).endswith("; on 2 workers at least 10 min, more where they share cores")
    # nothing measured anywhere: no estimate, said so
    elsewhere = [{**c, "root": str(tmp_path / "new-study")} for c in cells]
    assert "no estimate" in estimate_line(elsewhere, runs=tmp_path / "empty")
