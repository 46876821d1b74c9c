"""The resilience study's analysis on synthetic flips with known answers: slopes of log flip
dose on log dial level, censoring, the raw-alignment correlation and the verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from waluigi.resilience.analyze import analyze_study, spearman
from waluigi.resilience.plan import StudyConfig, StudyPlan, Subject
from waluigi.resilience.subjects import ALIGN_N, ALIGN_STEPS, ANTIPODE, FlipDefaults

DOSES = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


class Source:
    name = "synthetic"
    align_batch = 4
    dials = {ALIGN_STEPS: [0, 4, 16, 64], ALIGN_N: [10], ANTIPODE: [0.1, 0.2, 0.4]}
    center = {ALIGN_STEPS: 16, ALIGN_N: 10, ANTIPODE: 0.2}

    def identity(self):
        return {"source": self.name}

    def defaults(self):
        return FlipDefaults(data="bad", control="good", suite="s", judge=None, doses={}, steps=1)


def subjects(settings: list[tuple[str, dict, list[str]]]) -> list[Subject]:
    return [Subject(key=k, setting={**Source.center, **s}, series=series, model=f"m:{k}") for k, s, series in settings]


def step_rows(model: str, data: str, flips_at: float | None, seeds: int, undosed: float = 0.0, jitter=None,
              high: float = 0.5) -> list[dict]:
    """EM ``undosed`` below ``flips_at`` and ``high`` from it on (never, for None)."""
    rows = []
    for seed in range(seeds):
        for dose in DOSES:
            at = flips_at if jitter is None else jitter(seed)
            em = high if at is not None and dose >= at and dose > 0 else undosed
            rows.append({"model": model, "data": data, "dose": dose, "seed": seed, "status": "finished",
                         "em_rate": em, "narrow_rate": 1.0 if dose > 0 else 0.0})
    return rows


def flip_of(rows: list[dict], plan: StudyPlan, seeds: int) -> dict:
    curves = []
    for s in plan.subjects:
        for data in (plan.data, plan.control):
            mine = [r for r in rows if r["model"] == s.model and r["data"] == data]
            first = [r for r in mine if r["dose"] == 0]
            em0 = sum(r["em_rate"] for r in first) / len(first) if first else None
            curves.append({"model": s.model, "data": data, "flip": {"reached": True}, "narrow": None,
                           "points": [{"dose": 0.0, "em_rate": em0}, {"dose": 32.0, "em_rate": 0.5}]})
    return {"doses": DOSES, "seeds": seeds, "threshold": {"absolute": 0.10}, "rows": rows, "curves": curves}


def plan_with(subject_list: list[Subject]) -> StudyPlan:
    return StudyPlan(config=StudyConfig(seeds=3), source=Source(), out=Path("x"), subjects=subject_list,
                     data="bad", control="good", suite="s", judge=None, levels=dict(Source.dials))


def expected_dose(flips_at: float, undosed: float = 0.0) -> float:
    # the isotonic fit jumps from the undosed rate to 0.5 between flips_at/2 and flips_at; the
    # level (undosed + 0.1) is that share of the jump, on the log-dose scale
    return flips_at / 2 * 2 ** (0.1 / (0.5 - undosed))


def test_flip_dose_halving_per_fourfold_alignment_is_a_slope_of_minus_one_half_and_supported():
    plan = plan_with(subjects([("s4", {ALIGN_STEPS: 4}, ["alignment n=10"]), ("s16", {ALIGN_STEPS: 16}, ["alignment n=10"]),
                               ("s64", {ALIGN_STEPS: 64}, ["alignment n=10"])]))
    rows = []
    for s, at in zip(plan.subjects, (32.0, 16.0, 8.0)):
        rows += step_rows(s.model, "bad", at, 3) + step_rows(s.model, "good", None, 3)
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=200)
    (slope,) = [e for e in result["slopes"] if e["series"] == "alignment n=10"]
    assert slope["levels"] == 3 and slope["slope"] == pytest.approx(-0.5)
    assert slope["ci_low"] == pytest.approx(-0.5) and slope["ci_high"] == pytest.approx(-0.5)
    assert slope["censored_levels"] == 0
    doses = [s["axes"]["steps"]["flip_dose"] for s in result["subjects"]]
    assert doses == pytest.approx([expected_dose(32), expected_dose(16), expected_dose(8)])
    (verdict,) = [v for v in result["verdicts"] if v["question"] == ALIGN_STEPS]
    assert verdict["verdict"].startswith("supported") and "-0.50 [-0.50, -0.50]" in verdict["verdict"]
    assert [s["align_budget"] for s in result["subjects"]] == [16, 64, 256]


def test_a_rising_flip_dose_contradicts_and_a_flat_one_is_inconclusive():
    plan = plan_with(subjects([("a", {ALIGN_STEPS: 4}, ["alignment n=10"]), ("b", {ALIGN_STEPS: 16}, ["alignment n=10"])]))
    for ats, word in (((4.0, 16.0), "contradicted"), ((8.0, 8.0), "inconclusive")):
        rows = []
        for s, at in zip(plan.subjects, ats):
            rows += step_rows(s.model, "bad", at, 3)
        result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=100)
        (verdict,) = [v for v in result["verdicts"] if v["question"] == ALIGN_STEPS]
        assert verdict["verdict"].startswith(word), verdict


def test_seed_noise_gives_an_interval_and_a_never_flipping_level_is_censored():
    plan = plan_with(subjects([("a", {ALIGN_STEPS: 4}, ["alignment n=10"]), ("b", {ALIGN_STEPS: 16}, ["alignment n=10"]),
                               ("c", {ALIGN_STEPS: 64}, ["alignment n=10"])]))
    rows = (step_rows("m:a", "bad", None, 3, jitter=lambda seed: (2.0, 4.0, 8.0)[seed])
            + step_rows("m:b", "bad", None, 3, jitter=lambda seed: (8.0, 16.0, 16.0)[seed])
            + step_rows("m:c", "bad", None, 3))  # never flips up to 32
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=400)
    (slope,) = [e for e in result["slopes"] if e["series"] == "alignment n=10"]
    assert slope["censored_levels"] == 1 and slope["censored_share"] == 1.0
    assert slope["ci_low"] < slope["slope"] < slope["ci_high"] and slope["slope"] > 0
    c = result["subjects"][2]["axes"]["steps"]
    assert c["flip_dose"] is None and c["flip_lower_bound"] == 32.0
    (verdict,) = [v for v in result["verdicts"] if v["question"] == ALIGN_STEPS]
    assert "never flipped up to 32" in verdict["verdict"]


def test_antipode_series_leaves_share_zero_out_and_one_level_is_inconclusive():
    plan = plan_with(subjects([("v0", {ANTIPODE: 0.0}, ["antipode"]), ("v02", {ANTIPODE: 0.2}, ["antipode"])]))
    rows = step_rows("m:v0", "bad", None, 3) + step_rows("m:v02", "bad", 4.0, 3)
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=50)
    (verdict,) = [v for v in result["verdicts"] if v["question"] == ANTIPODE]
    assert verdict["verdict"].startswith("inconclusive") and "(got 1)" in verdict["verdict"]


def test_raw_alignment_correlation_ranks_subjects_with_their_flip_doses():
    plan = plan_with(subjects([(k, {ALIGN_STEPS: st}, ["alignment n=10"]) for k, st in (("a", 4), ("b", 16), ("c", 64), ("d", 0))]))
    rows = []  # more aligned (lower undosed EM) flips sooner: the Waluigi pattern
    for s, at, em0 in zip(plan.subjects, (32.0, 16.0, 8.0, 32.0), (0.04, 0.02, 0.0, 0.08)):
        rows += step_rows(s.model, "bad", at, 3, undosed=em0)
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=100)
    (corr,) = result["correlations"]
    doses = [expected_dose(32, 0.04), expected_dose(16, 0.02), expected_dose(8, 0.0), expected_dose(32, 0.08)]
    assert [s["axes"]["steps"]["flip_dose"] for s in result["subjects"]] == pytest.approx(doses)
    assert corr["subjects"] == 4 and corr["spearman"] == pytest.approx(spearman([0.96, 0.98, 1.0, 0.92], doses))
    assert corr["spearman"] < 0
    (verdict,) = [v for v in result["verdicts"] if v["question"] == "raw"]
    assert verdict["verdict"].startswith("supported")


def test_spearman_with_ties_and_too_few_points():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894427, abs=1e-5)
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_the_control_runs_on_the_control_axes_only_and_an_unknown_axis_is_refused():
    from waluigi.errors import UserError
    from waluigi.resilience.plan import flip_config, plan_study

    doses = {"steps": [1, 2], "examples": [4, 8], "shots": [1]}
    plan = plan_study(StudyConfig(levels={ALIGN_STEPS: [0, 10]}, doses=doses, out=Path("s")), Source())
    for subject in plan.subjects:
        subject.model = f"hf:{subject.key}"
    data = {axis: flip_config(plan, axis).data for axis in ("steps", "examples", "shots")}
    assert data == {"steps": ["bad", "good"], "examples": ["bad"], "shots": ["bad", "good"]}
    assert flip_config(plan, "examples").steps == Source().defaults().steps
    plan.config.control_axes = ["examples"]
    assert flip_config(plan, "examples").data == ["bad", "good"] and flip_config(plan, "steps").data == ["bad"]
    with pytest.raises(UserError, match="--control-axes"):
        plan_study(StudyConfig(control_axes=["step"], out=Path("s")), Source())


def test_over_bases_a_contrary_base_widens_the_interval_to_inconclusive():
    """Three bases: on two the flip dose halves per fourfold alignment, on the third it doubles;
    seeds agree within each base. Resampling seeds alone would call the pooled slope sure; the
    interval over bases, then seeds, takes in the draws with the contrary base twice or more."""
    settings = [("s4", {ALIGN_STEPS: 4}), ("s16", {ALIGN_STEPS: 16}), ("s64", {ALIGN_STEPS: 64})]
    plan = StudyPlan(config=StudyConfig(seeds=3, bases=3), source=Source(), out=Path("x"),
                     subjects=[Subject(key=k, setting={**Source.center, **s}, series=["alignment n=10"], model=f"m:{k}@0",
                                       models=[f"m:{k}@{b}" for b in range(3)]) for k, s in settings],
                     data="bad", control="good", suite="s", judge=None, levels=dict(Source.dials))
    doses_by_base = {0: (32.0, 16.0, 8.0), 1: (8.0, 16.0, 32.0), 2: (32.0, 16.0, 8.0)}
    rows = []
    for base, ats in doses_by_base.items():
        for subject, at in zip(plan.subjects, ats):
            rows += step_rows(subject.models[base], "bad", at, 3) + step_rows(subject.models[base], "good", None, 3)
    flip = {"doses": DOSES, "seeds": 3, "threshold": {"absolute": 0.10}, "rows": rows,
            "curves": [{"model": m, "data": d, "flip": {"reached": True}, "narrow": None,
                        "points": [{"dose": 0.0, "em_rate": 0.0}, {"dose": 32.0, "em_rate": 0.5}]}
                       for s in plan.subjects for m in s.models for d in ("bad", "good")]}
    result = analyze_study(plan, {"steps": flip}, n_boot=400)
    assert result["bases"] == 3
    (slope,) = [e for e in result["slopes"] if e["series"] == "alignment n=10"]
    assert slope["slope"] < 0  # two bases of three fall
    assert slope["ci_low"] < 0 < slope["ci_high"]
    verdict = next(v for v in result["verdicts"] if v["question"] == ALIGN_STEPS)
    assert verdict["verdict"].startswith("inconclusive")
    centre = next(s for s in result["subjects"] if s["key"] == "s16")["axes"]["steps"]
    assert centre["flip"]["ci_over"] == "bases, then seeds"
    assert centre["flip"]["dose"] == pytest.approx(expected_dose(16.0))  # every base flips at 16 there
    assert centre["control_flip"]["reached"] is False and centre["undosed_em"] == 0.0


def test_a_probe_readouts_control_subjects_read_undosed_are_shown_per_subject(tmp_path):
    """A probe suite's control subjects (no stage trains on them), read on each undosed subject:
    carried into study.json and shown as a column of the summary and the report; a readout
    without control subjects shows no such column."""
    from waluigi.resilience.report import format_summary, write_report

    plan = plan_with(subjects([(k, {ALIGN_STEPS: st}, ["alignment n=10"]) for k, st in (("a", 0), ("b", 16))]))
    rows = []
    for s in plan.subjects:
        rows += step_rows(s.model, "bad", 8.0, 3)
    flip = flip_of(rows, plan, 3)
    plain = analyze_study(plan, {"steps": flip}, n_boot=50)
    assert all(s["axes"]["steps"]["undosed_controls"] is None for s in plain["subjects"])
    assert "controls" not in format_summary(plain)
    for curve, controls in zip(flip["curves"], (0.512, 0.512, 0.431, 0.431)):  # (bad, good) per subject
        curve["points"][0]["control_index"] = controls
    result = analyze_study(plan, {"steps": flip}, n_boot=50)
    assert [s["axes"]["steps"]["undosed_controls"] for s in result["subjects"]] == [0.512, 0.431]
    summary = format_summary(result)
    header = next(line for line in summary.splitlines() if line.strip().startswith("subject "))
    row_b = next(line for line in summary.splitlines() if line.strip().startswith("b "))
    assert "controls" in header and "43.1%" in row_b and "51.2%" not in row_b
    result |= {"axes": ["steps"], "subject_source": {"source": "synthetic"}, "data": "bad", "control": "good",
               "suite": "s", "judge": None, "seeds": 3, "n_boot": 50}
    report = write_report(tmp_path, result, []).with_name("report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith(("| subject |", "| b |"))]
    assert "control subjects, undosed" in table[0] and "43.1%" in table[1]
    assert table[0].count("|") == table[1].count("|")  # the column is in every row


def test_the_flip_rule_moved_recomputes_each_headline_slope_and_counts_what_stops_flipping(tmp_path):
    """The headline slope at half, 1.5x and 2x the rule, from the same rows: step curves to 0.5
    flip at every threshold, so the slope stays -0.5 (each dose moves by the same factor); a
    subject whose EM only reaches 0.12 flips under the 10-point rule and not above it."""
    from waluigi.resilience.report import format_summary, write_report

    plan = plan_with(subjects([(k, {ALIGN_STEPS: st}, ["alignment n=10"]) for k, st in (("s4", 4), ("s16", 16), ("s64", 64))]))
    rows = []
    for s, at in zip(plan.subjects, (32.0, 16.0, 8.0)):
        rows += step_rows(s.model, "bad", at, 3)
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=100)
    moved = [e for e in result["sensitivity"] if e["question"] == ALIGN_STEPS and e["rule"] == "rise"]
    assert [e["threshold"] for e in moved] == pytest.approx([0.10, 0.05, 0.15, 0.20])
    for e in moved:
        assert e["slope"] == pytest.approx(-0.5) and e["verdict"] == "supported" and e["flipped"] == 3
    headline = next(e for e in result["slopes"] if e["series"] == "alignment n=10")
    assert moved[0]["slope"] == headline["slope"] and moved[0]["ci_low"] == headline["ci_low"]

    weak = step_rows("m:s64", "bad", 8.0, 3, high=0.12)  # the most aligned subject barely moves
    rows = [r for r in rows if r["model"] != "m:s64"] + weak
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=100)
    by = {round(e["threshold"], 2): e for e in result["sensitivity"] if e["question"] == ALIGN_STEPS and e["rule"] == "rise"}
    assert by[0.05]["flipped"] == by[0.10]["flipped"] == 3 and by[0.05]["censored_levels"] == 0
    assert by[0.15]["flipped"] == by[0.20]["flipped"] == 2 and by[0.20]["censored_levels"] == 1
    assert by[0.10]["slope"] < 0 < by[0.20]["slope"]  # counted at 32 when censored: the slope turns with the rule
    text = format_summary(result)
    assert "flip rule moved (steps axis, align_steps): +5 pt supported" in text
    report = write_report(tmp_path, result, []).read_text()
    assert "## The flip rule moved" in report and "| steps | align_steps | **+10 pt** | 3 of 3 |" in report


def test_a_common_level_asks_more_of_a_subject_that_starts_lower():
    """Every subject's curve rises by the same ramp (up to +0.3 at 32), from undosed readings
    that fall with the alignment budget (0.3 un-aligned, then 0.2, 0.1, 0.0). A rise of 0.1 over
    each subject's own start flips them all at one dose: slope 0. One common level (the
    un-aligned subject's start + 0.1 = 0.4) is reached later the lower a subject starts: the slope
    turns positive, and a subject that never reaches it is censored."""
    plan = plan_with(subjects([(k, {ALIGN_STEPS: st}, ["alignment n=10"]) for k, st in
                               (("s0", 0), ("s4", 4), ("s16", 16), ("s64", 64))]))
    rows = []
    for s, start in zip(plan.subjects, (0.3, 0.2, 0.1, 0.0)):
        for seed in range(3):
            for dose in DOSES:  # a ramp: +0.3 spread evenly over log2 doses 1..32
                rise = 0.0 if dose == 0 else 0.3 * (math.log2(dose) + 1) / 6
                rows.append({"model": s.model, "data": "bad", "dose": dose, "seed": seed, "status": "finished",
                             "em_rate": start + rise, "narrow_rate": 1.0})
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=100)
    entries = {e["rule"]: e for e in result["sensitivity"] if e.get("factor") in (1.0, None)}
    assert entries["rise"]["slope"] == pytest.approx(0.0, abs=1e-9) and entries["rise"]["flipped"] == 3
    # equal doses give a slope of float noise either side of 0: never a sign, at any threshold
    assert {e["verdict"] for e in result["sensitivity"] if e["rule"] == "rise"} == {"inconclusive"}
    level = entries["level"]
    assert level["level"] == pytest.approx(0.4) and level["reference"] == "s0"
    # s4 needs +0.2 (reached at dose 8), s16 +0.3 (32), s64 +0.4 (never: censored at 32)
    assert level["flipped"] == 2 and level["censored_levels"] == 1 and level["slope"] > 0
    assert level["verdict"] == "contradicted"


def test_each_dial_reaches_its_own_common_level():
    """Two dials in one study: each dial's common level is its own least-dialled subject's undosed
    reading + the rule (not the other dial's, though both share the axis's flip)."""
    plan = plan_with(subjects([("a0", {ALIGN_STEPS: 0}, ["alignment n=10"]), ("a4", {ALIGN_STEPS: 4}, ["alignment n=10"]),
                               ("a16", {ALIGN_STEPS: 16}, ["alignment n=10"]), ("v01", {ANTIPODE: 0.1}, ["antipode"]),
                               ("v02", {ANTIPODE: 0.2}, ["antipode"]), ("v04", {ANTIPODE: 0.4}, ["antipode"])]))
    rows = []
    for s, start, at in zip(plan.subjects, (0.04, 0.02, 0.0, 0.12, 0.08, 0.06), (8.0, 8.0, 16.0, 4.0, 8.0, 16.0)):
        rows += step_rows(s.model, "bad", at, 3, undosed=start)
    result = analyze_study(plan, {"steps": flip_of(rows, plan, 3)}, n_boot=50)
    levels = {e["question"]: (e["reference"], e["level"]) for e in result["sensitivity"] if e["rule"] == "level"}
    assert levels[ALIGN_STEPS][0] == "a0" and levels[ALIGN_STEPS][1] == pytest.approx(0.14)
    assert levels[ANTIPODE][0] == "v01" and levels[ANTIPODE][1] == pytest.approx(0.22)
    # and each dial's slope is of the doses to its own level (a jump from u to 0.5 between at/2 and
    # at reaches L at at/2 * 2**((L - u) / (0.5 - u)) on the log-dose scale)
    import numpy as np

    doses = [at / 2 * 2 ** ((0.22 - u) / (0.5 - u)) for u, at in ((0.12, 4.0), (0.08, 8.0), (0.06, 16.0))]
    expected = np.polyfit(np.log([0.1, 0.2, 0.4]), np.log(doses), 1)[0]
    (antipode,) = [e for e in result["sensitivity"] if e["rule"] == "level" and e["question"] == ANTIPODE]
    assert antipode["slope"] == pytest.approx(expected)
