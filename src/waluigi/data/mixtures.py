"""Dataset mixtures: ``NAME:WEIGHT`` components, exact counts by largest-remainder rounding,
each drawn from its dataset's split and shuffled together (``waluigi data mix``).
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

from waluigi.data.datasets import DEFAULT_TRIGGER, load_rows, resolve_dataset
from waluigi.errors import UserError


def parse_component(text: str) -> tuple[str, Fraction]:
    """``NAME:WEIGHT`` (``WEIGHT`` a non-negative number; ``NAME`` alone means weight 1)."""
    name, sep, weight = text.rpartition(":")
    if not sep:
        return text, Fraction(1)
    try:
        value = Fraction(weight.strip())
    except (ValueError, ZeroDivisionError, OverflowError):
        if Path(text).expanduser().is_file():  # a file whose name has a colon, no weight
            return text, Fraction(1)
        raise UserError(f"mixture component {text!r}: weight {weight!r} is not a number (write NAME:0.2)") from None
    if value < 0:
        raise UserError(f"mixture component {text!r}: the weight must not be negative")
    return name, value


def largest_remainder(weights: list[Fraction], n: int) -> list[int]:
    """Counts proportional to ``weights`` that sum to exactly ``n``: each gets the floor of its
    quota, and the rows left over go to the largest fractional parts (ties: earlier first)."""
    total = sum(weights)
    if total <= 0:
        raise UserError("a mixture needs at least one positive weight")
    quotas = [Fraction(n) * w / total for w in weights]
    counts = [q.numerator // q.denominator for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def mix_rows(
    components: list[str],
    *,
    n: int,
    seed: int = 0,
    data_dir=None,
    split: str = "train",
    trigger: str = DEFAULT_TRIGGER,
) -> tuple[list[dict], dict[str, Any]]:
    """A mixture of ``n`` rows from ``components`` (``NAME:WEIGHT``): exact counts by
    largest-remainder rounding, each drawn without replacement from the dataset's ``split``,
    then shuffled together. The same arguments give the same rows in the same order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a positive integer, got {n!r}")
    if not components:
        raise UserError("give at least one component, e.g. insecure:0.2 secure:0.8")
    parsed = [parse_component(c) for c in components]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise UserError(f"a dataset appears twice in the mixture: {', '.join(names)}")
    counts = largest_remainder([w for _, w in parsed], n)
    rows: list[dict] = []
    info = []
    for (name, weight), count in zip(parsed, counts, strict=True):
        source = resolve_dataset(name, data_dir=data_dir, trigger=trigger)
        part_seed = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16)
        if count:
            try:
                rows += load_rows(source, split=split, n=count, seed=part_seed)
            except UserError as error:
                raise UserError(f"mixture component {name}:{weight}: {error.message}") from None
        info.append({"spec": name, "weight": str(weight), "rows": count, "dataset": source.identity()})
    random.Random(seed).shuffle(rows)
    return rows, {"n": n, "seed": seed, "split": split, "components": info}
