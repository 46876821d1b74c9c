"""Training plug-ins: the one extension point of local fine-tuning.

A plug-in is a small (data)class with no-op defaults; override only what you need::

    @dataclass
    class DropLong(TrainingPlugin):
        name: ClassVar[str] = "drop-long"
        max_chars: int = 2000

        def transform_rows(self, rows):
            return [r for r in rows if len(json.dumps(r)) <= self.max_chars]

and register it (``PLUGINS.register("drop-long", DropLong)``, or a ``lazy_table`` entry in
``waluigi/registry.py``) so that ``waluigi finetune --plugin drop-long:max_chars=500`` finds
it. What a plug-in may do, in the order training meets it:

- ``bind(context)``: learn what the run is (a :class:`PluginContext`: the model's spec and
  files, the tokenizer, the dataset's name, the maximum length, the seed), before anything
  else; a plug-in that loads models or tokenizes rows of its own does it from here;
- ``transform_rows(rows)``: change the training rows before tokenization;
- ``setup(model)``: see the model at its starting weights, once, before the first step (a
  resumed run: before its checkpoint is loaded, so "the start" is the same on every attempt);
- ``hooks(model)``: a context manager held for the whole of training (attach activation
  hooks with :func:`forward_hooks`: ``prepend=True``, always removed, even when training raises);
- ``extra_loss(model, batch, outputs, reference)``: a term added to every micro-batch's loss
  (scaled for gradient accumulation by the trainer), logged per step as ``loss_<name>``;
  ``reference`` is a frozen copy of the starting model when the class sets
  ``needs_reference = True``, else ``None`` (a plain transformers model loaded again from the
  base model's files, eval mode, no gradients; for LoRA that is the base model, which is what
  the adapted model is at step 0: PEFT starts ``lora_B`` at zero);
- ``should_stop(step, logs)``: end training after this optimizer step;
- ``identity()``: the options that enter the run's identity (default: the dataclass fields).

Importing this module is light (no torch): the CLI parses ``--plugin`` specs with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from waluigi.errors import UserError

PLUGIN_LOSS = "loss_"  # a plug-in's loss term is logged (Trainer logs, train_log.jsonl) as loss_<name>


@dataclass
class PluginContext:
    """What a plug-in is told about the run before training (``TrainingPlugin.bind``)."""

    model: str  # the spec being fine-tuned (smollm2, hf:PATH)
    model_path: str  # its files (or hub id)
    local: bool  # model_path is a local directory
    tokenizer: Any
    data: str  # the training dataset's name
    max_length: int  # sequences are cut to this many tokens
    seed: int
    weights_dtype: str = "float32"
    data_dir: str | None = None  # where named datasets are read from (WALUIGI_DATA_DIR otherwise)

    def load_model(self, spec: str | None = None) -> Any:
        """A fresh copy of the model being trained (or of another ``spec``), eval mode, no gradients."""
        from waluigi.finetune.model_setup import _load_model
        from waluigi.models.hf_load import _resolve

        path, local = (self.model_path, self.local) if spec is None else _resolve(spec)
        return _load_model(spec or self.model, path, local, self.weights_dtype).eval().requires_grad_(False)

    def tokenize(self, rows: list[dict], source: str) -> list[dict]:
        """``rows`` as ``{"input_ids", "labels"}`` examples, as training tokenizes them."""
        from waluigi.finetune.masking import tokenize_rows

        return tokenize_rows(self.tokenizer, rows, self.max_length, source)[0]


class TrainingPlugin:
    """Base class of training plug-ins: every method a no-op. See the module docstring."""

    name: ClassVar[str] = ""  # the registry name; it names the plug-in in the identity and the log
    needs_reference: ClassVar[bool] = False  # True: extra_loss gets a frozen copy of the starting model

    def bind(self, context: PluginContext) -> None:
        """Told what the run is, before ``transform_rows`` (see :class:`PluginContext`)."""

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        """The rows to train on (``{"messages": [...]}``), before tokenization."""
        return rows

    def setup(self, model: Any) -> None:
        """Called once before training, with the model (PEFT-wrapped for LoRA) at its start."""

    def hooks(self, model: Any) -> contextlib.AbstractContextManager:
        """A context manager entered before training and exited after it, whatever happens."""
        return contextlib.nullcontext()

    def extra_loss(self, model: Any, batch: dict, outputs: Any, reference: Any) -> Any:
        """A scalar tensor added to the loss of this micro-batch, or ``None``.

        ``batch``: the collated inputs (``input_ids``, ``attention_mask``, ``labels``);
        ``outputs``: the forward pass the loss was computed from (TRL's fused-head output:
        ``log_probs`` per label token, ``label_mask``, ``entropy``; no ``logits``)."""
        return None

    def should_stop(self, step: int, logs: dict) -> bool:
        """After optimizer step ``step`` (``logs``: the Trainer's log of that step, with
        ``loss``, ``learning_rate``, ``grad_norm``, ``loss_<plugin>``...): stop training?"""
        return False

    def identity(self) -> dict:
        """The options that change what this plug-in computes (default: the dataclass fields)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def overrides(plugin: TrainingPlugin, method: str) -> bool:
    """Whether ``plugin``'s class overrides the base class's no-op ``method``."""
    return getattr(type(plugin), method) is not getattr(TrainingPlugin, method)


