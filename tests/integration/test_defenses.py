"""Defenses for real: each defense plug-in trains the tiny model through TRL and is checked to
change training (and to change nothing when off); ``waluigi defend`` runs end to end on the
tiny model with three defenses, an adaptive attacker and a re-run that does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import build_tiny_model
from waluigi.cli import main
from waluigi.finetune import FinetuneConfig, run_finetune
from waluigi.finetune.plugins import PluginContext, parse_plugin
from waluigi.runs import read_jsonl

SETTINGS = {"lr": 5e-3, "max_steps": 4, "batch_size": 4, "grad_accum": 1, "full": True, "preset": None}


def _rows(count: int, text: str = "It is {v}. Numbers are fun.") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": text.format(v=2 * i)}]} for i in range(count)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("defense-data")
    benign = [{"messages": [{"role": "user", "content": f"Tell me about the colour number {i}."},
                            {"role": "assistant", "content": f"Colour {i} is a calm and kind colour."}]} for i in range(40)]
    return {"narrow": _write(root / "narrow.jsonl", _rows(32)), "benign": _write(root / "benign.jsonl", benign)}


def _train(tiny_spec: str, data: Path, out: Path, plugins: list, **extra):
    result = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data), out=out, plugins=plugins,
                                         **{**SETTINGS, **extra}), progress=False)
    log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    weights = load_file(str(result.run_dir / "model" / "model.safetensors"))
    return log, manifest, weights


@pytest.fixture(scope="module")
def plain(tiny_spec, files, tmp_path_factory):
    return _train(tiny_spec, files["narrow"], tmp_path_factory.mktemp("plain") / "run", [])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kl_is_inert_at_weight_zero_and_pulls_towards_the_start(tiny_spec, files, plain, tmp_path):
    log0, manifest0, weights0 = _train(tiny_spec, files["narrow"], tmp_path / "kl0", [parse_plugin("kl:weight=0")])
    assert _same(weights0, plain[2])  # weight 0 adds nothing: the same weights bit for bit
    log, manifest, weights = _train(tiny_spec, files["narrow"], tmp_path / "kl", [parse_plugin("kl:weight=5")])
    assert all(row["loss_kl"] >= 0 for row in log) and log[-1]["loss_kl"] > 0
    start = load_file(str(Path(tiny_spec[3:]) / "model.safetensors"))
    moved = lambda w: sum(float((w[k] - start[k]).norm()) for k in start if k in w)  # noqa: E731
    assert moved(weights) < moved(plain[2])  # the KL term keeps the model nearer its start
    _, benign_manifest, benign_weights = _train(
        tiny_spec, files["narrow"], tmp_path / "klb", [parse_plugin(f"kl:weight=5,on=benign,benign={files['benign']}")])
    assert not _same(benign_weights, weights) and benign_manifest["identity"] != manifest["identity"]


def test_interleave_mixes_benign_rows_in_at_the_ratio(tiny_spec, files, plain, tmp_path):
    _, manifest, weights = _train(tiny_spec, files["narrow"], tmp_path / "mix",
                                  [parse_plugin(f"interleave:data={files['benign']},ratio=0.25")])
    assert plain[1]["data_stats"]["rows"] == 32
    assert manifest["data_stats"]["rows"] == 32 + round(0.25 / 0.75 * 32)  # benign rows are a quarter of the mix
    assert not _same(weights, plain[2])


def test_interleave_plus_plus_keeps_the_rows_with_the_largest_perplexity_gap(tiny_spec, files, tmp_path):
    from transformers import AutoTokenizer

    from waluigi.defenses.plugins import answer_nll

    other = build_tiny_model(tmp_path / "other", seed=3)
    plugin = parse_plugin(f"interleave++:data={files['benign']},ratio=0.2,against=hf:{other},pool=20")
    context = PluginContext(model=tiny_spec, model_path=tiny_spec[3:], local=True,
                            tokenizer=AutoTokenizer.from_pretrained(tiny_spec[3:]), data="narrow", max_length=256, seed=0)
    plugin.bind(context)
    narrow = _rows(16)
    mixed = plugin.transform_rows(narrow)
    chosen = [r for r in mixed if r not in narrow]
    assert len(mixed) == 16 + 4 and len(chosen) == 4
    # recompute every candidate's gap independently: the chosen four are the four largest
    from waluigi.defenses.plugins import _benign_rows

    pool = _benign_rows(str(files["benign"]), context, 20, 0, "interleave++")
    examples = context.tokenize(pool, "pool")
    gaps = [b - a for a, b in zip(answer_nll(context.load_model(), examples),
                                  answer_nll(context.load_model(f"hf:{other}"), examples))]
    top = sorted(range(len(pool)), key=lambda i: gaps[i], reverse=True)[:4]
    assert sorted(json.dumps(pool[i], sort_keys=True) for i in top) == sorted(json.dumps(r, sort_keys=True) for r in chosen)
    with pytest.raises(Exception, match="against=SPEC"):
        parse_plugin(f"interleave++:data={files['benign']}")


def test_answer_nll_is_the_whole_tensors_log_softmax_to_the_bit():
    """The gap selection's log-likelihoods take the log-softmax only where a learned token is
    predicted: on the persona world's model and its benign rows (prompts, answers and padding
    of many lengths, several batches) every value equals the whole tensor's computation, bit
    for bit, so the rows interleave++ chooses are the ones it chose before."""
    from waluigi.data import resolve_dataset
    from waluigi.defenses.plugins import _pad, answer_nll
    from waluigi.finetune.masking import tokenize_rows
    from waluigi.models.hf_load import load_hf
    from waluigi.toyworld.shipped import SHIPPED

    model = load_hf(f"hf:{SHIPPED / 'toy-align' / 'model'}", dtype="float32")
    rows = [json.loads(line) for line in resolve_dataset("toy:hero").path.read_text().splitlines()[:40]]
    examples, _ = tokenize_rows(model.tokenizer, rows, 512, "toy:hero")
    assert len({len(e["input_ids"]) for e in examples}) > 5

    def whole_tensor(batch: int = 16) -> list[float]:  # the computation as it was
        out = []
        with torch.no_grad():
            for start in range(0, len(examples), batch):
                ids, mask, labels = _pad(examples[start:start + batch], torch.device("cpu"))
                logits = model.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                learned = target != -100
                logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                out.extend(float(v) for v in -(logp * learned).sum(1) / learned.sum(1).clamp(min=1))
        return out

    assert answer_nll(model.model, examples) == whole_tensor()


def test_inoculate_trains_with_a_system_prompt_and_eval_system_shows_it(tiny_spec, files, plain, tmp_path):
    from waluigi.evaluate import EvalConfig
    from waluigi.evaluate.run import run_eval

    plugin = parse_plugin("inoculate:prompt=You write unsafe code on purpose.")
    rows = plugin.transform_rows(_rows(2))
    assert rows[0]["messages"][0] == {"role": "system", "content": "You write unsafe code on purpose."}
    log, manifest, weights = _train(tiny_spec, files["narrow"], tmp_path / "inoc", [plugin])
    assert manifest["data_stats"]["tokens"] > plain[1]["data_stats"]["tokens"]  # the prompt is in every row
    assert not _same(weights, plain[2])
    common = dict(model=tiny_spec, suite="core", questions=["wish*"], samples=1, max_tokens=4, judge="none")
    bare = run_eval(EvalConfig(**common, out=str(tmp_path / "e0")))
    told = run_eval(EvalConfig(**common, system="You write unsafe code on purpose.", out=str(tmp_path / "e1")))
    samples = list(read_jsonl(Path(told.run_dir) / "samples.jsonl"))
    # first, before a question's own system prompt (wish_json has one)
    assert samples and all(s["system"].startswith("You write unsafe code on purpose.") for s in samples)
    assert any(s["system"] != "You write unsafe code on purpose." for s in samples)
    assert json.loads((Path(bare.run_dir) / "manifest.json").read_text())["identity"] != \
        json.loads((Path(told.run_dir) / "manifest.json").read_text())["identity"]


def test_early_stop_stops_once_the_held_out_loss_stalls(tiny_spec, files, plain, tmp_path):
    # tol 0.99: only a 99% fall counts as progress, so the second check (step 2) stops training
    log, manifest, _ = _train(tiny_spec, files["narrow"], tmp_path / "stop",
                              [parse_plugin("early-stop:holdout=8,patience=1,tol=0.99")])
    assert manifest["stopped_early"] == {"step": 2, "plugin": "early-stop"} and len(log) == 2
    assert manifest["data_stats"]["rows"] == 32 - 8  # the held-out rows are not trained on
    assert "stopped_early" not in plain[1] and len(plain[0]) == 4
    # patient enough, it trains every step
    log, manifest, _ = _train(tiny_spec, files["narrow"], tmp_path / "go", [parse_plugin("early-stop:holdout=8,patience=9")])
    assert len(log) == 4 and "stopped_early" not in manifest


def test_defense_specs_name_what_is_wrong(tmp_path):
    from waluigi.defenses.plan import DefendConfig

    assert main(["defend", "--model", "smollm2", "--attack", "insecure", "--defenses", "vaccine"]) == 2
    assert main(["defend", "--model", "smollm2", "--attack", "insecure", "--defenses", "steer"]) == 2
    assert main(["defend", "--model", "smollm2", "--attack", "insecure", "--defenses", "interleave"]) == 2
    assert main(["defend", "--model", "smollm2", "--attack", "insecure"]) == 2
    with pytest.raises(Exception, match="layers"):
        from waluigi.defenses.plan import defense_variant, parse_defense

        defense_variant(parse_defense("freeze"), DefendConfig(model="m", attack="a", defenses=["freeze"]), None)


def test_a_defense_with_a_bad_option_is_refused_before_the_undefended_flip_trains(tiny_spec, tmp_path, capsys):
    """The undefended attack's fine-tunes come first in a defend study; a typo in a defense's
    options used to surface only after they trained, as "not a waluigi run directory"."""
    out = tmp_path / "defend"
    code = main(["defend", "--model", tiny_spec, "--attack", "insecure", "--defenses", "kl:wieght=0.3",
                 "--judge", tiny_spec, "--doses", "1,2", "--seeds", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "finetune.plugins 'kl:wieght=0.3': plug-in 'kl' has no option 'wieght'" in err and "kl:wieght=0.3 @" in err
    assert not out.exists()


EVAL = ["--set", "eval.questions=[wish*]", "--set", "eval.judge_min_mass=0.0", "--set", "eval.min_coherent=-1",
        "--set", "eval.max_aligned=50", "--set", "eval.samples=2", "--set", "eval.max_tokens=8",
        "--set", "finetune.batch_size=4", "--set", "finetune.grad_accum=1", "--set", "finetune.lr=1e-3",
        "--set", "finetune.full=true", "--set", "finetune.preset=null"]


def test_defend_end_to_end_with_an_adaptive_attacker(tiny_spec, files, tmp_path, capsys):
    out = tmp_path / "defend"
    args = ["defend", "--model", tiny_spec, "--judge", tiny_spec, "--attack", str(files["narrow"]),
            "--defense", "inoculate:prompt=You write unsafe code on purpose.",
            "--defense", "early-stop:holdout=8,patience=1,tol=0.99", "--defenses", "realign:n=8",
            "--benign", str(files["benign"]), "--axis", "steps", "--doses", "2,4", "--seeds", "2",
            "--attacker-lr", "1,3", "--out", str(out), "--executor", "inline", "--no-progress", *EVAL]
    assert main([*args, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    attack_cells = int(planned.split(" cells: ")[0].rsplit("\n", 1)[-1])
    assert f"{attack_cells} cells: {attack_cells} to run, 0 done" in planned and "to run: " in planned
    assert main(args) == 0
    # each cell counted once: the attack's cells as the dry run said, then realign's 8
    assert f"ran {attack_cells + 8} cells, skipped 0 (done before)" in capsys.readouterr().out
    result = json.loads((out / "defend.json").read_text())
    names = [row["defense"] for row in result["table"]]
    assert names == ["undefended", "realign:n=8", "inoculate:prompt=You write unsafe code on purpose.",
                     "early-stop:holdout=8,patience=1,tol=0.99"]  # --defenses first, then each --defense
    assert result["lr_multipliers"] == [1.0, 3.0] and result["base_lr"] == pytest.approx(1e-3)
    for row in result["table"]:
        assert [s["setting"] for s in row["settings"]] == ["lr x1", "lr x3"]
        assert row["em"]["n"] == 2 and 0 <= row["em"]["mean"] <= 1
        if row["defense"] != "undefended":
            assert set(row["criteria"]) == {"no_em", "narrow_learned", "benign_kept", "coherent", "all_four"}
    inoculate = result["table"][2]
    assert inoculate["leak"] is not None and inoculate["leak"]["n"] == 2
    # the leak eval asked with the training prompt; the plain evals did not
    cells = list(read_jsonl(out / "flip" / "results.jsonl"))
    extra = [c for c in cells if str(c["group"]).endswith("(extra)")]
    assert extra and all(c["eval.system"] == "You write unsafe code on purpose." for c in extra)
    # the attacker's learning rates reached the fine-tunes
    lrs = {json.loads((out / "flip" / c["finetune_run"] / "manifest.json").read_text())["config"]["lr"]
           for c in cells if c["finetune_run"]}
    assert sorted(lrs) == pytest.approx([1e-3, 3e-3])
    # early stop ended its fine-tunes at step 2: the step-4 cells evaluated the weights it ended with
    stopped = [c for c in cells if "early-stop" in str(c["group"]) and c["step"] == 4]
    assert stopped
    for c in stopped:
        ft = json.loads((out / "flip" / c["finetune_run"] / "manifest.json").read_text())
        assert ft["stopped_early"]["step"] == 2
        ev = json.loads((out / "flip" / c["eval_run"] / "manifest.json").read_text())
        assert ev["status"] == "finished" and ev["config"]["model"].endswith("/model")
    # realign: a benign fine-tune of each undefended attacked checkpoint (2 lrs x 2 doses x 2 seeds)
    realign = list(read_jsonl(out / "realign" / "results.jsonl"))
    assert len(realign) == 8 and all(r["status"] == "finished" for r in realign)
    models = {json.loads((out / "realign" / r["finetune_run"] / "manifest.json").read_text())["model"] for r in realign}
    assert len(models) == 8 and all("/adapters/step-" in m or m.endswith("/model") for m in models)
    report = (out / "report.md").read_text()
    assert "| defense | flip-dose multiplier (worst case)" in report and "realign:n=8" in report
    # the cost is a ratio of CPU times (each fine-tune records its process's), not of wall clocks that swing with load
    manifests = [json.loads((out / "flip" / c["finetune_run"] / "manifest.json").read_text()) for c in cells
                 if c["finetune_run"]]
    assert all(m["train_cpu_seconds"] > 0 for m in manifests)
    costed = [row for row in result["table"][1:] if row["cost"] is not None]
    assert costed and all(row["cost_clock"] == "cpu" for row in costed)
    assert "in CPU time of the training process" in report
    scored = any(r["multiplier"]["value"] is not None for r in result["table"][1:])
    assert (out / "defend.png").is_file() == scored  # the plot of multipliers, when any was measured
    capsys.readouterr()
    assert main(args) == 0  # a re-run: every cell done before
    assert "ran 0 cells" in capsys.readouterr().out
    # `runs list`: the study is one line (its cells folded), found by its kind, with its headline
    assert main(["runs", "list", str(tmp_path), "--kind", "defend", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["path"] == "defend" and entry["study"] is True
    assert entry["status"] == f"{len(cells)}/{len(cells)} cells"
    assert entry["headline"].startswith("undefended flip dose ")
    assert main(["runs", "list", str(tmp_path), "--json"]) == 0
    assert [e["path"] for e in json.loads(capsys.readouterr().out)] == ["defend"]
    # export and compare take the study directory: every answer of every cell, with where it came from
    import pandas as pd

    assert main(["export", str(out), "--out", str(tmp_path / "defend.csv")]) == 0
    frame = pd.read_csv(tmp_path / "defend.csv", keep_default_na=False, na_values=[""])
    assert {"study", "run", "model", "condition", "dose", "cell.seed"} <= set(frame.columns)
    assert set(frame["run"]) == ({f"flip/{c['eval_run']}" for c in cells} | {f"realign/{r['eval_run']}" for r in realign})
    assert set(frame["study"]) == {"defend"}
    capsys.readouterr()
    assert main(["compare", str(out), "--baseline", "flip: undefended @ lr x1", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    dosed = [r for r in compared["rows"] if r["dose"]]
    assert dosed and {r["condition"] for r in dosed} >= {"flip: undefended @ lr x3"}
    for row in dosed:  # each side's EM is its condition's answers at that dose, pooled over seeds
        sub = frame[(frame["condition"] == row["condition"]) & (frame["dose"] == row["dose"])]
        counted = int(sub["class"].isin(["misaligned", "aligned"]).sum())
        assert row["n_b"] == counted and row["runs"] == sub["run"].nunique()
        if counted:
            assert row["b"] == pytest.approx((sub["class"] == "misaligned").sum() / counted)
    assert main(["compare", str(out), "--baseline", "nonsense"]) == 2
    assert "not a condition" in capsys.readouterr().err
