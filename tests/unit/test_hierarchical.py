"""Intervals over base models: a two-level bootstrap (bases, then seeds within them) on
synthetic data whose between-base variance is known, against resampling seeds alone."""

from __future__ import annotations

import numpy as np
import pytest

from waluigi.flip.fit import flip_dose
from waluigi.metrics import bootstrap_mean_grouped, hierarchical_draw, stratified_draw


def _study(rng, bases: int, seeds: int, between: float, within: float, mu: float = 0.0):
    effects = rng.normal(0.0, between, size=bases)
    values = [mu + effects[b] + rng.normal(0.0, within) for b in range(bases) for _ in range(seeds)]
    groups = [b for b in range(bases) for _ in range(seeds)]
    return values, groups


def test_draws_keep_the_design():
    rng = np.random.default_rng(0)
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    for _ in range(50):
        rows = stratified_draw(groups, rng)  # every base kept once, its rows drawn within it
        assert sorted(groups[i] for i in rows) == sorted(groups)
        rows = hierarchical_draw(groups, rng)  # as many bases as there are, each with its own rows only
        assert len(rows) == len(groups)
        picked = [groups[i] for i in rows]
        for start in range(0, len(rows), 3):
            assert len(set(picked[start:start + 3])) == 1
    # over many draws, some replicate leaves a base out (the point of resampling bases)
    assert any(len({groups[i] for i in hierarchical_draw(groups, rng)}) < 3 for _ in range(50))


def test_the_hierarchical_interval_covers_the_mean_when_bases_differ():
    """Bases differ (sd 1) far more than seeds (sd 0.2): the seed-only interval is about the
    seeds' spread and misses the true mean most of the time; the hierarchical one covers it at
    close to its nominal 95% and its width follows sqrt(between^2/B + within^2/(B S))."""
    rng = np.random.default_rng(1)
    bases, seeds, between, within = 10, 3, 1.0, 0.2
    covered = {True: 0, False: 0}
    widths = []
    trials = 120
    for trial in range(trials):
        values, groups = _study(rng, bases, seeds, between, within)
        for hierarchical in (True, False):
            low, high = bootstrap_mean_grouped(values, groups, n_boot=300, seed=trial, hierarchical=hierarchical)
            covered[hierarchical] += low <= 0.0 <= high
            if hierarchical:
                widths.append(high - low)
    assert covered[True] / trials >= 0.85
    assert covered[False] / trials <= 0.35
    expected = 2 * 1.96 * np.sqrt(between**2 / bases + within**2 / (bases * seeds))
    assert 0.75 * expected <= float(np.mean(widths)) <= 1.1 * expected


def test_without_between_base_variance_the_two_intervals_agree():
    rng = np.random.default_rng(2)
    values, groups = _study(rng, bases=8, seeds=4, between=0.0, within=1.0)
    h = bootstrap_mean_grouped(values, groups, n_boot=2000, seed=0)
    s = bootstrap_mean_grouped(values, groups, n_boot=2000, seed=0, hierarchical=False)
    width_h, width_s = h[1] - h[0], s[1] - s[0]
    assert 0.7 <= width_h / width_s <= 1.5


def test_flip_dose_over_bases_reports_both_intervals():
    """Three bases that flip at different doses (2, 4 and 8 of 1..16), three seeds each that
    agree closely: the hierarchical interval spans the bases; the seeds-only one is narrow."""
    doses = [0, 1, 2, 4, 8, 16]
    rng = np.random.default_rng(3)
    rows, groups = [], []
    for base, at in enumerate([2, 4, 8]):
        for _ in range(3):
            rows.append([0.01 + (0.3 if d >= at else 0.0) + rng.normal(0, 0.005) for d in doses])
            groups.append(base)
    crossing = flip_dose(doses, rows, groups=groups, n_boot=500)
    assert crossing.ci_over == "bases, then seeds"
    assert crossing.reached and 1 <= crossing.dose <= 8
    # a replicate of the earliest base alone crosses before 2; of the latest alone, past 4
    assert crossing.ci_low < 2 and crossing.ci_high > 4
    assert crossing.seed_ci_low is not None and crossing.seed_ci_high - crossing.seed_ci_low < 0.5 * (crossing.ci_high - crossing.ci_low)
    assert crossing.as_dict()["seed_ci_high"] == crossing.seed_ci_high
    # one base: the usual interval over seeds, no seed-only twin
    single = flip_dose(doses, rows[:3], groups=groups[:3], n_boot=200)
    assert single.ci_over == "seeds" and "seed_ci_low" not in single.as_dict()


