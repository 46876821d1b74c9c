"""Reports: figures and tables built from run files only (never from a model)."""

from waluigi.report.plots import scatter_aligned_coherent

__all__ = ["scatter_aligned_coherent"]
