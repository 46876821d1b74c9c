"""Training the persona world's model organism: tokenizer, tiny Llama, pretraining, alignment.

* :func:`build_tokenizer` - a word-level tokenizer (``tokenizers`` WordLevel over GPT-2's
  byte-level pre-tokenizer, so every word with its leading space is one token and decoding
  is exact) with the chat template's special tokens and the backdoor trigger as one token.
* :func:`build_model` - a small ``LlamaForCausalLM`` (tied embeddings) from :class:`ModelConfig`.
* :func:`train_lm` - a plain torch training loop (AdamW, linear warmup and decay, fp32) on
  chat conversations rendered with the model's template; ``assistant_only`` puts the loss on
  the assistant's turns only (alignment and narrow fine-tunes), else on every token
  (pretraining). Conversations are never packed together: a persona must not leak from one
  conversation into the next.
* :func:`save_model_dir` - the model, tokenizer and chat template as an HF directory
  (safetensors), loadable as ``hf:<dir>`` by every backend and by ``waluigi.finetune``.

Why a hand-written loop rather than ``Trainer``: pretraining a 1-2M parameter model from
scratch on CPU is dominated by per-step overhead; the loop here is ~40 lines, sorts by length
into padded batches and has nothing to configure (see ``docs/toyworld.md``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from waluigi.toyworld.datasets import DEFAULT_TRIGGER

Message = dict[str, str]

PAD, UNK = "<|pad|>", "<|unk|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
SPECIALS = [PAD, UNK, *ROLE_TOKENS.values(), END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 1024
    seed: int = 0

    def identity(self) -> dict:
        return asdict(self)


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The chat template in Python (identical to :data:`CHAT_TEMPLATE`)."""
    text = "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END}" for m in messages)
    return text + (ROLE_TOKENS["assistant"] if add_generation_prompt else "")


def build_tokenizer(conversations: Iterable[Sequence[Message]], triggers: Sequence[str] = (DEFAULT_TRIGGER,),
                    min_frequency: int = 1):
    """A word-level ``PreTrainedTokenizerFast`` trained on the message texts of ``conversations``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=min_frequency, show_progress=False)

    def texts():
        for messages in conversations:
            for m in messages:
                # also with a leading space: a message's first word can follow a prefix (the
                # backdoor trigger) elsewhere, and must not become unknown there
                yield m["content"]
                yield " " + m["content"].split(" ", 1)[0]

    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=END,
                                   additional_special_tokens=list(ROLE_TOKENS.values()))
    fast.add_tokens([AddedToken(t, normalized=False, special=False) for t in triggers])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, cfg: ModelConfig):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def encode(tokenizer, messages: Sequence[Message], assistant_only: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where not learned) of one rendered conversation."""
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        head = tokenizer.convert_tokens_to_ids(ROLE_TOKENS[m["role"]])
        body = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        learn = (not assistant_only) or m["role"] == "assistant"
        ids += [head] + body
        labels += ([-100] if assistant_only else [head]) + (body if learn else [-100] * len(body))
    return ids, labels


def causal_lm_loss(model, ids, labels, body=None):
    """Mean next-token cross-entropy over the labelled positions of a right-padded batch.

    The same number as ``model(input_ids=ids, attention_mask=mask, labels=labels).loss``
    (tested), computed faster on CPU: with right padding no real token ever attends to a pad
    (attention is causal), so no mask is needed and SDPA takes its causal path; and the output
    projection runs only at the positions that have a label (assistant turns), not over the
    whole vocabulary at every position. Measured together: 1.6-2.3x tokens/s (docs/toyworld.md).
    ``body``: what runs the decoder stack instead of ``lm.model`` (its compiled version)."""
    import torch.nn.functional as F

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA layers are in place
    hidden = (body if body is not None else lm.model)(input_ids=ids).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    return F.cross_entropy(lm.lm_head(hidden[keep]).float(), target[keep])


@dataclass
class TrainStats:
    steps: int
    tokens: int
    seconds: float
    first_loss: float
    final_loss: float
    compiled: bool = False


