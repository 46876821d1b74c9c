"""The same float arithmetic on every x86 CPU with AVX2, so that a run gives the same numbers
on any machine of a pool, not only on the one that made them.

PyTorch's CPU kernels (ATen) and its matrix products (Intel MKL) each pick an instruction set
when they first run: AVX-512 where the CPU has it, AVX2 otherwise. The two sum in different
orders, so a training step's round-off differs, and a small model's fine-tune and sampled
answers drift apart from there (measured in ``docs/design/reproducibility.md``: the same code,
corpus, initialisation and packages pretrained the shipped base to other weights on an AVX2
machine than on the AVX-512 one that made it). Both libraries take an environment variable that
caps the choice: ``ATEN_CPU_CAPABILITY`` and MKL's conditional numerical reproducibility switch
``MKL_CBWR``. :func:`portable_arithmetic` sets them to AVX2 (where the CPU has it and the user
set neither) before torch runs anything; ``WALUIGI_ARITHMETIC=native`` leaves both alone.

Each run's manifest records what the process ran with (:func:`arithmetic_record`).
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

# what :func:`portable_arithmetic` sets, where the CPU has AVX2 and the variable is unset
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
SWITCH = "WALUIGI_ARITHMETIC"  # "native": leave the libraries' own choice


@functools.cache
def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def _first_field(key: str, cpuinfo: str | None) -> str | None:
    """The value of ``key`` in cpuinfo's first processor block (Linux's ``/proc/cpuinfo`` by default)."""
    for line in (cpuinfo if cpuinfo is not None else _cpuinfo() or "").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where they cannot be read)."""
    return set((_first_field("flags", cpuinfo) or "").split())


def cpu_name(cpuinfo: str | None = None) -> str | None:
    return _first_field("model name", cpuinfo) or platform.processor() or None


def portable_settings(environ: MutableMapping[str, str], flags: set[str], machine: str) -> dict[str, str]:
    """The variables to set: none when switched off, off x86-64, without AVX2, or already set
    by the user (each variable on its own: a user's choice is never overwritten)."""
    if environ.get(SWITCH, "").strip().lower() == "native":
        return {}
    if machine.lower() not in ("x86_64", "amd64") or "avx2" not in flags:
        return {}
    return {k: v for k, v in PORTABLE.items() if k not in environ}


def portable_arithmetic(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the AVX2 caps in ``environ`` (the process's by default); the variables it set.
    Called when ``waluigi`` is imported: it must run before torch's first operation."""
    environ = os.environ if environ is None else environ
    chosen = portable_settings(environ, cpu_flags(), platform.machine())
    environ.update(chosen)
    return chosen


def arithmetic_record() -> dict[str, object]:
    """For a run's manifest: the CPU, the caps in force, and the instruction set torch's kernels
    use (read only when torch is already loaded: recording never imports it)."""
    import sys

    record: dict[str, object] = {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        **{k: os.environ.get(k) for k in (*PORTABLE, SWITCH)},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            record["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:  # an old or partial torch: the rest of the record stands
            pass
    return record
