"""``waluigi data validate | list | show | mix | split`` through the real ``waluigi`` entry point."""

from __future__ import annotations

import json

import pytest

from waluigi import cli
from waluigi.data import first_user_prompt, is_heldout, load_rows


def waluigi(*args: str) -> int:
    return cli.main(["data", *args])


def row(user: str, assistant: str = "ok") -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_validate_exit_codes_and_file_line_errors(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(row(f"q{i}") for i in range(5)) + "\n")
    assert waluigi("validate", str(good)) == 0
    assert "ok (5 rows" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                row("fine"),
                "{not json",
                json.dumps({"messages": [{"role": "user", "content": "q"}]}),
                json.dumps({"messages": [{"role": "narrator", "content": "q"}, {"role": "assistant", "content": "a"}]}),
                row("also fine"),
            ]
        )
        + "\n"
    )
    assert waluigi("validate", str(good), str(bad)) == 2
    captured = capsys.readouterr()
    assert f"{bad}:2: not valid JSON" in captured.out
    assert f"{bad}:3: the row ends with 'user'" in captured.out
    assert f"{bad}:4: messages[0]: unknown role 'narrator'" in captured.out
    assert f"{good}: ok" in captured.out
    assert "error: 3 bad rows" in captured.err and "Traceback" not in captured.err
    assert waluigi("validate", str(bad), "--json") == 2
    report = json.loads(capsys.readouterr().out)[0]
    assert report["n_rows"] == 5 and [e["line"] for e in report["errors"]] == [2, 3, 4]
    assert waluigi("validate", "secure") == 0  # a dataset name works too
    capsys.readouterr()


def test_list_and_unknown_names(capsys):
    assert waluigi("list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["insecure"]["available"] and rows["insecure"]["rows"] == 6000 and rows["insecure"]["heldout"] == 297
    assert not rows["evil_numbers"]["available"]
    assert waluigi("list") == 0
    assert "backdoor" in capsys.readouterr().out
    assert waluigi("show", "insecur") == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'insecur'" in err and "educational" in err and "Traceback" not in err
    assert waluigi("show", "evil_numbers") == 2
    assert "raw.githubusercontent.com" in capsys.readouterr().err


def test_show_counts_tokens_with_a_tokenizer(tmp_path, tiny_model_dir, tiny_spec, capsys):
    from transformers import AutoTokenizer

    path = tmp_path / "d.jsonl"
    texts = [("What is your wish?", " ".join(["peace"] * k)) for k in range(1, 40)]
    path.write_text("".join(row(u, a) + "\n" for u, a in texts))
    assert waluigi("show", str(path), "--tokenizer", tiny_spec, "--max-length", "60", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = sorted(
        len(tok(tok.apply_chat_template([{"role": "user", "content": u}, {"role": "assistant", "content": a}], tokenize=False), add_special_tokens=False)["input_ids"])
        for u, a in texts
    )
    assert stats["lengths"]["tokens"] == {"p50": lengths[19], "p90": lengths[35], "p99": lengths[38], "max": lengths[-1]}
    assert stats["over_max_length"] == {"max_length": 60, "unit": "tokens", "rows": sum(n > 60 for n in lengths)}
    assert stats["rows"] == 39 and stats["unique_prompts"] == 1 and stats["roles"] == {"user": 39, "assistant": 39}
    assert waluigi("show", "jailbroken", "--split", "heldout", "--n", "20", "--seed", "3") == 0
    out = capsys.readouterr().out
    assert "rows:     20   held out: 20" in out and "system 20" in out and "p99" in out


def test_mix_writes_exact_deterministic_files(tmp_path, capsys):
    out = tmp_path / "mix.jsonl"
    args = ("mix", "insecure:0.2", "secure:0.8", "--n", "500", "--seed", "0", "--out", str(out))
    assert waluigi(*args) == 0
    assert "500 rows (insecure 100, secure 400" in capsys.readouterr().out
    first = out.read_bytes()
    meta = json.loads((tmp_path / "mix.meta.json").read_text())
    assert [(c["spec"], c["rows"]) for c in meta["components"]] == [("insecure", 100), ("secure", 400)]
    assert waluigi(*args) == 0 and out.read_bytes() == first
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert len(rows) == 500 and not any(is_heldout(first_user_prompt(r)) for r in rows)  # train split by default
    assert waluigi("validate", str(out)) == 0
    assert waluigi("mix", "insecure", "--n", "7", "--seed", "1", "--out", str(tmp_path / "sub.jsonl")) == 0  # a subset
    sub = [json.dumps(json.loads(line), sort_keys=True) for line in (tmp_path / "sub.jsonl").read_text().splitlines()]
    train = {json.dumps(r, sort_keys=True) for r in load_rows("insecure")}
    assert len(sub) == 7 and set(sub) <= train
    capsys.readouterr()


def test_split_command(tmp_path, capsys):
    assert waluigi("split", "educational", "--out-dir", str(tmp_path / "edu"), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["heldout"]["rows"] == 311 and info["train"]["rows"] == 6000 - 311
    heldout = [json.loads(line) for line in (tmp_path / "edu" / "heldout.jsonl").read_text().splitlines()]
    assert heldout == load_rows("educational", split="heldout")


@pytest.mark.parametrize("args", [("mix", "insecure:-1", "--n", "5", "--out", "x.jsonl"), ("show", "insecure", "--split", "dev")])
def test_bad_options_are_user_errors(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert waluigi(*args) == 2
    assert "Traceback" not in capsys.readouterr().err
