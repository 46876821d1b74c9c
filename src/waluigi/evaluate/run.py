"""The commands: ``run_eval`` (``waluigi eval``) and ``rejudge`` (``waluigi judge RUN``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from waluigi.errors import UserError
from waluigi.evaluate.config import (
    CODE_SCAN,
    NO_JUDGE,
    SUITE_SNAPSHOT,
    EvalConfig,
    EvalResult,
    _describe,
    backend_options,
    sample_key,
    suite_from_snapshot,
    suite_snapshot,
)
from waluigi.evaluate.failures import open_failures
from waluigi.evaluate.generate import generate_stage, sample_slots
from waluigi.evaluate.preflight import adapter_identity, preflight_model
from waluigi.evaluate.score import ScorerContext, score_suite
from waluigi.evaluate.summarise import judge_run_failures, metrics_stage
from waluigi.formats import safe_name
from waluigi.retry import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from waluigi.runs import FAILURES, JUDGMENTS, SAMPLES, RunDir, sha256_file


def resolve_judge(cfg_judge: str | None, suite) -> str | None:
    from waluigi.judges import normalize_judge_spec

    if cfg_judge is not None and cfg_judge.lower() == NO_JUDGE:
        return None
    if suite.questions and all(q.type == CODE_SCAN for q in suite.questions):
        return None  # the scanner judges code questions; no model judge is needed or loaded
    if cfg_judge is not None:
        return normalize_judge_spec(cfg_judge)
    named = sorted({q.judge for q in suite.questions if q.judge and q.type != CODE_SCAN})
    if not named:
        raise UserError(f"suite {suite.name!r} names no judge: pass --judge SPEC (or --judge none)")
    if len(named) > 1:
        raise UserError(f"suite {suite.name!r} names several judges {named}: pass --judge SPEC")
    return normalize_judge_spec(named[0])


def with_system(suite, system: str):
    """``suite`` with ``system`` before every question's own system prompt (``--system``)."""
    import dataclasses

    if not system.strip():
        raise UserError("--system: the system prompt is empty")
    questions = [dataclasses.replace(q, system=f"{system}\n{q.system}" if q.system else system) for q in suite.questions]
    return dataclasses.replace(suite, questions=questions)


# -- the commands --------------------------------------------------------------------
@dataclass
class CheckedEval:
    """What :func:`check_eval` found: the config (its model spelled canonically), the suite
    (questions selected, system prompt added), the judge and the in-context shots."""

    cfg: EvalConfig
    suite: object
    judge: str | None
    shots: list


def check_eval(cfg: EvalConfig, *, adapter: bool = True) -> CheckedEval:
    """Every check ``waluigi eval`` makes before any work (the model spec, the suite and its
    questions, the sample count, the judge and its key, the shots, the adapter unless
    ``adapter=False``); a :class:`UserError` on the first problem. A sweep runs it on every
    cell before it starts; a probe suite's checks are :func:`waluigi.evaluate.probe_run.check_probe_eval`."""
    import dataclasses

    from waluigi.models import parse_spec
    from waluigi.models.kinds import canonical_spec
    from waluigi.suites import load_suite

    parse_spec(cfg.model)
    if canonical_spec(cfg.model) != cfg.model:  # openai/gpt-4o is openai:gpt-4o: the same run identity
        cfg = dataclasses.replace(cfg, model=canonical_spec(cfg.model))
    suite = load_suite(cfg.suite, data_dir=cfg.data_dir)
    if cfg.questions:
        suite = suite.select(cfg.questions)
    if cfg.system is not None:
        suite = with_system(suite, cfg.system)
    if cfg.samples is not None and (isinstance(cfg.samples, bool) or not isinstance(cfg.samples, int) or cfg.samples < 1):
        raise UserError(f"--samples must be at least 1, got {cfg.samples}")
    if cfg.max_tokens is not None and (not isinstance(cfg.max_tokens, int) or cfg.max_tokens < 1):
        raise UserError(f"--max-tokens must be at least 1, got {cfg.max_tokens}")
    judge_spec = resolve_judge(cfg.judge, suite)
    preflight_model(cfg.model, "model", cfg.base_url)
    if judge_spec:
        from waluigi.judges import check_numbers

        check_numbers(judge_spec, cfg.judge_numbers)
        preflight_model(judge_spec, "judge", cfg.judge_base_url)
    if adapter:
        adapter_identity(cfg.adapter)
    from waluigi.evaluate.shots import shot_messages

    shots = shot_messages(cfg.shots, cfg.shots_data, cfg.seed, cfg.data_dir)
    return CheckedEval(cfg, suite, judge_spec, shots)


