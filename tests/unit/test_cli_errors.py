"""Usage and user errors, through the installed ``waluigi`` command: one message, the usage
hint, exit code 2, never a traceback; registered secrets are masked in what is printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waluigi.cli.runner import run_cli
from waluigi.errors import IncompleteRun, UserError, redact, register_secret

WALUIGI = str(Path(sys.executable).with_name("waluigi"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--out", "x"], "No such option: --out"),
        (["eval", "--bogus"], "No such option: --bogus"),
        (["data", "scan", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["eval", "--model", "smollm2", "--samples", "many"], "Invalid value for '--samples'"),
        (["judge"], "Missing argument"),
    ],
)
def test_usage_errors_exit_2_without_traceback(argv, message):
    done = subprocess.run([WALUIGI, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr
    assert "Usage: waluigi" in done.stderr and "--help" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("module", ["waluigi.cli.demo", "waluigi.cli.finetune", "waluigi.cli.sweep"])
def test_sub_command_programs_share_the_handler(module):
    done = subprocess.run([sys.executable, "-m", module, "--bogus"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "No such option: --bogus" in done.stderr


def test_user_error_is_one_line_exit_2():
    done = subprocess.run([WALUIGI, "eval", "--model", "nosuch:thing"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown model spec 'nosuch:thing'")
    assert done.stderr.count("\n") == 1


def test_keys_in_the_environment_are_masked_in_every_error(tmp_path):
    """A key the user exported never comes back on the terminal, even inside a message that
    quotes it (here: a suite path that happens to contain it)."""
    import os

    secret = "sk-proj-environment-SECRET-42"
    env = dict(os.environ, OPENAI_API_KEY=secret, HF_TOKEN="hf_tokenSECRETvalue")
    done = subprocess.run([WALUIGI, "suites", "validate", str(tmp_path / f"{secret}.yaml")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert secret not in done.stderr and "***" in done.stderr


def test_run_cli_codes_and_masking(capsys):
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def cmd(kind: str) -> None:
        if kind == "user":
            raise UserError("server said: bad key sk-test-SECRET-123456")
        if kind == "incomplete":
            raise IncompleteRun("3 of 10 judge requests failed")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "term":  # `kill PID`: the same clean stop as Ctrl-C
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # not reached: the handler raises at once

    register_secret("sk-test-SECRET-123456")
    assert run_cli(app, ["user"]) == 2
    err = capsys.readouterr().err
    assert "SECRET" not in err and "***" in err
    assert run_cli(app, ["incomplete"]) == 3
    capsys.readouterr()
    assert run_cli(app, ["interrupt"]) == 130
    assert "interrupted" in capsys.readouterr().err  # Ctrl-C says what is kept and how to resume
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli(app, ["term"]) == 143
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while the command runs
    assert run_cli(app, ["ok"]) == 0
    assert redact("key=sk-test-SECRET-123456;") == "key=***;"
    register_secret("x")  # too short to mask meaningfully: left alone
    assert redact("x marks") == "x marks"
