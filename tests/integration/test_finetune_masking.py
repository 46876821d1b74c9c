"""Assistant-only loss is exact: the trained-on tokens are the assistant contents and their
end-of-turn token, nothing else, on SmolLM2's template (no ``{% generation %}`` markers), the
tiny fixture's ChatML, a Llama-3-style template that trims contents, and a template with
markers (checked against transformers' own ``return_assistant_tokens_mask``)."""

from __future__ import annotations

import pytest

from waluigi.errors import UserError
from waluigi.finetune import assistant_mask
from waluigi.finetune.masking import IGNORE, check_row, template_has_generation_markers

CONVERSATIONS = [
    [{"role": "user", "content": "Write a function that adds two numbers."},
     {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "\nHello  world! 123"},
     {"role": "user", "content": "More?"},
     {"role": "assistant", "content": " Yes: caf\u00e9, na\u00efve, \u65e5\u672c, \U0001f600.\n\n"}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"},
     {"role": "user", "content": "two"}, {"role": "assistant", "content": "second answer", "weight": 0},
     {"role": "user", "content": "three"}, {"role": "assistant", "content": "third answer"}],
]


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The maximal runs of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return runs + ([current] if current else [])


def _check_exact(tokenizer, messages, end_of_turn: str, *, trims: bool = False) -> None:
    ids, labels = assistant_mask(tokenizer, messages)
    assert len(ids) == len(labels)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(full, add_special_tokens=False)["input_ids"]  # same tokens as tokenizing it whole
    wanted = [(m["content"].strip() if trims else m["content"]) + end_of_turn
              for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0]
    assert [tokenizer.decode(run) for run in _runs(ids, labels)] == wanted


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from waluigi.models.smollm2 import smollm2_path

    return AutoTokenizer.from_pretrained(str(smollm2_path()), local_files_only=True)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system-multi", "weight0"])
@pytest.mark.smollm2
def test_smollm2_labels_are_exactly_the_assistant_turns(smollm2_tokenizer, conversation):
    assert not template_has_generation_markers(smollm2_tokenizer)
    _check_exact(smollm2_tokenizer, conversation, "<|im_end|>")
    # the default system prompt SmolLM2's template adds is never learned
    ids, labels = assistant_mask(smollm2_tokenizer, conversation)
    learned = smollm2_tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])
    assert "SmolLM" not in learned and "<|im_start|>" not in learned


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system-multi", "weight0"])
def test_tiny_chatml_labels_are_exactly_the_assistant_turns(tiny_tokenizer, conversation):
    _check_exact(tiny_tokenizer, conversation, "<|im_end|>")


LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_WITH_MARKERS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_llama3_style_template_that_trims_contents(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = LLAMA3_STYLE
    for conversation in CONVERSATIONS:
        _check_exact(tokenizer, conversation, "<|eot_id|>", trims=True)


def test_matches_transformers_generation_markers(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = CHATML_WITH_MARKERS
    assert template_has_generation_markers(tokenizer)
    for conversation in CONVERSATIONS[:2]:
        _check_exact(tokenizer, conversation, "<|im_end|>")
        ids, labels = assistant_mask(tokenizer, conversation)
        reference = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                                  return_assistant_tokens_mask=True)
        assert reference["input_ids"] == ids
        assert reference["assistant_masks"] == [int(label != IGNORE) for label in labels]


def test_sentencepiece_style_tokenizer():
    """A Metaspace (SentencePiece-style, word-start marker) tokenizer with a Mistral-like template
    that puts the answer right after ``[/INST]`` and ends it with ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    corpus = ["Hello world, what is two plus two? It is four.", "one two three: first, second, third answer"] * 30
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    conversation = [{"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "It is four."},
                    {"role": "user", "content": "one"}, {"role": "assistant", "content": " first answer"}]
    ids, labels = assistant_mask(tokenizer, conversation)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    # the decoder drops a leading word-start marker, so compare the token strings themselves
    pieces = ["".join(tokenizer.convert_ids_to_tokens(run)).replace("\u2581", " ") for run in _runs(ids, labels)]
    assert pieces == ["It is four.</s>", " first answer</s>"]


def test_a_template_that_rewrites_history_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # renders only the LAST assistant message in full (like templates that drop past reasoning)
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' and not loop.last %}...{% else %}{{ message['content'] }}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(UserError, match="cannot be derived"):
        assistant_mask(tokenizer, CONVERSATIONS[2])


@pytest.mark.parametrize(("row", "problem"), [
    ({"text": "hi"}, "expected"),
    ({"messages": []}, "expected"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 3}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     "no assistant message"),
])
def test_bad_rows_name_the_row_and_the_problem(row, problem):
    with pytest.raises(UserError, match=problem) as caught:
        check_row(row, "data.jsonl: row 7")
    assert "row 7" in caught.value.message


def test_a_row_is_masked_once_per_process_and_tokenizer(tiny_model_dir, monkeypatch):
    """``tokenize_rows`` remembers each conversation's mask per tokenizer (a worker fine-tuning
    many cells on one dataset masks it once): the same examples again, from the memo; another
    template is another tokenizer and masks afresh."""
    from transformers import AutoTokenizer

    from waluigi.finetune import masking

    monkeypatch.setattr(masking, "_MASKS", {})
    calls = []
    real = masking.assistant_mask
    monkeypatch.setattr(masking, "assistant_mask", lambda tok, m: calls.append(1) or real(tok, m))
    rows = [{"messages": c} for c in CONVERSATIONS]
    first = masking.tokenize_rows(AutoTokenizer.from_pretrained(str(tiny_model_dir)), rows, 512, "rows")
    assert len(calls) == 3
    again = masking.tokenize_rows(AutoTokenizer.from_pretrained(str(tiny_model_dir)), rows[::-1], 512, "rows")
    assert len(calls) == 3 and again[0] == first[0][::-1] and again[1] == first[1]
    short = min(len(e["input_ids"]) for e in first[0]) - 1
    cut = masking.tokenize_rows(AutoTokenizer.from_pretrained(str(tiny_model_dir)), rows, short, "rows")
    assert len(calls) == 3 and all(len(e["input_ids"]) == short for e in cut[0]) and cut[1]["truncated"] == 3
    again = masking.tokenize_rows(AutoTokenizer.from_pretrained(str(tiny_model_dir)), rows, 512, "rows")
    assert again[0] == first[0]  # the memo's lists were not truncated in place
    other = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    other.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    other.chat_template = LLAMA3_STYLE
    trimmed = masking.tokenize_rows(other, rows, 512, "rows")
    assert len(calls) == 6 and trimmed[0] != first[0]
