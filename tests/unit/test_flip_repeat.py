"""A flip on the examples axis at fixed steps repeats its few unique rows by design: its cells
say so (``repeat_ok``), the fine-tune does not warn about it, and the flag leaves every cell's
identity as it was (flip directories made before it resume)."""

from __future__ import annotations

from waluigi.finetune import FinetuneConfig
from waluigi.finetune.train import schedule_warnings
from waluigi.flip.plan import FlipConfig, plan_flip
from waluigi.sweep.spec import parse_spec


def _cells(spec, tmp_path):
    return {c.label(): c for c in parse_spec(spec, tmp_path / "sweep.yaml").cells}


def test_examples_axis_at_fixed_steps_marks_repetition_as_meant_without_changing_identities(tmp_path):
    cfg = FlipConfig(models=["hf:some/model"], data=["insecure"], axis="examples", doses=[2, 64], seeds=1, steps=20,
                     runs=tmp_path)
    plan = plan_flip(cfg)
    assert plan.spec["finetune"]["repeat_ok"] is True
    marked = _cells(plan.spec, tmp_path)
    unmarked_spec = {**plan.spec, "finetune": {k: v for k, v in plan.spec["finetune"].items() if k != "repeat_ok"}}
    unmarked = _cells(unmarked_spec, tmp_path)
    assert marked.keys() == unmarked.keys()
    assert all(marked[k].id == unmarked[k].id and marked[k].finetune_id == unmarked[k].finetune_id for k in marked)
    tuned = [c for c in marked.values() if c.finetune is not None]
    assert tuned and all(c.finetune.get("repeat_ok") is True for c in tuned)

    # the steps axis (and examples held at epochs) trains rows once: nothing to mark
    steps = plan_flip(FlipConfig(models=["hf:some/model"], data=["insecure"], axis="steps", doses=[2, 4], seeds=1,
                                 runs=tmp_path))
    assert "repeat_ok" not in steps.spec.get("finetune", {})


def test_repeat_ok_silences_only_the_repetition_warning():
    common = dict(model="hf:m", data="insecure", preset=None, n=2, batch_size=16, grad_accum=1, max_steps=20)
    plain = FinetuneConfig(**common)
    assert any("more than one epoch" in m for m in schedule_warnings(plain, plain.recipe(), 2))
    meant = FinetuneConfig(**common, repeat_ok=True)
    assert schedule_warnings(meant, meant.recipe(), 2) == []
    long_warmup = FinetuneConfig(**common, repeat_ok=True, warmup_steps=20)
    assert [m for m in schedule_warnings(long_warmup, long_warmup.recipe(), 2) if "warmup" in m]  # other warnings stay
