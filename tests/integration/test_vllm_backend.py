"""The `vllm:` backend is an optional GPU extra: without it, a clear message, no traceback."""

from __future__ import annotations

import importlib.util

import pytest

from waluigi.errors import UserError
from waluigi.models import load_model

MESSAGE = "the vllm backend needs the optional extra: pip install 'waluigi[vllm]' (Linux + CUDA GPU)"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_a_clear_user_error():
    from waluigi.models.vllm_backend import VLLMGenerator

    with pytest.raises(UserError) as info:
        VLLMGenerator("some/model")
    assert info.value.message == MESSAGE
    with pytest.raises(UserError) as info:
        load_model("vllm:some/model", dtype="auto", batch_size=8)
    assert info.value.message == MESSAGE


def test_vllm_module_imports_without_vllm():
    """The module itself imports nothing heavy (vllm is imported inside the constructor)."""
    import waluigi.models.vllm_backend as mod

    assert mod.MISSING == MESSAGE
