"""Dose-response fits: a monotone curve through per-dose rates, the dose where it crosses a
threshold, and a bootstrap interval for that dose.

The curve is the isotonic (non-decreasing) least-squares fit of the per-dose means, weighted
by how many values each dose has (pool-adjacent-violators). The **flip dose** is where the fit
first reaches the level: the undosed rate plus ``threshold`` (absolute, rate units), or plus
``relative`` x (plateau - undosed) where the plateau is the fit's top. Between two doses the
crossing is interpolated on the log-dose scale when both doses are positive and the axis is
logarithmic, otherwise linearly. A level the fit never reaches is a result: ``reached`` is
False and the dose is only known to be above the largest dose (``lower_bound``).

Intervals come from resampling what varies between repetitions: whole seeds (each seed's
values at every dose together, since one seed's cells share its data and its sampling), or,
with one seed, the answers behind each rate (binomial resampling of ``k`` of ``n``). Each
replicate is refitted and its crossing found; replicates that never reach the level count as
"above the largest dose" (infinite), so an upper bound that is not reached reads as such.
Written here with numpy rather than taken from scipy / scikit-learn: the fit is twenty lines
(pool-adjacent-violators), and neither library is otherwise a dependency of waluigi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BOOT = 2000


def isotonic(values: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    y = np.asarray(values, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(y, w):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            total = w1 + w2
            blocks.append([(m1 * w1 + m2 * w2) / total if total > 0 else (m1 + m2) / 2, total, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks]) if blocks else np.array([])


def log_axis(doses: Sequence[float]) -> bool:
    """Plot and interpolate on a log scale when the positive doses span a factor of 10 or more."""
    positive = [d for d in doses if d > 0]
    return len(positive) >= 2 and max(positive) / min(positive) >= 10


def crossing(doses: Sequence[float], fitted: Sequence[float], level: float, log: bool) -> float:
    """The smallest dose where the (non-decreasing) fit reaches ``level``, interpolated;
    ``inf`` when it never does."""
    for j, value in enumerate(fitted):
        if value >= level - 1e-12:
            if j == 0:
                return float(doses[0])
            d0, d1, f0, f1 = float(doses[j - 1]), float(doses[j]), float(fitted[j - 1]), float(value)
            t = 0.0 if f1 == f0 else (level - f0) / (f1 - f0)
            t = min(max(t, 0.0), 1.0)
            if log and d0 > 0 and d1 > 0:
                return float(math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0))))
            return d0 + t * (d1 - d0)
    return math.inf


@dataclass
class Crossing:
    """A flip (or narrow) dose with its interval; ``boot`` holds the replicates (inf: not reached)."""

    dose: float | None
    reached: bool
    level: float | None
    baseline: float | None
    plateau: float | None
    ci_low: float | None
    ci_high: float | None
    ci_high_reached: bool
    share_reached: float | None  # of the bootstrap replicates
    ci_over: str
    means: list[float | None]
    fitted: list[float | None]
    lower_bound: float | None = None  # not reached: the dose is above this (the largest dose)
    bracket: tuple[float, float] | None = None  # the two measured doses the crossing lies between
    seed_ci_low: float | None = None  # over several bases: the interval over seeds alone (bases kept)
    seed_ci_high: float | None = None
    boot: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dose": self.dose, "reached": self.reached, "lower_bound": self.lower_bound,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_high_reached": self.ci_high_reached,
                "share_reached": self.share_reached, "ci_over": self.ci_over, "level": self.level,
                "baseline": self.baseline, "plateau": self.plateau, "means": self.means, "fitted": self.fitted,
                "bracket": list(self.bracket) if self.bracket else None,
                **({"seed_ci_low": self.seed_ci_low, "seed_ci_high": self.seed_ci_high}
                   if self.ci_over == "bases, then seeds" else {})}


def fit_level(doses: np.ndarray, means: np.ndarray, weights: np.ndarray, baseline_index: int | None,
               threshold: float, relative: float | None, log: bool) -> tuple[float, float | None, float | None, float | None, np.ndarray]:
    """Crossing dose, level, baseline and plateau for one set of per-dose means (nan: no value)."""
    keep = ~np.isnan(means)
    if not keep.any():
        return math.inf, None, None, None, np.full(len(means), np.nan)
    fitted_kept = isotonic(means[keep], weights[keep])
    fitted = np.full(len(means), np.nan)
    fitted[keep] = fitted_kept
    if baseline_index is not None and keep[baseline_index]:
        baseline = float(means[baseline_index])
    else:
        baseline = float(fitted_kept[0])
    plateau = float(fitted_kept.max())
    if relative is not None:
        if plateau - baseline <= 1e-12:
            return math.inf, None, baseline, plateau, fitted
        level = baseline + relative * (plateau - baseline)
    else:
        level = baseline + threshold
    dose = crossing(doses[keep], fitted_kept, level, log)
    return dose, level, baseline, plateau, fitted


def flip_dose(doses: Sequence[float], values: Any, *, counts: Any = None, baseline_index: int | None = 0,
              threshold: float = 0.10, relative: float | None = None, log: bool | None = None,
              n_boot: int = N_BOOT, seed: int = 0, groups: Sequence[Any] | None = None) -> Crossing:
    """The dose where the monotone fit of ``values`` first reaches the threshold, with a 95% CI.

    ``values`` is seeds x doses (nan or None where a cell has no value). ``counts``, optional,
    is seeds x doses of ``(k, n)``: the answers behind each rate, used for the interval when
    there is a single seed. ``baseline_index``: the undosed column (its mean is the baseline),
    or None to take the fit's first value. ``groups``, optional, names each row's base model:
    with two bases or more the interval resamples bases, then seeds within them (hierarchical),
    and ``seed_ci_low`` / ``seed_ci_high`` hold the seeds-only interval (bases kept) beside it."""
    doses_ = np.asarray([float(d) for d in doses])
    order = np.argsort(doses_, kind="stable")
    if not np.all(order == np.arange(len(doses_))):
        raise ValueError("doses must be given in increasing order")
    table = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    if table.ndim != 2 or table.shape[1] != len(doses_):
        raise ValueError(f"values must be seeds x doses ({len(doses_)} doses)")
    log_ = log_axis(doses_) if log is None else log
    with np.errstate(invalid="ignore"):
        present = (~np.isnan(table)).sum(axis=0)
        means = np.where(present > 0, np.nansum(table, axis=0) / np.maximum(present, 1), np.nan)
    dose, level, baseline, plateau, fitted = fit_level(doses_, means, present.astype(float), baseline_index,
                                                        threshold, relative, log_)
    rng = np.random.default_rng(seed)
    seeds = table.shape[0]
    boots: list[float] = []
    ci_over = "seeds"
    within: tuple[float | None, float | None] = (None, None)
    if groups is not None and len(groups) != seeds:
        raise ValueError(f"groups must name every row's base ({seeds} rows)")

    def refit(sample: np.ndarray) -> float:
        got = (~np.isnan(sample)).sum(axis=0)
        with np.errstate(invalid="ignore"):
            m = np.where(got > 0, np.nansum(sample, axis=0) / np.maximum(got, 1), np.nan)
        return fit_level(doses_, m, got.astype(float), baseline_index, threshold, relative, log_)[0]

    if groups is not None and len(set(groups)) >= 2:
        from waluigi.metrics import hierarchical_draw, stratified_draw

        ci_over = "bases, then seeds"
        boots = [refit(table[hierarchical_draw(groups, rng)]) for _ in range(n_boot)]
        seeds_only = np.asarray([refit(table[stratified_draw(groups, rng)]) for _ in range(n_boot)])
        low_s, high_s = percentiles(seeds_only)
        within = (float(low_s) if np.isfinite(low_s) else None, float(high_s) if np.isfinite(high_s) else None)
    elif seeds >= 2:
        boots = [refit(table[rng.integers(0, seeds, size=seeds)]) for _ in range(n_boot)]
    elif counts is not None:
        ci_over = "answers"
        pairs = [(None, None) if c is None else c for c in list(counts)[0]]
        k = np.array([np.nan if p[0] is None else float(p[0]) for p in pairs])
        n = np.array([0 if p[1] is None else int(p[1]) for p in pairs])
        p_hat = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        for _ in range(n_boot):
            draw = np.where(n > 0, rng.binomial(np.maximum(n, 1), np.nan_to_num(p_hat)) / np.maximum(n, 1), np.nan)
            boots.append(fit_level(doses_, draw, (n > 0).astype(float), baseline_index, threshold, relative, log_)[0])
    else:
        ci_over = "none"
    boot = np.asarray(boots, dtype=float)
    ci_low = ci_high = share = None
    high_reached = False
    if boot.size:
        low_q, high_q = percentiles(boot)
        share = float(np.isfinite(boot).mean())
        ci_low = None if not np.isfinite(low_q) else float(low_q)
        high_reached = bool(np.isfinite(high_q))
        ci_high = float(high_q) if high_reached else None
    reached = math.isfinite(dose)
    bracket = None
    if reached:
        above = [d for d in doses_ if d >= dose - 1e-12]
        below = [d for d in doses_ if d < dose - 1e-12]
        bracket = (float(below[-1]) if below else float(above[0]), float(above[0]))
    return Crossing(bracket=bracket, dose=float(dose) if reached else None, reached=reached, level=level, baseline=baseline,
                    plateau=plateau, ci_low=ci_low, ci_high=ci_high, ci_high_reached=high_reached,
                    share_reached=share, ci_over=ci_over, means=_listed(means), fitted=_listed(fitted),
                    lower_bound=None if reached else float(doses_.max()), boot=boot,
                    seed_ci_low=within[0], seed_ci_high=within[1])


def ratio(a: Crossing, b: Crossing) -> dict[str, Any]:
    """``a.dose / b.dose`` with a 95% interval from the two bootstrap sets, replicate by replicate
    (each curve's bootstrap starts from the same seed: curves with the same (base, seed) rows
    resample the same rows in replicate i, so the pair is matched):
    a ratio with an unreached numerator is infinite (an open upper end), one with an unreached
    denominator is 0; replicates where neither is reached are left out."""
    value = None
    if a.reached and b.reached and b.dose:
        value = a.dose / b.dose
    elif a.reached and not b.reached:
        value = 0.0
    # a not reached, b reached: the ratio is only known to exceed a's largest dose over b's dose
    above = a.lower_bound / b.dose if (not a.reached and b.reached and b.dose and a.lower_bound) else None
    out: dict[str, Any] = {"ratio": value, "lower_bound": above, "ci_low": None, "ci_high": None,
                           "ci_high_reached": False, "n": 0}
    if a.boot.size and b.boot.size:
        size = min(a.boot.size, b.boot.size)
        x, y = a.boot[:size], b.boot[:size]
        both = np.isfinite(x) | np.isfinite(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(np.isinf(y), 0.0, x / np.where(y == 0, np.nan, y))[both]
        r = r[~np.isnan(r)]
        if r.size:
            low, high = percentiles(r)
            out.update(ci_low=float(low) if np.isfinite(low) else None, n=int(r.size),
                       ci_high=float(high) if np.isfinite(high) else None, ci_high_reached=bool(np.isfinite(high)))
    return out


def percentiles(samples: np.ndarray, points: tuple[float, float] = (2.5, 97.5)) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of samples that may hold ``inf`` (not reached): nearest
    ranks outward (the lower one rounded down, the upper one up), so that an end falling among
    the infinite replicates is ``inf`` rather than an interpolation towards it."""
    ordered = np.sort(samples)
    last = ordered.size - 1
    low = ordered[int(math.floor(points[0] / 100 * last))]
    high = ordered[int(math.ceil(points[1] / 100 * last))]
    return float(low), float(high)


def _listed(array: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in array]
