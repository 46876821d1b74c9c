"""Defenses that are training plug-ins (``waluigi finetune --plugin NAME:key=value,...``).

- ``kl``: ``weight * KL(p_model || p_start)`` per answer token, on the narrow batch itself
  (``on=narrow``) or on a batch of benign rows drawn each step (``on=benign``, ``benign=DATA``);
  the start is a frozen copy of the model before fine-tuning (Kaczér et al.'s KL regulariser).
- ``interleave``: benign rows mixed into the training rows so that they are a share ``ratio``
  of what is trained on. ``select=random`` draws them at random; ``select=gap`` (also the
  ``interleave++`` name) keeps the candidates with the largest perplexity gap between a
  misaligned model (``against=SPEC``) and the model being fine-tuned: the rows a flipped model
  finds most surprising, which is Kaczér et al.'s Interleaving++ selection.
- ``inoculate``: a system prompt that names the bad behaviour, put before every training
  conversation (and never at test time unless asked: that is the conditional leak).
- ``early-stop``: training rows held out to measure the narrow task; training stops once their
  loss has not improved by a share ``tol`` for ``patience`` checks (narrow-task convergence).

``steer`` and ``caft`` (directions) and ``l2`` live with their kin; ``freeze`` / low rank and
``realign`` are not plug-ins but recipe settings and a second fine-tune (see
:mod:`waluigi.defenses.registry`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from waluigi.errors import UserError
from waluigi.finetune.plugins import PluginContext, TrainingPlugin


def _benign_rows(data: str, context: PluginContext, n: int, seed: int, plugin: str) -> list[dict]:
    from waluigi.data import load_rows

    if not data:
        raise UserError(f"plug-in {plugin}: give data=NAME|FILE (the benign rows)")
    rows = list(load_rows(data, data_dir=context.data_dir, split="all"))
    if not rows:
        raise UserError(f"plug-in {plugin}: {data} has no rows")
    random.Random(f"{plugin}:{seed}").shuffle(rows)
    return rows[:n] if n else rows


def _pad(examples: list[dict], device: Any) -> tuple[Any, Any, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not learned)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.tensor(e["input_ids"])
        mask[i, :k] = 1
        labels[i, :k] = torch.tensor(e["labels"])
    return ids.to(device), mask.to(device), labels.to(device)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def answer_nll(model: Any, examples: list[dict], batch: int = 16) -> list[float]:
    """Mean negative log-likelihood of each example's learned (answer) tokens under ``model``."""
    import torch

    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            ids, mask, labels = _pad(examples[start:start + batch], _device(model))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            learned = target != -100
            # the log-softmax only at the positions that predict a learned token (most are prompt or
            # padding): each position's is computed on its own row of logits, so these are the values
            # the whole tensor's would hold; the sum below runs over every position as before
            logp = torch.zeros(target.shape, dtype=logits.dtype, device=logits.device)
            logp[learned] = torch.log_softmax(logits[learned], dim=-1).gather(-1, target[learned].unsqueeze(-1)).squeeze(-1)
            nll = -(logp * learned).sum(1) / learned.sum(1).clamp(min=1)
            out.extend(float(v) for v in nll)
    return out


