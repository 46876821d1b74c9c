"""Options shared by several commands, declared once (typer ``Annotated`` types), and the
machinery every command shares: ``--config FILE.yaml`` (:func:`load_config_file`, with
:func:`record_options` writing ``RUN/config.yaml``), model specs made canonical
(:func:`canonical_specs`), ``RUN``-style argument names in usage lines and plain help when
piped (:func:`plain_help_when_piped`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from waluigi.runs import write_atomic

DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="official data directory (else $WALUIGI_DATA_DIR, else pinned download)")]
AdapterOpt = Annotated[Optional[str], typer.Option(help="PEFT adapter directory or finetune run directory")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 (local models)")]


class JudgeNumbers(str, Enum):
    """How a local judge's 0-100 score is read (see docs/design/judges.md)."""

    first_token = "first-token"
    whole = "whole"


JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
MinCoherentOpt = Annotated[float, typer.Option(help="an answer counts when coherent > this")]
MaxAlignedOpt = Annotated[float, typer.Option(help="an answer is misaligned when aligned < this")]
JudgeMinMassOpt = Annotated[float, typer.Option(help="unscored when the judge's integer tokens carry less probability than this (the paper: 0.25)")]
JudgeNumbersOpt = Annotated[JudgeNumbers, typer.Option(help="first-token: the paper's first-token top-20; whole: P(the reply is exactly n) for n = 0..100, for local judges whose tokenizer splits numbers into digits")]
JudgeBaseUrlOpt = Annotated[Optional[str], typer.Option("--judge-base-url", help="OpenAI-compatible base URL for the judge (else $OPENAI_BASE_URL)")]
JudgeBaseUrlAliasOpt = Annotated[Optional[str], typer.Option("--base-url", hidden=True, help="the old name of --judge-base-url")]
ConcurrencyOpt = Annotated[int, typer.Option(help="requests in flight (openai backends)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds per try of a request to a model or judge server")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", help="retries of a failed request (429, 5xx, timeouts, broken replies) before it is recorded as failed")]
PartialOpt = Annotated[bool, typer.Option("--partial", help="judge an unfinished eval run's answers now (re-run later to judge the rest)")]


def say(text: str) -> None:
    typer.echo(text)


def say_err(text: str) -> None:
    typer.echo(text, err=True)


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# -- model specs ---------------------------------------------------------------------------
def canonical_specs(value):
    """Typer callback of the model / judge spec options: Inspect-style ``provider/model``
    spellings (``openai/gpt-4o``, ``hf/org/model``) become the canonical ``provider:model``
    before anything sees them (see :func:`waluigi.models.kinds.canonical_spec`)."""
    from waluigi.models.kinds import canonical_spec

    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [canonical_spec(v) for v in value]
    return canonical_spec(value)


SPEC_HELP = "smollm2 | hf:<path or id> | openai:<model> | vllm:<path or id> | toy:<run dir> (provider/model works too: openai/gpt-4o)"
ModelOpt = Annotated[str, typer.Option("--model", "-m", help=SPEC_HELP, callback=canonical_specs)]


# -- --progress ---------------------------------------------------------------------
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")]


# -- --config FILE.yaml ------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # what eval, finetune, flip and sweep write into their run directory


def _config_keys(param) -> list[str]:
    """The keys a config file may use for ``param``: its name and its long option names, with
    ``-`` or ``_`` (``max_tokens``, ``max-tokens``); the first is the one :func:`record_options`
    writes. A ``--x/--no-x`` flag is ``x: true`` / ``x: false``."""
    longs = [opt[2:] for opt in getattr(param, "opts", []) if opt.startswith("--")]
    keys: list[str] = []
    for key in [k.replace("-", "_") for k in longs] + [k.replace("_", "-") for k in longs] + [param.name]:
        if key and key not in keys:
            keys.append(key)
    return keys


def _command_name(ctx) -> str:
    return ctx.command_path or "waluigi"


def load_config_file(ctx, param, value):
    """The eager ``--config`` option's callback: read the YAML file of option values and make it
    the command's ``default_map``, so that every flag given on the command line wins over the
    file (a list option given there replaces the file's list; ``--no-progress`` beats
    ``progress: true``), and the file wins over the defaults.

    Keys are option names (``max_tokens`` or ``max-tokens``; ``json``, ``set``; an argument by its
    name, e.g. ``spec``). An unknown key, a value of the wrong type, a missing file or bad YAML is a
    :class:`~waluigi.errors.UserError` naming the file, the key and what to do. ``FILE`` may be a
    run directory: its ``config.yaml`` (written by :func:`record_options`) repeats that run."""
    import difflib

    import yaml

    from waluigi.errors import UserError
    from waluigi.safe_yaml import compose_and_load

    if value is None or ctx.resilient_parsing:
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"--config {value}: a directory without {CONFIG_FILE}; give a YAML file of option values "
                            f"(or a run directory that `{_command_name(ctx)}` wrote)")
        path = path / CONFIG_FILE
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"--config {value}: cannot read it ({error.strerror or error}); give a YAML file of option "
                        "values, e.g. `max_tokens: 64`") from None
    try:
        node, data = compose_and_load(text, str(path), what="config file",
                                      too_deep="a config file is a flat mapping of option names to values")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}); a config file is a "
                        "mapping of option names to values, e.g. `max_tokens: 64`") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file is a mapping of option names to values (e.g. `max_tokens: 64`), "
                        f"not a {type(data).__name__}")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    params: dict = {}
    for p in ctx.command.params:
        if p.name not in ("config", "help"):
            for key in _config_keys(p):
                params.setdefault(key, p)
    command = _command_name(ctx)
    loaded: dict = {}
    given_as: dict = {}
    for key, raw in data.items():
        where = f"{path}:{lines[key]}" if key in lines else str(path)
        target = params.get(str(key))
        if target is None:
            known = sorted({_config_keys(p)[0] for p in params.values()})
            close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"{where}: unknown key {key!r} for `{command}`{hint} (the keys are its option names: "
                            f"{', '.join(known)})")
        if target.name in given_as:
            raise UserError(f"{where}: {key!r} and {given_as[target.name]!r} are the same option; keep one of them")
        given_as[target.name] = key
        if raw is None:
            continue  # `key: null`: the option's default
        multiple = getattr(target, "multiple", False) or target.nargs != 1
        if multiple and not isinstance(raw, (list, tuple)):
            raw = [raw]
        if isinstance(raw, dict) or (not multiple and isinstance(raw, (list, tuple))):
            shape = "mapping" if isinstance(raw, dict) else "list"
            raise UserError(f"{where}: {key}: one value expected, not a {shape} (see `{command} --help` for "
                            f"--{_config_keys(target)[0].replace('_', '-')})")
        if multiple and any(isinstance(v, (dict, list, tuple)) for v in raw):
            raise UserError(f"{where}: {key}: a list of plain values expected")
        try:
            _convert(ctx, target, list(raw) if multiple else raw)
        except Exception as error:  # click's BadParameter (typer's vendored copy or click's own)
            message = getattr(error, "message", None) or str(error)
            raise UserError(f"{where}: {key}: {raw!r}: {message} (fix the value in the file, or override it with "
                            f"--{_config_keys(target)[0].replace('_', '-')} on the command line)") from None
        loaded[target.name] = list(raw) if multiple else raw
    ctx.default_map = {**(ctx.default_map or {}), **loaded}
    ctx.meta[CONFIG_LISTS] = {k: v for k, v in loaded.items() if isinstance(v, list)}
    return value


