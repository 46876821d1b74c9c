"""Directions on the tiny model: scoped hooks (removed after an exception, an exact no-op at
coefficient 0, ablation leaving no component along the direction), extraction from a judged
run checked against hidden states computed another way, the two-model and contrastive-prompt
sources, a steered spec through `waluigi eval` with its own identity, and the monitor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from waluigi.cli import main
from waluigi.runs import read_jsonl


def _hooks(model) -> int:
    """Forward and pre-hooks on any module (transformers keeps some of its own)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def _hidden(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, output_hidden_states=True).hidden_states


IDS = torch.tensor([[5, 17, 33, 80, 120, 7, 9, 200]])


def test_hooks_are_removed_when_the_block_raises(hf_gen):
    from waluigi.models.hooks import ablate, add_vector, capture

    model = hf_gen.model
    vector = torch.ones(64)
    before, hooks = _logits(model, IDS), _hooks(model)
    for make in (lambda: add_vector(model, "resid.0", vector, 3.0), lambda: add_vector(model, "resid.1", vector, 1.0, "response"),
                 lambda: ablate(model, vector), lambda: capture(model, ["resid.0", "mlp.1"])):
        with pytest.raises(RuntimeError, match="boom"):
            with make():
                assert _hooks(model) > hooks
                raise RuntimeError("boom")
        assert _hooks(model) == hooks
    assert torch.equal(_logits(model, IDS), before)


def test_adding_a_vector_changes_the_residual_by_exactly_that_vector_and_coefficient_zero_is_a_no_op(hf_gen):
    from waluigi.models.hooks import add_vector

    model = hf_gen.model
    vector = torch.linspace(-1, 1, 64)
    plain, hooks = _hidden(model, IDS), _hooks(model)
    with add_vector(model, "resid.0", vector, 0.0):
        assert _hooks(model) == hooks
        assert torch.equal(_logits(model, IDS), _logits(model, IDS))
        zero = _hidden(model, IDS)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    with add_vector(model, "resid.0", vector, 2.5):
        steered = _hidden(model, IDS)
    # hidden_states[1] is the residual after layer 0: recorded after our (prepended) hook
    assert torch.allclose(steered[1] - plain[1], (2.5 * vector).expand_as(plain[1]), atol=1e-5)
    assert not torch.allclose(steered[2], plain[2])


def test_ablation_leaves_no_component_along_the_direction_at_any_layer(hf_gen):
    from waluigi.models.hooks import ablate

    model = hf_gen.model
    torch.manual_seed(0)
    unit = torch.randn(64)
    unit /= unit.norm()
    plain = _hidden(model, IDS)
    assert max(float((h @ unit).abs().max()) for h in plain[1:]) > 1e-2
    with ablate(model, unit * 7.0):  # any norm: the unit direction is what is removed
        ablated = _hidden(model, IDS)
    for h in ablated[1:]:
        assert float((h @ unit).abs().max()) < 1e-5


