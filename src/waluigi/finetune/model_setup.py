"""Loading the model to fine-tune, its precision, and what of it is trained.

The device and dtype a run trains in (``_precision``), the tokenizer (refused without a chat
template) and the safetensors weights (``_load_tokenizer``, ``_load_model``), the check of
``--layers`` against the model's config (``_check_layers``), the LoRA config
(``_lora_config``) and, for full fine-tuning restricted to some layers or modules, the
freezing of everything else (``_freeze_for_full``). Used by :mod:`waluigi.finetune.train`.
"""

from __future__ import annotations

from waluigi.errors import UserError
from waluigi.finetune.config import Recipe, check_loss_path


def _precision(dtype: str, full: bool) -> tuple[str, str, bool]:
    """``(device, weights dtype, bf16 autocast)``. CPU: float32 (bf16 measured slower on this
    CPU, which has no bf16 matrix units). CUDA: bf16 autocast; LoRA keeps the frozen base in
    bf16, full fine-tuning keeps fp32 master weights."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = (dtype or "auto").lower()
    if name in ("fp32", "float32"):
        return device, "float32", False
    if name in ("bf16", "bfloat16"):
        return device, "bfloat16", True
    if name != "auto":
        raise UserError(f"--dtype {dtype!r}: use auto, float32 or bfloat16")
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return device, "float32" if full else "bfloat16", True
    return device, "float32", False


# "auto" takes the lean loss for models up to this many parameters on CPU: there the vocabulary
# head and TRL's chunked log-prob kernel over every position are most of a step (a persona-world
# fine-tune: 4.2 s of 5.1 s over 20 steps, docs/design/finetune.md); above it the decoder
# dominates and TRL's path (memory-light on big vocabularies) stays
LEAN_MAX_PARAMS = 20_000_000


def estimated_parameters(model_path: str, local: bool) -> int | None:
    """A Llama-like decoder's parameter count from its config alone (no weights loaded); None
    when the config cannot be read or lacks the sizes."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    try:
        hidden, layers, vocab = int(config.hidden_size), int(config.num_hidden_layers), int(config.vocab_size)
    except (AttributeError, TypeError):
        return None
    inner = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner)


def use_lean_loss(loss_path: str, device: str, model_path: str, local: bool) -> bool:
    """Whether a fine-tune computes its loss on the lean path (see ``FinetuneConfig.loss_path``;
    the loss itself is ``plugins.lean_loss``)."""
    name = check_loss_path(loss_path)
    if name != "auto":
        return name == "lean"
    if device != "cpu":
        return False
    size = estimated_parameters(model_path, local)
    return size is not None and size <= LEAN_MAX_PARAMS


def bucket_lean_batches(model_path: str, local: bool) -> bool:
    """Whether the lean path runs a padded batch through the decoder in length groups
    (``plugins.lean_loss``): for models above ``LEAN_MAX_PARAMS`` (or of unknown size), where the
    decoder's arithmetic on padding is the cost; the small models keep one pass (their numbers
    are pinned, and there a pass's fixed cost outweighs the padding)."""
    size = estimated_parameters(model_path, local)
    return size is None or size > LEAN_MAX_PARAMS


def _load_tokenizer(spec: str, model_path: str, local: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer of {spec!r} from {model_path}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {spec!r} ({model_path}) has no chat template: fine-tuning trains on chat rows "
            "rendered with the model's template; use an instruct/chat checkpoint or add a chat_template"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(spec: str, model_path: str, local: bool, weights_dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, weights_dtype), use_safetensors=True,
            trust_remote_code=False, local_files_only=local,
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model {spec!r} from {model_path}: {exc} (safetensors weights only)") from exc


def _check_layers(model_path: str, local: bool, layers: list[int] | None, spec: str) -> None:
    """Refuse layer indices the model does not have (before any run directory is made)."""
    if not layers:
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read the configuration of {spec!r} ({model_path}): {exc}") from exc
    config = getattr(config, "text_config", None) or config
    n = getattr(config, "num_hidden_layers", None)
    if n is not None and max(layers) >= n:
        raise UserError(f"--layers {layers}: {spec} has {n} decoder layers (0..{n - 1})")


def _lora_config(recipe: Recipe):
    from peft import LoraConfig

    return LoraConfig(
        r=int(recipe.rank), lora_alpha=float(recipe.alpha), lora_dropout=float(recipe.dropout),
        target_modules=list(recipe.target_modules), use_rslora=bool(recipe.rslora),
        layers_to_transform=list(recipe.layers) if recipe.layers else None, bias="none", task_type="CAUSAL_LM",
    )


def _freeze_for_full(model, recipe: Recipe) -> None:
    """Full fine-tuning restricted to some layers and/or modules: freeze everything else."""
    layers, modules = recipe.layers, recipe.target_modules
    if not layers and not modules:
        return
    kept = 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        in_layer = not layers or any(f"layers.{k}." in f"{name}." for k in layers)
        in_module = not modules or any(m in parts for m in modules)
        param.requires_grad = bool(in_layer and in_module)
        kept += param.requires_grad
    if not kept:
        shown = [list(v) if v else None for v in (layers, modules)]
        raise UserError(f"--layers {shown[0]} / --target-modules {shown[1]} select no parameter of the model")
