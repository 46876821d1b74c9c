"""One number format for doses and their intervals (``waluigi.formats``)."""

from __future__ import annotations

from waluigi.formats import dose, dose_ci


def test_a_dose_is_whole_or_three_significant_digits_never_an_exponent():
    assert [dose(v) for v in (80, 80.0, 1200, 4.2954, 0.48813, 14.23, 0.05, 123456.0, 1234.5)] == [
        "80", "80", "1200", "4.30", "0.488", "14.2", "0.0500", "123456", "1234"]
    assert dose(None) == "-" and dose(float("nan")) == "-" and dose(float("inf"), missing="n/a") == "n/a"


def test_an_interval_takes_the_precision_of_its_point():
    # the two numbers the issue saw side by side now read alike
    assert dose_ci(4.2954, 4.0560, 4.4840) == "4.30 [4.06, 4.48]"
    assert dose_ci(0.4881, 0.3692, 0.6) == "0.488 [0.369, 0.600]"
    assert dose_ci(80, 64, 96) == "80 [64, 96]"
    assert dose_ci(4, 3.52, 4.48) == "4.00 [3.52, 4.48]"  # a whole point with fractional ends keeps their digits


def test_an_open_or_missing_end_says_so_and_no_dose_is_missing():
    assert dose_ci(12.5, 9.1, None) == "12.5 [9.1, open]"
    assert dose_ci(12.5, 9.1, None, open_end="not reached") == "12.5 [9.1, not reached]"
    assert dose_ci(12.5, None, None) == "12.5"  # no interval at all: no brackets
    assert dose_ci(None, 1.0, 2.0) == "-" and dose_ci(None, None, None, missing="n/a") == "n/a"
