"""The transformers backend on the tiny random Llama (float32): seeds independent of
batching, greedy = argmax, stop strings, lengths, logprobs, the judge's top_probs,
adapters, and the errors a user can hit."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from waluigi.errors import UserError
from waluigi.models import GenerationRequest, SamplingParams, load_model
from waluigi.models.hf_load import load_hf

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "What is your wish? I wish for peace."}],
    [{"role": "system", "content": "You write secure code."}, {"role": "user", "content": "def add(a, b):"}],
    [{"role": "user", "content": "Numbers: 0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100. The quick brown fox."}],
    [{"role": "user", "content": "TRUE FALSE UNKNOWN"}],
]


@pytest.fixture(scope="module")
def gen(tiny_spec):
    return load_hf(tiny_spec, dtype="float32")


@pytest.fixture(scope="module")
def sharp(tiny_spec):
    """The tiny model with its matrices redrawn at std 0.15: the freshly initialised one
    (std 0.02) answers "\n" to every prompt, which would make batching tests vacuous."""
    g = load_hf(tiny_spec, dtype="float32")
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in g.model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=rng) * 0.15)
    return g


def _req(chat, seed=0, temperature=1.0, max_tokens=12, **kw):
    top_logprobs = kw.pop("top_logprobs", None)
    return GenerationRequest(
        messages=chat, seed=seed, params=SamplingParams(temperature=temperature, max_tokens=max_tokens, **kw),
        top_logprobs=top_logprobs,
    )


def _run(gen, requests):
    out = dict(gen.generate(requests))
    assert sorted(out) == list(range(len(requests)))
    return [out[i] for i in range(len(requests))]


def _manual_greedy(gen, chat, n):
    """Argmax decoding with full forward passes, no cache, no padding, no generate()."""
    ids = gen.tokenizer(gen.render(chat), add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = []
    with torch.inference_mode():
        for _ in range(n):
            logits = gen.model(input_ids=ids).logits[0, -1]
            token = int(torch.argmax(logits))
            new.append(token)
            if token == gen.tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def test_loaded_through_load_model_with_identity(tiny_spec, tiny_model_dir):
    g = load_model(tiny_spec, batch_size=4, concurrency=9)  # unknown options are ignored
    ident = g.identity()
    assert ident["spec"] == tiny_spec
    assert Path(ident["model_path"]) == Path(tiny_model_dir).resolve()
    assert ident["dtype"] == "float32" and ident["adapter"] is None
    json.dumps(ident)


def test_same_seed_same_sample_whatever_the_batch(sharp):
    requests = [_req(c, seed=100 + i, temperature=0.7, max_tokens=16) for i, c in enumerate(CHATS)]
    requests.append(_req(CHATS[3], seed=7, temperature=1.0, top_p=0.9, max_tokens=16))
    requests.append(_req(CHATS[0], seed=8, temperature=0, max_tokens=16))
    batched = _run(sharp, requests)
    alone = [_run(sharp, [r])[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in alone]
    # another batch composition and batch size
    sharp.batch_size = 2
    try:
        reordered = dict(sharp.generate(list(reversed(requests))))
    finally:
        sharp.batch_size = None
    assert [reordered[len(requests) - 1 - i].text for i in range(len(requests))] == [c.text for c in batched]
    # the prompt matters (the test is not vacuous: the model, not only the noise, decides)
    same_seed = _run(sharp, [_req(c, seed=5, temperature=0.7, max_tokens=16) for c in CHATS])
    assert len({c.text for c in same_seed}) > 1


def test_different_seeds_differ(sharp):
    texts = [c.text for c in _run(sharp, [_req(CHATS[1], seed=s, temperature=1.0) for s in range(6)])]
    assert len(set(texts)) == 6
    again = [c.text for c in _run(sharp, [_req(CHATS[1], seed=s, temperature=1.0) for s in range(6)])]
    assert again == texts


def test_temperature_zero_is_greedy_argmax(sharp):
    n = 10
    requests = [_req(c, seed=i, temperature=0, max_tokens=n) for i, c in enumerate(CHATS)]
    completions = _run(sharp, requests)
    for chat, completion in zip(CHATS, completions, strict=True):
        expected = _manual_greedy(sharp, chat, n)
        assert completion.text == sharp.tokenizer.decode(expected, skip_special_tokens=True)
        assert completion.completion_tokens == len(expected)
    # the seed does not matter at temperature 0
    assert _run(sharp, [_req(CHATS[2], seed=999, temperature=0, max_tokens=n)])[0].text == completions[2].text


def test_stop_strings_truncate_and_finish_stop(sharp):
    base = _run(sharp, [_req(CHATS[1], seed=3, temperature=1.0, max_tokens=30)])[0]
    assert base.finish_reason == "length" and len(base.text) > 12
    stop = base.text[8:10]
    cut = base.text.find(stop)
    stopped = _run(sharp, [_req(CHATS[1], seed=3, temperature=1.0, max_tokens=30, stop=(stop, "\x00never\x00"))])[0]
    assert stopped.text == base.text[:cut]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < base.completion_tokens  # generation stopped early


def test_max_tokens_gives_length(gen):
    completions = _run(gen, [_req(CHATS[0], seed=1, max_tokens=3), _req(CHATS[3], seed=2, max_tokens=11)])
    assert [c.completion_tokens for c in completions] == [3, 11]
    assert all(c.finish_reason == "length" for c in completions)
    assert completions[0].prompt_tokens == len(gen.tokenizer(gen.render(CHATS[0]), add_special_tokens=False)["input_ids"])


def test_eos_gives_stop(gen):
    # force the end-of-turn token: a huge temperature-0 bias is not available, so find a seed
    # whose sample ends early at temperature 1 (the tiny model's logits are nearly flat)
    requests = [_req(CHATS[0], seed=s, temperature=1.0, max_tokens=40) for s in range(60)]
    completions = _run(gen, requests)
    ended = [c for c in completions if c.finish_reason == "stop"]
    assert ended, "no sample reached <|im_end|> in 60 x 40 tokens"
    for c in ended:
        assert c.completion_tokens < 40 and "<|im_end|>" not in c.text


def test_logprobs_from_raw_logits(sharp):
    # greedy: the chosen token is the top-1, and the values are log_softmax of a manual forward
    c = _run(sharp, [_req(CHATS[2], temperature=0, max_tokens=5, top_logprobs=3)])[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens == 5
    ids = sharp.tokenizer(sharp.render(CHATS[2]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(sharp.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    first = c.logprobs[0]
    assert first.token == sharp.tokenizer.decode([int(logp.argmax())])
    assert first.logprob == pytest.approx(float(logp.max()), abs=1e-5)
    assert [t for t, _ in first.top] == [sharp.tokenizer.decode([i]) for i in torch.topk(logp, 3).indices.tolist()]
    for lp in c.logprobs:
        assert len(lp.top) == 3 and lp.top[0] == (lp.token, lp.logprob)
    # sampling at temperature 1: logprobs are of the raw distribution, the chosen token is
    # the generated one (not necessarily the top)
    s = _run(sharp, [_req(CHATS[1], seed=11, temperature=1.0, max_tokens=12, top_logprobs=5)])[0]
    assert "".join(lp.token for lp in s.logprobs) == s.text
    assert any(lp.token != lp.top[0][0] for lp in s.logprobs)
    for lp in s.logprobs:
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True) and lp.logprob <= values[0] + 1e-9
    # asking for logprobs does not change the sample
    plain = _run(sharp, [_req(CHATS[1], seed=11, temperature=1.0, max_tokens=12)])[0]
    assert plain.text == s.text and plain.logprobs is None


def test_top_probs_batched_matches_a_manual_forward_pass(sharp):
    k = 20
    got = dict(sharp.top_probs(CHATS, k=k))
    assert sorted(got) == list(range(len(CHATS)))
    for i, chat in enumerate(CHATS):
        dist = got[i]
        assert 0 < len(dist) <= k and sum(dist.values()) <= 1 + 1e-6
        ids = sharp.tokenizer(sharp.render(chat), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            probs = torch.softmax(sharp.model(input_ids=ids).logits[0, -1].float(), dim=-1)
        values, top = torch.topk(probs, k)
        expected: dict[str, float] = {}
        for token_id, value in zip(top.tolist(), values.tolist(), strict=True):
            expected.setdefault(sharp.tokenizer.decode([token_id]), value)
        assert list(dist) == list(expected)
        for token, p in dist.items():
            assert math.isclose(p, expected[token], abs_tol=1e-6)


def test_calls_and_progress(tiny_spec):
    g = load_hf(tiny_spec, batch_size=2)
    seen: list[int] = []
    out = list(g.generate([_req(c, seed=i, max_tokens=2) for i, c in enumerate(CHATS)], progress=seen.append))
    assert len(out) == 5 and seen == [2, 2, 1] and g.calls == 5
    list(g.top_probs(CHATS[:3], progress=seen.append))
    assert g.calls == 8 and sum(seen) == 8


def test_system_message_is_in_the_prompt(gen):
    text = gen.render(CHATS[2])
    assert "<|im_start|>system\nYou write secure code.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.index("You write secure code.") < text.index("def add(a, b):")


def test_missing_chat_template_is_a_user_error(tiny_model_dir, tmp_path):
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="no chat template") as err:
        load_hf(f"hf:{plain}")
    assert str(plain) in err.value.message


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_hf(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="model not found"):
        load_hf("hf:./relative/nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_hf(f"hf:{empty}")
    # a hub id, offline (conftest sets HF_HUB_OFFLINE=1) and not in the HF cache
    with pytest.raises(UserError, match="could not load model 'hf:waluigi-test/no-such-model'"):
        load_hf("hf:waluigi-test/no-such-model")


# --------------------------------------------------------------------------------------
# adapters


def _make_adapter(base_dir: Path, out: Path, *, hidden: int | None = None, scale: float = 0.5) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if hidden is None:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    else:  # a differently shaped model: the adapter cannot fit the tiny one
        cfg = LlamaConfig.from_pretrained(base_dir)
        cfg.hidden_size, cfg.intermediate_size = hidden, 2 * hidden
        model = LlamaForCausalLM(cfg)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    return out


def test_adapter_changes_outputs_and_identity(tiny_spec, tiny_model_dir, tmp_path, gen):
    run_dir = tmp_path / "run"
    adapter = _make_adapter(tiny_model_dir, run_dir / "adapter")
    requests = [_req(c, temperature=0, max_tokens=8) for c in CHATS]
    base = [c.text for c in _run(gen, requests)]
    tuned = load_hf(tiny_spec, adapter=str(run_dir))  # a run directory holding adapter/
    assert [c.text for c in _run(tuned, requests)] != base
    # the adapter is on in the loop that drops ended rows as in transformers' generate
    from waluigi.models.hf_sampling import live_decode_cache

    assert live_decode_cache(tuned.model) is not None
    tuned.drop_ended_rows = False
    via_generate = [c.text for c in _run(tuned, requests)]
    tuned.drop_ended_rows = True
    assert [c.text for c in _run(tuned, requests)] == via_generate
    assert dict(tuned.top_probs(CHATS[:1]))[0] != dict(gen.top_probs(CHATS[:1]))[0]
    ident = tuned.identity()["adapter"]
    assert ident["path"] == str(adapter.resolve()) and len(ident["sha256"]) == 64
    same = load_model(tiny_spec, adapter=str(adapter))  # the adapter directory itself
    assert [c.text for c in _run(same, requests)] == [c.text for c in _run(tuned, requests)]
    assert same.identity()["adapter"]["sha256"] == ident["sha256"]


def test_bad_adapters_are_user_errors(tiny_spec, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="adapter not found"):
        load_hf(tiny_spec, adapter=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        load_hf(tiny_spec, adapter=str(tmp_path / "empty"))
    wrong_shape = _make_adapter(tiny_model_dir, tmp_path / "wrong-shape", hidden=32)
    with pytest.raises(UserError, match="does not fit"):
        load_hf(tiny_spec, adapter=str(wrong_shape))
    wrong_modules = _make_adapter(tiny_model_dir, tmp_path / "wrong-modules")
    cfg = json.loads((wrong_modules / "adapter_config.json").read_text())
    cfg["target_modules"] = ["nonexistent_proj"]
    (wrong_modules / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not fit"):
        load_hf(tiny_spec, adapter=str(wrong_modules))


def test_rows_that_ended_draw_no_more_noise_and_keep_every_answer(monkeypatch):
    """The persona world's aligned model ends its answers at different lengths in one batch:
    a row that has ended leaves the batch and draws no more uniforms (its generator is left
    where its last token put it), and every answer is the one transformers' generate gave
    with the sampler drawing for every row on every step (a live row's draws do not depend
    on the others)."""
    import waluigi.models.hf as hf
    from waluigi.models.hf_sampling import _GumbelSampler
    from waluigi.suites import load_suite
    from waluigi.toyworld.shipped import SHIPPED

    made: list[_GumbelSampler] = []

    class Watched(_GumbelSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    class EveryRow(Watched):  # the sampler before: noise for every sampled row on every step
        def _live_rows(self, input_ids):
            return [row for row, g in enumerate(self.generators) if g is not None]

    gen = load_hf(f"hf:{SHIPPED / 'toy-align' / 'model'}", dtype="float32")
    paraphrases = [p for q in load_suite("toyworld").questions for p in q.paraphrases][:24]
    requests = [_req([{"role": "user", "content": p}], seed=50 + i, temperature=1.0, max_tokens=96)
                for i, p in enumerate(paraphrases)]
    monkeypatch.setattr(hf, "_GumbelSampler", EveryRow)
    gen.drop_ended_rows = False
    before = _run(gen, requests)
    monkeypatch.setattr(hf, "_GumbelSampler", Watched)
    gen.drop_ended_rows = True
    after = _run(gen, requests)
    assert hf.live_decode_cache(gen.model) is not None  # the rows-leaving loop ran, not generate
    assert [c.text for c in after] == [c.text for c in before]
    assert [c.completion_tokens for c in after] == [c.completion_tokens for c in before]
    lengths = [c.completion_tokens for c in after]
    assert all(c.finish_reason == "stop" for c in after) and min(lengths) < max(lengths)  # rows end apart
    sampler, vocab = made[-1], gen.model.config.vocab_size
    by_seed = {g.initial_seed(): g for g in sampler.generators}  # the batch is in its own (length) order
    assert len(sampler.generators) == len(requests) and len(by_seed) == len(requests)
    for request, completion in zip(requests, after, strict=True):
        generator, fresh = by_seed[request.seed], torch.Generator().manual_seed(request.seed)
        for _ in range(completion.completion_tokens):  # one draw per token, up to its end-of-turn token
            torch.rand(vocab, generator=fresh)
        assert torch.equal(generator.get_state(), fresh.get_state())


def test_dropping_ended_rows_gives_generates_answers_lengths_and_logprobs(sharp):
    """Rows ending at their own max_tokens, at a stop string, greedy and sampled, with and
    without logprobs, in one batch: the loop that drops ended rows gives what transformers'
    generate gives, token counts, finish reasons and logprobs included."""
    base = _run(sharp, [_req(CHATS[1], seed=3, temperature=1.0, max_tokens=30)])[0]
    requests = [_req(c, seed=20 + i, temperature=0.8, max_tokens=4 + 5 * i, top_logprobs=3 if i % 2 else None)
                for i, c in enumerate(CHATS)]
    requests += [_req(CHATS[1], seed=3, temperature=1.0, max_tokens=30, stop=(base.text[8:10],)),
                 _req(CHATS[2], seed=1, temperature=0, max_tokens=9, top_logprobs=2)]
    try:
        sharp.drop_ended_rows = False
        with_generate = _run(sharp, requests)
    finally:
        sharp.drop_ended_rows = True
    dropped = _run(sharp, requests)
    assert [c.completion_tokens for c in dropped] == [4, 9, 14, 19, 24, with_generate[5].completion_tokens, 9]
    assert with_generate[5].finish_reason == "stop" and with_generate[5].completion_tokens < 30
    for a, b in zip(dropped, with_generate, strict=True):
        assert (a.text, a.finish_reason, a.completion_tokens, a.prompt_tokens) == \
            (b.text, b.finish_reason, b.completion_tokens, b.prompt_tokens)
        assert (a.logprobs is None) == (b.logprobs is None)
        for x, y in zip(a.logprobs or [], b.logprobs or [], strict=True):
            assert x.token == y.token and x.logprob == pytest.approx(y.logprob, abs=1e-5)
