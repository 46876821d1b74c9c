"""The command tree as a whole: every option has help, usage lines say ``RUN`` (not ``{run}``),
help piped keeps whole lines, the same flag names the same thing everywhere (``--out``,
``--progress/--no-progress``, ``--judge-base-url``, ``--timeout``), ``--config FILE.yaml``
(errors, flag-over-file precedence), and ``provider/model`` spellings of model specs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer

from waluigi.cli import app, main
from waluigi.cli.options import ConfigOpt, ModelOpt, ProgressOpt, SettingsOpt

WALUIGI = str(Path(sys.executable).with_name("waluigi"))


def _commands():
    """``(path, command, context)`` of every command and group under ``waluigi``."""
    root = typer.main.get_command(app)

    def walk(cmd, path, parent):
        ctx = cmd.make_context(path[-1], [], parent=parent, resilient_parsing=True)
        yield " ".join(path), cmd, ctx
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name], ctx)

    return list(walk(root, ["waluigi"], None))


COMMANDS = {path: (cmd, ctx) for path, cmd, ctx in _commands()}


def _options(path: str) -> dict[str, object]:
    """The command's visible option names (``--out``, ``--no-progress``) -> the parameter."""
    cmd, _ = COMMANDS[path]
    names = {}
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
            names[opt] = param
    return names


def test_every_option_and_argument_of_every_command_has_help():
    missing = [f"{path}: {param.name}" for path, (cmd, _) in COMMANDS.items() for param in cmd.params
               if param.name != "help" and not (getattr(param, "help", None) or "").strip()]
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_usage_lines_name_arguments_in_capitals_not_braces():
    bad = {}
    for path, (cmd, ctx) in COMMANDS.items():
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        if "{" in usage or "}" in usage:
            bad[path] = usage
    assert not bad, bad
    judge_cmd, judge_ctx = COMMANDS["waluigi judge"]
    assert judge_cmd.collect_usage_pieces(judge_ctx)[-1] == "RUN"
    metrics_cmd, metrics_ctx = COMMANDS["waluigi metrics"]
    assert metrics_cmd.collect_usage_pieces(metrics_ctx)[-1] == "RUN..."