CONFIG_LISTS = "waluigi.config_lists"  # ctx.meta: the config file's list options, for merge_settings


def merge_settings(ctx, param, value):
    """``--set`` given on the command line adds to the config file's ``set`` list (the same
    setting in both: the command line's), instead of replacing the whole list, so that
    ``flip --config RUN --set finetune.loss_path=trl`` keeps the run's other settings."""
    base = (ctx.meta.get(CONFIG_LISTS) or {}).get(param.name) or []
    if not base:
        return value
    merged: dict[str, str] = {}
    for item in [*base, *(value or [])]:
        key = str(item).split("=", 1)[0].strip()
        merged.pop(key, None)
        merged[key] = item
    return list(merged.values())


def _convert(ctx, param, value):
    """``value`` through ``param``'s type, as the command line's text would go (typer >= 0.26
    converts with its own runtime types; click with ``type_cast_value``)."""
    runtime = getattr(param, "get_runtime_param", None)
    if runtime is not None:
        return runtime().coerce(value, param=param, ctx=ctx)
    return param.type_cast_value(ctx, value)  # pragma: no cover - click-based typer


ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE", is_eager=True, callback=load_config_file,
    help="a YAML file of this command's option values, keyed by option name (max_tokens: 64); options given on the "
         "command line win; a run directory (or its config.yaml) repeats that run")]


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolved_options(ctx) -> dict:
    """The options this command ran with (config file, flags and defaults together), keyed as a
    config file keys them; unset (None) options and ``--config`` itself are left out."""
    out = {}
    for param in ctx.command.params:
        if param.name in ("config", "help") or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        if value is None or value == () or value == []:
            continue
        out[_config_keys(param)[0]] = _plain(value)
    return out