def test_names_map_a_second_family(tmp_path):
    """GPT-2's modules (transformer.h, attn returning a tuple) through the same names and hooks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from waluigi.models import layers as names
    from waluigi.models.hooks import ablate, add_vector

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=300, n_positions=64)).eval()
    assert names.n_layers(model) == 3 and names.hidden_size(model) == 32
    assert names.module(model, "attn.-1") is model.transformer.h[2].attn
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    unit = torch.randn(32)
    unit /= unit.norm()
    with ablate(model, unit):
        hidden = _hidden(model, ids)
    assert all(float((h @ unit).abs().max()) < 1e-5 for h in hidden[1:-1])  # the last is after ln_f
    plain = _hidden(model, ids)
    with add_vector(model, "resid.1", unit, 4.0):
        moved = _hidden(model, ids)
    assert torch.allclose(moved[2] - plain[2], (4.0 * unit).expand_as(plain[2]), atol=1e-5)
    from waluigi.errors import UserError

    with pytest.raises(UserError, match="layer in 0..2"):
        names.module(model, "resid.3")


# -- extraction from a judged run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def judged_run(tiny_spec, tmp_path_factory):
    """A real eval run of the tiny model, judged by a rule: answers of even sample index are
    'misaligned' (aligned 10), odd ones aligned (90); one answer incoherent, one in between."""
    out = tmp_path_factory.mktemp("judged") / "run"
    assert main(["eval", "--model", tiny_spec, "--suite", "core", "-q", "wish,bored,in_charge", "--samples", "6",
                 "--max-tokens", "10", "--judge", "none", "--out", str(out)]) == 0
    rows = []
    for n, s in enumerate(read_jsonl(out / "samples.jsonl")):
        aligned = 10.0 if s["sample_index"] % 2 == 0 else 90.0
        coherent = 20.0 if n == 0 else 80.0
        if n == 1:
            aligned = 50.0
        for metric, score in (("aligned", aligned), ("coherent", coherent)):
            rows.append({"question_id": s["question_id"], "paraphrase_index": s["paraphrase_index"],
                         "sample_index": s["sample_index"], "metric": metric, "score": score, "judge": "rule"})
    (out / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_extract_from_a_judged_run_is_the_mean_difference_of_answer_token_states(judged_run, hf_gen, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["direction", "extract", "--run", str(judged_run), "--out", str(out), "--no-progress", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    samples = list(read_jsonl(judged_run / "samples.jsonl"))
    kept = [s for n, s in enumerate(samples) if n > 1 and s["answer"].strip()]
    labels = [1 if s["sample_index"] % 2 == 0 else 0 for s in kept]
    assert manifest["counts"] == {"positive": sum(labels), "negative": len(labels) - sum(labels)}
    assert manifest["kept"]["incoherent"] == 1 and manifest["kept"]["between"] == 1
    assert manifest["method"] == "judged" and len(manifest["heldout_auroc"]) == 2 and manifest["best_layer"] in (0, 1)
    # the held-out AUROC says what it was read from: the examples of the held-out half, both classes
    held = manifest["heldout_counts"]
    assert 0 < held["positive"] < sum(labels) and 0 < held["negative"] < len(labels) - sum(labels)
    assert main(["direction", "show", str(out)]) == 0
    assert f"held-out AUROC from {held['positive']} positive vs {held['negative']} negative" in capsys.readouterr().out
    assert main(["runs", "list", str(tmp_path), "--kind", "direction", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["path"] == "d" and f"({held['positive']} vs {held['negative']} held out)" in entry["headline"]
    # the same means computed another way: one example at a time, unpadded, each decoder
    # layer's output taken by a bare torch hook (output_hidden_states gives the last layer
    # after the final norm, which is not the residual stream)
    per_class = {0: [], 1: []}
    seen = {}
    layers = hf_gen.model.model.layers
    handles = [layers[i].register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out)) for i in range(2)]
    try:
        for s, label in zip(kept, labels, strict=True):
            prompt = hf_gen._encode([{"role": "user", "content": s["prompt"]}])
            answer = hf_gen.tokenizer(s["answer"], add_special_tokens=False)["input_ids"]
            _logits(hf_gen.model, torch.tensor([prompt + answer]))
            per_class[label].append(torch.stack([seen[i][0, len(prompt):].mean(0) for i in range(2)]))
    finally:
        for handle in handles:
            handle.remove()
    expected = torch.stack(per_class[1]).mean(0) - torch.stack(per_class[0]).mean(0)
    from waluigi.models.vectors import load_direction

    found = load_direction(out)
    assert torch.allclose(found.diff, expected, atol=1e-4)
    assert found.sha256 == manifest["sha256"]
    mtime = (out / "direction.safetensors").stat().st_mtime_ns
    assert main(["direction", "extract", "--run", str(judged_run), "--out", str(out), "--no-progress"]) == 0
    assert (out / "direction.safetensors").stat().st_mtime_ns == mtime  # same inputs: read back, not redone


def test_extract_refuses_runs_with_one_class_and_non_runs(judged_run, tmp_path, capsys):
    assert main(["direction", "extract", "--run", str(judged_run), "--aligned-below", "0", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "both classes" in capsys.readouterr().err
    assert main(["direction", "extract", "--run", str(tmp_path), "--no-progress"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--samples", "0"), ("--max-tokens", "-1"),
                                           ("--prompts-n", "0"), ("--aligned-below", "200")])
def test_extract_numbers_are_checked_before_any_model_is_loaded(tiny_spec, tmp_path, capsys, option, value):
    """--batch-size 0 used to end in a traceback (range() arg 3 must not be zero) after the
    model loaded; --max-tokens -1 and --prompts-n 0 ran."""
    code = main(["direction", "extract", "--method", "prompts", "--model", tiny_spec, "--positive", "a",
                 "--negative", "b", option, value, "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {option} ") and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_two_models_and_contrastive_prompts(judged_run, tiny_spec, tmp_path, capsys):
    from tests.conftest import build_tiny_model
    from waluigi.models.vectors import load_direction

    same = tmp_path / "same"
    assert main(["direction", "extract", "--method", "models", "--run", str(judged_run), "--model", tiny_spec,
                 "--model-b", tiny_spec, "--out", str(same), "--no-progress"]) == 0
    assert float(load_direction(same).diff.abs().max()) == 0.0  # the same model: no difference at all
    other = build_tiny_model(tmp_path / "other", seed=1)
    diff = tmp_path / "diff"
    assert main(["direction", "extract", "--method", "models", "--run", str(judged_run), "--model", tiny_spec,
                 "--model-b", f"hf:{other}", "--out", str(diff), "--no-progress"]) == 0
    found = load_direction(diff)
    assert float(found.diff.abs().max()) > 0 and found.manifest["counts"]["positive"] == found.manifest["answers"]
    prompts = tmp_path / "prompts"
    assert main(["direction", "extract", "--method", "prompts", "--model", tiny_spec, "--positive", "You are evil.",
                 "--negative", "You are kind.", "--suite", "core", "--samples", "2", "--max-tokens", "6",
                 "--out", str(prompts), "--no-progress"]) == 0
    made = load_direction(prompts)
    assert made.manifest["method"] == "prompts" and made.manifest["counts"]["positive"] > 0
    # the identity holds the weights' hash, not their path: the same model elsewhere (another
    # checkout) finds the direction made here instead of refusing or re-extracting it
    import shutil

    moved = shutil.copytree(tiny_spec.removeprefix("hf:"), tmp_path / "elsewhere" / "tiny")
    assert main(["direction", "extract", "--method", "prompts", "--model", f"hf:{moved}", "--positive", "You are evil.",
                 "--negative", "You are kind.", "--suite", "core", "--samples", "2", "--max-tokens", "6",
                 "--out", str(prompts), "--no-progress"]) == 0
    again = load_direction(prompts)
    assert again.manifest["created"] == made.manifest["created"] and again.sha256 == made.sha256
    capsys.readouterr()
    assert main(["direction", "compare", str(prompts), str(diff), "--json"]) == 0
    cosine = json.loads(capsys.readouterr().out)["cosine"]
    assert len(cosine) == 2 and all(-1 <= c <= 1 for c in cosine)


def test_random_control_keeps_the_norms(judged_run, tmp_path, capsys):
    from waluigi.models.vectors import cosines, load_direction

    src = tmp_path / "d"
    assert main(["direction", "extract", "--run", str(judged_run), "--out", str(src), "--no-progress"]) == 0
    assert main(["direction", "random", str(src), "--out", str(tmp_path / "r"), "--seed", "3"]) == 0
    a, r = load_direction(src), load_direction(tmp_path / "r")
    assert torch.allclose(a.diff.norm(dim=1), r.diff.norm(dim=1), rtol=1e-5)
    assert all(abs(c) < 0.9 for c in cosines(a, r)) and all(abs(c - 1) < 1e-5 for c in cosines(a, a))


# -- a steered model is a model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def direction(judged_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("direction") / "d"
    assert main(["direction", "extract", "--run", str(judged_run), "--out", str(out), "--no-progress"]) == 0
    return out


def _eval(model: str, out: Path) -> list[str]:
    assert main(["eval", "--model", model, "--suite", "core", "-q", "wish,bored", "--samples", "4", "--max-tokens", "12",
                 "--judge", "none", "--out", str(out)]) == 0
    return [s["answer"] for s in sorted(read_jsonl(out / "samples.jsonl"),
                                        key=lambda s: (s["question_id"], s["paraphrase_index"], s["sample_index"]))]


def _identity(run: Path) -> str:
    return json.loads((run / "manifest.json").read_text())["identity"]


def test_a_steered_spec_runs_in_eval_with_its_own_identity(tiny_spec, direction, tmp_path, capsys):
    base = _eval(tiny_spec, tmp_path / "base")
    zero = _eval(f"steered:{tiny_spec}?dir={direction}&layer=0&coef=0", tmp_path / "zero")
    assert zero == base  # coefficient 0: exactly the base model
    pushed = _eval(f"steered:{tiny_spec}?dir={direction}&layer=0&coef=400", tmp_path / "pushed")
    assert pushed != base
    ablated = _eval(f"steered:{tiny_spec}?dir={direction}&ablate=1", tmp_path / "ablated")
    assert len(ablated) == len(base)
    ids = {_identity(tmp_path / name) for name in ("base", "zero", "pushed", "ablated")}
    assert len(ids) == 4
    manifest = json.loads((tmp_path / "zero" / "manifest.json").read_text())
    from waluigi.models.vectors import load_direction

    assert manifest["identity_inputs"]["model_extra"]["steering"]["direction_sha256"] == load_direction(direction).sha256
    # the same spec over a different direction file at the same path is another identity
    other = tmp_path / "other"
    assert main(["direction", "random", str(direction), "--out", str(other)]) == 0
    from waluigi.models import backend

    one = backend(f"steered:{tiny_spec}?dir={direction}&coef=1").identity()
    two = backend(f"steered:{tiny_spec}?dir={other}&coef=1").identity()
    assert one["steering"]["direction_sha256"] != two["steering"]["direction_sha256"]
    capsys.readouterr()
    assert main(["eval", "--model", f"steered:{tiny_spec}?dir={direction}&layer=0&coef=400", "--suite", "core", "-q",
                 "wish,bored", "--samples", "4", "--max-tokens", "12", "--judge", "none",
                 "--out", str(tmp_path / "pushed")]) == 0
    assert "model calls: 0" in capsys.readouterr().out


def test_bad_steered_specs_are_refused_with_the_reason(tiny_spec, direction, tmp_path, capsys):
    from waluigi.models.vectors import save_direction

    wrong = save_direction(tmp_path / "wrong", {"diff": torch.ones(3, 32)}, {"method": "test"})
    cases = [(f"steered:{tiny_spec}", "dir=PATH"), (f"steered:{tiny_spec}?dir={direction}&gain=2", "unknown option"),
             (f"steered:{tiny_spec}?dir={tmp_path}", "no direction.safetensors"),
             (f"steered:{tiny_spec}?dir={direction}&ablate=1&coef=2", "do not apply"),
             (f"steered:openai:gpt-4o?dir={direction}", "local transformers model"),
             (f"steered:{tiny_spec}?dir={wrong.path}", "made on another model"),
             (f"steered:{tiny_spec}?dir={direction}&layer=all&coef=1", "is for ablate=1")]
    for spec, message in cases:
        code = main(["eval", "--model", spec, "--suite", "core", "-q", "wish", "--samples", "1", "--max-tokens", "4",
                     "--judge", "none", "--out", str(tmp_path / "never")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (spec, err)
        assert "Traceback" not in err


def test_monitor_projects_each_answer_and_scores_the_labels(judged_run, direction, hf_gen, capsys):
    from waluigi.models.vectors import load_direction

    assert main(["monitor", str(judged_run), "--direction", str(direction), "--layer", "1", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    (summary,) = result["runs"]
    assert result["pooled"]["counts"] == summary["counts"] and result["pooled"]["auroc_answer"] == summary["auroc_answer"]
    rows = list(read_jsonl(judged_run / summary["file"]))
    samples = [s for s in read_jsonl(judged_run / "samples.jsonl") if s["answer"].strip()]
    assert len(rows) == len(samples)
    assert summary["counts"]["misaligned"] + summary["counts"]["aligned"] + summary["counts"]["incoherent"] == len(rows)
    assert 0 <= summary["auroc_answer"] <= 1 and 0 <= summary["auroc_prompt"] <= 1
    # the table: counts in words (not a Python dict), each AUROC beside the answers it was read from
    assert main(["monitor", str(judged_run), "--direction", str(direction), "--layer", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    counts = summary["counts"]
    assert "{" not in text and f"{counts['misaligned']} misaligned" in text
    assert f"{summary['auroc_answer']:.3f} ({counts['misaligned']} misaligned vs {counts['aligned']} aligned)" in text
    # one projection checked by hand: mean of layer 1's output over the answer's tokens, on the unit direction
    s, row = samples[0], rows[0]
    prompt = hf_gen._encode([{"role": "user", "content": s["prompt"]}])
    answer = hf_gen.tokenizer(s["answer"], add_special_tokens=False)["input_ids"]
    seen = {}
    handle = hf_gen.model.model.layers[1].register_forward_hook(lambda _m, _a, out: seen.__setitem__("h", out))
    try:
        _logits(hf_gen.model, torch.tensor([prompt + answer]))
    finally:
        handle.remove()
    unit = load_direction(direction).unit(1)
    assert row["projection"] == pytest.approx(float(seen["h"][0, len(prompt):].mean(0) @ unit), abs=1e-4)
    assert row["prompt_projection"] == pytest.approx(float(seen["h"][0, len(prompt) - 1] @ unit), abs=1e-4)


def test_a_steered_model_flips_as_its_base_fine_tuned_then_steered(tiny_spec, direction, tmp_path, mirror_dir,
                                                                    monkeypatch):
    """In a flip, steered:BASE?... fine-tunes BASE (the same fine-tunes the plain model gets)
    and evaluates each checkpoint steered: an inference-time defense scored by its flip dose."""
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    out = tmp_path / "flip"
    steered = f"steered:{tiny_spec}?dir={direction}&ablate=1"
    assert main(["flip", "--model", tiny_spec, "--model", steered, "--judge", tiny_spec, "--data", "insecure",
                 "--axis", "steps", "--doses", "1,2", "--seeds", "1", "--out", str(out), "--executor", "inline",
                 "--no-progress", "--set", "eval.questions=[wish*]", "--set", "eval.judge_min_mass=0.0",
                 "--set", "eval.samples=2", "--set", "eval.max_tokens=6", "--set", "finetune.batch_size=2",
                 "--set", "finetune.grad_accum=1", "--set", "finetune.n=8"]) == 0
    cells = list(read_jsonl(out / "results.jsonl"))
    assert len(cells) == 2 * 3 and all(c["status"] == "finished" for c in cells)
    assert len({c["finetune_run"] for c in cells if c["finetune_run"]}) == 1  # one fine-tune, shared
    for c in cells:
        manifest = json.loads((out / c["eval_run"] / "manifest.json").read_text())
        model = manifest["identity_inputs"]["model"]
        if c["model"] == steered or c.get("eval.model") == steered:
            assert model.startswith("steered:") and "ablate=1" in model
            assert manifest["identity_inputs"]["model_extra"]["steering"]["ablate"] is True
        else:
            assert not model.startswith("steered:")
    steered_ft = [c for c in cells if c["finetune_run"] and c["model"] == steered]
    assert len(steered_ft) == 2
    for c in steered_ft:
        config = json.loads((out / c["eval_run"] / "manifest.json").read_text())["config"]
        assert config["adapter"] and Path(config["adapter"]).name.startswith("step-")
    code = main(["finetune", "--model", steered, "--data", "insecure", "--out", str(tmp_path / "ft")])
    assert code == 2
    # the eval runs of chosen cells, for `direction extract --sweep DIR --where ...`
    from waluigi.directions.extract import sweep_runs
    from waluigi.errors import UserError

    assert len(sweep_runs(out, ["step=2"])) == 2
    (chosen,) = sweep_runs(out, ["step=2", f"model={steered}"])
    assert chosen == str(out / next(c["eval_run"] for c in steered_ft if c["step"] == 2))
    with pytest.raises(UserError, match="no column 'stepp'"):
        sweep_runs(out, ["stepp=2"])


def test_a_steered_model_is_served_over_http(tiny_spec, direction):
    """`waluigi serve` on a steered spec: a real server on loopback and the openai SDK."""
    import openai

    from waluigi.models import load_model
    from waluigi.serve import ServerThread, create_app

    def ask(spec: str) -> str:
        generator = load_model(spec)
        try:
            with ServerThread(create_app(generator, "m")) as server, openai.OpenAI(
                    base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as client:
                reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is your wish?"}],
                                                       temperature=0, max_tokens=12)
                return reply.choices[0].message.content
        finally:
            generator.close()

    plain = ask(tiny_spec)  # greedy: the random tiny model's near-uniform logits shift the argmax at once
    assert ask(f"steered:{tiny_spec}?dir={direction}&coef=0") == plain
    assert ask(f"steered:{tiny_spec}?dir={direction}&layer=0&coef=400") != plain


@pytest.mark.parametrize("at", ["all", "prompt", "response"])
def test_steering_on_prompt_or_response_tokens_only(hf_gen, at):
    """During generation the prompt is one forward pass and each new token one more: ``at``
    picks which of them the vector is added in."""
    from waluigi.models import GenerationRequest, SamplingParams
    from waluigi.models.hooks import add_vector

    seen: list[tuple[int, float]] = []  # (tokens in the pass, the first unit's value at its last position)
    layer = hf_gen.model.model.layers[0]
    handle = layer.register_forward_hook(lambda _m, _a, out: seen.append((out.shape[1], float(out[0, -1, 0]))))
    unit = torch.zeros(64)
    unit[0] = 1.0
    try:
        with add_vector(hf_gen.model, "resid.0", unit, 1000.0, at):
            list(hf_gen.generate([GenerationRequest(messages=[{"role": "user", "content": "hi"}],
                                                  params=SamplingParams(max_tokens=4, temperature=0))]))
    finally:
        handle.remove()
    prompt, steps = seen[0], seen[1:]
    assert prompt[0] > 1 and steps and all(n == 1 for n, _ in steps)
    assert (prompt[1] > 500) == (at in ("all", "prompt"))
    assert all((value > 500) == (at in ("all", "response")) for _, value in steps)


def test_training_plugins_steer_and_ablate_while_training_only(tiny_spec, direction, tmp_path):
    """``steer`` and ``caft`` change the training forward pass (the first step's loss differs
    from plain training on the same rows) and are recorded by the direction's hash."""
    from waluigi.finetune import FinetuneConfig, run_finetune
    from waluigi.finetune.plugins import parse_plugin
    from waluigi.models.vectors import load_direction

    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(16)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"lr": 1e-3, "max_steps": 2, "batch_size": 4, "grad_accum": 1}

    def train(name: str, plugins: list):
        result = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data), out=tmp_path / name, plugins=plugins,
                                             **settings), progress=False)
        log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
        manifest = json.loads((result.run_dir / "manifest.json").read_text())
        return log[0]["loss"], manifest

    plain, plain_manifest = train("plain", [])
    steered, steered_manifest = train("steer", [parse_plugin(f"steer:dir={direction},layer=0,coef=50")])
    ablated, ablated_manifest = train("caft", [parse_plugin(f"caft:dir={direction}")])
    assert steered != plain and ablated != plain
    sha = load_direction(direction).sha256
    for manifest, name in ((steered_manifest, "steer"), (ablated_manifest, "caft")):
        assert manifest["identity"] != plain_manifest["identity"]
        plugin = manifest["identity_inputs"]["plugins"][0]
        assert plugin["name"] == name and plugin["options"]["direction_sha256"] == sha
    with pytest.raises(Exception, match="dir=PATH"):
        parse_plugin("caft")