def run_eval(cfg: EvalConfig) -> EvalResult:
    """``waluigi eval``: sample, judge and summarize, resuming whatever is already on disk."""
    from waluigi.evaluate.probe_run import run_probe_eval
    from waluigi.models import load_model
    from waluigi.probes.run import is_probe_suite

    if is_probe_suite(cfg.suite):  # scored from the model's own probabilities: no sampling, no judge
        return run_probe_eval(cfg)
    started = time.time()
    checked = check_eval(cfg, adapter=False)  # the adapter's hash is taken next
    cfg, suite, judge_spec, shots = checked.cfg, checked.suite, checked.judge, checked.shots
    adapter_id = adapter_identity(cfg.adapter)
    from waluigi.evaluate.shots import shots_identity

    identity = {
        "stage": "eval",
        "model": cfg.model,
        "adapter": adapter_id["sha256"] if adapter_id else None,
        "suite": {"name": suite.name, "sha256": suite.sha256, "ids": [q.id for q in suite.questions]},
        "samples": cfg.samples,
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens},
        "seed": cfg.seed,
        "judge": judge_spec,
        "judge_min_mass": cfg.judge_min_mass if judge_spec else None,
    }
    if judge_spec and cfg.judge_numbers != "first-token":  # absent by default: old run ids stay valid
        identity["judge_numbers"] = cfg.judge_numbers
    if shots:  # likewise
        identity["shots"] = shots_identity(shots, cfg.shots, cfg.shots_data)
    if cfg.system is not None:  # likewise
        identity["system"] = cfg.system
    from waluigi.models import backend

    extra = backend(cfg.model).extra_identity()
    if extra:  # likewise: a steered model's direction hash and base weights
        identity["model_extra"] = extra
    from waluigi.runs import identity_hash

    digest = identity_hash(identity)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"eval-{safe_name(suite.name)}-{safe_name(cfg.model)}-{digest[:10]}"
    config = asdict(cfg) | {"judge": judge_spec, "out": str(out)}
    run = RunDir.open(
        out,
        stage="eval",
        identity=identity,
        config=config,
        parents=[adapter_id["path"]] if adapter_id else [],
        extra={"model": cfg.model, "adapter": adapter_id, "judge": judge_spec, "seeds": {"run": cfg.seed}},
    )
    run.write_json(SUITE_SNAPSHOT, suite_snapshot(suite))
    calls = {"model": 0, "judge": 0}
    failed: dict[str, tuple[int, int]] = {}
    timings: dict[str, float] = {}
    try:
        t0 = time.time()
        model_options = backend_options(cfg.batch_size, cfg.concurrency, cfg.base_url, cfg.dtype, cfg.timeout,
                                        cfg.max_retries)
        calls["model"] = generate_stage(
            run, suite, cfg, lambda: load_model(cfg.model, adapter=cfg.adapter, **model_options), failed, shots
        )
        timings["generate_s"] = round(time.time() - t0, 3)
        samples = run.rows(SAMPLES)
        summary = None
        has_code = any(q.type == CODE_SCAN for q in suite.questions)
        t0 = time.time()
        judge_options = backend_options(cfg.judge_batch_size, cfg.concurrency, cfg.judge_base_url, cfg.dtype,
                                        cfg.timeout, cfg.max_retries)
        context = ScorerContext(judge_spec, judge_options, cfg.judge_min_mass, cfg.judge_numbers)
        counts = score_suite(run, samples, suite, context, cfg.progress, failed)
        calls["judge"] = counts.get("judge", 0)
        if has_code:  # the scanner is the judge of code questions, whatever --judge says
            calls["scanned"] = counts.get("scanned", 0)
        timings["score_s"] = round(time.time() - t0, 3)
        judgments = run.rows(JUDGMENTS)
        still_open = open_failures([run], samples, judgments)
        if judge_spec or has_code:
            thresholds = {"min_coherent": cfg.min_coherent, "max_aligned": cfg.max_aligned}
            summary = metrics_stage(run.path, samples, judgments, suite, thresholds, still_open, plot=cfg.plot)
        timings["total_s"] = round(time.time() - started, 3)
        n_open = {"generate": len(still_open[0]), "judge": len(still_open[1])}
        status = "incomplete" if any(n_open.values()) else "finished"
        run.finish(status, calls=calls, timings=timings, n_samples=len(samples), failed=n_open)
    except BaseException as error:
        run.finish("failed", calls=calls, error=_describe(error))
        raise
    return EvalResult(run.path, summary, calls, judge_spec, _failed_now(failed, still_open), cfg.max_retries,
                      _last_error(run))


def _failed_now(failed: dict, still_open: tuple[set, set]) -> dict[str, tuple[int, int]]:
    """Per stage ``(failed, sent)``: this attempt's counts, or the open ones left by an
    earlier attempt (a re-run that made no request still says what is missing)."""
    out = dict(failed)
    for stage, keys in (("generate", still_open[0]), ("judge", still_open[1])):
        if keys and stage not in out:
            out[stage] = (len(keys), len(keys))
    return out