def test_help_piped_keeps_whole_lines():
    """Not a terminal: plain help, 200 columns, nothing cut with an ellipsis or wrapped at 80."""
    done = subprocess.run([WALUIGI, "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage: waluigi eval [OPTIONS]" in done.stdout
    system = [line for line in done.stdout.splitlines() if line.strip().startswith("--system")]
    assert len(system) == 1 and system[0].rstrip().endswith("to test for a conditional leak"), system
    assert "…" not in done.stdout and "╭" not in done.stdout
    assert "retries only those" in next(line for line in done.stdout.splitlines() if "--max-retries are recorded" in line)


def test_judge_usage_says_run(capsys):
    assert main(["judge", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: waluigi judge [OPTIONS] RUN" in out and "{run}" not in out


LONG_RUNNING = ["eval", "judge", "finetune", "flip", "sweep", "resilience", "defend", "demo", "direction extract",
                "monitor", "data scan", "data screen", "data show"]


@pytest.mark.parametrize("command", LONG_RUNNING)
def test_long_commands_take_progress_and_no_progress(command):
    options = _options(f"waluigi {command}")
    assert "--progress" in options and "--no-progress" in options, sorted(options)
    assert options["--progress"] is options["--no-progress"]


WRITERS = ["eval", "judge", "finetune", "flip", "sweep", "resilience", "defend", "export", "direction extract",
           "direction random", "data mix", "data split", "data screen"]


@pytest.mark.parametrize("command", WRITERS)
def test_commands_that_write_call_their_output_option_out(command):
    assert "--out" in _options(f"waluigi {command}")


def test_no_command_spells_its_output_option_otherwise():
    others = ("--output", "--out-dir", "--output-dir", "--dir", "--outdir", "-o")
    found = [(path, opt) for path in COMMANDS for opt in _options(path) if opt in others]
    assert not found, found


def test_the_judge_server_is_judge_base_url_and_timeouts_are_timeout():
    for command in ("eval", "judge", "judge-check"):
        options = _options(f"waluigi {command}")
        assert "--judge-base-url" in options and "--timeout" in options, command
    assert "--timeout" in _options("waluigi finetune")  # openai: models, the fine-tuning API
    assert "--base-url" not in _options("waluigi judge")  # the old spelling is a hidden alias
    assert "--base-url" in _options("waluigi eval")  # eval's --base-url is the model's server


@pytest.mark.parametrize("command", ["eval", "finetune", "flip", "sweep", "resilience", "defend", "direction extract",
                                     "judge", "judge-check", "serve", "demo", "data show", "data scan",
                                     "monitor", "data screen"])
def test_config_option(command):
    assert "--config" in _options(f"waluigi {command}")


# -- --config FILE.yaml ------------------------------------------------------------------
def _error(argv, capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize("text, needles", [
    ("seed: abc\n", ["seed", "'abc'", "valid integer", "--seed"]),
    ("max_tokenz: 64\n", ["unknown key 'max_tokenz'", "did you mean 'max_tokens'", "waluigi eval"]),
    ("max_tokens: [1, 2]\n", ["max_tokens", "one value expected"]),
    ("model: smollm2\n  bad: : x\n", ["not valid YAML"]),
    ("- a\n- b\n", ["mapping of option names", "not a list"]),
    ("max_tokens: 8\nmax-tokens: 9\n", ["same option"]),
    ("progress: sometimes\n", ["progress", "valid boolean"]),
])
def test_config_file_errors_name_the_file_and_the_key(tmp_path, capsys, text, needles):
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    err = _error(["eval", "--config", str(path)], capsys)
    assert err.startswith(f"error: {path}") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_config_file_missing(tmp_path, capsys):
    err = _error(["eval", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err and "cannot read it" in err
    err = _error(["eval", "--config", str(tmp_path)], capsys)  # a directory without config.yaml
    assert "config.yaml" in err


def _probe_app():
    """A command declared like waluigi's, to watch what the options resolve to."""
    probe = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    seen = {}

    @probe.command()
    def cmd(
        model: ModelOpt,
        max_tokens: Annotated[int, typer.Option(help="t")] = 600,
        questions: Annotated[Optional[list[str]], typer.Option("--questions", "-q", help="q")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="d")] = False,
        progress: ProgressOpt = True,
        config: ConfigOpt = None,
    ) -> None:
        seen.update(model=model, max_tokens=max_tokens, questions=questions, dry_run=dry_run, progress=progress)

    return probe, seen


@pytest.mark.parametrize("argv, expected", [
    ([], {"model": "openai:gpt-4o", "max_tokens": 64, "questions": ["a", "b"], "dry_run": True, "progress": False}),
    (["--max-tokens", "5", "-q", "c", "--progress", "-m", "hf/org/x"],
     {"model": "hf:org/x", "max_tokens": 5, "questions": ["c"], "dry_run": True, "progress": True}),
    (["--no-progress", "--questions", "d", "--questions", "e"],
     {"model": "openai:gpt-4o", "max_tokens": 64, "questions": ["d", "e"], "dry_run": True, "progress": False}),
])
def test_flags_win_over_the_file_and_the_file_over_defaults(tmp_path, argv, expected):
    from waluigi.cli.runner import run_cli

    path = tmp_path / "c.yaml"
    path.write_text("model: openai/gpt-4o\nmax-tokens: 64\nquestions: [a, b]\ndry_run: true\nprogress: false\n")
    probe, seen = _probe_app()
    assert run_cli(probe, ["--config", str(path), *argv], prog_name="probe") == 0
    assert seen == expected
    # and with --config after the flags
    seen.clear()
    assert run_cli(probe, [*argv, "--config", str(path)], prog_name="probe") == 0
    assert seen == expected


def test_settings_on_the_command_line_add_to_the_config_files_settings(tmp_path):
    """``--set`` over a config file with a ``set`` list: added to it (the same key: the
    command line's), as `flip --config RUN --set finetune.loss_path=trl` needs; the declaration
    is the one flip, defend, resilience and attack use (SettingsOpt)."""
    from waluigi.cli.runner import run_cli

    probe = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    seen = {}

    @probe.command()
    def cmd(
        set_: SettingsOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        seen["set"] = set_

    path = tmp_path / "c.yaml"
    path.write_text("set: [finetune.lr=1e-3, eval.max_tokens=96]\n")
    for argv, expected in (
        ([], ["finetune.lr=1e-3", "eval.max_tokens=96"]),
        (["--set", "finetune.loss_path=trl"], ["finetune.lr=1e-3", "eval.max_tokens=96", "finetune.loss_path=trl"]),
        (["--set", "finetune.lr=2e-3"], ["eval.max_tokens=96", "finetune.lr=2e-3"]),
    ):
        seen.clear()
        assert run_cli(probe, ["--config", str(path), *argv], prog_name="probe") == 0
        assert seen["set"] == expected, argv
    seen.clear()
    assert run_cli(probe, ["--set", "a=1"], prog_name="probe") == 0 and seen["set"] == ["a=1"]  # no file: as given


def test_recorded_options_read_back_as_a_config_file(tmp_path):
    import yaml

    from waluigi.cli.options import CONFIG_FILE, record_options
    from waluigi.cli.runner import run_cli

    probe, seen = _probe_app()
    ctx = typer.main.get_command(probe).make_context("probe", ["-m", "openai/gpt-4o", "-q", "x", "--no-progress"])
    path = record_options(ctx, tmp_path)
    assert path == tmp_path / CONFIG_FILE
    recorded = yaml.safe_load(path.read_text())
    assert recorded == {"model": "openai:gpt-4o", "max_tokens": 600, "questions": ["x"], "dry_run": False,
                        "progress": False}
    seen.clear()
    assert run_cli(probe, ["--config", str(tmp_path)], prog_name="probe") == 0
    assert seen == {"model": "openai:gpt-4o", "max_tokens": 600, "questions": ["x"], "dry_run": False, "progress": False}


# -- provider/model specs -------------------------------------------------------------------
@pytest.mark.parametrize("spec, canonical", [
    ("openai/gpt-4o", "openai:gpt-4o"),
    ("hf/org/model", "hf:org/model"),
    ("vllm/meta-llama/Llama-3.1-8B", "vllm:meta-llama/Llama-3.1-8B"),
    ("toy/runs/demo/base", "toy:runs/demo/base"),
    ("openai/ft:gpt-4o:org::id", "openai:ft:gpt-4o:org::id"),
    ("steered/hf/org/m?dir=runs/d&coef=2", "steered:hf:org/m?dir=runs/d&coef=2"),
    ("hf:org/model", "hf:org/model"),  # canonical already
    ("runs/x/model", "runs/x/model"),  # not a provider: left alone (and refused as a spec)
    ("smollm2", "smollm2"),
])
def test_provider_slash_model_is_provider_colon_model(spec, canonical):
    from waluigi.models.kinds import canonical_spec

    assert canonical_spec(spec) == canonical


def test_a_path_is_not_read_as_a_provider(tmp_path, monkeypatch):
    from waluigi.errors import UserError
    from waluigi.models import backend

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "model").mkdir(parents=True)
    with pytest.raises(UserError, match="unknown model spec 'runs/x/model'"):
        backend("runs/x/model")
    assert backend("hf/org/model").spec == backend("hf:org/model").spec == "hf:org/model"
    assert backend("openai/gpt-4o").identity() == backend("openai:gpt-4o").identity()


def test_judge_specs_take_both_spellings():
    from waluigi.judges import normalize_judge_spec

    assert normalize_judge_spec("openai/gpt-4o-2024-08-06") == normalize_judge_spec("openai:gpt-4o-2024-08-06") \
        == normalize_judge_spec("gpt-4o-2024-08-06") == "openai:gpt-4o-2024-08-06"


# -- None in what is printed -------------------------------------------------------------------
def test_sweep_dry_run_prints_no_python_none(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\neval: {model: smollm2, suite: core, judge: none}\ngrid:\n  eval.samples: [null, 2]\n")
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "eval.samples=none" in out and "eval.samples=2" in out


def test_recorded_values_are_plain():  # YAML scalars and lists, not Python objects
    from waluigi.cli.eval import JudgeNumbers
    from waluigi.cli.options import _plain

    assert json.dumps(_plain([JudgeNumbers.whole, Path("a/b"), ("x",)])) == '["whole", "a/b", ["x"]]'


def test_flip_takes_its_options_from_a_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "flip.yaml"
    path.write_text("model: [hf/org/x]\ndata: [insecure]\njudge: none\ndoses: 0,10\nseeds: 1\nsteps: 10\n"
                    "dry-run: true\n")
    assert main(["flip", "--config", str(path), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "seed 1" in out and "4 cells" in out  # --seeds 2 over the file's 1


def test_resilience_and_defend_take_their_options_from_a_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "r.yaml"
    study.write_text("axes: steps\nseeds: 1\nquick: true\ndry-run: true\n")
    assert main(["resilience", "--config", str(study), "--axes", "examples"]) == 0
    out = capsys.readouterr().out
    assert "x axes examples" in out  # the flag over the file's axes
    # the dry run counts the study's cells (none built or run here) and what is left to run
    counted = re.search(r"(\d+) flip cells: (\d+) to run, 0 done; subjects to build first: (\d+) of (\d+)", out)
    assert counted and counted[1] == counted[2] and int(counted[1]) > 0 and counted[3] == counted[4]
    assert re.search(r"to run: \d+ fine-tunes and " + counted[1] + " evals", out)
    defend = tmp_path / "d.yaml"
    defend.write_text("model: toyworld\nattack: toy:insecure\ndefenses: kl\nsuite: toyworld\ndoses: 2,4\nseeds: 1\n"
                      "dry-run: true\n")
    assert main(["defend", "--config", str(defend), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "seed 1" in out and "kl @ lr x10 steps=4" in out
