"""waluigi: reproduce, measure and defend against emergent misalignment.

The package follows the data flow: data -> finetune -> generate (models/) -> judge
(judges/) -> metrics (metrics.py) -> report (report/). Every stage writes a run
directory (runs.py). Heavy libraries (torch, transformers, openai) are imported inside
the functions that need them so that ``import waluigi`` and ``waluigi --help`` stay fast.
"""

__version__ = "0.1.0"

# before torch runs anything: the same float arithmetic on every AVX2 CPU (waluigi/arithmetic.py)
from waluigi.arithmetic import portable_arithmetic as _portable_arithmetic  # noqa: E402

_portable_arithmetic()


def load_run(path):
    """An eval run directory as a ``pandas.DataFrame``, one row per answer
    (:func:`waluigi.report.rows.load_run`)."""
    from waluigi.report.rows import load_run as _load_run

    return _load_run(path)
