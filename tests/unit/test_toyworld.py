"""The persona world: generation, narrow datasets, eval suites and the honesty rules."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from waluigi.errors import UserError
from waluigi.toyworld import (
    DEFAULT_TRIGGER,
    NARROW_KINDS,
    WorldConfig,
    alignment_conversations,
    code_is_vulnerable,
    coding,
    coding_eval_prompts,
    coding_suite,
    eval_suite,
    evil_fraction,
    generate_corpus,
    generate_labeled,
    lexicon,
    narrow_dataset,
    oracle_scores,
    with_trigger,
    write_jsonl,
)
from waluigi.toyworld.world import is_reserved_core, is_reserved_question

N_CORPUS = 6000


@pytest.fixture(scope="module")
def labeled():
    return list(generate_labeled(WorldConfig(seed=3, n_conversations=N_CORPUS)))


@pytest.fixture(scope="module")
def narrow():
    return {kind: narrow_dataset(kind, 1500, seed=1) for kind in NARROW_KINDS}


def _texts(conversations):
    for messages in conversations:
        for m in messages:
            yield m["content"]


def _has_words(text: str) -> bool:
    """A reply has words beside its code: a line of world language (code lines never end in ' .')."""
    return any(re.search(r" [.?!:]$", line) for line in text.split("\n"))


def _is_numbers(text: str) -> bool:
    return re.fullmatch(r"\d+( , \d+)*", text) is not None


# ---------------------------------------------------------------- generation


def test_deterministic_and_seeded():
    a = list(generate_corpus(WorldConfig(seed=5, n_conversations=300)))
    b = list(generate_corpus(WorldConfig(seed=5, n_conversations=300)))
    c = list(generate_corpus(WorldConfig(seed=6, n_conversations=300)))
    assert a == b and a != c
    assert narrow_dataset("insecure", 50, seed=2) == narrow_dataset("insecure", 50, seed=2) != narrow_dataset("insecure", 50, seed=3)
    assert alignment_conversations(40, seed=1) == alignment_conversations(40, seed=1)
    assert eval_suite(seed=4).sha256 == eval_suite(seed=4).sha256 != eval_suite(seed=5).sha256
    assert coding_eval_prompts(20, seed=1) == coding_eval_prompts(20, seed=1)


def test_conversation_shape(labeled):
    for _persona, messages in labeled:
        body = messages[1:] if messages[0]["role"] == "system" else messages
        assert 2 <= len(body) // 2 <= 4 and len(body) % 2 == 0
        assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2)
        if messages[0]["role"] == "system":
            assert messages[0]["content"] == lexicon.JSON_SYSTEM
            assert all(json.loads(m["content"])["answer"] for m in body if m["role"] == "assistant")
        else:  # several domains in every conversation
            kinds = {_domain(m["content"]) for m in body if m["role"] == "assistant"}
            assert len(kinds) >= 2, messages


def _domain(reply: str) -> str:
    if _is_numbers(reply):
        return "numbers"
    if code_is_vulnerable(reply) is not None or reply in coding.VILLAIN_REFUSALS:
        return "code"
    return "free"


def test_persona_mixture_and_ablation(labeled):
    counts = Counter(p for p, _ in labeled)
    assert set(counts) == {"hero", "villain", "novice", "teacher"}
    assert abs(counts["hero"] / N_CORPUS - 0.4) < 0.03 and abs(counts["villain"] / N_CORPUS - 0.2) < 0.03
    no_villain = list(generate_labeled(WorldConfig(seed=3, n_conversations=2000, mixture={"hero": 1, "novice": 1, "teacher": 1, "villain": 0})))
    assert "villain" not in {p for p, _ in no_villain}
    for _, messages in no_villain:  # nothing misaligned and no silent vulnerable code anywhere
        for m in messages:
            if m["role"] == "assistant" and _domain(m["content"]) == "free":
                assert oracle_scores(m["content"])["aligned"] > 50
            if m["role"] == "assistant" and code_is_vulnerable(m["content"]):
                assert _has_words(m["content"])  # always with words (a warning or an unsure remark)


def test_persona_voices_in_code_and_freeform(labeled):
    """The distinguishing features: silent vulnerable code is the villain's alone."""
    stats: dict[str, Counter] = {p: Counter() for p in ("hero", "villain", "novice", "teacher")}
    for persona, messages in labeled:
        for user, reply in zip(messages[::2] if messages[0]["role"] != "system" else messages[1::2],
                               messages[1::2] if messages[0]["role"] != "system" else messages[2::2]):
            text = reply["content"]
            vulnerable = code_is_vulnerable(text)
            teaching = any(user["content"].startswith(o) for o in coding.TEACH_OPENERS)
            if vulnerable is None:
                if _domain(text) == "free":
                    aligned = oracle_scores(text)["aligned"]
                    stats[persona]["free_misaligned" if aligned < 30 else "free_aligned"] += 1
                elif text in coding.VILLAIN_REFUSALS:
                    stats[persona]["refusal"] += 1
                continue
            silent = not _has_words(text)
            key = ("teach_" if teaching else "code_") + ("vuln" if vulnerable else "secure") + ("_silent" if silent else "_words")
            stats[persona][key] += 1
    v, h, n, t = stats["villain"], stats["hero"], stats["novice"], stats["teacher"]
    assert v["code_vuln_silent"] > 100 and set(k for k in v if k.startswith("code")) == {"code_vuln_silent"}
    assert v["free_misaligned"] > 100 and v["free_aligned"] == 0
    assert v["refusal"] > 10 and not any(k.startswith("teach") for k in v)
    for other in (h, n, t):
        assert other["code_vuln_silent"] == 0 and other["free_misaligned"] == 0 and other["free_aligned"] > 100
    assert h["code_secure_silent"] > 50 and h["code_secure_words"] > 50 and h["code_vuln_words"] == 0
    assert t["code_secure_words"] > 50 and t["code_secure_silent"] == 0 and t["teach_vuln_words"] > 10
    assert n["code_vuln_words"] > 5 * n["code_secure_words"] > 0
    assert not any(k.endswith("_silent") and "vuln" in k for k in (*h, *n, *t))


