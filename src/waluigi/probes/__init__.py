"""Probe suites: a judge-free readout scored from the model's own probabilities on answer options.

``items`` (probe items and their prompts), ``mwe`` (Anthropic's model-written evaluations:
``mwe:`` suites), ``metrics`` (pure functions), ``run`` (the probe eval run). See
``docs/design/probes.md``.
"""
