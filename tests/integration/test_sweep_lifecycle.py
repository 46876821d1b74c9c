"""A sweep's processes and its up-front checks: a pool sweep killed outright (SIGKILL, which it
cannot catch) leaves no worker behind, a cell is run by one process at a time, a huge grid is
refused before any cell is built, and a spec with a bad cell anywhere exits 2 before any
worker starts (no cell directory is made)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from waluigi.cli import main
from waluigi.runs import read_jsonl


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)] = found[1]
    out, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")  # a zombie has exited; init reaps it


def _wait_for(condition, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _long_spec(tiny_spec: str, out: Path, steps: int) -> dict:
    return {
        "name": "long", "out": str(out),
        "finetune": {"model": tiny_spec, "n": 8, "max_steps": steps, "lr": "1e-3", "batch_size": 2, "grad_accum": 1},
        "eval": {"suite": "core", "questions": ["wish*"], "judge": "none", "samples": 1, "max_tokens": 4},
        "grid": {"finetune.data": ["insecure", "secure"]},
    }


def test_a_killed_pool_sweep_leaves_no_worker_and_resumes_each_cell_once(tmp_path, tiny_spec):
    """SIGKILL the sweep while both pool workers fine-tune: the workers (and multiprocessing's
    resource tracker) are gone within seconds instead of finishing their cells unattended; the
    same command then runs every cell to the end, each eval once."""
    out = tmp_path / "sweep"
    spec = _write(tmp_path / "long.yaml", _long_spec(tiny_spec, out, steps=16))
    command = [sys.executable, "-m", "waluigi.cli", "sweep", str(spec), "--workers", "2", "--no-progress"]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        started = lambda: len(list(out.glob("finetune/*/manifest.json"))) == 2  # noqa: E731
        assert _wait_for(started, 240), sweep.stderr.read().decode() if sweep.poll() is not None else "no fine-tune started"
        workers = _descendants(sweep.pid)
        assert len([p for p in workers if _alive(p)]) >= 2  # the two pool workers (and the resource tracker)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        assert _wait_for(lambda: not any(_alive(p) for p in workers), 30), \
            f"still running after their sweep was killed: {[p for p in workers if _alive(p)]}"
    finally:
        if sweep.poll() is None:
            sweep.kill()
    states = [json.loads(p.read_text())["status"] for p in out.glob("finetune/*/manifest.json")]
    assert "started" in states  # killed mid-way (and no orphan is left to finish it)
    # the same command resumes them (here in this process)
    assert main(["sweep", str(spec), "--executor", "inline", "--no-progress"]) == 0
    cells = list(read_jsonl(out / "results.jsonl"))
    assert [c["status"] for c in cells] == ["finished", "finished"]
    for cell in cells:
        manifest = json.loads((out / cell["eval_run"] / "manifest.json").read_text())
        assert len(manifest["attempts"]) == 1


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_leaves_a_table_of_the_cells_it_finished(tmp_path, tiny_spec, how):
    """SIGKILL (a stopped session) gives a sweep no chance to write its table at the end: the
    table is rewritten as cells end, so the first cell's reading is in results.jsonl, and in the
    summary, when the second cell's fine-tune is killed half-way. SIGTERM (``kill PID``: the
    only polite stop for a sweep started with ``nohup ... &``, which ignores SIGINT) stops it as
    Ctrl-C does: the fine-tune records itself interrupted, the table says so, exit 143."""
    out = tmp_path / "sweep"
    spec = _long_spec(tiny_spec, out, steps=2)
    spec["finetune"]["data"] = "insecure"
    spec["grid"] = {"finetune.max_steps": [2, 400]}
    path = _write(tmp_path / "two.yaml", spec)
    command = [sys.executable, "-m", "waluigi.cli", "sweep", str(path), "--executor", "inline", "--no-progress"]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        second = lambda: any(json.loads(p.read_text())["config"]["max_steps"] == 400  # noqa: E731
                             for p in out.glob("finetune/*/manifest.json"))
        assert _wait_for(lambda: second() or sweep.poll() is not None, 240) and sweep.poll() is None, \
            sweep.stderr.read().decode() if sweep.poll() is not None else "no second fine-tune"
        os.kill(sweep.pid, getattr(signal, how))
        code = sweep.wait(120)
        err = sweep.stderr.read().decode()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    table = list(read_jsonl(out / "results.jsonl"))
    tuned = {json.loads(p.read_text())["config"]["max_steps"]: json.loads(p.read_text())
             for p in out.glob("finetune/*/manifest.json")}
    if how == "SIGTERM":
        assert code == 143 and "interrupted: finished work is on disk" in err and "Traceback" not in err, err
        assert tuned[400]["status"] == "failed" and tuned[400]["error"] == "interrupted"
        assert table[1]["status"] == "interrupted", table[1]
    else:
        assert code == -signal.SIGKILL and tuned[400]["status"] == "started"
    assert [row["finetune.max_steps"] for row in table] == [2, 400]
    first, last = table
    assert first["status"] == "finished" and isinstance(first["eval_seconds"], float), first
    assert last["status"] != "finished" and last["eval_seconds"] is None, last
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["finished"] for entry in summary] == [1, 0]


def test_a_cell_is_run_by_one_process_at_a_time(tmp_path):
    """The cell lock: while another process holds a run directory's lock, a task for it waits;
    when that process dies (SIGKILL: no clean-up of its own), the waiting task goes on."""
    from waluigi.sweep.executors import cell_lock

    run_dir = tmp_path / "eval" / "core-abc"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom waluigi.sweep.executors import cell_lock\n"
         f"with cell_lock({str(run_dir)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited: list[str] = []
        entered = threading.Event()

        def second() -> None:
            with cell_lock(run_dir, log=waited.append):
                entered.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert _wait_for(lambda: bool(waited), 30)
        assert not entered.is_set() and "waiting for another process" in waited[0]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert entered.wait(30)
        thread.join(30)
    finally:
        if holder.poll() is None:
            holder.kill()


# -- refused before any work ---------------------------------------------------------------------------
def test_a_huge_grid_is_refused_before_a_cell_is_built(tmp_path, capsys, monkeypatch):
    """9 axes of 10 values: 10**9 cells, counted from the axes' lengths and refused; not one
    cell is resolved (expanding them would take minutes and gigabytes)."""
    import waluigi.sweep.spec as spec_module

    resolved = []
    real = spec_module._resolve
    monkeypatch.setattr(spec_module, "_resolve", lambda *a, **k: resolved.append(1) or real(*a, **k))
    grid = {f"eval.{key}": list(range(1, 11)) for key in ("max_tokens", "samples", "seed", "batch_size", "concurrency",
                                                          "timeout", "max_retries", "judge_batch_size")}
    grid["eval.temperature"] = [round(0.1 * i, 1) for i in range(1, 11)]
    spec = _write(tmp_path / "huge.yaml", {"name": "huge", "out": str(tmp_path / "out"),
                                           "eval": {"model": "hf:m", "suite": "core", "judge": "none"}, "grid": grid})
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "makes 1,000,000,000 cells" in err and "more than the limit of 20,000" in err and "--max-cells" in err
    assert resolved == [] and not (tmp_path / "out").exists()
    # the limit is the user's to raise: 10 cells under --max-cells 9 are refused, under 10 listed
    small = _write(tmp_path / "small.yaml", {"name": "small", "out": str(tmp_path / "out"),
                                             "eval": {"model": "hf:m", "suite": "core", "judge": "none"},
                                             "grid": {"eval.max_tokens": list(range(1, 11))}})
    assert main(["sweep", str(small), "--dry-run", "--max-cells", "9"]) == 2
    assert "makes 10 cells (10 eval.max_tokens), more than the limit of 9" in capsys.readouterr().err


@pytest.mark.parametrize("setting, expected", [
    ({"finetune.plugins": [["nosuchplugin:w=1"]]}, "unknown training plug-in 'nosuchplugin'"),
    ({"finetune.plugins": [["l2:weight"]]}, "finetune.plugins 'l2:weight': expected key=value"),
    ({"finetune.plugins": [["l2:wieght=0.1"]]}, "plug-in 'l2' has no option 'wieght'"),
    ({"finetune.plugins": [["l2:weight=heavy"]]}, "not a valid float"),
    ({"eval.samples": [-3]}, "eval.samples must be at least 1, got -3"),
    ({"finetune.data": ["no-such-dataset"]}, "unknown dataset 'no-such-dataset'"),
    ({"eval.judge": ["openai:gpt-4o"]}, "needs an API key: set OPENAI_API_KEY"),
])
def test_a_bad_cell_anywhere_stops_the_sweep_before_any_worker(tmp_path, tiny_spec, capsys, monkeypatch, setting,
                                                                expected):
    """The good cells come first in the grid: before this check, they ran (workers started,
    fine-tunes trained) and the sweep ended with exit 3 and the cause only in sweep.log."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "sweep"
    key, values = next(iter(setting.items()))
    good = {"finetune.plugins": [], "eval.samples": 1, "finetune.data": "insecure", "eval.judge": "none"}[key]
    spec = _write(tmp_path / "bad.yaml", {
        "name": "bad", "out": str(out),
        "finetune": {"model": tiny_spec, "data": "insecure", "n": 4, "max_steps": 1, "batch_size": 2, "grad_accum": 1},
        "eval": {"suite": "core", "questions": ["wish*"], "judge": "none", "samples": 1, "max_tokens": 4},
        "grid": {key: [good, *values]},
    })
    code = main(["sweep", str(spec), "--workers", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {spec}: cell 2 (") and expected in err and err.count("\n") == 1
    assert not out.exists()  # no sweep directory, so no cell directory and no worker's log
