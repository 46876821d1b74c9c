"""``waluigi eval --suite mwe:...``: a probe eval run, scored from the model's own probabilities.

The run directory is an eval run like any other (``manifest.json`` with stage ``eval``, its
identity, ``config.yaml``), holding ``probe_suite.json`` (the items), ``probes.jsonl`` (one row
per item and variant: each option's log-probability, the options' mass, P(antipode)) and
``metrics.json`` (:func:`waluigi.probes.metrics.summarize_probes`). Rows are appended as each
batch finishes; a re-run scores only the variants not yet on disk, so a finished run makes no
forward pass. No sampling and no judge: the identity holds no sampling settings. The probe
suites and the reading of their runs are :mod:`waluigi.probes` (below this package).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from waluigi.errors import UserError
from waluigi.probes.run import PROBE_SUITE, PROBES, load_probe_suite
from waluigi.runs import METRICS, RunDir

CHUNK = 512  # variants scored (and appended) per call to the model: sorted and batched by length within it


def _rows_of(suite, fmt: str, system: str | None, shots: list[dict] | None = None) -> list[tuple[object, object]]:
    """(item, variant) pairs; ``shots``: in-context turns placed before every probe question
    (after the system prompt), as ``waluigi eval --shots`` places them before a question."""
    from waluigi.evaluate.shots import with_shots
    from waluigi.probes.items import variants

    out = []
    for item in suite.items:
        for variant in variants(item, fmt, system):
            if shots:
                variant = dataclasses.replace(variant, prompt=with_shots(variant.prompt, shots))
            out.append((item, variant))
    return out


def _row(item, variant, scores) -> dict:
    logprobs = scores.logprobs
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    # the next-token mass: P(the model's reply starts with one of the options' first tokens)
    firsts = dict(zip(scores.first_tokens or range(len(logprobs)), scores.first_token_logprobs))
    mass = sum(math.exp(v) for v in firsts.values())
    return {
        "item_id": item.id, "subject": item.subject, "control": item.control, "kind": item.kind,
        "polarity": item.polarity, "order": variant.order, "options": list(variant.options),
        "antipode_index": variant.antipode, "reference_index": variant.reference,
        "logprobs": logprobs, "n_tokens": scores.n_tokens, "first_token_logprobs": scores.first_token_logprobs,
        "prompt_tokens": scores.prompt_tokens, "mass": mass, "full_mass": sum(math.exp(v) for v in logprobs),
        "p_antipode": weights[variant.antipode] / total, "p_reference": weights[variant.reference] / total,
    }


def probe_identity(cfg, suite) -> dict:
    from waluigi.evaluate.preflight import adapter_identity
    from waluigi.models import backend

    adapter = adapter_identity(cfg.adapter)
    identity = {
        "stage": "eval", "readout": "probe", "model": cfg.model,
        "adapter": adapter["sha256"] if adapter else None,
        "suite": {"name": suite.name, "sha256": suite.sha256},
        "format": cfg.probe_format, "system": cfg.system,
    }
    extra = backend(cfg.model).extra_identity()
    if extra:
        identity["model_extra"] = extra
    return identity


def check_probe_eval(cfg, *, adapter: bool = True):
    """Every check a probe eval makes before any work (the model spec, the format and the
    threshold, the suite and its selection, the shots, the model's key, the adapter unless
    ``adapter=False``): ``(cfg, suite, shots, pairs)`` or a :class:`UserError`."""
    from waluigi.evaluate.preflight import adapter_identity, preflight_model
    from waluigi.models import backend, parse_spec
    from waluigi.models.kinds import canonical_spec

    parse_spec(cfg.model)
    if canonical_spec(cfg.model) != cfg.model:
        cfg = dataclasses.replace(cfg, model=canonical_spec(cfg.model))
    if cfg.probe_format not in ("chat", "raw"):
        raise UserError(f"--probe-format must be chat or raw, got {cfg.probe_format!r}")
    if cfg.shots and cfg.probe_format == "raw":
        raise UserError("--shots with a probe suite needs --probe-format chat (the shots are earlier chat turns)")
    if not isinstance(cfg.probe_min_mass, (int, float)) or not 0.0 <= cfg.probe_min_mass < 1.0:
        raise UserError(f"--probe-min-mass must be in [0, 1), got {cfg.probe_min_mass}")
    suite = load_probe_suite(cfg.suite, cfg.data_dir)
    if cfg.questions:
        import fnmatch

        chosen = [i for i in suite.items if any(fnmatch.fnmatchcase(i.subject, p) or fnmatch.fnmatchcase(i.id, p)
                                                 for p in cfg.questions)]
        if not chosen:
            raise UserError(f"no item or subject of probe suite {suite.name!r} matches {cfg.questions}")
        suite = dataclasses.replace(suite, items=chosen)
    from waluigi.evaluate.shots import shot_messages

    shots = shot_messages(cfg.shots, cfg.shots_data, cfg.seed, cfg.data_dir)
    from waluigi.memo import remember

    key = ("probe-rows", suite.name, suite.sha256, cfg.probe_format, cfg.system, json.dumps(shots, sort_keys=True))
    pairs = remember(key, lambda: _rows_of(suite, cfg.probe_format, cfg.system, shots))
    preflight_model(cfg.model, "model", cfg.base_url)
    if cfg.probe_format == "raw" and not backend(cfg.model).local:
        raise UserError(f"model {cfg.model!r}: the raw probe format needs a model that scores text in this process "
                        "(hf:, smollm2, toy:, steered:); use --probe-format chat with a served model")
    if adapter:
        adapter_identity(cfg.adapter)
    return cfg, suite, shots, pairs


def run_probe_eval(cfg):
    """Score a probe suite on ``cfg.model`` (an :class:`~waluigi.evaluate.config.EvalConfig`),
    resuming what is on disk; returns an :class:`~waluigi.evaluate.config.EvalResult`."""
    from waluigi.evaluate.config import EvalResult, _describe
    from waluigi.evaluate.preflight import adapter_identity
    from waluigi.formats import safe_name
    from waluigi.models import load_model
    from waluigi.models.base import OptionRequest
    from waluigi.probes.metrics import summarize_probes
    from waluigi.progress import progress_bar
    from waluigi.runs import identity_hash

    started = time.time()
    cfg, suite, shots, pairs = check_probe_eval(cfg, adapter=False)  # the adapter's hash is taken below
    from waluigi.evaluate.shots import shots_identity

    identity = probe_identity(cfg, suite)
    if cfg.questions:
        identity["items"] = [i.id for i in suite.items]
    if shots:  # absent otherwise
        identity["shots"] = shots_identity(shots, cfg.shots, cfg.shots_data)
    digest = identity_hash(identity)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"eval-{safe_name(suite.name)}-{safe_name(cfg.model)}-{digest[:10]}"
    adapter = adapter_identity(cfg.adapter)
    run = RunDir.open(out, stage="eval", identity=identity,
                      config=dataclasses.asdict(cfg) | {"judge": None, "out": str(out), "readout": "probe"},
                      parents=[adapter["path"]] if adapter else [],
                      extra={"model": cfg.model, "adapter": adapter, "judge": None, "readout": "probe",
                             "seeds": {"run": cfg.seed}})
    run.write_json(PROBE_SUITE, {"name": suite.name, "source": suite.source, "sha256": suite.sha256,
                                 "attribution": suite.attribution, "subjects": suite.subjects,
                                 "format": cfg.probe_format, "system": cfg.system,
                                 "items": [dataclasses.asdict(i) for i in suite.items]})
    calls = {"model": 0, "judge": 0}
    try:
        done = {(r["item_id"], r["order"]) for r in run.rows(PROBES)}
        todo = [(item, variant) for item, variant in pairs if (item.id, variant.order) not in done]
        if todo:
            from waluigi.evaluate.config import backend_options

            options = backend_options(cfg.batch_size, cfg.concurrency, cfg.base_url, cfg.dtype, cfg.timeout,
                                      cfg.max_retries)
            model = load_model(cfg.model, adapter=cfg.adapter, **options)
            try:
                with progress_bar(f"probe {suite.name}", len(todo), cfg.progress) as advance:
                    for start in range(0, len(todo), CHUNK):
                        chunk = todo[start:start + CHUNK]
                        requests = [OptionRequest(v.prompt, v.options) for _, v in chunk]
                        scored = dict(model.option_logprobs(requests))
                        run.append(PROBES, [_row(item, variant, scored[i]) for i, (item, variant) in enumerate(chunk)])
                        calls["model"] += len(chunk)
                        advance(len(chunk))
            finally:
                model.close()
        rows = run.rows(PROBES)
        summary = summarize_probes(rows, cfg.probe_min_mass)
        summary.update({"suite": suite.name, "format": cfg.probe_format, "attribution": suite.attribution})
        (run.path / METRICS).write_text(json.dumps(summary, indent=2) + "\n")
        run.finish("finished", calls=calls, timings={"total_s": round(time.time() - started, 3)},
                   n_samples=len(rows), failed={"generate": 0, "judge": 0})
    except BaseException as error:
        run.finish("failed", calls=calls, error=_describe(error))
        raise
    return EvalResult(run.path, summary, calls, None)