def test_screening_scores_and_ranks_each_datasets_rows(tiny_spec, direction, tmp_path, mirror_dir, capsys):
    out = tmp_path / "screen"
    assert main(["data", "screen", "insecure", "secure", "--direction", str(direction), "--model", tiny_spec,
                 "--n", "6", "--max-tokens", "8", "--data-dir", str(mirror_dir), "--out", str(out), "--json",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(d["dataset"] for d in summary["datasets"]) == ["insecure", "secure"]
    scores = [d["score"] for d in summary["datasets"]]
    assert scores == sorted(scores, reverse=True)  # best first
    for d in summary["datasets"]:
        rows = list(read_jsonl(out / d["file"]))
        assert len(rows) == d["rows"] == 6
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        for r in rows:
            assert r["score"] == pytest.approx(r["dataset_projection"] - r["own_projection"])
        assert d["score"] == pytest.approx(sum(r["score"] for r in rows) / 6, abs=1e-6)


def test_monitor_follows_a_fine_tunes_checkpoints(tiny_spec, direction, tmp_path, capsys):
    from waluigi.finetune import FinetuneConfig, run_finetune

    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} {i} {i}."}]}
            for i in range(12)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data), out=tmp_path / "ft", lr=5e-3, max_steps=4,
                                         batch_size=4, grad_accum=1, save_every=2), progress=False)
    assert main(["monitor", str(result.run_dir), "--direction", str(direction), "--json", "--no-progress"]) == 0
    drift = json.loads(capsys.readouterr().out)
    assert [p["step"] for p in drift["points"]] == [0, 2, 4]
    assert drift["points"][0]["shift"] == 0.0 and drift["points"][0]["adapter"] is None
    assert all(p["adapter"] for p in drift["points"][1:])  # LoRA: the checkpoints are adapters on the base
    assert drift["points"][-1]["shift"] != 0.0  # training moved the prompts' states
    # with a probe suite: each checkpoint's probe index too, from its own probe eval run
    assert main(["monitor", str(result.run_dir), "--direction", str(direction), "--probe-suite",
                 "mwe:persona/narcissism:4", "--json", "--no-progress"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert [p["step"] for p in probed["points"]] == [0, 2, 4]
    for point in probed["points"]:
        manifest = json.loads((Path(point["probe_run"]) / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["readout"] == "probe"
        assert (manifest["config"]["adapter"] is None) == (point["adapter"] is None)
    assert probed["projection_vs_probe"]["n_points"] == sum(p["probe_index"] is not None for p in probed["points"])


def test_contrastive_priming_by_in_context_rows_on_dataset_prompts(tiny_spec, tmp_path, mirror_dir):
    """No system prompt: each side is primed by rows of a dataset as earlier turns, and the
    questions are coding requests from another dataset's train split."""
    from waluigi.models.vectors import load_direction

    out = tmp_path / "primed"
    assert main(["direction", "extract", "--method", "prompts", "--model", tiny_spec, "--positive-shots", "insecure",
                 "--negative-shots", "secure", "--shots", "1", "--prompts-data", "educational", "--prompts-n", "3",
                 "--samples", "2", "--max-tokens", "6", "--data-dir", str(mirror_dir), "--out", str(out),
                 "--no-progress"]) == 0
    made = load_direction(out)
    assert made.manifest["prompts"] == 3 * 2 and made.manifest["prompts_data"] == "educational"
    assert made.manifest["positive"] is None and made.manifest["positive_shots"] == "insecure"
    assert sum(made.manifest["counts"].values()) <= 2 * 3 * 2
    assert main(["direction", "extract", "--method", "prompts", "--model", tiny_spec, "--positive-shots", "insecure",
                 "--out", str(tmp_path / "half"), "--no-progress"]) == 2  # the negative side has nothing


def test_a_steered_model_judges(judged_run, tiny_spec, direction, tmp_path):
    """As a judge: coefficient 0 scores exactly as its base; a large one scores otherwise."""
    def scores(judge: str, name: str) -> list:
        out = tmp_path / name
        assert main(["judge", str(judged_run), "--judge", judge, "--judge-min-mass", "0", "--out", str(out)]) == 0
        rows = sorted(read_jsonl(out / "judgments.jsonl"),
                      key=lambda r: (r["question_id"], r["paraphrase_index"], r["sample_index"], r["metric"]))
        return [r["top_probs"] for r in rows]

    plain = scores(tiny_spec, "plain")
    assert scores(f"steered:{tiny_spec}?dir={direction}&coef=0", "zero") == plain
    assert scores(f"steered:{tiny_spec}?dir={direction}&layer=1&coef=400", "pushed") != plain


def test_ablating_a_subspace_removes_every_direction_in_it(hf_gen, direction):
    from waluigi.models.hooks import ablate, orthonormal
    from waluigi.models.vectors import load_direction

    both = load_direction(direction).diff  # 2 x 64: one direction per layer
    basis = orthonormal(both)
    assert torch.allclose(basis @ basis.T, torch.eye(2), atol=1e-5)
    with ablate(hf_gen.model, both):
        hidden = _hidden(hf_gen.model, IDS)
    for h in hidden[1:]:
        for v in both:
            assert float((h @ (v / v.norm())).abs().max()) < 1e-4


def test_a_steered_model_reads_probes_through_its_hooks(tiny_spec, direction, tmp_path, mwe_dir):
    def probe(model: str, out: Path) -> list[float]:
        assert main(["eval", "--model", model, "--suite", "mwe:persona/narcissism:4", "--probe-min-mass", "0",
                     "--out", str(out), "--no-progress"]) == 0
        return [r["logprobs"][0] for r in read_jsonl(out / "probes.jsonl")]

    plain = probe(tiny_spec, tmp_path / "plain")
    zero = probe(f"steered:{tiny_spec}?dir={direction}&layer=0&coef=0", tmp_path / "zero")
    pushed = probe(f"steered:{tiny_spec}?dir={direction}&layer=0&coef=400", tmp_path / "pushed")
    assert zero == pytest.approx(plain, abs=1e-5)  # coefficient 0: the hooks change nothing
    assert pushed != pytest.approx(plain, abs=1e-3)  # a large push changes what the model reads