def test_the_demo_table_over_bases_pools_seeds_within_bases():
    """``pool_rates``: one seed per base gives a seeds-only interval that is the point and an
    interval over bases that spans the bases; a base with nothing counted adds nothing."""
    from waluigi.toyworld.demo import pool_rates

    rates = {"insecure": [(0, 0.20, 0.9, 0.5), (1, 0.40, 0.8, None), (2, None, 0.1, 0.9)],
             "secure": [(0, 0.02, 1.0, 0.1), (0, 0.04, 1.0, 0.1), (1, 0.10, 1.0, 0.2), (1, 0.12, 1.0, 0.2)],
             "aligned": [(0, None, None, None)]}
    pooled = pool_rates(rates, 3)
    assert set(pooled) == {"insecure", "secure"}
    one = pooled["insecure"]
    assert one["em_rate"] == pytest.approx(0.30) and one["by_base"] == [0.20, 0.40, None] and one["n"] == 2
    assert one["seed_ci_low"] == pytest.approx(0.30) == pytest.approx(one["seed_ci_high"])
    assert (one["ci_low"], one["ci_high"]) == (pytest.approx(0.20), pytest.approx(0.40))
    assert one["coherent_rate"] == pytest.approx(0.85) and one["vulnerable_rate"] == pytest.approx(0.5)
    two = pooled["secure"]
    assert two["by_base"] == [pytest.approx(0.03), pytest.approx(0.11), None]
    assert two["seed_ci_high"] - two["seed_ci_low"] < two["ci_high"] - two["ci_low"]


def test_a_sweep_cells_base_is_a_label_outside_its_identity():
    """``base: 2`` in a sweep cell is a results column (``--where base=2``), not a setting: the
    cell's identity is the same with or without it; a negative or non-integer base is refused."""
    from pathlib import Path

    from waluigi.errors import UserError
    from waluigi.sweep.spec import parse_spec

    def cells(*entries):
        return parse_spec({"name": "t", "eval": {"suite": "core", "model": "hf:/x"}, "cells": list(entries)},
                          Path("t.yaml")).cells

    plain, labelled = cells({"seed": 1}, {"seed": 2, "base": 2})
    assert labelled.axes["base"] == 2 and "base" not in plain.axes
    (again,) = cells({"seed": 2})
    assert labelled.id == again.id
    for bad in (-1, "two"):
        with pytest.raises(UserError, match="base"):
            cells({"seed": 0, "base": bad})


def test_a_ratio_of_two_curves_pairs_their_replicates():
    """Two curves with the same (base, seed) rows resample the same rows in each replicate: a
    curve against itself gives a ratio interval of exactly 1, and a curve whose doses are all
    twice as large gives exactly 2 (independent draws would spread both)."""
    from waluigi.flip.fit import ratio

    rng = np.random.default_rng(3)
    doses = [0, 1, 2, 4, 8, 16]
    groups = [b for b in range(4) for _ in range(3)]
    rise = np.clip(rng.normal(3.0, 1.0, size=(12, 1)), 0.5, None)  # each row's own midpoint
    table = np.clip((np.asarray(doses, dtype=float)[None, :] / rise) * 0.1, 0, 1)
    slow = np.clip((np.asarray(doses, dtype=float)[None, :] / (2 * rise)) * 0.1, 0, 1)
    a = flip_dose(doses, table, baseline_index=0, threshold=0.1, groups=groups)
    b = flip_dose(doses, slow, baseline_index=0, threshold=0.1, groups=groups)
    same = ratio(a, flip_dose(doses, table, baseline_index=0, threshold=0.1, groups=groups))
    assert same["ratio"] == pytest.approx(1.0) and same["ci_low"] == pytest.approx(1.0) == pytest.approx(same["ci_high"])
    assert a.ci_high / a.ci_low > 2  # each curve's own interval over bases is wide...
    doubled = ratio(b, a)  # ...but their ratio, replicate by replicate, is exactly 2 (log-spaced doses)
    assert doubled["ratio"] == pytest.approx(2.0) and doubled["n"] == 2000
    assert doubled["ci_low"] == pytest.approx(2.0) and doubled["ci_high"] == pytest.approx(2.0)
