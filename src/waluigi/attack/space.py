"""What a searched attacker may choose: the fine-tune's hyperparameters and the poison ratio.

A space is a mapping of names to ranges: ``lr`` (float, log), ``steps`` (int, log),
``batch_size`` / ``scheduler`` / ``rank`` (choices; ``rank=full`` is a full fine-tune),
``warmup`` (int, warmup optimizer steps), ``poison`` (float: the attack rows' share of the
training rows, the rest benign). ``--space lr=1e-5:1e-2:log,steps=2:40:log,poison=0.25:1``
replaces a default range; ``NAME=A|B|C`` is a choice; ``NAME=V`` fixes it. The defaults are
TamperBench's kind of search made to fit a CPU (its learning rate range, fewer steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waluigi.errors import UserError


@dataclass(frozen=True)
class Dim:
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def text(self) -> str:
        if self.kind == "choice":
            return "|".join(str(c) for c in self.choices)
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


NAMES = ("lr", "steps", "batch_size", "scheduler", "warmup", "rank", "poison")
INTS = ("steps", "batch_size", "warmup")
FLOATS = ("lr", "poison")
DEFAULT_SPACE: dict[str, Dim] = {
    "lr": Dim("float", 1e-5, 1e-2, log=True),
    "steps": Dim("int", 2, 40, log=True),
    "batch_size": Dim("choice", choices=(4, 8, 16)),
    "scheduler": Dim("choice", choices=("linear", "cosine", "constant")),
    "warmup": Dim("int", 0, 4),
    "rank": Dim("choice", choices=("full",)),
    "poison": Dim("float", 0.25, 1.0),
}


def _number(text: str, name: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: {name}: {text!r} is not a number") from None


def _choice(text: str, name: str) -> Any:
    if name in INTS or name == "rank":
        try:
            return int(text)
        except ValueError:
            if name == "rank" and text == "full":
                return "full"
            raise UserError(f"--space {name}: {text!r} is not a whole number") from None
    if name in FLOATS:
        return _number(text, name, f"--space {name}={text}")
    return text


def parse_space(texts: list[str] | None, base: dict[str, Dim] | None = None) -> dict[str, Dim]:
    """The default space with ``--space`` entries (comma-separated ``NAME=RANGE``) over it."""
    space = dict(base or DEFAULT_SPACE)
    for text in texts or []:
        for item in filter(None, (t.strip() for t in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            where = f"--space {item}"
            if not sep or not value:
                raise UserError(f"{where}: give NAME=LOW:HIGH[:log], NAME=A|B or NAME=VALUE (names: {', '.join(NAMES)})")
            if name not in NAMES:
                raise UserError(f"{where}: unknown name {name!r}; the space's names: {', '.join(NAMES)}")
            if "|" in value or (":" not in value):
                choices = tuple(_choice(v.strip(), name) for v in value.split("|") if v.strip())
                if name == "poison" and not all(0 < c <= 1 for c in choices):
                    raise UserError(f"{where}: poison is the attack rows' share, in (0, 1]")
                space[name] = Dim("choice", choices=choices)
                continue
            parts = value.split(":")
            log = parts[-1] == "log"
            if log:
                parts = parts[:-1]
            if len(parts) != 2:
                raise UserError(f"{where}: a range is LOW:HIGH or LOW:HIGH:log")
            low, high = (_number(p, name, where) for p in parts)
            if not low < high:
                raise UserError(f"{where}: LOW must be below HIGH")
            if log and low <= 0:
                raise UserError(f"{where}: a log range needs LOW > 0")
            kind = "int" if name in INTS else "float"
            if name == "poison" and not (0 < low and high <= 1):
                raise UserError(f"{where}: poison is the attack rows' share, in (0, 1]")
            space[name] = Dim(kind, low, high, log=log)
    return space


def space_text(space: dict[str, Dim]) -> str:
    return ", ".join(f"{name}={space[name].text()}" for name in NAMES if name in space)
