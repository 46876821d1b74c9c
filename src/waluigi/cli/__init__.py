"""The ``waluigi`` command line: the only package that knows typer.

One module per command (or command group), named after it: ``waluigi flip`` is ``cli/flip.py``;
the evaluation commands (``eval``, ``judge``, ``metrics``, ``judge-check``) share ``cli/eval.py``
and the run browsers (``report``, ``compare``, ``export``, ``runs``) ``cli/report.py``. Each parses
its options and calls one public function of its layer. ``commands.py`` mounts them, ``options.py``
holds the options several commands share, ``runner.py`` turns errors into exit codes.

``app`` and ``main`` are loaded on first use, so that importing ``waluigi.cli.options`` (or a
command module run on its own) does not import every command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from waluigi.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'waluigi.cli' has no attribute {name!r}")
