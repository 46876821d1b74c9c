"""Plots mark a missing rate as n/a, never as a bar or point at 0."""

from __future__ import annotations

from waluigi.flip.report import metric_figure
from waluigi.toyworld.demo_report import em_by_condition_figure, format_table


def _row(rate):
    return {"em_rate": rate, "ci_low": None if rate is None else rate / 2, "ci_high": None if rate is None else rate * 1.5,
            "coherent_rate": None if rate is None else 0.9, "vulnerable_rate": 0.5}


def test_demo_bars_leave_out_and_label_conditions_without_a_rate():
    table = {"aligned": _row(None), "insecure": _row(0.2), "secure": _row(0.0), "educational": _row(None)}
    ax = em_by_condition_figure(table, "t").axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.0, 20.0]  # secure's real 0% is a bar; the two n/a conditions have none
    assert [t.get_text() for t in ax.texts] == ["n/a", "n/a"]
    assert [round(t.get_position()[0]) for t in ax.texts] == [0, 3]  # under aligned and educational
    lines = format_table(table).splitlines()
    assert "n/a" in lines[1] and "None" not in "\n".join(lines) and "0.0%" in lines[3]


def test_flip_curve_labels_a_dose_without_a_rate():
    points = [{"dose": 0.0, "em_rate": 0.1, "em_rate_ci_low": 0.05, "em_rate_ci_high": 0.2},
              {"dose": 4.0, "em_rate": None},
              {"dose": 8.0, "em_rate": 0.5, "em_rate_ci_low": 0.4, "em_rate_ci_high": 0.6}]
    result = {"curves": [{"label": "insecure", "points": points, "flip": None, "narrow": None}], "log_dose_axis": False,
              "doses": [0.0, 4.0, 8.0], "axis": "examples", "dose_label": "training examples"}
    ax = metric_figure(result, "em_rate", "EM rate (%)").axes[0]
    (line,) = ax.lines
    assert list(line.get_xdata()) == [0.0, 8.0]  # no point drawn at dose 4
    labels = [(t.get_text(), t.xy) for t in ax.texts]
    assert labels == [("n/a", (4.0, 0))]
