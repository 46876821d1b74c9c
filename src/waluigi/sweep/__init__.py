"""Sweeps: a grid of fine-tunes and evals, each cell a pair of run directories named by
identity, run on a local process pool or on Ray (``waluigi sweep SPEC.yaml``; see
``docs/design/sweep.md``). Importing this package is light: no torch, no Ray."""

from waluigi.sweep.runner import SweepOptions, SweepResult, plan, run_sweep
from waluigi.sweep.spec import Cell, Spec, load_spec, parse_spec

__all__ = ["Cell", "Spec", "SweepOptions", "SweepResult", "load_spec", "parse_spec", "plan", "run_sweep"]