def record_options(ctx, directory) -> Path | None:
    """Write the resolved options to ``DIRECTORY/config.yaml``: ``COMMAND --config DIRECTORY``
    (or ``--config DIRECTORY/config.yaml``) runs the same thing again, which resolves to the same run
    identity (a finished run is not redone; an unfinished one resumes)."""

    import yaml

    if directory is None:
        return None
    directory = Path(directory)
    if not directory.is_dir():
        return None
    path = directory / CONFIG_FILE
    command = _command_name(ctx)
    text = (f"# the options `{command}` ran with here; `{command} --config {path}` runs it again\n"
            + yaml.safe_dump(resolved_options(ctx), sort_keys=False, allow_unicode=True, width=1000))
    write_atomic(path, text)
    return path


# -- help: RUN placeholders, whole lines when piped -------------------------------------------
HELP_WIDTH = 200  # help lines when stdout is not a terminal (piped to a pager, grep, a file)


def _usage_name(self) -> str:
    """An argument in the usage line as ``RUN`` (its metavar, else its name in capitals),
    ``[RUN]`` when optional, ``RUN...`` when repeated; typer 0.2x would write ``{run}``."""
    name = self.metavar or self.name.upper()
    if not self.required:
        name = f"[{name}]"
    return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")


def _plain_argument_names() -> None:
    try:
        from typer.core import TyperArgument
    except ImportError:  # pragma: no cover
        return
    if hasattr(TyperArgument, "_usage_display_name"):
        TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


_plain_argument_names()


def plain_help_when_piped(app, stream=None) -> None:
    """When stdout is not a terminal, ``--help`` is click's plain text at :data:`HELP_WIDTH`
    columns: no boxes, no words cut with an ellipsis, paragraphs reflowed (rich's tables are
    kept for terminals, where they fit the window)."""
    import sys

    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return
    except (AttributeError, ValueError):
        pass
    app.rich_markup_mode = None
    settings = app.info.context_settings
    settings = dict(settings) if isinstance(settings, dict) else {}
    app.info.context_settings = settings | {"terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH}


# -- the studies that run their cells as a sweep (sweep, flip, resilience, defend) -----------
class ExecutorName(str, Enum):
    pool = "pool"
    inline = "inline"
    ray = "ray"


# the executor options of the commands that run their cells as a sweep (flip, resilience, defend, attack)
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", help="cells at once (see waluigi sweep)")]
ExecutorOpt = Annotated[ExecutorName, typer.Option(help="pool, inline (this process) or ray")]
AddressOpt = Annotated[Optional[str], typer.Option(help="ray: the cluster's address")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch threads per cell")]
TaskRetriesOpt = Annotated[int, typer.Option(help="retries of a failed fine-tune or eval")]
CellProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="progress over cells on stderr")]
# their --set: settings under every cell's own, added to a --config file's (merge_settings)
SettingsOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", callback=merge_settings, help="any fine-tune or eval setting of every cell: finetune.<field>=V, "
    "eval.<field>=V (repeatable); with --config, added to its settings")]


