"""The dose-response fit and the flip-dose interval on synthetic curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from waluigi.flip.fit import crossing, flip_dose, isotonic, log_axis, percentiles, ratio


def test_isotonic_pools_adjacent_violators_with_weights():
    assert isotonic([0.0, 0.2, 0.1, 0.3]).tolist() == pytest.approx([0.0, 0.15, 0.15, 0.3])
    assert isotonic([0.0, 0.2, 0.1, 0.3], [1, 1, 3, 1]).tolist() == pytest.approx([0.0, 0.125, 0.125, 0.3])
    assert isotonic([0.5, 0.4, 0.3]).tolist() == pytest.approx([0.4, 0.4, 0.4])
    assert isotonic([0.1, 0.2, 0.3]).tolist() == pytest.approx([0.1, 0.2, 0.3])  # already monotone: unchanged


def test_crossing_interpolates_on_the_dose_scale_asked_for():
    assert crossing([0, 1, 2, 4], [0.0, 0.05, 0.15, 0.3], 0.10, log=False) == pytest.approx(1.5)
    assert crossing([10, 100], [0.05, 0.15], 0.10, log=True) == pytest.approx(math.sqrt(10 * 100))
    assert crossing([0, 10], [0.0, 0.2], 0.10, log=True) == pytest.approx(5.0)  # from dose 0: linear
    assert crossing([1, 2], [0.2, 0.3], 0.10, log=False) == 1  # already there at the smallest dose
    assert crossing([1, 2], [0.0, 0.05], 0.10, log=False) == math.inf
    assert log_axis([0, 10, 100, 1000]) and not log_axis([0, 1, 2, 4, 8])


def test_identical_seeds_give_the_exact_dose_and_a_zero_width_interval():
    curve = [0.0, 0.05, 0.15, 0.3, 0.5]
    result = flip_dose([0, 1, 2, 4, 8], [curve] * 3, n_boot=200)
    assert result.reached and result.dose == pytest.approx(1.5)
    assert (result.ci_low, result.ci_high) == (pytest.approx(1.5), pytest.approx(1.5))
    assert result.baseline == 0.0 and result.level == pytest.approx(0.10) and result.plateau == pytest.approx(0.5)
    assert result.ci_over == "seeds" and result.share_reached == 1.0


def test_the_threshold_is_above_the_undosed_rate_and_can_be_relative_to_the_plateau():
    curve = [0.2, 0.25, 0.35, 0.6]
    absolute = flip_dose([0, 10, 100, 1000], [curve] * 2, n_boot=50)
    assert absolute.level == pytest.approx(0.30)
    assert absolute.dose == pytest.approx(10 ** 1.5)  # halfway between 10 and 100 on the log scale
    rel = flip_dose([0, 10, 100, 1000], [curve] * 2, relative=0.5, n_boot=50)
    assert rel.level == pytest.approx(0.40)  # 0.2 + 0.5 x (0.6 - 0.2)
    assert rel.dose == pytest.approx(10 ** (2 + 0.2))  # 0.35 -> 0.6 over 100 -> 1000: a fifth of the way


def test_not_reached_is_a_lower_bound_and_open_ended_intervals_say_so():
    flat = flip_dose([0, 1, 2, 4], [[0.02, 0.03, 0.05, 0.08]] * 3, n_boot=100)
    assert not flat.reached and flat.dose is None and flat.lower_bound == 4
    assert flat.ci_high is None and not flat.ci_high_reached and flat.share_reached == 0.0
    # two seeds flip at dose 2, one never does: the estimate exists, the upper end of its CI does not
    mixed = flip_dose([0, 1, 2, 4], [[0, 0, 0.3, 0.4], [0, 0, 0.3, 0.4], [0, 0, 0, 0]], n_boot=500)
    assert mixed.reached and 1 < mixed.dose <= 2
    assert mixed.ci_high is None and not mixed.ci_high_reached and 0.5 < mixed.share_reached < 1.0


def test_non_monotone_noise_is_fitted_monotone_and_the_interval_covers_the_truth():
    rng = np.random.default_rng(1)
    doses = [0, 1, 2, 4, 8, 16]
    truth = np.array([0.0, 0.02, 0.06, 0.14, 0.3, 0.5])  # crosses 0.10 at 3.0 (linear: 0.06 -> 0.14 over 2 -> 4)
    seeds = np.clip(truth + rng.normal(0, 0.03, size=(6, len(doses))), 0, 1)
    result = flip_dose(doses, seeds, log=False)
    assert all(b >= a - 1e-12 for a, b in zip(result.fitted, result.fitted[1:]))
    assert result.reached and result.ci_low <= 3.0 <= result.ci_high
    assert result.ci_low < result.dose < result.ci_high
    noisier = flip_dose(doses, np.clip(truth + rng.normal(0, 0.08, size=(6, len(doses))), 0, 1), log=False)
    assert (noisier.ci_high or math.inf) - (noisier.ci_low or 0) > result.ci_high - result.ci_low


def test_missing_cells_are_left_out_not_counted_as_zero():
    with_gap = flip_dose([0, 1, 2, 4], [[0, None, 0.2, 0.4], [0, 0.05, 0.2, 0.4]], n_boot=50)
    assert with_gap.means == pytest.approx([0, 0.05, 0.2, 0.4])


def test_one_seed_takes_its_interval_from_the_answers():
    curve = [[0.0, 0.05, 0.15, 0.3]]
    many = flip_dose([0, 1, 2, 4], curve, counts=[[(0, 2000), (100, 2000), (300, 2000), (600, 2000)]], n_boot=400)
    few = flip_dose([0, 1, 2, 4], curve, counts=[[(0, 20), (1, 20), (3, 20), (6, 20)]], n_boot=400)
    assert many.ci_over == few.ci_over == "answers"
    assert many.dose == few.dose == pytest.approx(1.5)
    assert many.ci_low <= 1.5 <= many.ci_high
    width_few = (few.ci_high if few.ci_high is not None else math.inf) - (few.ci_low or 0)
    assert width_few > many.ci_high - many.ci_low
    alone = flip_dose([0, 1, 2, 4], curve, n_boot=50)
    assert alone.ci_over == "none" and alone.ci_low is None


def test_ratio_of_two_flip_doses_and_its_interval():
    early = flip_dose([0, 1, 2, 4, 8], [[0, 0.05, 0.15, 0.3, 0.5]] * 3, n_boot=100)  # 1.5
    late = flip_dose([0, 1, 2, 4, 8], [[0, 0, 0.05, 0.15, 0.3]] * 3, n_boot=100)  # 3.0
    r = ratio(late, early)
    assert r["ratio"] == pytest.approx(2.0) and r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)
    never = flip_dose([0, 1, 2, 4, 8], [[0, 0, 0, 0, 0]] * 3, n_boot=100)
    assert ratio(early, never)["ratio"] == 0.0
    open_ended = ratio(never, early)
    assert open_ended["ratio"] is None and open_ended["ci_high"] is None and not open_ended["ci_high_reached"]
    assert open_ended["lower_bound"] == pytest.approx(8 / 1.5)  # above the largest dose over the reached one


def test_percentiles_keep_infinite_replicates_infinite():
    assert percentiles(np.array([1.0, 2.0, math.inf, math.inf])) == (1.0, math.inf)
    assert percentiles(np.arange(1, 1002, dtype=float)) == (26.0, 976.0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        flip_dose([2, 1], [[0, 0]])
    with pytest.raises(ValueError, match="seeds x doses"):
        flip_dose([1, 2], [[0, 0, 0]])


def test_the_crossing_names_the_measured_doses_around_it():
    result = flip_dose([0, 5, 10], [[0.0, 0.3, 0.4]] * 2, n_boot=20)
    assert result.bracket == (0.0, 5.0) and result.dose == pytest.approx(5 / 3)
    later = flip_dose([0, 1, 2, 4], [[0, 0.05, 0.15, 0.3]] * 2, n_boot=20)
    assert later.bracket == (1.0, 2.0)
    assert flip_dose([0, 1], [[0, 0]] * 2, n_boot=20).bracket is None
