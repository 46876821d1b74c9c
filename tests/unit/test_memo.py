"""The memo of a validation pass: each suite, dataset and shot draw loaded once inside it, and
nothing remembered outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from waluigi.memo import memoized, remember

pytestmark = pytest.mark.unit


def test_remember_computes_once_inside_the_block_and_every_time_outside():
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    assert remember("k", compute) == 1 and remember("k", compute) == 2  # outside: no memory
    with memoized():
        assert remember("k", compute) == 3 and remember("k", compute) == 3
        with memoized():  # nested: the same memo
            assert remember("k", compute) == 3
        with pytest.raises(ZeroDivisionError):
            remember("bad", lambda: 1 / 0)
        assert remember("bad", lambda: "then fine") == "then fine"  # an error is not remembered
    assert remember("k", compute) == 4


def test_a_flips_check_loads_its_probe_suite_once_for_all_its_cells(mwe_dir, monkeypatch):
    import waluigi.probes.mwe as mwe
    from waluigi.flip.plan import FlipConfig
    from waluigi.flip.run import check_flip

    loaded = []
    real = mwe.load_subject
    monkeypatch.setattr(mwe, "load_subject", lambda *a, **k: loaded.append(a[0]) or real(*a, **k))
    cfg = FlipConfig(models=["hf:/nowhere/a", "hf:/nowhere/b"], data=["insecure", "secure"], axis="steps",
                     doses=[1, 2, 4], seeds=3, suite="mwe:persona/narcissism:4", out=Path("/nowhere/flip"))
    check_flip(cfg)  # 2 models x 2 datasets x (3 doses x 3 seeds) + undosed cells, every eval checked
    assert loaded == ["persona/narcissism"]
