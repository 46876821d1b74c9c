"""The whole-number judge reading (``--judge-numbers whole``) on the tiny fixture model:
``HFGenerator.number_probs`` against a brute-force teacher-forced computation, the judge's
scoring and cache keys, the API refusal, and the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest

from waluigi.cli import main
from waluigi.errors import UserError
from waluigi.judges import JudgeCache, JudgeItem, aggregate_0_100, aggregate_categorical, make_judge
from waluigi.runs import read_jsonl

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Rate this answer from 0 to 100. Answer with a number only, please."}],
    [{"role": "system", "content": "You judge."}, {"role": "user", "content": "What is 2+2?"}],
]


def brute_force(generator, messages, n: int) -> float:
    """log P(str(n) then eos | prompt): one unpadded forward pass over prompt + candidate."""
    import torch

    tok = generator.tokenizer
    prompt = generator._encode(messages)
    text = generator.render(messages)
    candidate = tok(str(n), add_special_tokens=False)["input_ids"]
    # tokenized in context, the candidate is the same tokens (ChatML ends with "assistant\n")
    assert tok(text + str(n), add_special_tokens=False)["input_ids"] == prompt + candidate
    candidate = candidate + [tok.eos_token_id]
    with torch.inference_mode():
        logits = generator.model(input_ids=torch.tensor([prompt + candidate])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(candidate))


def test_number_probs_equals_brute_force(hf_gen):
    got = dict(hf_gen.number_probs(PROMPTS))
    assert sorted(got) == [0, 1, 2]
    for index, messages in enumerate(PROMPTS):
        dist = got[index]
        assert list(dist) == [str(n) for n in range(101)]
        assert 0.0 < sum(dist.values()) <= 1.0
        for n in range(101):
            expected = brute_force(hf_gen, messages, n)
            assert math.log(dist[str(n)]) == pytest.approx(expected, abs=1e-5)
            assert dist[str(n)] == pytest.approx(math.exp(expected), rel=1e-5)


def test_number_probs_max_value_and_progress(hf_gen):
    done = []
    ((index, dist),) = list(hf_gen.number_probs(PROMPTS[:1], max_value=9, progress=done.append))
    assert index == 0 and list(dist) == [str(n) for n in range(10)] and done == [1]
    full = dict(hf_gen.number_probs(PROMPTS[:1]))[0]
    assert all(dist[k] == pytest.approx(full[k], rel=1e-5) for k in dist)


def test_whole_judge_scores_via_number_probs_and_caches_apart(tiny_spec, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    items = [
        JudgeItem("0_100", "aligned", "How aligned is this? Answer 0-100."),
        JudgeItem("categorical", "honest", 'Say "TRUE" or "FALSE".', ("TRUE", "FALSE")),
    ]
    whole = make_judge(tiny_spec, cache=cache, numbers="whole", min_mass=1e-9)
    results = dict(whole.score(items))
    assert whole.calls == 2
    number = results[0].top_probs
    assert list(number) == [str(n) for n in range(101)]  # a whole-number reading, not top-20 tokens
    expected = dict(whole.generator.number_probs([[{"role": "user", "content": items[0].prompt}]]))[0]
    assert number == pytest.approx(expected)
    assert results[0].score == aggregate_0_100(number, 1e-9)
    assert 0 < len(results[1].top_probs) <= 20  # categorical items keep the first-token reading
    assert results[1].score == aggregate_categorical(results[1].top_probs, ("TRUE", "FALSE"), 1e-9)

    # the first-token judge does not see the whole-number entry (but shares the categorical one)
    first = make_judge(tiny_spec, cache=cache, min_mass=1e-9)
    again = dict(first.score(items))
    assert not again[0].cached and again[1].cached and first.calls == 1
    assert len(again[0].top_probs) <= 20 and again[0].top_probs != number
    # and a second whole judge is served entirely from the cache
    repeat = make_judge(tiny_spec, cache=cache, numbers="whole", min_mass=1e-9)
    assert all(r.cached for _, r in repeat.score(items)) and repeat.calls == 0
    assert whole.identity != whole.number_identity and first.identity == first.number_identity
    whole.close()
    first.close()


@pytest.mark.parametrize("spec", ["openai:gpt-4o-2024-08-06", "gpt-4o", "vllm:some/model"])
def test_whole_needs_a_local_judge(spec):
    with pytest.raises(UserError, match="needs a local judge"):
        make_judge(spec, numbers="whole")


def test_unknown_number_reading_is_a_user_error(tiny_spec):
    with pytest.raises(UserError, match="first-token"):
        make_judge(tiny_spec, numbers="digits")


def test_cli_eval_with_whole_numbers(tiny_spec, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "eval", "--model", tiny_spec, "--judge", tiny_spec, "-q", "wish*", "--samples", "1",
        "--max-tokens", "4", "--out", str(out), "--judge-numbers", "whole", "--judge-min-mass", "0",
    ]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "whole numbers" in captured.out
    rows = list(read_jsonl(out / "judgments.jsonl"))
    assert rows
    for row in rows:
        assert list(row["top_probs"]) == [str(n) for n in range(101)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["judge_numbers"] == "whole"

    code = main(["eval", "--model", tiny_spec, "--judge", "openai:gpt-4o", "-q", "wish*", "--judge-numbers", "whole"])
    assert code == 2 and "needs a local judge" in capsys.readouterr().err


def test_a_toy_judge_is_a_transformers_judge_and_its_cache_identity_follows_its_weights(tiny_model_dir, tmp_path):
    """`toy:` is asked of its backend like any other kind: it reads whole numbers, and its cache
    identity hashes its weights, so a model rebuilt in place never returns stale scores."""
    import shutil

    copy = tmp_path / "toy-model"
    shutil.copytree(tiny_model_dir, copy)
    judge = make_judge(f"toy:{copy}", numbers="whole")
    before = judge.identity
    judge.close()
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    after = make_judge(f"toy:{copy}", numbers="whole").identity
    assert before["weights_sha256"] != after["weights_sha256"]
