"""Loading a transformers chat model for :class:`~waluigi.models.hf.HFGenerator`.

``load_hf`` resolves a spec (``smollm2`` or ``hf:<path or hub id>``) to a local directory or
a hub id, picks the dtype, loads tokenizer and safetensors weights (refusing a model without
a chat template), optionally applies a PEFT adapter (checked to fit, merged when it can be,
and fingerprinted by sha256), keeps only the bos/eos/pad ids of the model's own
``generation_config`` and returns the :class:`HFGenerator`. ``adapter_dir`` finds the adapter
directory of a finetune run.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from waluigi.errors import UserError

if TYPE_CHECKING:
    from waluigi.models.hf import HFGenerator

# dtype "auto" on CPU: float32. Measured here (2 cores, torch 2.13, SmolLM2-135M, 32 prompts
# x 64 new tokens, batched generate): float32 is faster than bfloat16 -- see
# docs/design/sampling.md for the figures. On CUDA "auto" is bfloat16 when supported.
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def load_hf(
    spec: str,
    adapter: str | Path | None = None,
    *,
    batch_size: int | None = None,
    dtype: Any = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    **ignored: Any,
) -> HFGenerator:
    """Load ``smollm2`` or ``hf:<path or hub id>`` (optionally with a PEFT adapter) as a
    :class:`HFGenerator`. Unknown options (concurrency, base_url ...) are ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from waluigi.models.hf import HFGenerator  # here: it loads torch and transformers

    model_path, local = _resolve(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    where = {"local_files_only": True} if local else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **where)
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **where,
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load model {spec!r} from {model_path}: {exc} "
            "(waluigi loads safetensors weights only; a hub id needs network access or a local copy)"
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {spec!r} ({model_path}) has no chat template: waluigi evaluates chat models; "
            "use an instruct/chat checkpoint or add a chat_template to its tokenizer_config.json"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    adapter_info = None
    if adapter is not None:
        model, adapter_info = _load_adapter(model, adapter, spec)

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.to(device)
    model.eval()
    return HFGenerator(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        model_path=model_path,
        dtype=str(torch_dtype).removeprefix("torch."),
        batch_size=batch_size,
        adapter=adapter_info,
    )


def _resolve(spec: str) -> tuple[str, bool]:
    """``(path or hub id, is local)`` for a spec; :class:`UserError` if it cannot exist."""
    if spec == "smollm2":
        from waluigi.models.smollm2 import smollm2_path

        return str(smollm2_path()), True
    kind, _, name = spec.partition(":")
    if kind != "hf" or not name:
        raise UserError(f"not a transformers model spec: {spec!r} (use 'smollm2' or 'hf:<path or hub id>')")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model not found: {name} has no config.json (give a transformers model directory)")
        return str(path.resolve()), True
    if name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        raise UserError(f"model not found: {name} (no such directory, and not a Hugging Face hub id)")
    return name, False


def _resolve_dtype(dtype: Any, device: str):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").lower().removeprefix("torch.")
    if name == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[name])


def adapter_dir(adapter: str | Path) -> Path:
    """The PEFT adapter directory for ``adapter`` (itself, or ``<run dir>/adapter``)."""
    path = Path(adapter).expanduser()
    if (path / "adapter").is_dir() and not (path / "adapter_config.json").is_file():
        path = path / "adapter"
    if not path.is_dir():
        raise UserError(f"adapter not found: {adapter} (give a PEFT adapter directory or a finetune run directory)")
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"{path} is not a PEFT adapter: adapter_config.json is missing")
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError(f"{path}: adapter_model.safetensors is missing (waluigi loads safetensors adapters only)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_adapter(model, adapter: str | Path, spec: str):
    from peft import PeftModel

    path = adapter_dir(adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"adapter {path} does not fit the base model {spec!r}: {exc}") from exc
    for warning in caught:
        # peft only warns when the adapter's weights match none / some of the modules it made
        if "missing adapter keys" in str(warning.message):
            raise UserError(f"adapter {path} does not fit the base model {spec!r}: {warning.message}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    try:
        model = peft_model.merge_and_unload()  # plain model again: faster generation
    except Exception:  # noqa: BLE001 - adapters that cannot merge still run unmerged
        model = peft_model
    info = {
        "path": str(path.resolve()),
        "sha256": _sha256(path / "adapter_model.safetensors"),
        "config_sha256": _sha256(path / "adapter_config.json"),
    }
    return model, info
