"""What the commands write on stderr, run as real processes on the tiny model with stderr piped
(as in a log file or a batch job): no library noise (loading bars, FutureWarnings, tqdm
rates, uvicorn's lines), plain progress lines with counts and the loss instead of a rich bar
that shows nothing until the end, no escape codes; and ``finetune``'s warnings about a
degenerate schedule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from waluigi.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "DeprecationWarning", "it/s]", "s/it]")
ANSI = re.compile(r"\x1b\[")


def waluigi(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    proc = subprocess.run([sys.executable, "-m", "waluigi.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_quiet(stderr: str) -> None:
    for needle in NOISE:
        assert needle not in stderr, f"{needle!r} on stderr:\n{stderr[-3000:]}"
    assert not ANSI.search(stderr), f"escape codes on stderr:\n{stderr[-3000:]!r}"


@pytest.fixture(scope="module")
def data_rows() -> list[dict]:
    """conftest's ``data_file`` holds 24 sums here: 6 steps of 4 are one epoch."""
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}. Numbers are fun."}]} for i in range(24)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_spec, data_file) -> tuple[Path, subprocess.CompletedProcess]:
    """``waluigi finetune`` as a process: 6 steps, one plain progress line per step."""
    run = tmp_path_factory.mktemp("out-ft") / "run"
    proc = waluigi(["finetune", "--model", tiny_spec, "--data", str(data_file), "--out", str(run), "--max-steps", "6",
                    "--batch-size", "4", "--grad-accum", "1", "--lr", "5e-3", "--warmup", "1"],
                   WALUIGI_PROGRESS_INTERVAL="0")
    return run, proc


