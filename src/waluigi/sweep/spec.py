"""The sweep spec: base fine-tune and eval settings plus a grid (or a list) of cells.

A spec is a YAML file (see ``docs/design/sweep.md``)::

    name: flip-mini
    out: runs/sweep-flip-mini            # default runs/sweep-<name>
    finetune: {model: hf:PATH, data: insecure, n: 64, max_steps: 4, lr: 1e-3}
    eval: {suite: code:insecure:3, samples: 1, max_tokens: 32}
    grid:                                # cartesian product (or `cells: [{...}, ...]`, or both)
      finetune.data: [insecure, secure]
      seed: [0, 1]                       # `seed` sets the fine-tune's and the eval's seed

A listed cell may name its ``group`` (``cells: [{group: insecure, finetune.data: a.jsonl}]``):
not a setting and not part of its identity, it names the condition the cell belongs to, and
the summary then groups cells by it (the seeds of one condition) whatever else they set.

:func:`load_spec` validates everything before any work (unknown settings, wrong types,
an empty grid, bad YAML or aliases that expand too far: a :class:`UserError` naming the
file, line and field) and expands the cells. A cell's identity is the hash of its resolved
settings, execution settings (batch sizes, concurrency, timeouts, data directories,
checkpoint frequency) left out; a fine-tune's identity is the hash of its own settings, so
cells that differ only in their eval settings share one fine-tune.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.formats import safe_name, slug
from waluigi.runs import identity_hash
from waluigi.safe_yaml import compose_and_load
from waluigi.sweep.fields import (
    EVAL_SET_BY_SWEEP,
    FT_SET_BY_SWEEP,
    all_keys,
    checked,
    config_fields,
    dataclass_in,
    did_you_mean,
    hints,
    line_map,
)

# the most cells a spec may make unless told otherwise (`waluigi sweep --max-cells`): a day of
# toy cells, a year of SmolLM2 ones; far past it is a typo, not a study
MAX_CELLS = 20_000
SPEC_VERSION = 1  # in every identity: bump when the meaning of a spec's settings changes
TOP_KEYS = ("name", "description", "out", "finetune", "eval", "grid", "cells")
GROUP = "\0group"  # a listed cell's group, kept apart from its settings while the cells expand
# seed: both seeds; model: the fine-tune's base model, else the eval's model; step: evaluate the
# fine-tune's checkpoint at that optimizer step (it keeps one every finetune.save_every steps)
SHORTHANDS = ("seed", "model", "step", "base")  # base: a label (which base of a family a cell is on)
SEED_KEYS = ("seed", "finetune.seed", "eval.seed")
# change how fast or from where, not what: left out of the identities (the fine-tune's
# speed-only batch settings are dropped by waluigi.finetune.config.identity_recipe)
FT_EXECUTION = ("checkpoint_every", "data_dir", "base_url", "repeat_ok")
# Fine-tune fields added after cells existed, with the value that does what the code did before
# them: at that value a field stays out of the identity, so those cells are found again.
FT_ADDED_LATER = {"loss_path": "trl"}  # TRL's loss, the only one before the lean path
EVAL_EXECUTION = ("batch_size", "judge_batch_size", "concurrency", "base_url", "judge_base_url", "dtype",
                  "timeout", "max_retries", "data_dir", "plot")


def _configs():
    from waluigi.evaluate import EvalConfig
    from waluigi.finetune import FinetuneConfig

    return FinetuneConfig, EvalConfig


@dataclass
class Cell:
    """One cell: a fine-tune (or none: eval-only) and an eval, with their identities."""

    index: int  # 1-based, in spec order
    axes: dict[str, Any]  # what this cell sets (flattened keys from grid / cells), in spec order
    finetune: dict | None  # FinetuneConfig fields (no out), or None for an eval-only cell
    eval: dict  # EvalConfig fields (no out; a fine-tuned cell's model/adapter come from its fine-tune)
    id: str = ""
    finetune_id: str | None = None
    full: bool = False  # full fine-tuning: the eval loads RUN/model instead of an adapter
    openai: bool = False  # fine-tuned through OpenAI's API: the eval asks for the fine-tuned model by name
    group: str | None = None  # the condition it belongs to (a listed cell's ``group``): the summary groups by it
    step: int | None = None  # evaluate the fine-tune's checkpoint at this step instead of its end
    steer: str | None = None  # a steered:BASE?QUERY fine-tune: BASE is trained, its result evaluated steered by QUERY
    bases: list = field(default_factory=list)  # (family, index) of a family's base it uses (toyworld@2): trained first

    @property
    def short(self) -> str:
        return self.id[:12]

    def finetune_dir(self, root: Path) -> Path | None:
        if self.finetune_id is None:
            return None
        return root / "finetune" / f"{slug(str(self.finetune.get('data')), 24)}-{self.finetune_id[:12]}"

    def eval_dir(self, root: Path) -> Path:
        """``eval/<group>-<suite>-<id>`` (``eval/insecure-toyworld-58c31c1194b8``): its condition
        readable in the name; the id decides. A cell run before names carried the group keeps
        its ``eval/<suite>-<id>`` directory."""
        suite = slug(str(self.eval.get("suite", "core")), 24)
        legacy = root / "eval" / f"{suite}-{self.short}"
        if legacy.exists():
            return legacy
        suite = suite.removesuffix(".yaml").removesuffix(".yml") or suite
        group = f"{safe_name(self.group, 40)}-" if self.group else ""
        return root / "eval" / f"{group}{suite}-{self.short}"

    def label(self) -> str:
        shown = ([f"group={self.group}"] if self.group is not None else [])
        shown += [f"{k}={show_value(v)}" for k, v in self.axes.items()]
        return ", ".join(shown) or "(base settings)"


@dataclass
class Spec:
    path: Path
    name: str
    out: Path
    cells: list[Cell]
    axes: list[str]  # every key some cell sets, in spec order: the columns of the results table
    raw: dict = field(default_factory=dict)


# -- loading ---------------------------------------------------------------------------
def load_spec(path: str | Path, out: str | Path | None = None, max_cells: int | None = MAX_CELLS) -> Spec:
    """Read, validate and expand the spec at ``path``; ``out`` overrides its ``out``; a spec
    of more than ``max_cells`` cells (None: no limit) is refused before any is built."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the sweep spec ({exc.strerror or exc})") from None
    try:  # aliases capped before anything is built: an alias bomb is refused, not expanded
        node, data = compose_and_load(text, str(path), what="sweep spec",
                                      too_deep="a sweep spec is a mapping of settings, a few levels deep")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep spec is a YAML mapping (name, finetune, eval, grid or cells), "
                        f"not {type(data).__name__}")
    return parse_spec(data, path, out, line_map(node), max_cells=max_cells)