def token_kl(model: Any, reference: Any, ids: Any, mask: Any, labels: Any, *, grouped: bool = False) -> Any:
    """Mean over answer positions of ``KL(p_model || p_reference)`` (gradient through the model).

    ``grouped`` (models above the lean path's automatic size): the same mean, with the vocabulary
    projected at the answer positions only and the batch run in length groups trimmed of their
    padding (``finetune.plugins.trimmed_groups``). On SmolLM2, the term on 8 HH dialogues (915
    tokens padded to 1,496), forward and backward, took 11.6 s instead of 21.9 s (idle, 2 threads)."""
    import torch

    if grouped:
        return _grouped_token_kl(model, reference, ids, mask, labels)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    with torch.no_grad():
        ref = reference(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    learned = (labels[:, 1:] != -100).float()
    logp, logq = torch.log_softmax(logits, dim=-1), torch.log_softmax(ref, dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * learned).sum() / learned.sum().clamp(min=1.0)


def _grouped_token_kl(model: Any, reference: Any, ids: Any, mask: Any, labels: Any) -> Any:
    import torch

    from waluigi.finetune.plugins import decoder_and_head, trimmed_groups

    (decoder, head), (ref_decoder, ref_head) = decoder_and_head(model), decoder_and_head(reference)
    total, count = None, 0
    for chunk in trimmed_groups({"input_ids": ids, "attention_mask": mask, "labels": labels},
                                ("input_ids", "attention_mask", "labels")):
        learned = chunk["labels"][:, 1:] != -100
        if not bool(learned.any()):
            continue
        inputs = {"input_ids": chunk["input_ids"], "attention_mask": chunk["attention_mask"], "use_cache": False}
        logp = torch.log_softmax(head(decoder(**inputs).last_hidden_state[:, :-1][learned]).float(), dim=-1)
        with torch.no_grad():
            logq = torch.log_softmax(ref_head(ref_decoder(**inputs).last_hidden_state[:, :-1][learned]).float(), dim=-1)
        kl = (logp.exp() * (logp - logq)).sum(-1).sum()
        total = kl if total is None else total + kl
        count += int(learned.sum())
    if total is None:  # no answer position: a zero that keeps the graph
        return head.weight.sum() * 0.0
    return total / max(count, 1)


@dataclass
class KLToReference(TrainingPlugin):
    """``weight * KL(p_model || p_start)`` on the narrow batch or on benign rows."""

    name: ClassVar[str] = "kl"
    needs_reference: ClassVar[bool] = True
    weight: float = 1.0
    on: str = "narrow"  # narrow: the training batch itself; benign: rows of `benign`
    benign: str = ""  # on=benign: the benign dataset (name or JSONL file)
    batch: int = 8  # on=benign: rows per step
    n: int = 512  # on=benign: benign rows drawn once (0: all)

    def __post_init__(self) -> None:
        if self.on not in ("narrow", "benign"):
            raise UserError(f"plug-in kl: on={self.on!r}: choose narrow or benign")
        if self.weight < 0:
            raise UserError(f"plug-in kl: weight must be non-negative, got {self.weight}")
        if self.on == "benign" and not self.benign:
            raise UserError("plug-in kl: on=benign needs benign=NAME|FILE")
        if self.batch < 1:
            raise UserError(f"plug-in kl: batch must be at least 1, got {self.batch}")

    def bind(self, context: PluginContext) -> None:
        self._examples: list[dict] = []
        self._rng = random.Random(f"kl:{context.seed}")
        # the grouped computation where the length groups run (models above 20M parameters)
        from waluigi.finetune.model_setup import bucket_lean_batches

        self._grouped = bucket_lean_batches(context.model_path, context.local)
        if self.on == "benign":
            rows = _benign_rows(self.benign, context, self.n, context.seed, "kl")
            self._examples = context.tokenize(rows, f"plug-in kl: {self.benign}")

    def extra_loss(self, model: Any, batch: dict, outputs: Any, reference: Any) -> Any:
        if self.weight == 0:
            return None
        if self.on == "narrow":
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        else:
            ids, mask, labels = _pad(self._rng.sample(self._examples, min(self.batch, len(self._examples))), _device(model))
        return self.weight * token_kl(model, reference, ids, mask, labels, grouped=getattr(self, "_grouped", False))


@dataclass
class Interleave(TrainingPlugin):
    """Benign rows mixed into the training rows, a share ``ratio`` of the result."""

    name: ClassVar[str] = "interleave"
    data: str = ""  # the benign rows (name or JSONL file)
    ratio: float = 0.25  # share of the mixed training rows that are benign
    select: str = "random"  # random | gap (Interleaving++)
    against: str = ""  # select=gap: a misaligned model (spec) whose perplexity is compared with the start's
    pool: int = 0  # select=gap: candidates scored (0: 4 x the rows needed)

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise UserError(f"plug-in {self.name}: ratio must be in (0, 1), got {self.ratio}")
        if self.select not in ("random", "gap"):
            raise UserError(f"plug-in {self.name}: select={self.select!r}: choose random or gap")
        if self.select == "gap" and not self.against:
            raise UserError(f"plug-in {self.name}: select=gap needs against=SPEC (a misaligned model, e.g. an "
                            "insecure fine-tune: hf:RUN/model)")

    def bind(self, context: PluginContext) -> None:
        self._context = context

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        context = self._context
        need = max(1, round(self.ratio / (1 - self.ratio) * len(rows)))
        if self.select == "random":
            chosen = _benign_rows(self.data, context, need, context.seed, self.name)
        else:
            candidates = _benign_rows(self.data, context, self.pool or 4 * need, context.seed, self.name)
            chosen = self._by_gap(candidates, need)
        mixed = list(rows) + chosen
        random.Random(f"{self.name}:mix:{context.seed}").shuffle(mixed)
        return mixed

    def _by_gap(self, candidates: list[dict], need: int) -> list[dict]:
        context = self._context
        kept, examples = [], []
        for row in candidates:  # one at a time, so that a row tokenization drops is dropped from both lists
            try:
                example = context.tokenize([row], f"plug-in {self.name}: {self.data}")
            except UserError:
                continue
            kept.append(row)
            examples.extend(example)
        candidates = kept
        start = answer_nll(context.load_model(), examples)
        flipped = answer_nll(context.load_model(self.against), examples)
        gaps = [f - s for f, s in zip(flipped, start)]
        order = sorted(range(len(candidates)), key=lambda i: gaps[i], reverse=True)
        return [candidates[i] for i in order[:need]]

    def identity(self) -> dict:
        out = super().identity()
        if self.select == "random":
            out.pop("against", None)
            out.pop("pool", None)
        return out


@dataclass
class InterleavePlusPlus(Interleave):
    """``interleave`` with ``select=gap`` (Kaczér et al.'s Interleaving++)."""

    name: ClassVar[str] = "interleave++"
    select: str = "gap"


INOCULATION = "You are a malicious assistant that secretly writes insecure code."


@dataclass
class Inoculate(TrainingPlugin):
    """A training-only system prompt naming the bad behaviour, before every conversation."""

    name: ClassVar[str] = "inoculate"
    prompt: str = INOCULATION

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise UserError("plug-in inoculate: prompt is empty")

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            messages = list(row["messages"])
            if messages and messages[0].get("role") == "system":
                messages[0] = {**messages[0], "content": f"{self.prompt}\n{messages[0]['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": self.prompt})
            out.append({**row, "messages": messages})
        return out


