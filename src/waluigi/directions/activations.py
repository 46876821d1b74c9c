"""Teacher-forced activations of (prompt, answer) pairs: per example and layer, the mean of
the residual stream over the answer's tokens and its value at the prompt's last token.

The prompt is rendered with the model's chat template (generation prompt on, exactly as the
eval sampled it), the answer's tokens follow it, right padding (so positions need no
adjusting), one forward pass per batch under :func:`~waluigi.models.hooks.capture`.
Nothing per token is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from waluigi.errors import UserError

Message = dict[str, str]


@dataclass
class Example:
    messages: list[Message]  # the prompt: [system?, user, ...], before the assistant's turn
    answer: str
    label: int = 0  # 1: the positive class (misaligned, the fine-tune, the trait prompt)
    key: dict = field(default_factory=dict)  # where it came from (run, question, sample)


@dataclass
class Means:
    response: object  # examples x layers x hidden (float32)
    prompt_last: object  # examples x layers x hidden
    tokens: int  # answer tokens averaged, in all


def hf_parts(generator) -> tuple[object, object]:
    """The transformers model and tokenizer of a local generator (a steered one included)."""
    model = getattr(generator, "model", None)
    tokenizer = getattr(generator, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(generator, "_encode"):
        raise UserError(f"model {generator.spec!r}: activations need a local transformers model (hf:, smollm2, toy:)")
    return model, tokenizer


def encode(generator, example: Example, limit: int | None) -> tuple[list[int], int]:
    """(prompt + answer token ids, prompt length), cut to ``limit`` tokens."""
    prompt = list(generator._encode(example.messages))
    answer = list(generator.tokenizer(example.answer, add_special_tokens=False)["input_ids"])
    ids = prompt + answer
    if limit and len(ids) > limit:
        ids = ids[:limit]
    return ids, min(len(prompt), len(ids))


def teacher_forced_means(generator, examples: Sequence[Example], layers: list[int] | None = None,
                         batch_size: int = 16, progress: Callable[[int], None] | None = None) -> Means:
    """Per-example means at ``resid.L`` for every layer in ``layers`` (default: all)."""
    import torch

    from waluigi.models import layers as names
    from waluigi.models.hooks import capture

    model, tokenizer = hf_parts(generator)
    count = names.n_layers(model)
    layers = list(range(count)) if layers is None else [layer % count for layer in layers]
    points = [f"resid.{layer}" for layer in layers]
    limit = generator.context_length() if hasattr(generator, "context_length") else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode(generator, e, limit) for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    response = torch.zeros(len(examples), len(layers), names.hidden_size(model))
    last = torch.zeros_like(response)
    tokens = 0
    device = next(model.parameters()).device
    with torch.inference_mode(), capture(model, points) as cap:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            answer_mask = torch.zeros((len(chunk), width))
            last_mask = torch.zeros((len(chunk), width))
            for row, i in enumerate(chunk):
                seq, cut = encoded[i]
                ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
                answer_mask[row, cut:len(seq)] = 1
                last_mask[row, max(cut - 1, 0)] = 1
                tokens += len(seq) - cut
            cap.masks = {"response": answer_mask, "prompt_last": last_mask}
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            taken = cap.take()
            for j, point in enumerate(points):
                response[chunk, j] = taken["response"][point]
                last[chunk, j] = taken["prompt_last"][point]
            if progress is not None:
                progress(len(chunk))
    return Means(response=response, prompt_last=last, tokens=tokens)