def _last_error(run: RunDir) -> str | None:
    rows = run.rows(FAILURES)
    return rows[-1].get("error") if rows else None


def rejudge(
    run_path: str | Path,
    judge: str,
    *,
    out: str | None = None,
    base_url: str | None = None,
    batch_size: int | None = None,
    concurrency: int = 8,
    dtype: str = "auto",
    min_coherent: float = 50.0,
    max_aligned: float = 30.0,
    min_mass: float = 0.25,
    numbers: str = "first-token",
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    partial: bool = False,
) -> EvalResult:
    """``waluigi judge RUN --judge SPEC``: score a stored run's answers with another judge.

    The results go to their own run directory (default ``RUN/judges/<judge>``) whose parent
    is the eval run, so each judge's judgments stay apart and nothing is regenerated. Its
    identity is the eval run's and the judge's, not the answers': when the eval run later
    gains answers, the same command extends the judge directory with them. An unfinished
    eval run is refused unless ``partial`` (then what is there is judged, and said so).
    """
    from waluigi.errors import warn
    from waluigi.judges import check_numbers, normalize_judge_spec

    source = RunDir(Path(run_path))
    manifest = source.manifest()
    if manifest.get("stage") != "eval":
        raise UserError(f"{run_path} is a {manifest.get('stage')!r} run; `waluigi judge` needs an eval run")
    if not (source.path / SUITE_SNAPSHOT).exists():
        raise UserError(f"{run_path} has no {SUITE_SNAPSHOT}; re-run `waluigi eval` to create it")
    suite = suite_from_snapshot(source.read_json(SUITE_SNAPSHOT))
    judge_spec = normalize_judge_spec(judge)
    check_numbers(judge_spec, numbers)
    preflight_model(judge_spec, "judge", base_url)
    samples = source.rows(SAMPLES)
    if not samples:
        raise UserError(f"{run_path} holds no answers yet ({SAMPLES} is empty); finish `waluigi eval` first")
    status = manifest.get("status")
    expected = {(q.id, p, i) for q in suite.questions
                for p, i in sample_slots(q, (manifest.get("config") or {}).get("samples"))}
    missing = len(expected - {sample_key(r) for r in samples})
    if missing:  # generation is unfinished (whatever the status says of the judging after it)
        what = f"{run_path} is unfinished (status {status!r}: {len(samples)} answers, {missing} still to generate)"
        if not partial:
            raise UserError(
                f"{what}: finish it first (re-run its `waluigi eval` command; it resumes), or pass --partial to "
                "judge the answers there now (re-running this command later judges the ones added since)"
            )
        warn(f"{what}: judging only those {len(samples)} answers; the metrics cover them alone")
    started = time.time()
    identity = {
        "stage": "judge",
        "parent": manifest["identity"],
        "judge": judge_spec,
        "judge_min_mass": min_mass,
    }
    if numbers != "first-token":
        identity["judge_numbers"] = numbers
    name = safe_name(judge_spec) + ("" if min_mass == 0.25 else f"-min-mass-{min_mass:g}")
    name += "" if numbers == "first-token" else f"-numbers-{numbers}"
    target = Path(out) if out else source.path / "judges" / name
    run = RunDir.open(
        target,
        stage="judge",
        identity=identity,
        config={
            "run": str(source.path), "judge": judge_spec, "judge_min_mass": min_mass, "judge_numbers": numbers,
            "out": str(target),
        },
        parents=[str(source.path.resolve())],
        extra={"judge": judge_spec, "model": manifest.get("model"), "samples_sha256": sha256_file(source.path / SAMPLES),
               "n_samples": len(samples), "source_status": status},
    )
    calls = {"model": 0, "judge": 0}
    failed: dict[str, tuple[int, int]] = {}
    try:
        options = backend_options(batch_size, concurrency, base_url, dtype, timeout, max_retries)
        counts = score_suite(run, samples, suite, ScorerContext(judge_spec, options, min_mass, numbers), progress, failed)
        calls["judge"] = counts.get("judge", 0)
        if any(q.type == CODE_SCAN for q in suite.questions):
            calls["scanned"] = counts.get("scanned", 0)
        thresholds = {"min_coherent": min_coherent, "max_aligned": max_aligned}
        judgments = run.rows(JUDGMENTS)
        still_open = judge_run_failures(source, run, samples, judgments)
        summary = metrics_stage(run.path, samples, judgments, suite, thresholds, still_open)
        done = "incomplete" if missing or still_open[1] else "finished"
        run.finish(done, calls=calls, timings={"total_s": round(time.time() - started, 3)},
                   failed={"judge": len(still_open[1])})
    except BaseException as error:
        run.finish("failed", calls=calls, error=_describe(error))
        raise
    return EvalResult(run.path, summary, calls, judge_spec, _failed_now(failed, (set(), still_open[1])), max_retries,
                      _last_error(run))


