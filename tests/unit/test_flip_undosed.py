"""The undosed point of a readout without sampling: a probe suite read on a model that no
fine-tune and no drawn shot has touched gives the same number for every seed, so the flip plans
one eval for it and every seed's point reads that one; a sampled suite keeps one per seed."""

from __future__ import annotations

from waluigi.flip.plan import FlipConfig, plan_flip


def _undosed(plan):
    return [(p.seed, p.cell) for p in plan.points if p.dose == 0]


def test_a_probe_readout_reads_the_undosed_model_once_for_every_seed(tmp_path):
    plan = plan_flip(FlipConfig(models=["hf:some/model"], data=["mwe-attack:em", "mwe-control:em"], axis="steps",
                                doses=[5, 10], seeds=3, suite="mwe:em@test", runs=tmp_path))
    undosed = _undosed(plan)
    assert len(undosed) == 6 and len({cell for _, cell in undosed}) == 1  # 2 curves x 3 seeds, one cell
    assert plan.spec["cells"][undosed[0][1]]["seed"] == 0
    dosed = {p.cell for p in plan.points if p.dose > 0}
    assert len(dosed) == 2 * 2 * 3  # the fine-tuned points keep a cell per seed

    # the shots axis: the undosed model once, the drawn shots per seed
    shots = plan_flip(FlipConfig(models=["hf:some/model"], data=["mwe-attack:em"], axis="shots", doses=[2], seeds=3,
                                 suite="mwe:em@test", runs=tmp_path))
    assert len({cell for _, cell in _undosed(shots)}) == 1
    assert len({p.cell for p in shots.points if p.dose > 0}) == 3

    # a sampled, judged suite: every seed samples its own answers, undosed too
    sampled = plan_flip(FlipConfig(models=["hf:some/model"], data=["insecure"], axis="steps", doses=[5], seeds=3,
                                   runs=tmp_path))
    assert len({cell for _, cell in _undosed(sampled)}) == 3
