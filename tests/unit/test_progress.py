"""Progress on stderr when it is not a terminal: plain lines (``waluigi.progress``)."""

from __future__ import annotations

import pytest

from waluigi.progress import format_duration, progress_bar, progress_interval, progress_task, quiet_wait


def test_format_duration():
    assert [format_duration(s) for s in (0, 4.6, 59, 60, 70, 125, 3599, 3600, 7500)] == [
        "0s", "5s", "59s", "1m00s", "1m10s", "2m05s", "59m59s", "1h00m", "2h05m"]


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("WALUIGI_PROGRESS_INTERVAL", raising=False)
    assert progress_interval() == 10.0
    for raw, value in (("0", 0.0), ("2.5", 2.5), ("nonsense", 10.0), ("-1", 10.0), ("", 10.0)):
        monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", raw)
        assert progress_interval() == value, raw


def test_plain_lines_with_counts_fields_and_an_end(monkeypatch, capsys):
    monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", "0")
    with progress_bar("finetune step", 4, initial=1) as advance:
        advance(1, loss=0.74123)
        advance(2, loss=0.5)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "finetune step 1/4"
    assert lines[1].startswith("finetune step 2/4 loss 0.7412 eta ")
    assert lines[2].startswith("finetune step 4/4 loss 0.5 eta ")
    assert lines[3].startswith("finetune step 4/4 loss 0.5 done in ")
    assert len(lines) == 4


def test_disabled_or_empty_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", "0")
    with progress_bar("x", 3, enabled=False) as advance:
        advance(3)
    with progress_bar("x", 0) as advance:
        advance()
    assert capsys.readouterr().err == ""


def test_unknown_total_bytes_and_an_error(monkeypatch, capsys):
    monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", "0")
    with progress_task("job-1: queued", None, eta=False) as bar:
        bar.update(description="job-1: running, loss 0.300", completed=3, total=10)
    with progress_task("download f", 3 * 2**20, unit="bytes") as advance:
        advance(2**20)
    with pytest.raises(RuntimeError):
        with progress_bar("work", 5) as advance:
            advance(2)
            raise RuntimeError("boom")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["job-1: queued 0/?", "job-1: running, loss 0.300 3/10"]
    assert lines[3] == "download f 0.0/3.0 MiB" and lines[4].startswith("download f 1.0/3.0 MiB eta ")
    assert lines[-1].startswith("work 2/5 stopped after ")


def test_quiet_lines_come_less_often_up_to_a_cap():
    assert [quiet_wait(10, n) for n in range(6)] == [10, 20, 40, 60, 60, 60]
    assert quiet_wait(0.5, 100) == 3.0


def test_a_long_wait_with_nothing_new_is_a_few_heartbeats_not_one_per_interval(monkeypatch, capsys):
    """Nothing advances for 40 intervals: the doubling wait leaves far fewer lines than 40,
    and they still come (the job does not look dead)."""
    import time

    monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", "0.02")
    with progress_bar("sweep flip", 10):
        time.sleep(0.8)
    lines = capsys.readouterr().err.splitlines()
    ticks = [line for line in lines if line == "sweep flip 0/10"]
    assert 3 <= len(ticks) <= 15, lines  # the start line and the heartbeats; 41 without the back-off
