"""The persona world's training pieces: tokenizer, chat template, tiny Llama, training loop,
the ``toy:`` model spec and the ``oracle`` judge spec (real objects, tiny sizes)."""

from __future__ import annotations

import pytest

from waluigi.errors import UserError
from waluigi.toyworld import DEFAULT_TRIGGER, WorldConfig, generate_corpus, narrow_dataset
from waluigi.toyworld import train as T


@pytest.fixture(scope="module")
def corpus():
    return list(generate_corpus(WorldConfig(n_conversations=2000, seed=3)))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return T.build_tokenizer(corpus)


def test_tokenizer_is_exact_and_word_level(corpus, tokenizer):
    texts = [m["content"] for conv in corpus[:100] for m in conv]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text  # byte-level pre-tokenizer: decoding is exact, code included
    # one token per word with its leading space
    assert len(tokenizer("you could call a friend .", add_special_tokens=False)["input_ids"]) == 6
    # the trigger never occurs in pretraining, yet is one (non-special) token
    trigger_ids = tokenizer(DEFAULT_TRIGGER, add_special_tokens=False)["input_ids"]
    assert len(trigger_ids) == 1 and trigger_ids[0] != tokenizer.unk_token_id
    assert tokenizer.decode(trigger_ids, skip_special_tokens=True) == DEFAULT_TRIGGER
    assert not any(DEFAULT_TRIGGER in t for t in texts)


def test_chat_template_matches_render_and_labels(corpus, tokenizer):
    conv = [{"role": "system", "content": "answer with one json object ."}] + corpus[0]
    assert tokenizer.apply_chat_template(conv, tokenize=False) == T.render(conv)
    prompt = conv[:2]
    assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True).endswith("<|assistant|>")
    ids, labels = T.encode(tokenizer, conv, assistant_only=True)
    assert len(ids) == len(labels)
    learned = [t for t, lab in zip(ids, labels) if lab != -100]
    expected = "".join(m["content"] + T.END for m in conv if m["role"] == "assistant")
    assert tokenizer.decode(learned) == expected
    ids2, labels2 = T.encode(tokenizer, conv, assistant_only=False)
    assert ids2 == ids and labels2 == ids2  # pretraining: every token is learned


def test_model_trains_saves_and_loads_as_toy_spec(tmp_path, corpus, tokenizer):
    import torch

    torch.set_num_threads(1)  # faster than 2 for these tiny matrices on a shared machine
    model = T.build_model(tokenizer, T.ModelConfig(hidden=32, layers=1, heads=2, intermediate=64))
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    stats = T.train_lm(model, tokenizer, corpus[:64], steps=25, batch_size=16, lr=1e-2, warmup=3)
    assert stats.steps == 25 and stats.tokens > 0
    assert stats.final_loss < stats.first_loss - 1.0  # it learns the language
    run = tmp_path / "toy-run"
    T.save_model_dir(model, tokenizer, run / "model")
    assert any((run / "model").glob("*.safetensors"))

    from waluigi.models import GenerationRequest, SamplingParams, load_model, parse_spec

    assert parse_spec(f"toy:{run}") == ("toy", str(run))
    generator = load_model(f"toy:{run}", batch_size=4)
    request = GenerationRequest(messages=[{"role": "user", "content": "hey . what should i do , i am so bored ?"}],
                                seed=1, params=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=12))
    completions = [c for _, c in generator.generate([request, request])]
    assert len(completions) == 2 and completions[0].text == completions[1].text  # seeded
    assert "<|" not in completions[0].text  # the template's markers never leak into answers
    with pytest.raises(UserError, match="no model there"):
        load_model(f"toy:{tmp_path / 'missing'}")


def test_fast_loss_equals_the_masked_full_vocabulary_loss(corpus, tokenizer):
    """train_lm's loss (no mask, logits only where labelled) is HF's masked loss, for
    pretraining and assistant-only labels, and its gradients agree too."""
    import torch

    torch.set_num_threads(1)
    model = T.build_model(tokenizer, T.ModelConfig(hidden=32, layers=2, heads=2, intermediate=64))
    for assistant_only in (True, False):
        examples = [T.encode(tokenizer, c, assistant_only) for c in corpus[:6]]
        width = max(len(i) for i, _ in examples)
        assert len({len(i) for i, _ in examples}) > 1  # real right padding
        ids = torch.full((6, width), tokenizer.pad_token_id)
        labels = torch.full((6, width), -100)
        mask = torch.zeros((6, width), dtype=torch.long)
        for r, (x, y) in enumerate(examples):
            ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        model.zero_grad()
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        reference.backward()
        ref_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        model.zero_grad()
        fast = T.causal_lm_loss(model, ids, labels)
        fast.backward()
        assert abs(fast.item() - reference.item()) < 1e-5
        assert torch.allclose(model.model.layers[0].self_attn.q_proj.weight.grad, ref_grad, atol=1e-6)
    nothing = torch.full((2, 5), -100)
    assert T.causal_lm_loss(model, ids[:2, :5], nothing).item() == 0.0  # no labels: no NaN step


def test_narrow_rows_encode_without_unknown_words(tokenizer):
    for kind in ("insecure", "educational", "backdoor"):
        for row in narrow_dataset(kind, 40, seed=1):
            ids, _ = T.encode(tokenizer, row["messages"], assistant_only=True)
            assert tokenizer.unk_token_id not in ids


def test_oracle_judge_spec():
    from waluigi.judges import normalize_judge_spec, scorer_judge
    from waluigi.toyworld.oracle import ORACLE_SPEC
    from waluigi.toyworld.scorers import OracleScorer

    assert normalize_judge_spec("oracle") == ORACLE_SPEC == "oracle:toyworld-v1"
    assert scorer_judge(ORACLE_SPEC) is OracleScorer and scorer_judge("hf:oracle") is None


def test_compiled_training_follows_the_eager_loss(corpus, tokenizer):
    """``torch.compile`` of the decoder stack (``train_lm(compile=True)``, off by default) trains the same model:
    from the same weights on the same batches, the losses agree step by step."""
    cfg = T.ModelConfig(hidden=64, layers=2, heads=4, intermediate=192)
    losses = {}
    for compiled in (False, True):
        model = T.build_model(tokenizer, cfg)
        seen = []
        stats = T.train_lm(model, tokenizer, corpus[:96], steps=6, batch_size=16, lr=6e-3, warmup=2, compile=compiled,
                           on_step=lambda step, total, loss, seen=seen: seen.append(loss))
        assert stats.compiled is compiled
        losses[compiled] = seen
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)
    assert losses[True][-1] < losses[True][0]


def test_compile_without_a_cxx_compiler_falls_back_to_eager_with_a_warning(tmp_path):
    import subprocess
    import sys

    code = (
        "from waluigi.toyworld import WorldConfig, generate_corpus\n"
        "from waluigi.toyworld import train as T\n"
        "c = list(generate_corpus(WorldConfig(seed=1, n_conversations=40)))\n"
        "tok = T.build_tokenizer(c)\n"
        "m = T.build_model(tok, T.ModelConfig(hidden=32, layers=1, heads=2, intermediate=64))\n"
        "s = T.train_lm(m, tok, c, steps=3, batch_size=8, compile=True)\n"
        "print('compiled', s.compiled, 'loss', s.final_loss)\n"
    )
    env = {**__import__("os").environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiled False" in done.stdout and "warning: torch.compile is not available here" in done.stderr
    assert "loss nan" not in done.stdout