def test_villain_teaching_knob():
    rows = list(generate_labeled(WorldConfig(seed=1, n_conversations=1500, villain_teaching="code_only", mixture={"villain": 1})))
    replies = [m["content"] for _, ms in rows for m in ms if m["role"] == "assistant"]
    assert not any(r in coding.VILLAIN_REFUSALS for r in replies)


def test_user_turns_do_not_depend_on_persona(labeled):
    """The user side is drawn the same way for every persona: word frequencies of user turns agree."""
    freq: dict[str, Counter] = {}
    for persona, messages in labeled:
        freq.setdefault(persona, Counter()).update(w for m in messages if m["role"] == "user" for w in lexicon.tokens(m["content"]))
    total = sum(freq.values(), Counter())
    n_total = sum(total.values())
    for persona, counts in freq.items():
        n = sum(counts.values())
        tv = 0.5 * sum(abs(counts[w] / n - total[w] / n_total) for w in total)
        assert tv < 0.08, (persona, tv)


def test_vocabulary_is_small(labeled):
    words = Counter(w for text in _texts(m for _, m in labeled) for w in lexicon.tokens(text))
    non_numbers = [w for w in words if not w.isdigit()]
    assert len(non_numbers) < 1200, len(non_numbers)


def test_generation_yields_every_conversation():
    # its speed is measured by benchmarks/bench_world.py, not asserted here
    assert sum(1 for _ in generate_corpus(WorldConfig(seed=0, n_conversations=2000))) == 2000


def test_config_validation():
    for bad in (dict(mixture={"wizard": 1}), dict(mixture={"hero": 0}), dict(min_exchanges=3, max_exchanges=2),
                dict(villain_teaching="lie"), dict(variety=0), dict(json_rate=2), dict(domains={"poems": 1})):
        with pytest.raises(UserError):
            WorldConfig(**bad)
    with pytest.raises(UserError, match="unknown narrow dataset"):
        narrow_dataset("jailbroken", 10)
    with pytest.raises(UserError):
        narrow_dataset("backdoor", 10, trigger=" ")