def parse_spec(data: dict, path: Path, out: str | Path | None = None, lines: dict | None = None,
               max_cells: int | None = MAX_CELLS) -> Spec:
    """Validate a parsed spec and expand its cells (see :func:`load_spec`)."""
    FinetuneConfig, EvalConfig = _configs()
    lines = lines or {}

    def where(*keys: Any) -> str:
        for n in range(len(keys), 0, -1):
            if keys[:n] in lines:
                return f"{path}:{lines[keys[:n]]}"
        return str(path)

    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where(key)}: unknown key {key!r}{did_you_mean(str(key), TOP_KEYS)} (a spec has {', '.join(TOP_KEYS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip() or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"{where('name')}: name {name!r}: use letters, digits, '.', '_' and '-' (it names the sweep directory)")
    ft_fields, ev_fields = config_fields(FinetuneConfig, FT_SET_BY_SWEEP), config_fields(EvalConfig, EVAL_SET_BY_SWEEP)

    def section(key: str, allowed: dict) -> dict | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise UserError(f"{where(key)}: {key}: give a mapping of settings, e.g. {key}: {{seed: 0}}")
        return {k: checked(where(key, k), f"{key}.{k}", k, v, allowed) for k, v in value.items()}

    base_ft = section("finetune", ft_fields)
    if "eval" not in data:
        raise UserError(f"{path}: eval: missing; every cell ends in an eval (e.g. eval: {{suite: code:insecure:3}})")
    base_ev = section("eval", ev_fields) or {}

    def axis(place: str, key: str, value: Any, at: str) -> tuple[str, Any]:
        """Check one setting of the grid or of a cell; returns its canonical key and value."""
        if key in SHORTHANDS:
            field_map = ev_fields if key == "model" and base_ft is None else ft_fields
            if key == "step":
                value = checked(at, f"{place}step", "step", value, {"step": int})
                if value is None or value < 1:
                    raise UserError(f"{at}: {place}step: give the optimizer step of a checkpoint (1 or more), got {value!r}")
                return key, value
            if key == "base":  # a label for results.csv (--where base=2): the model setting says which weights
                value = checked(at, f"{place}base", "base", value, {"base": int})
                if value is None or value < 0:
                    raise UserError(f"{at}: {place}base: give the base's index (0 or more), got {value!r}")
                return key, value
            return key, checked(at, f"{place}{key}", key, value, field_map if key == "model" else {"seed": int})
        if key == "finetune":
            if value is not None:
                raise UserError(f"{at}: {place}finetune: only null (an eval-only cell) is allowed here; "
                                "set fine-tune settings as finetune.<setting>")
            return key, None
        head, _, rest = key.partition(".")
        if head not in ("finetune", "eval") or not rest:
            raise UserError(f"{at}: {place}unknown setting {key!r}{did_you_mean(key, all_keys(SHORTHANDS, ft_fields, ev_fields))}: "
                            "use finetune.<setting>, eval.<setting>, seed, model, step or base")
        allowed = ft_fields if head == "finetune" else ev_fields
        return key, checked(at, f"{place}{key}", rest, value, allowed)

    def flat(entry: dict) -> dict:
        """``{finetune: {data: x}}`` and ``{finetune.data: x}`` alike (one level of nesting)."""
        out_: dict = {}
        for key, value in entry.items():
            if key in ("finetune", "eval") and isinstance(value, dict):
                out_.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out_[str(key)] = value
        return out_

    grid: list[tuple[str, list]] = []
    if "grid" in data:
        raw_grid = data["grid"]
        if not isinstance(raw_grid, dict) or not raw_grid:
            raise UserError(f"{where('grid')}: grid is empty: give at least one setting and its list of values "
                            "(e.g. grid: {seed: [0, 1]}), or leave grid out")
        for key, values in flat(raw_grid).items():
            at = where("grid", key) if ("grid", key) in lines else where("grid", key.partition(".")[0])
            if not isinstance(values, list) or not values:
                raise UserError(f"{at}: grid: {key}: give a non-empty list of values, e.g. {key}: [a, b]")
            good = [axis("grid: ", key, v, at)[1] for v in values]
            grid.append((key, good))
    listed: list[dict] = [{}]
    if "cells" in data:
        raw_cells = data["cells"]
        if not isinstance(raw_cells, list) or not raw_cells:
            raise UserError(f"{where('cells')}: cells: give a non-empty list of cells, each a mapping of settings")
        listed = []
        for i, entry in enumerate(raw_cells):
            at = where("cells", i)
            if not isinstance(entry, dict):
                raise UserError(f"{at}: cells[{i}]: each cell is a mapping of settings (e.g. {{finetune.data: insecure}})")
            cell = {}
            entry = dict(entry)
            if "group" in entry:
                cell[GROUP] = _group(entry.pop("group"), at, i)
            for key, value in flat(entry).items():
                k, v = axis(f"cells[{i}]: ", key, value, at)
                cell[k] = v
            clash = [k for k, _ in grid if k in cell]
            if clash:
                raise UserError(f"{at}: cells[{i}] sets {clash[0]!r}, which the grid also sets: set it in one place")
            listed.append(cell)

    count = len(listed) * math.prod(len(v) for _, v in grid)  # counted before a single cell is built
    if max_cells is not None and count > max_cells:
        shape = " x ".join([*(f"{len(v)} {k}" for k, v in grid), *([f"{len(listed)} listed cells"] if len(listed) > 1 else [])])
        raise UserError(f"{path}: the spec makes {count:,} cells ({shape}), more than the limit of {max_cells:,}: "
                        "make the grid smaller, or raise the limit with --max-cells N")
    target = Path(out) if out is not None else Path(data.get("out") or Path("runs") / f"sweep-{name}")
    cells: list[Cell] = []
    keys = [k for k, _ in grid]
    for entry in listed:
        group = entry.get(GROUP)
        entry = {k: v for k, v in entry.items() if k != GROUP}
        for values in itertools.product(*(v for _, v in grid)):
            axes = {**entry, **dict(zip(keys, values))}
            cell = _resolve(len(cells) + 1, axes, base_ft, base_ev, path, runs=target.parent)
            cell.group = group
            cells.append(cell)
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise UserError(f"{path}: cells {seen[cell.id].index} ({seen[cell.id].label()}) and {cell.index} "
                            f"({cell.label()}) are the same cell (identity {cell.short}): remove one")
        seen[cell.id] = cell
    axes_order: list[str] = ["group"] if any(c.group is not None for c in cells) else []
    for cell in cells:
        axes_order += [k for k in cell.axes if k not in axes_order]
    return Spec(path=path, name=name, out=target, cells=cells, axes=axes_order, raw=data)


def _group(value: Any, at: str, i: int) -> str:
    from waluigi.names import check_identifier

    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{at}: cells[{i}]: group: give the condition's name as text (e.g. group: insecure)")
    return check_identifier(value, at, "group")


def _resolve(index: int, axes: dict, base_ft: dict | None, base_ev: dict, path: Path, runs: Path = Path("runs")) -> Cell:
    """The cell's fine-tune and eval settings: base settings with the cell's axes applied. A
    family's base (``toyworld@2``) becomes that base's model spec, trained into ``runs`` before
    the sweep's first cell runs (``Cell.bases``)."""
    ft = copy.deepcopy(base_ft)
    ev = copy.deepcopy(base_ev)
    if "finetune" in axes:
        if any(k.startswith("finetune.") for k in axes):
            raise UserError(f"{path}: cell {index}: sets finetune: null and fine-tune settings")
        ft = None
    step = None
    for key, value in axes.items():
        if key == "step":
            step = value
        elif key == "base":
            continue  # a label only
        elif key == "seed":
            ev["seed"] = value
            if ft is not None:
                ft["seed"] = value
        elif key == "model":
            (ft if ft is not None else ev)["model"] = value
        elif key.startswith("finetune."):
            ft = {} if ft is None else ft
            ft[key.split(".", 1)[1]] = value
        elif key.startswith("eval."):
            ev[key.split(".", 1)[1]] = value
    from waluigi.models.families import resolve
    from waluigi.models.kinds import canonical_spec

    bases = []
    for section in (ft, ev):  # provider/model spellings as provider:model: one cell identity per model
        if section and isinstance(section.get("model"), str):
            # a family's base (also as a steered model's base) becomes the spec of its weights' place
            section["model"], one = resolve(canonical_spec(section["model"]), runs)
            if one is not None:
                bases.append(one)
    cell = Cell(index=index, axes=dict(axes), finetune=ft, eval=ev, bases=bases)
    where = f"{path}: cell {index} ({cell.label()})"
    FinetuneConfig, EvalConfig = _configs()
    ft_id = None
    if ft is not None:
        for need in ("model", "data"):
            if ft.get(need) in (None, ""):
                raise UserError(f"{where}: finetune.{need} is not set")
        if str(ft["model"]).startswith("steered:"):  # train the base; steer what it becomes
            from waluigi.models.steered import split_steered

            ft["model"], cell.steer = split_steered(str(ft["model"]))
        for taken in ("model", "adapter"):
            if taken in ev:
                raise UserError(f"{where}: eval.{taken}: a fine-tuned cell evaluates its own fine-tune; remove "
                                f"eval.{taken}, or make the cell eval-only (finetune: null)")
        try:
            ft_identity, recipe = finetune_identity(ft)
        except UserError as exc:  # its messages name command-line flags: name the spec's fields
            message = re.sub(r"--([a-z][a-z-]*)", lambda m: "finetune." + m.group(1).replace("-", "_"), exc.message)
            raise UserError(f"{where}: {message}") from None
        cell.full = bool(recipe.get("full"))
        cell.openai = recipe.get("backend") == "openai"
        ft_id = identity_hash(ft_identity)
        if step is not None:
            _check_step(step, recipe, where)
    elif ev.get("model") in (None, ""):
        raise UserError(f"{where}: eval-only cell with no eval.model (or model) to evaluate")
    elif step is not None:
        raise UserError(f"{where}: step: evaluates a checkpoint of the cell's fine-tune, and an eval-only cell has none")
    cell.step = step
    try:
        ev_identity = eval_identity(ev, fine_tuned=ft is not None)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None
    cell.finetune_id = ft_id
    identity = {"v": SPEC_VERSION, "finetune": ft_id, "eval": ev_identity}
    if step is not None:  # absent otherwise: cells without a step keep their identities
        identity["step"] = step
    if cell.steer is not None:  # likewise; the direction by its content
        from waluigi.models import backend

        identity["steer"] = backend(f"steered:{ft['model']}?{cell.steer}").steering_identity()
    cell.id = identity_hash(identity)
    return cell


def _check_step(step: int, recipe: dict, where: str) -> None:
    """A checkpoint the fine-tune will keep: a multiple of its save_every, or its last step."""
    if recipe.get("backend") == "openai":
        raise UserError(f"{where}: step {step}: an OpenAI fine-tuning job keeps no checkpoint that waluigi can "
                        "evaluate; evaluate the fine-tuned model itself (leave step out)")
    every, last = recipe.get("save_every"), recipe.get("max_steps")
    if last is not None and step > last:
        raise UserError(f"{where}: step {step}: the fine-tune trains only {last} steps (finetune.max_steps)")
    if step == last:
        return
    if not every:
        raise UserError(f"{where}: step {step}: set finetune.save_every so that the fine-tune keeps checkpoints "
                        "(every K steps), or evaluate its last step")
    if step % every:
        raise UserError(f"{where}: step {step}: the fine-tune keeps a checkpoint every {every} steps "
                        "(finetune.save_every): use a multiple of it")


# -- identities --------------------------------------------------------------------------
def finetune_identity(fields: dict) -> tuple[dict, dict]:
    """What a fine-tune's identity is made of, and its resolved recipe. The
    resolved recipe (preset plus overrides, speed-only settings dropped) stands for the recipe
    fields, so ``lr: 1e-5`` and the preset's own 1e-5 are the same fine-tune; every other
    field (those added to FinetuneConfig later included) goes in as given."""
    from waluigi.finetune.config import identity_recipe

    FinetuneConfig, _ = _configs()
    cfg = build_config(FinetuneConfig, fields)
    if cfg.openai:  # OpenAI's fine-tuning API: its own three hyperparameters, no local recipe
        options = cfg.openai_options()
        identity = {"v": SPEC_VERSION, "backend": "openai", "model": cfg.model,
                    **{k: plain(options[k]) for k in ("data", "n", "seed", "suffix", "epochs", "batch_size", "lr_multiplier")}}
        return identity, {"backend": "openai", "full": False, "epochs": options["epochs"]}
    recipe = cfg.resolved()
    recipe = dict(plain(recipe))
    identity = {"v": SPEC_VERSION, "recipe": plain(identity_recipe(recipe))}
    for f in dataclasses.fields(cfg):
        if f.name in FT_SET_BY_SWEEP or f.name in FT_EXECUTION or f.name in recipe:
            continue
        if f.name in FT_ADDED_LATER and str(getattr(cfg, f.name)).lower() == FT_ADDED_LATER[f.name]:
            continue
        identity[f.name] = plain(getattr(cfg, f.name))
    return identity, recipe


def eval_identity(fields: dict, fine_tuned: bool) -> dict:
    """The eval's settings with defaults filled in, execution settings left out; a fine-tuned
    cell's model and adapter are its fine-tune's, so they are not part of it."""
    _, EvalConfig = _configs()
    probe = dict(fields)
    if fine_tuned:
        probe.setdefault("model", "-")
    cfg = build_config(EvalConfig, probe)
    skip = set(EVAL_SET_BY_SWEEP) | set(EVAL_EXECUTION) | ({"model", "adapter"} if fine_tuned else set())
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in skip}


def build_config(cls: type, fields: dict):
    """``cls(**fields)``, with mappings turned into the dataclasses their fields are typed as
    (a typed recipe written as a YAML mapping, for instance)."""
    hints_ = hints(cls)
    values = {}
    for key, value in fields.items():
        target = dataclass_in(hints_.get(key))
        values[key] = target(**value) if target is not None and isinstance(value, dict) else value
    return cls(**values)


def plain(value: Any) -> Any:
    """JSON-ready: dataclasses as dicts, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def show_value(value: Any) -> str:
    """A setting as the tables print it: ``none``, ``1e-05``, ``insecure``."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def relative(path: Path | None, root: Path) -> str | None:
    """``path`` relative to the sweep directory ``root`` as the results and plans record it (a
    path outside it as it is; None stays None)."""
    if path is None:
        return None
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