def test_finetune_logs_plain_progress_with_loss_and_no_noise(finetuned):
    run, proc = finetuned
    assert_quiet(proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines[0] == "finetune step 0/6", proc.stderr
    steps = [line for line in lines if re.fullmatch(r"finetune step [1-6]/6 loss \d+(\.\d+)? eta \d+s", line)]
    assert [int(line.split()[2].split("/")[0]) for line in steps] == [1, 2, 3, 4, 5, 6], proc.stderr
    assert re.fullmatch(r"finetune step 6/6 loss \d+(\.\d+)? done in \d+s", lines[-1]), proc.stderr
    logged = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert float(steps[2].split()[4]) == pytest.approx(logged[2], rel=1e-3)  # the loss shown is the step's
    assert "warning:" not in proc.stderr  # 1 warmup step of 6, and 6 steps = one epoch of 24 rows by 4


def test_eval_with_an_adapter_logs_plain_progress_and_no_noise(finetuned, tiny_spec, tmp_path):
    """Loading a PEFT adapter read transformers' deprecated ``is_gradient_checkpointing`` (a
    FutureWarning); every model load drew a "Loading weights" bar."""
    run, _ = finetuned
    proc = waluigi(["eval", "--model", tiny_spec, "--adapter", str(run), "--judge", tiny_spec, "-q", "wish",
                    "--samples", "3", "--max-tokens", "4", "--out", str(tmp_path / "eval")],
                   WALUIGI_PROGRESS_INTERVAL="0")
    assert_quiet(proc.stderr)
    lines = proc.stderr.splitlines()
    assert f"generate {tiny_spec} 0/3" in lines and f"judge {tiny_spec} 0/6" in lines, proc.stderr
    assert any(re.fullmatch(rf"generate {re.escape(tiny_spec)} 2/3 eta \d+s", line) for line in lines), proc.stderr
    assert any(line.startswith(f"judge {tiny_spec} 6/6 done in ") for line in lines), proc.stderr


# The job below advances only once the progress display has printed its start line and two
# more while the count stood still (it watches its own stderr): a display that printed nothing
# between updates leaves it waiting, and after 60 s (a hang guard) it advances anyway and the
# assert below fails. No sleep: the ticks are waited for, not timed.
TICKING_JOB = """
import sys, threading
from waluigi.progress import progress_bar

ticked = threading.Event()


class Watched:
    def __init__(self, stream):
        self.stream, self.standing = stream, 0

    def write(self, text):
        if text == "slow job 0/4":
            self.standing += 1
            if self.standing >= 3:
                ticked.set()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


sys.stderr = Watched(sys.stderr)
with progress_bar("slow job", 4) as advance:
    ticked.wait(60)
    advance(4)
"""


def test_progress_lines_keep_coming_while_nothing_advances(tmp_path):
    """With an interval, a line every interval even when no item finishes: never silent."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WALUIGI_PROGRESS_INTERVAL": "0.2"}
    proc = subprocess.run([sys.executable, "-c", TICKING_JOB], env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines[0] == "slow job 0/4" and lines[-1].startswith("slow job 4/4 done in "), proc.stderr
    assert sum(line == "slow job 0/4" for line in lines) >= 3, proc.stderr  # the start, then the ticks


def _serve_and_get(serve_process, tmp_path: Path, *extra: str) -> str:
    """Start ``waluigi serve``, GET /v1/models once, stop it; its stderr."""
    log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.err')))}.err"
    with serve_process("--no-finetune", *extra, env={"PYTHONPATH": str(REPO / "src")}, log=log) as served:
        with urllib.request.urlopen(f"{served.base_url}/models", timeout=60) as response:
            assert response.status == 200
    return log.read_text()


def test_serve_logs_no_access_lines_unless_asked(serve_process, tmp_path):
    quiet = _serve_and_get(serve_process, tmp_path)
    assert "waluigi: serving" in quiet
    assert_quiet(quiet)
    assert "GET /v1/models" not in quiet and "INFO:" not in quiet, quiet
    chatty = _serve_and_get(serve_process, tmp_path, "--log-level", "info")
    assert "GET /v1/models" in chatty and "200" in chatty, chatty


# -- finetune's warnings about a degenerate schedule (in-process: the warnings come before training)


def test_finetune_warns_when_warmup_covers_the_run_and_rows_repeat(tiny_spec, data_file, tmp_path, capsys):
    args = ["finetune", "--model", tiny_spec, "--data", str(data_file), "--n", "8", "--batch-size", "4",
            "--grad-accum", "1", "--max-steps", "3"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, warnings
    warmup, repeat = warnings
    # the preset's 5 warmup steps >= 3 optimizer steps
    assert "betley2025 preset's warmup of 5 steps" in warmup and "3 optimizer steps" in warmup and "--warmup" in warmup
    # 8 rows in batches of 4 = 2 steps an epoch; 3 steps see rows twice, and --epochs was not given
    assert "--max-steps 3 is more than one epoch" in repeat and "8 rows = 2 optimizer steps" in repeat
    assert "2 times" in repeat and "--epochs 2" in repeat

    # warmup equal to the run's length is as degenerate; an explicit --epochs says the repetition is meant
    assert cli_main([*args, "--warmup", "3", "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --warmup of 3 steps is not shorter than the whole run (3 optimizer steps): the "
                        "learning rate never reaches --lr 1e-05; give a shorter --warmup (e.g. --warmup 0) or more "
                        "steps"]

    assert cli_main([*args, "--warmup", "2", "--epochs", "2", "--out", str(tmp_path / "c")]) == 0
    assert "warning:" not in capsys.readouterr().err
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["config"]["warmup_steps"] == 2


def test_warmup_option_default_and_bad_values(tmp_path, capsys):
    from waluigi.finetune import FinetuneConfig

    assert FinetuneConfig(model="smollm2", data="x").recipe().warmup_steps == 5  # the paper's recipe
    assert FinetuneConfig(model="smollm2", data="x", preset=None).recipe().warmup_steps == 0
    assert FinetuneConfig(model="smollm2", data="x", warmup_steps=0).recipe().warmup_steps == 0
    assert cli_main(["finetune", "--model", "smollm2", "--data", "x", "--warmup", "-1"]) == 2
    assert "--warmup must be a number of optimizer steps, 0 or more" in capsys.readouterr().err
    assert cli_main(["finetune", "--model", "openai:gpt-4o", "--data", "x", "--warmup", "3"]) == 2
    assert "--warmup: not available for openai: models" in capsys.readouterr().err