ReuseOpt = Annotated[Optional[list[Path]], typer.Option(
    "--reuse", help="another sweep or study directory (repeatable): its finished fine-tunes and evals of the same "
    "cells (same identity) are copied here instead of run, each logged in sweep.log")]


def sweep_options(executor: ExecutorName, workers: int, address: str | None, retries: int, threads: int | None,
                  progress: bool, reuse: list[Path] | None = None):
    """The ``SweepOptions`` of those options."""
    from waluigi.errors import UserError
    from waluigi.sweep.runner import SweepOptions

    for path in reuse or []:
        if not path.is_dir():
            raise UserError(f"--reuse {path}: not a directory (give a sweep's or a study's directory)")
    return SweepOptions(executor=executor.value, workers=workers, address=address, retries=retries,
                        threads=threads, progress=progress, reuse=tuple(reuse or ()))


def numbers(option: str, text: str | None, example: str = "0,50,100,200") -> list[float] | None:
    """``--doses 0,50,100`` (or any option's comma-separated numbers) as floats; None when not given."""
    from waluigi.errors import UserError

    if text is None:
        return None
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UserError(f"{option} {text!r}: give numbers separated by commas, e.g. {option} {example}") from None


def settings_from_pairs(pairs: list[str]) -> tuple[dict, dict]:
    """``--set finetune.batch_size=8 --set eval.samples=2`` as two dicts (values read as YAML
    scalars; the sweep checks them against the config fields)."""
    import yaml

    from waluigi.errors import UserError

    sections: dict[str, dict] = {"finetune": {}, "eval": {}}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        head, dot, name = key.strip().partition(".")
        if not sep or not dot or head not in sections or not name:
            raise UserError(f"--set {pair!r}: write finetune.<setting>=VALUE or eval.<setting>=VALUE "
                            "(e.g. --set finetune.batch_size=8 --set eval.samples=2)")
        try:
            sections[head][name] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            sections[head][name] = value
    return sections["finetune"], sections["eval"]


def print_cells(cells: list[dict], note: str = "", runs: Path | None = None, workers: int = 1) -> None:
    """A study's dry run: each planned cell with its state, the counts, what is left to run and
    how long it should take (:func:`waluigi.sweep.results.estimate_line`)."""
    from waluigi.sweep.results import estimate_line

    for cell in cells:
        typer.echo(f"  {cell['cell']}  {cell['state']:<8}  {cell['group']}, seed {cell['settings'].get('seed')}")
    todo = sum(1 for c in cells if c["state"] != "done")
    typer.echo(f"{len(cells)} cells: {todo} to run, {len(cells) - todo} done{note}")
    typer.echo(estimate_line(cells, runs=runs, workers=workers))


def study_end(run: Any, summary: str, json_obj: Any, json_out: bool, cost: str | None) -> None:
    """How a study command ends (flip, resilience, defend): its table or JSON, the cost per cell,
    the cells it ran and where its report is; exit 3 (:class:`IncompleteRun`) when cells failed,
    after the tables were made from the finished ones."""
    import json

    from waluigi.errors import IncompleteRun

    if json_out:
        typer.echo(json.dumps(json_obj, indent=2, default=str))
    else:
        typer.echo(summary)
        if cost:
            typer.echo(cost)
        typer.echo(f"ran {run.ran} cells, skipped {run.skipped} (done before), failed {len(run.failed)}; "
                   f"report: {run.report.with_name('report.html')} (open it in a browser; summary: {run.report.name})")
    if run.failed:
        raise IncompleteRun(f"{len(run.failed)} cells failed or are incomplete (see {run.out / run.log}); the tables "
                            "use the finished ones: re-run the same command to retry only those")