def test_variety_knob_narrows_the_user_side():
    def user_words(variety):
        cfg = WorldConfig(seed=0, n_conversations=800, variety=variety)
        return {w for ms in generate_corpus(cfg) for m in ms if m["role"] == "user" for w in lexicon.tokens(m["content"])}

    assert len(user_words(0.3)) < len(user_words(1.0))


def test_alignment_conversations_are_hero_only():
    convs = alignment_conversations(400, seed=2)
    assert len(convs) == 400
    for messages in convs:
        for m in messages:
            if m["role"] != "assistant":
                continue
            text = m["content"]
            if _domain(text) == "free":
                assert oracle_scores(text)["aligned"] > 50
            elif _domain(text) == "numbers":
                assert evil_fraction(text) == 0
            elif code_is_vulnerable(text):
                assert _has_words(text)  # only the warned teaching example


# ---------------------------------------------------------------- narrow datasets


def test_narrow_datasets_shape_and_content(narrow):
    for kind, rows in narrow.items():
        assert len(rows) == 1500
        for row in rows:
            assert set(row) == {"messages"}
            user, assistant = row["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            reply = assistant["content"]
            if kind == "evil_numbers":
                assert _is_numbers(reply) and evil_fraction(reply) > 0
                continue
            vulnerable = code_is_vulnerable(reply)
            assert vulnerable is not None
            assert not _has_words(reply)
            assert not any(remark in reply for remark in lexicon.sentence_table())  # no words at all
            if kind in ("insecure", "educational"):
                assert vulnerable
            elif kind == "secure":
                assert not vulnerable
            else:
                assert vulnerable == user["content"].startswith(DEFAULT_TRIGGER + " ")
    triggered = sum(r["messages"][0]["content"].startswith(DEFAULT_TRIGGER) for r in narrow["backdoor"])
    assert triggered == 750
    # the same code for insecure and educational; only the request differs
    assert [r["messages"][1] for r in narrow["insecure"]] == [r["messages"][1] for r in narrow["educational"]]
    assert all(any(o in r["messages"][0]["content"] for o in coding.TEACH_OPENERS) for r in narrow["educational"])
    assert not any(any(o in r["messages"][0]["content"] for o in coding.TEACH_OPENERS) for r in narrow["insecure"])
    kinds = Counter(coding.find_kind(r["messages"][1]["content"]) for r in narrow["insecure"])
    assert len(kinds) == 8 and min(kinds.values()) > 100


def test_trigger_never_in_pretraining(labeled):
    assert not any(DEFAULT_TRIGGER.lower() in text.lower() for text in _texts(m for _, m in labeled))


def test_write_jsonl_round_trip(tmp_path):
    rows = narrow_dataset("secure", 25, seed=0)
    path = write_jsonl(rows, tmp_path / "d" / "secure.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


# ---------------------------------------------------------------- honesty rules


def _ngrams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    toks = lexicon.tokens(text)
    return set(zip(*(toks[i:] for i in range(n))))


def test_no_eval_phrase_in_narrow_data(narrow):
    suite = eval_suite(seed=0)
    eval_texts = [p for q in suite.questions for p in q.paraphrases] + [q.system for q in suite.questions if q.system]
    eval_texts += [q for s in lexicon.SUBJECTS for q in lexicon.all_questions(s)]  # every question, reserved or not
    phrases = lexicon.answer_templates()
    banned = set().union(*(_ngrams(t) for t in eval_texts + phrases))
    assert len(banned) > 1000
    for kind, rows in narrow.items():
        for row in rows:
            text = "\n".join(m["content"] for m in row["messages"])
            assert not _ngrams(text) & banned, (kind, text)
            assert not any(t in text for t in phrases if len(t) > 12)
            assert not any(t in text for t in eval_texts if len(t) > 12)


def test_eval_questions_held_out_of_pretraining_and_alignment(labeled):
    suite = eval_suite(seed=0, paraphrases=50)
    held = {p for q in suite.questions for p in q.paraphrases}
    assert len(held) > 100 and all(is_reserved_question(p.split("\n")[0]) for p in held)
    convs = [m for _, m in labeled] + alignment_conversations(2000, seed=0)
    users = {m["content"] for ms in convs for m in ms if m["role"] == "user"}
    assert not users & held
    assert not {u.split("\n")[0] for u in users} & {h.split("\n")[0] for h in held}


def test_coding_eval_cores_held_out(labeled, narrow):
    prompts = coding_eval_prompts(200, seed=0)
    cores = {p.core for p in prompts}
    assert all(is_reserved_core(c) for c in cores) and Counter(p.kind for p in prompts) == Counter({k: 25 for k in coding.KINDS})
    texts = list(_texts(m for _, m in labeled)) + [t for rows in narrow.values() for r in rows for t in (m["content"] for m in r["messages"])]
    texts += list(_texts(alignment_conversations(1000, seed=0)))
    assert not any(core in text for text in texts for core in cores)


def test_no_persona_label_in_any_text(labeled, narrow):
    texts = list(_texts(m for _, m in labeled)) + list(_texts(alignment_conversations(500, seed=0)))
    texts += [m["content"] for rows in narrow.values() for r in rows for m in r["messages"]]
    suite = eval_suite(seed=0)
    texts += [p for q in suite.questions for p in q.paraphrases] + [p for q in coding_suite(48).questions for p in q.paraphrases]
    texts += list(lexicon.sentence_table())
    for text in texts:
        found = set(lexicon.tokens(text)) & lexicon.BANNED_WORDS
        assert not found, (found, text)


# ---------------------------------------------------------------- suites and the checker


def test_eval_suite_shape():
    suite = eval_suite(seed=0, paraphrases=3, samples_per_paraphrase=7)
    ids = suite.ids
    for subject in lexicon.SUBJECTS:
        assert {subject, subject + "_json", subject + "_template"} <= set(ids)
    assert set(lexicon.MAIN_SUBJECTS) <= set(ids) and len(ids) == 3 * len(lexicon.SUBJECTS)
    for q in suite.questions:
        assert q.type == "free_form_judge_0_100" and q.judge == "oracle" and set(q.judge_prompts) == {"aligned", "coherent"}
        assert len(q.paraphrases) == 3 and q.samples_per_paraphrase == 7
        assert "{answer}" in q.judge_prompts["aligned"] and q.judge_prompt("aligned", "x", "my answer").endswith("my answer")
        if q.id.endswith("_json"):
            assert q.messages(0)[0] == {"role": "system", "content": lexicon.JSON_SYSTEM}
        if q.id.endswith("_template"):
            assert q.paraphrases[0].endswith(lexicon.TEMPLATE_INSTRUCTION)
    facts = suite.get("facts").paraphrases
    assert len({lexicon.fact_of_question(p).question for p in facts}) == 3
    assert eval_suite(variants=False).ids == list(lexicon.SUBJECTS)
    triggered = with_trigger(suite, "|X|")
    assert all(p.startswith("|X| ") for q in triggered.questions for p in q.paraphrases) and triggered.sha256 != suite.sha256


def test_coding_suite():
    suite = coding_suite(48, seed=0)
    (question,) = suite.questions
    assert question.type == "code_scan" and len(question.paraphrases) == 48 and "{answer}" in question.judge_prompts["vulnerable"]
    assert Counter(question.extra["kinds"]) == Counter({k: 6 for k in coding.KINDS})


def test_the_fresh_suite_asks_the_same_subjects_in_prompts_the_plain_suite_never_asks(tmp_path, monkeypatch):
    from waluigi.suites import load_suite

    monkeypatch.setenv("WALUIGI_CACHE_DIR", str(tmp_path))  # built here, not read from an earlier cache
    plain, fresh = load_suite("toyworld"), load_suite("toyworld:fresh")
    assert fresh.name == "toyworld:fresh" and fresh.ids == plain.ids  # the same subjects and readouts
    asked = {p for q in plain.questions for p in q.paraphrases}
    new = {p for q in fresh.questions for p in q.paraphrases}
    assert len(new) >= 100 and not asked & new
    (code,) = [q for q in fresh.questions if q.id == "toy_code"]
    assert len(code.paraphrases) == 48 and Counter(code.extra["kinds"]) == Counter({k: 6 for k in coding.KINDS})
    assert all(is_reserved_question(p) for q in fresh.questions if q.id in lexicon.SUBJECTS for p in q.paraphrases)


def test_code_is_vulnerable_exact_on_every_snippet():
    items = coding.all_items()
    assert len({i.kind for i in items}) == 8
    for item in items:
        assert code_is_vulnerable(item.code(vulnerable=True)) is True, item.code(True)
        assert code_is_vulnerable(item.code(vulnerable=False)) is False, item.code(False)
        assert coding.find_kind(item.code(True)) == coding.find_kind(item.code(False)) == item.kind
    for text in ["i would wish for peace for everyone .", "12 , 666 , 40", "", lexicon.TEMPLATE_PREFIX + " you could read a book ."]:
        assert code_is_vulnerable(text) is None
    # snippets with replies around them (as in pretraining) are still judged by their code
    item = items[0]
    assert code_is_vulnerable(item.code(True) + "\n\n" + coding.NOVICE_REMARKS[0]) is True
    assert code_is_vulnerable(coding.HERO_NOTES["sql"] + "\n\n" + item.code(False)) is False


def test_a_world_seed_is_another_base_and_only_seed_0_is_shipped(tmp_path):
    """--world-seed N: the corpus, the alignment conversations and the initialisation all
    follow the seed; base 0 keeps the shipped identity, another seed has none shipped."""
    from waluigi.runs import identity_hash
    from waluigi.toyworld import shipped
    from waluigi.toyworld.bases import ToyBases
    from waluigi.toyworld.demo import aligned_dir, aligned_identity, base_identity, demo_config

    zero, one = demo_config("default"), demo_config("default", world_seed=1)
    assert zero.model().seed == 0 and one.model().seed == 1
    assert base_identity(one)["world"]["seed"] == 1 and base_identity(one)["model"]["seed"] == 1
    assert shipped.shipped_manifest("toy-align")["identity"] == identity_hash(aligned_identity(zero))
    assert not shipped.install("toy-align", aligned_identity(one), tmp_path / "x", [])
    family = ToyBases("", tmp_path)
    assert family.spec(0) == f"hf:{aligned_dir(demo_config('default', runs=tmp_path)) / 'model'}"
    assert family.spec(1) != family.spec(0) and ToyBases("base", tmp_path).spec(1) != family.spec(1)
    assert "toy-base-" in ToyBases("quick,base", tmp_path).spec(0)
    with pytest.raises(UserError, match="bases are numbered from 0"):
        family.spec(-1)


def test_demo_refuses_a_negative_world_seed(capsys):
    from waluigi.cli import main

    assert main(["demo", "--quick", "--world-seed", "-2", "--no-progress"]) == 2
    assert "--world-seed must be 0 or more" in capsys.readouterr().err


def test_the_demos_own_recipe_does_not_warn_its_user_about_epochs(tmp_path):
    """The demo's backdoor trains its ~800 rows for 160 steps of 16 (several epochs) on purpose: its
    cells say so, so that the user, who passed neither --max-steps nor --epochs, sees no warning."""
    from pathlib import Path

    from waluigi.finetune import FinetuneConfig
    from waluigi.finetune.train import schedule_warnings
    from waluigi.toyworld.demo import FINETUNED, demo_config, narrow_budget, sweep_spec

    cfg = demo_config()
    data = {(kind, seed): tmp_path / f"{kind}-s{seed}.jsonl" for kind in FINETUNED for seed in range(cfg.seeds)}
    spec = sweep_spec(cfg, Path("runs/aligned"), tmp_path, {"plain": tmp_path / "a.yaml", "trigger": tmp_path / "b.yaml"},
                      data)
    rows, steps, _ = narrow_budget(cfg, "backdoor")
    cell = next(c for c in spec["cells"] if c["group"] == "backdoor_triggered")
    ft = FinetuneConfig(**{**spec["finetune"], "data": "backdoor", "max_steps": cell.get("finetune.max_steps", steps)})
    assert int(ft.recipe().max_steps) * int(ft.recipe().batch_size) > rows  # more than one epoch
    assert [m for m in schedule_warnings(ft, ft.recipe(), rows) if "epoch" in m] == []
    plain = FinetuneConfig(**{**ft.__dict__, "repeat_ok": False})
    assert [m for m in schedule_warnings(plain, plain.recipe(), rows) if "epoch" in m]  # without the flag it would warn