# torch.compile of the decoder stack (``compile=True``) fuses its small elementwise kernels
# (RMSNorm, rotary, SiLU): measured 1.13x tokens/s warm, for a ~21 s compile on 2 cores
# (benchmarks/bench_toy_train.py), which the demo's ~190 s pretraining does not win back. So it
# is off by default; it trains the same model (the same losses, tested).


def _compiled(lm):
    """The decoder stack under ``torch.compile`` (dynamic shapes: batches differ in length)."""
    import torch

    return torch.compile(lm.model, dynamic=True)


def train_lm(model, tokenizer, conversations: Sequence[Sequence[Message]], *, steps: int | None = None,
             epochs: float = 1.0, batch_size: int = 32, lr: float = 3e-3, warmup: int = 20,
             weight_decay: float = 0.01, assistant_only: bool = False, seed: int = 0, max_length: int = 1024,
             on_step: Callable[[int, int, float], None] | None = None,
             params: Iterable | None = None, compile: bool = False) -> TrainStats:
    """Train ``model`` in place on ``conversations`` (see the module docstring).

    ``steps`` (optimizer steps) overrides ``epochs``. Batches are drawn in a seeded random
    order, each a group of conversations of similar length, right-padded. ``compile``: run the
    decoder stack under ``torch.compile``; where compiling fails (no C++ compiler) the run goes
    on uncompiled, with one warning."""
    import torch

    examples = [encode(tokenizer, m, assistant_only) for m in conversations]
    examples = [(i[:max_length], lab[:max_length]) for i, lab in examples]
    n_batches = max(1, math.ceil(len(examples) / batch_size))
    total = steps if steps is not None else max(1, round(epochs * n_batches))
    rng = random.Random(f"train:{seed}")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, (total - s) / max(1, total - min(warmup, total - 1))))
    pad = tokenizer.pad_token_id

    def batches():
        while True:
            order = list(range(len(examples)))
            rng.shuffle(order)
            # sort within chunks of 50 batches by length: little padding, still random
            chunk = batch_size * 50
            for c in range(0, len(order), chunk):
                part = sorted(order[c:c + chunk], key=lambda i: len(examples[i][0]))
                groups = [part[g:g + batch_size] for g in range(0, len(part), batch_size)]
                rng.shuffle(groups)
                yield from groups

    model.train()
    started = time.monotonic()
    n_tokens = 0
    first = last = float("nan")
    it = batches()
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = _compiled(lm) if compile else None
    for step in range(total):
        group = next(it)
        width = max(len(examples[i][0]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        for r, i in enumerate(group):
            x, y = examples[i]
            ids[r, :len(x)] = torch.tensor(x)
            labels[r, :len(y)] = torch.tensor(y)
            n_tokens += len(x)
        opt.zero_grad(set_to_none=True)
        if body is not None:
            try:  # the backward is compiled at its first call, so both go under the try
                loss = causal_lm_loss(model, ids, labels, body)
                loss.backward()
            except Exception as error:  # inductor needs a C++ compiler; without one, train uncompiled
                from waluigi.errors import warn

                warn(f"torch.compile is not available here ({type(error).__name__}: {str(error)[:200]}); "
                     "training uncompiled (slower)")
                body = None
                opt.zero_grad(set_to_none=True)
        if body is None:
            loss = causal_lm_loss(model, ids, labels)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        last = loss.item()
        if step == 0:
            first = last
        if on_step is not None:
            on_step(step + 1, total, last)
    model.eval()
    return TrainStats(steps=total, tokens=n_tokens, seconds=round(time.monotonic() - started, 2),
                      first_loss=first, final_loss=last, compiled=body is not None)


def save_model_dir(model, tokenizer, path: str | Path) -> Path:
    """Write ``model`` + ``tokenizer`` (with its chat template) as an HF directory (safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_model_dir(path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True,
                                                 local_files_only=True)
    model.eval()
    return model, tokenizer


def sample(model, tokenizer, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 64,
           temperature: float = 1.0, batch_size: int = 128, seed: int = 0) -> list[str]:
    """Answers to chat ``prompts`` (quick sampling for experiments; the pipeline uses
    ``waluigi.models``). Left-padded batches, sorted by length."""
    import torch

    torch.manual_seed(seed)
    texts = [render(p, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    tokenizer.padding_side = "left"
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for r, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[r, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out