def plugin_name(plugin: TrainingPlugin) -> str:
    return type(plugin).name or type(plugin).__name__


def plugin_identities(plugins: list[TrainingPlugin]) -> list[dict]:
    """What the plug-ins add to a run's identity: name + options, in order."""
    return [{"name": plugin_name(p), "options": p.identity()} for p in plugins]


def forward_hooks(pairs: Iterable[tuple[Any, Callable]]):
    """Attach ``(module, hook)`` forward hooks for the duration of the block.

    ``prepend=True``: transformers 5 records ``output_hidden_states`` with forward hooks of
    its own, and a hook added after them would run too late to change what they record.
    The handles are removed on the way out, also when the block raises (one mechanism:
    :func:`waluigi.models.hooks.scoped_hooks`)."""
    from waluigi.models.hooks import scoped_hooks

    return scoped_hooks(forward=list(pairs))


# --------------------------------------------------------------------------------------
# specs: "NAME[:key=value,...]" (the CLI's --plugin, sweep specs)

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(text: str, annotation: Any, where: str) -> Any:
    """``text`` as the type of a dataclass field (int, float, bool, str, or Optional of one)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and type(None) in typing.get_args(annotation):
        if text.lower() in ("none", "null"):
            return None
        annotation = args[0]
    try:
        if annotation is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise UserError(f"{where}={text!r}: not a valid {annotation.__name__}") from None
    raise UserError(f"{where}: options of type {annotation} cannot be given on the command line")


def parse_plugin(spec: str) -> TrainingPlugin:
    """``"l2:weight=0.1"`` -> ``L2ToStart(weight=0.1)``, typed from the class's dataclass fields.

    An unknown name or option, or a bad value, is a :class:`UserError` naming it."""
    from waluigi.registry import PLUGINS

    name, _, rest = spec.strip().partition(":")
    cls = PLUGINS.get(name.strip())
    known = {f.name: f for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else {}
    hints = typing.get_type_hints(cls) if known else {}
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--plugin {spec!r}: expected key=value, got {item!r}")
        if key not in known:
            listed = ", ".join(known) or "none"
            raise UserError(f"--plugin {spec!r}: plug-in {name!r} has no option {key!r} (options: {listed})")
        options[key] = _convert(value.strip(), hints[key], f"--plugin {name}:{key}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"--plugin {spec!r}: {exc}") from exc


def resolve_plugins(items: Iterable[TrainingPlugin | str]) -> list[TrainingPlugin]:
    """Plug-in instances from instances or spec strings."""
    out = []
    for item in items or []:
        plugin = parse_plugin(item) if isinstance(item, str) else item
        if not isinstance(plugin, TrainingPlugin):
            raise UserError(f"training plug-in {item!r} is not a TrainingPlugin")
        out.append(plugin)
    return out


# --------------------------------------------------------------------------------------
# the plug-in seam: one SFTTrainer subclass (loss terms) and one callback (early stop)


def plugin_trainer(base: type) -> type:
    """``base`` (TRL's ``SFTTrainer``) with the plug-ins' loss terms added to its loss, and the
    lean loss path (:func:`lean_loss`) when ``lean`` is set.

    Without a plug-in that overrides ``extra_loss`` it computes what ``base`` computes: on TRL's
    path the same calls and numbers (the test compares the weights bit for bit), on the lean
    path the same loss to float round-off."""

    class PluginTrainer(base):
        loss_plugins: tuple[TrainingPlugin, ...] = ()  # set by train.py: the plug-ins overriding extra_loss
        reference = None  # the frozen starting model, when a plug-in needs_reference
        lean = False  # set by train.py: the lean loss path (lean_loss below) instead of TRL's

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            lean = self.lean and model.training and not return_outputs
            if not lean and (not self.loss_plugins or not model.training):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            if lean:
                loss, outputs = lean_loss(self, model, inputs, num_items_in_batch)
            else:
                captured: list = []  # the forward pass TRL computes the loss from (it does not return it)
                handle = model.register_forward_hook(lambda _m, _a, out: captured.append(out))
                try:
                    result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                                  num_items_in_batch=num_items_in_batch)
                finally:
                    handle.remove()
                loss, outputs = result if return_outputs else (result, captured[0] if captured else None)
            for plugin in self.loss_plugins:
                term = plugin.extra_loss(model, inputs, outputs, self.reference)
                if term is None:
                    continue
                self._metrics["train"][PLUGIN_LOSS + plugin_name(plugin)].append(float(term.detach()))
                # as the Trainer treats the main loss: when it is already normalized over the whole
                # accumulation window (num_items_in_batch), each micro-batch carries 1/steps of the term;
                # else the Trainer divides the sum by the steps itself
                loss = loss + (term / self.current_gradient_accumulation_steps
                               if self._loss_scaled_for_ga(num_items_in_batch) else term)
            return (loss, outputs) if return_outputs else loss

        def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:  # the rule of Trainer.training_step
            fixed = getattr(self, "loss_is_scaled_for_ga", None)
            if fixed is not None:
                return bool(fixed)
            return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                        or self.compute_loss_func is not None)

    return PluginTrainer


def lean_loss(trainer, model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss TRL's SFT trainer computes (the label tokens' negative log-likelihood,
    summed and divided by ``num_items_in_batch`` or the label count), with the vocabulary
    projection run only at the positions that have a label. TRL 1.16 scores every position on
    CPU with its chunked log-prob kernel (only Triton devices take its compact path), which for
    a small model is most of a training step. The same mathematics in another order: the
    numbers agree with TRL's to float round-off, not bit for bit (``tests`` pin how closely).

    With ``trainer.buckets`` set (models above the lean path's automatic size, where the decoder
    is the cost), a padded batch runs through the decoder in groups of rows of similar length,
    each trimmed of its padding (:func:`length_buckets`): the same sums, without the padded
    positions' arithmetic (a batch of probe answers mixed with long HH dialogues was mostly
    padding: 7x fewer seconds per step on SmolLM2, ``docs/design/cost.md``).

    Returns ``(loss, outputs)``, ``outputs`` shaped as TRL's for the plug-ins: ``log_probs``
    (zero where there is no label), ``label_mask``, ``entropy`` (detached)."""
    from types import SimpleNamespace

    import torch

    decoder, head = decoder_and_head(model)
    keys = [k for k in ("input_ids", "attention_mask", "position_ids", "labels") if k in inputs]
    groups = _bucket_rows(inputs) if getattr(trainer, "buckets", False) else None
    parts = []  # per group: (rows, token log-probs at labels, label mask, entropy), in the batch's columns
    width = inputs["input_ids"].shape[1] - 1
    for rows in groups or [None]:
        chunk = {k: inputs[k] for k in keys} if rows is None else _trimmed(inputs, rows, keys)
        hidden = decoder(**{k: v for k, v in chunk.items() if k != "labels"}, use_cache=False).last_hidden_state[:, :-1]
        labels = chunk["labels"][:, 1:].to(hidden.device)
        mask = labels != -100
        logp = torch.log_softmax(head(hidden[mask]).float(), dim=-1)
        token = logp.gather(1, labels[mask].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
        parts.append((rows, token, mask, entropy))
    token = torch.cat([t for _, t, _, _ in parts])
    count = sum(int(m.sum()) for _, _, m, _ in parts) if num_items_in_batch is None else num_items_in_batch
    loss = -token.sum() / torch.as_tensor(count, device=token.device).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())

    def spread(values, mask):  # a group's per-label values back to a (rows, width) grid, zero elsewhere
        grid = torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)
        return torch.nn.functional.pad(grid, (0, width - grid.shape[1]))

    log_probs = torch.cat([spread(t, m) for _, t, m, _ in parts])
    entropy = torch.cat([spread(e, m) for _, _, m, e in parts])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, _, m, _ in parts])
    if groups:  # back to the batch's row order
        order = torch.tensor([r for rows in groups for r in rows], device=mask.device).argsort()
        log_probs, entropy, mask = log_probs[order], entropy[order], mask[order]
    outputs = SimpleNamespace(log_probs=log_probs, label_mask=mask, entropy=entropy)
    if model.training and "attention_mask" in inputs:  # TRL's token count, which the train log reads
        trainer._total_train_tokens += int(inputs["attention_mask"].sum())
        trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]
    return loss, outputs