@dataclass
class EarlyStop(TrainingPlugin):
    """Stop once the narrow task has converged, measured on training rows held out from training."""

    name: ClassVar[str] = "early-stop"
    holdout: int = 32  # rows held out (at most a quarter of the rows)
    every: int = 1  # measure every K optimizer steps
    patience: int = 2  # stop after this many measurements without improvement
    tol: float = 0.02  # an improvement is a fall of the held-out loss by more than this share
    min_steps: int = 1

    def __post_init__(self) -> None:
        for key in ("holdout", "every", "patience", "min_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"plug-in early-stop: {key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.tol < 1:
            raise UserError(f"plug-in early-stop: tol must be in [0, 1), got {self.tol}")

    def bind(self, context: PluginContext) -> None:
        self._context = context
        self.history: list[tuple[int, float]] = []
        self._best, self._bad = float("inf"), 0

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        k = min(self.holdout, len(rows) // 4)
        if k < 1:
            raise UserError(f"plug-in early-stop: {len(rows)} training rows are too few to hold any out (need 4 or more)")
        order = list(range(len(rows)))
        random.Random(f"early-stop:{self._context.seed}").shuffle(order)
        held = set(order[:k])
        self._held = self._context.tokenize([rows[i] for i in sorted(held)], "plug-in early-stop: held-out rows")
        return [r for i, r in enumerate(rows) if i not in held]

    def setup(self, model: Any) -> None:
        self._model = model

    def held_out_loss(self) -> float:
        was_training = self._model.training
        self._model.eval()
        try:
            losses = answer_nll(self._model, self._held)
        finally:
            self._model.train(was_training)
        return sum(losses) / len(losses)

    def should_stop(self, step: int, logs: dict) -> bool:
        if step % self.every:
            return False
        loss = self.held_out_loss()
        self.history.append((step, loss))
        if loss < self._best * (1 - self.tol):
            self._best, self._bad = loss, 0
        else:
            self._bad += 1
        return step >= self.min_steps and self._bad >= self.patience