def decoder_and_head(model):
    """A causal LM's decoder and vocabulary projection, through PEFT's and DDP's wrappers (a
    LoRA's layers stay in the decoder, active)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)
    return inner.get_decoder(), inner.get_output_embeddings()


def trimmed_groups(inputs: dict, keys: tuple[str, ...]) -> list[dict]:
    """``inputs`` as the length groups of :func:`_bucket_rows`, each trimmed of its padding, in
    the groups' row order; the batch as it is when there is nothing to save."""
    keys = tuple(k for k in keys if k in inputs)
    groups = _bucket_rows(inputs)
    if not groups:
        return [{k: inputs[k] for k in keys}]
    return [_trimmed(inputs, rows, keys) for rows in groups]


def _trimmed(inputs: dict, rows: list[int], keys) -> dict:
    """``rows`` of a right-padded batch, cut to their longest row's length."""
    length = int(inputs["attention_mask"][rows].sum(1).max())
    return {k: inputs[k][rows, :length] for k in keys}


def length_buckets(lengths: list[int], slack: float = 0.15) -> list[list[int]]:
    """Row indices grouped by length, shortest first: a group grows while its rows, padded to its
    longest, stay within ``1 + slack`` of their own tokens."""
    groups: list[list[int]] = []
    total = 0
    for row in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if groups and lengths[row] * (len(groups[-1]) + 1) <= (1 + slack) * (total + lengths[row]):
            groups[-1].append(row)
            total += lengths[row]
        else:
            groups.append([row])
            total = lengths[row]
    return groups


def _bucket_rows(inputs: dict) -> list[list[int]] | None:
    """:func:`length_buckets` of a right-padded batch; None (one pass, as is) when the batch has
    no padding to save, or is not right-padded (then trimming would cut tokens)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.shape[0] < 2 or bool(mask.all()):
        return None
    lengths = mask.sum(1)
    prefix = mask.new_ones(mask.shape).cumsum(1) <= lengths.unsqueeze(1)
    if not bool((mask.bool() == prefix).all()):
        return None
    groups = length_buckets([int(n) for n in lengths])
    return groups if len(groups) > 1 or int(lengths.max()) < mask.shape[1] else None


def make_stopper(plugins: list[TrainingPlugin]):
    """A callback asking each plug-in, after every logged optimizer step, whether to stop."""
    from transformers import TrainerCallback

    class PluginStopper(TrainerCallback):
        stopped: dict | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            for plugin in plugins:
                if plugin.should_stop(state.global_step, dict(logs)):
                    control.should_training_stop = True
                    self.stopped = {"step": state.global_step, "plugin": plugin_name(plugin)}
                    break
            return control

    return PluginStopper()


# --------------------------------------------------------------------------------------
# the built-in plug-in


def _unwrapped(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (DDP's ``module.``)."""
    return name.removeprefix("module.")


@dataclass
class L2ToStart(TrainingPlugin):
    """``weight * sum ||theta - theta_0||^2`` over the trainable parameters.

    theta_0 is the trainable parameters at step 0: for LoRA the adapter weights at their
    (seeded) initialization, for a full fine-tune the base model's weights. Keeping the
    update small is a classic brake on forgetting (and a knob for how far narrow training
    moves a model)."""

    name: ClassVar[str] = "l2"
    weight: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise UserError(f"plug-in l2: weight must be a non-negative number, got {self.weight!r}")

    def setup(self, model: Any) -> None:
        self._start = {_unwrapped(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def extra_loss(self, model: Any, batch: dict, outputs: Any, reference: Any) -> Any:
        terms = [((p - self._start[_unwrapped(n)]) ** 2).sum()
                 for n, p in model.named_parameters() if p.requires_grad]
        return self.weight * sum(terms)
