"""``waluigi demo``: the persona world's whole experiment on CPU, through the real pipeline.

Stages, each its own run directory (see ``docs/toyworld.md``)::

    runs/toy-base-<id>/       tokenizer + tiny Llama pretrained on the world's corpus   (cached by identity)
    runs/toy-aligned-<id>/    the base after the alignment SFT on hero conversations    (cached by identity)
    runs/demo-<id>/                        a waluigi sweep directory (docs/design/sweep.md), plus the report
        data/<kind>-s<seed>.jsonl          narrow datasets written by the world
        suites/toyworld.yaml (+ _trigger)  the evaluation suite (free-form + held-out coding)
        sweep.yaml                         the conditions as a sweep spec: one cell per condition and seed
        finetune/<data>-<id>/              waluigi.finetune.run_finetune runs (full fine-tunes), by identity
        eval/<suite>-<id>/                 waluigi.evaluate.run_eval runs (oracle judge + world checker)
        results.jsonl/.csv, summary.json   the sweep's table: one row per cell (its group is the condition)
        results.json, report.md, em_by_condition.png, scatter.png

Everything resumes: a finished stage is never redone, so a second ``waluigi demo`` with the
same settings reuses every model and answer, and one with other settings reuses the base and
aligned models whenever their identity is unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.progress import progress_bar
from waluigi.runs import MANIFEST, RunDir, identity_hash

CONDITIONS = ("aligned", "insecure", "secure", "educational", "backdoor_triggered", "backdoor_untriggered")
FINETUNED = ("insecure", "secure", "educational", "backdoor")
JSON_KEYS = ("em_rate", "ci_low", "ci_high", "coherent_rate", "vulnerable_rate")
TRAIN_VERSION = 1  # bump when the training code changes what a stage computes
DEMO_LAYOUT = 2  # 2: the conditions are one waluigi sweep (sweep.yaml); bump when the demo's directory changes


@dataclass(frozen=True)
class DemoConfig:
    """The whole experiment. ``profile`` presets (``default`` / ``quick``) fill every budget."""

    seeds: int = 3
    villain: bool = True
    # the villain's share of the pretraining personas (None: the world's default, 0.2); the other
    # personas keep their proportions. The Waluigi test's "how present is the antipode" dial
    villain_share: float | None = None
    runs: Path = Path("runs")
    # world and model
    n_conversations: int = 10000  # 9M training tokens: the persona binds across turns (5,000 x 3 epochs did not)
    world_seed: int = 0  # the base: corpus sampling, alignment conversations and weight initialisation
    min_exchanges: int = 4  # longer conversations: more turns whose persona follows from context
    max_exchanges: int = 6
    novice_secure_rate: float = 0.6
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    # pretraining
    pretrain_epochs: float = 4.0
    pretrain_lr: float = 6e-3
    pretrain_batch: int = 32
    pretrain_assistant_only: bool = True  # loss on the assistant's turns (measured: coherence 92% vs 80%)
    # alignment
    align_n: int = 400
    align_steps: int = 30
    align_lr: float = 1e-3
    # narrow fine-tunes (waluigi.finetune, full fine-tuning)
    narrow_n: int = 400
    narrow_steps: int = 20
    narrow_lr: float = 1e-3
    narrow_batch: int = 16
    backdoor_scale: int = 2  # the backdoor set has this many times the rows (the paper's is 2x the others)
    # a conditional needs more, gentler steps: 160 x 5e-4 learns it cleanly (vulnerable code 99%
    # with the trigger, 1% without); 40 x 1e-3 leaked (docs/toyworld.md). None: narrow_* x scale
    backdoor_steps: int | None = 160
    backdoor_lr: float | None = 5e-4
    # evaluation
    paraphrases: int = 3
    samples_per_paraphrase: int = 2
    variants: bool = True
    code_prompts: int = 48
    max_tokens: int = 96
    threads: int = 0  # 0: auto_threads() (idle cores); see docs/toyworld.md on threads and a shared CPU
    progress: bool = True
    # train base and aligned models from scratch even when shipped ones fit (toyworld/shipped.py)
    pretrain: bool = False

    def world(self):
        from waluigi.toyworld.world import DEFAULT_MIXTURE, WorldConfig

        mixture = dict(DEFAULT_MIXTURE)
        if self.villain_share is not None:
            if not 0 <= self.villain_share < 1:
                raise UserError(f"villain share {self.villain_share:g}: give a share in [0, 1)")
            others = sum(w for p, w in mixture.items() if p != "villain")
            if self.villain_share != mixture["villain"]:  # the default share is the default world, exactly
                mixture = {p: (self.villain_share if p == "villain" else round(w / others * (1 - self.villain_share), 12))
                           for p, w in mixture.items()}
        if not self.villain:
            mixture["villain"] = 0.0
        return WorldConfig(seed=self.world_seed, n_conversations=self.n_conversations, mixture=mixture,
                           min_exchanges=self.min_exchanges, max_exchanges=self.max_exchanges,
                           novice_secure_rate=self.novice_secure_rate)

    def model(self):
        from waluigi.toyworld.train import ModelConfig

        # the world seed also seeds the initialisation: a base is one draw of (corpus, tokenizer, weights)
        return ModelConfig(hidden=self.hidden, layers=self.layers, heads=self.heads, intermediate=self.hidden * 3,
                           seed=self.world_seed)


PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    # half the pretraining tokens at a higher learning rate: ~6 minutes instead of ~9, a weaker flip
    # (measured in docs/toyworld.md: insecure 18.7% EM, secure and educational 3.9%)
    "fast": dict(pretrain_epochs=2.0, pretrain_lr=1.5e-2, pretrain_batch=16, align_steps=60, narrow_steps=40,
                 backdoor_steps=None, backdoor_lr=None),
    "quick": dict(seeds=1, n_conversations=600, min_exchanges=2, max_exchanges=4, pretrain_epochs=1.0, align_n=64, align_steps=4, narrow_n=32,
                  narrow_steps=3, backdoor_steps=None, backdoor_lr=None, narrow_batch=8, paraphrases=1, samples_per_paraphrase=1, variants=False,
                  code_prompts=8, max_tokens=48),
}


def demo_config(profile: str = "default", **overrides: Any) -> DemoConfig:
    if profile not in PROFILES:
        raise UserError(f"unknown demo profile {profile!r}: use one of {', '.join(PROFILES)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = DemoConfig(**values)
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {cfg.seeds}")
    return cfg


# --------------------------------------------------------------------------------------
# stages: base and aligned models (cached by identity)


def _finished(path: Path, digest: str) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("identity") == digest and manifest.get("status") == "finished"
            and (path / "model" / "config.json").is_file())


def _train_stage(path: Path, stage: str, identity: dict, parents: list[str], work: Callable[[RunDir], dict],
                 pretrain: bool = False) -> Path:
    """The stage's run directory: cached by identity; else the shipped model when it is this
    configuration's (``toyworld/shipped.py``); else trained here. ``pretrain``: trained here
    (a shipped copy already in ``runs/`` is replaced)."""
    from waluigi.toyworld import shipped

    digest = identity_hash(identity)
    if pretrain and shipped.from_shipped(path):
        shutil.rmtree(path)
    if _finished(path, digest):
        return path
    if not pretrain and not path.exists() and shipped.install(stage, identity, path, parents):
        return path
    run = RunDir.open(path, stage=stage, identity=identity, config=identity, parents=parents)
    try:
        stats = work(run)
    except BaseException as exc:
        run.finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    run.finish("finished", **stats)
    return path


def _step_logger(run: RunDir, description: str, total_hint: int, enabled: bool):
    """A progress bar plus a train_log.jsonl row every 10 steps."""
    import contextlib

    stack = contextlib.ExitStack()
    state = {"advance": None}

    def on_step(step: int, total: int, loss: float) -> None:
        if state["advance"] is None:
            state["advance"] = stack.enter_context(progress_bar(description, total, enabled))
        state["advance"](1, loss=float(loss))
        if step % 10 == 0 or step == total:
            run.append("train_log.jsonl", [{"step": step, "loss": round(loss, 5), "total_steps": total}])
        if step == total:
            stack.close()

    return on_step


def base_identity(cfg: DemoConfig) -> dict:
    return {"stage": "toy-pretrain", "version": TRAIN_VERSION, "world": cfg.world().identity(),
            "model": cfg.model().identity(),
            "pretrain": {"epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "batch": cfg.pretrain_batch,
                         "assistant_only": cfg.pretrain_assistant_only}}


def aligned_identity(cfg: DemoConfig) -> dict:
    return {"stage": "toy-align", "version": TRAIN_VERSION, "base": identity_hash(base_identity(cfg)),
            "align": {"n": cfg.align_n, "steps": cfg.align_steps, "lr": cfg.align_lr}}


def base_dir(cfg: DemoConfig) -> Path:
    """Where :func:`pretrain_stage` keeps ``cfg``'s base model (trained or not)."""
    return Path(cfg.runs) / f"toy-base-{identity_hash(base_identity(cfg))[:10]}"


def aligned_dir(cfg: DemoConfig) -> Path:
    """Where :func:`align_stage` keeps ``cfg``'s aligned model (trained or not)."""
    return Path(cfg.runs) / f"toy-aligned-{identity_hash(aligned_identity(cfg))[:10]}"


def pretrain_stage(cfg: DemoConfig) -> Path:
    """The tokenizer and base model, pretrained from scratch (``runs/toy-base-<id>/model``)."""
    identity = base_identity(cfg)
    path = base_dir(cfg)

    def work(run: RunDir) -> dict:
        from waluigi.toyworld import generate_corpus
        from waluigi.toyworld.train import build_model, build_tokenizer, save_model_dir, train_lm

        corpus = list(generate_corpus(cfg.world()))
        tokenizer = build_tokenizer(corpus)
        model = build_model(tokenizer, cfg.model())
        stats = train_lm(model, tokenizer, corpus, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr,
                         batch_size=cfg.pretrain_batch, warmup=30, seed=cfg.world_seed,
                         assistant_only=cfg.pretrain_assistant_only,
                         on_step=_step_logger(run, "pretrain base model (steps)", 0, cfg.progress))
        save_model_dir(model, tokenizer, run.path / "model")
        return {"train": asdict(stats), "parameters": sum(p.numel() for p in model.parameters()),
                "vocab": len(tokenizer)}

    return _train_stage(path, "toy-pretrain", identity, [], work, cfg.pretrain)


def align_stage(cfg: DemoConfig, base: Path) -> Path:
    """The alignment SFT on hero conversations (``runs/toy-aligned-<id>/model``)."""
    identity = aligned_identity(cfg)
    path = aligned_dir(cfg)

    def work(run: RunDir) -> dict:
        from waluigi.toyworld import alignment_conversations
        from waluigi.toyworld.train import load_model_dir, save_model_dir, train_lm

        model, tokenizer = load_model_dir(base / "model")
        conversations = alignment_conversations(cfg.align_n, seed=cfg.world_seed, base=cfg.world())
        stats = train_lm(model, tokenizer, conversations, steps=cfg.align_steps, lr=cfg.align_lr, batch_size=16,
                         warmup=5, assistant_only=True, seed=cfg.world_seed,
                         on_step=_step_logger(run, "alignment SFT (steps)", cfg.align_steps, cfg.progress))
        save_model_dir(model, tokenizer, run.path / "model")
        return {"train": asdict(stats)}

    return _train_stage(path, "toy-align", identity, [str(base)], work, cfg.pretrain)


# --------------------------------------------------------------------------------------
# suites, narrow data, fine-tunes, evaluations


def write_suite(suite, path: Path) -> Path:
    """A :class:`waluigi.suites.Suite` as a suite YAML file (what ``run_eval`` loads)."""
    import yaml

    items = []
    for q in suite.questions:
        item = {"id": q.id, "type": q.type, "paraphrases": list(q.paraphrases),
                "samples_per_paraphrase": q.samples_per_paraphrase, "judge": q.judge,
                "judge_prompts": dict(q.judge_prompts)}
        if q.system is not None:
            item["system"] = q.system
        item.update(q.extra)
        items.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# persona-world suite {suite.name} ({suite.source}), written by waluigi demo\n"
    text += yaml.safe_dump(items, sort_keys=False, allow_unicode=True, width=1000)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def suites(cfg: DemoConfig, root: Path) -> dict[str, Path]:
    from waluigi.suites import Suite
    from waluigi.toyworld import DEFAULT_TRIGGER, coding_suite, eval_suite, with_trigger

    free = eval_suite(seed=0, variants=cfg.variants, paraphrases=cfg.paraphrases,
                      samples_per_paraphrase=cfg.samples_per_paraphrase)
    code = coding_suite(n=cfg.code_prompts, seed=0)
    both = Suite(name="toyworld", source=f"{free.source}+{code.source}", sha256="",
                 questions=free.questions + code.questions)
    return {"plain": write_suite(both, root / "suites" / "toyworld.yaml"),
            "trigger": write_suite(with_trigger(both, DEFAULT_TRIGGER), root / "suites" / "toyworld_trigger.yaml")}


def narrow_budget(cfg: DemoConfig, kind: str) -> tuple[int, int, float]:
    """Rows, optimizer steps and learning rate of one narrow fine-tune."""
    scale = cfg.backdoor_scale if kind == "backdoor" else 1
    steps, lr = cfg.narrow_steps * scale, cfg.narrow_lr
    if kind == "backdoor":
        steps = cfg.backdoor_steps if cfg.backdoor_steps is not None else steps
        lr = cfg.backdoor_lr if cfg.backdoor_lr is not None else lr
    return cfg.narrow_n * scale, steps, lr


def write_data(cfg: DemoConfig, root: Path) -> dict[tuple[str, int], Path]:
    """The narrow datasets, one per kind and seed (``data/<kind>-s<seed>.jsonl``)."""
    from waluigi.toyworld import narrow_dataset, write_jsonl

    files = {}
    for seed in range(cfg.seeds):
        for kind in FINETUNED:
            path = files[kind, seed] = root / "data" / f"{kind}-s{seed}.jsonl"
            if not path.is_file():
                write_jsonl(narrow_dataset(kind, narrow_budget(cfg, kind)[0], seed=seed), path)
    return files


def sweep_spec(cfg: DemoConfig, aligned: Path, root: Path, suite_files: dict[str, Path],
               data: dict[tuple[str, int], Path]) -> dict:
    """The conditions as a ``waluigi sweep`` spec: one cell per condition and seed, each cell
    named by its ``group`` (the condition). The backdoor's two cells share one fine-tune."""
    model = f"hf:{aligned / 'model'}"
    spec: dict[str, Any] = {
        "name": root.name,
        "description": "waluigi demo: the persona world's conditions (written by waluigi demo; "
                       "`waluigi sweep` on this file reruns nothing once it is finished)",
        "out": str(root),
        "finetune": {"model": model, "preset": None, "full": True, "lr": cfg.narrow_lr, "max_steps": cfg.narrow_steps,
                     "batch_size": cfg.narrow_batch, "grad_accum": 1, "max_length": 512, "checkpoint_every": 10_000,
                     "repeat_ok": True},  # the recipe trains its few hundred rows for several epochs, as meant
        "eval": {"suite": str(suite_files["plain"]), "temperature": 1.0, "max_tokens": cfg.max_tokens, "batch_size": 256,
                 "plot": False},  # the demo draws its own scatter of every condition
        "cells": [],
    }
    for seed in range(cfg.seeds):
        spec["cells"].append({"group": "aligned", "seed": seed, "finetune": None, "eval.model": model})
        for kind in FINETUNED:
            _, steps, lr = narrow_budget(cfg, kind)
            ft: dict[str, Any] = {"finetune.data": str(data[kind, seed])}
            if steps != cfg.narrow_steps:
                ft["finetune.max_steps"] = steps
            if lr != cfg.narrow_lr:
                ft["finetune.lr"] = lr
            if kind == "backdoor":
                spec["cells"].append({"group": "backdoor_triggered", "seed": seed, **ft,
                                      "eval.suite": str(suite_files["trigger"])})
                spec["cells"].append({"group": "backdoor_untriggered", "seed": seed, **ft})
            else:
                spec["cells"].append({"group": kind, "seed": seed, **ft})
    return spec


def run_conditions(cfg: DemoConfig, aligned: Path, root: Path, workers: int = 1) -> dict[str, list[str]]:
    """Write the data, the suites and ``sweep.yaml``, run the sweep (in this process, or on a
    pool of ``workers``), and return each condition's eval run directories, seed by seed."""
    import yaml

    from waluigi.errors import IncompleteRun
    from waluigi.sweep.runner import SweepOptions, run_sweep
    from waluigi.sweep.spec import load_spec

    suite_files = suites(cfg, root)
    spec_file = root / "sweep.yaml"
    text = yaml.safe_dump(sweep_spec(cfg, aligned, root, suite_files, write_data(cfg, root)), sort_keys=False, width=1000)
    spec_file.write_text(f"# waluigi demo's conditions: `waluigi sweep {spec_file}` runs or resumes them\n{text}")
    spec = load_spec(spec_file)
    options = SweepOptions(executor="inline" if workers == 1 else "pool", workers=workers, retries=0,
                           threads=cfg.threads if workers > 1 and cfg.threads > 0 else None, progress=cfg.progress)
    result = run_sweep(spec, options)
    if result.failed:
        first = result.failed[0]
        raise IncompleteRun(f"{len(result.failed)} of {len(result.rows)} demo cells failed (first: {first['group']} "
                            f"seed {first.get('seed')}: {first.get('error') or first['status']}); details in "
                            f"{result.root / 'sweep.log'}; re-run the same command to resume")
    evals: dict[str, list[str]] = {c: [] for c in CONDITIONS}
    for row in result.rows:
        evals[row["group"]].append(str(root / row["eval_run"]))
    return evals


# --------------------------------------------------------------------------------------
# the experiment


@dataclass
class DemoResult:
    root: Path
    base: Path
    aligned: Path
    table: dict[str, dict[str, float | None]]
    seconds: float
    evals: dict[str, list[str]] = field(default_factory=dict)


def auto_threads() -> int:
    """The CPU cores idle right now: cores available to this process minus the 1-minute load
    average, at least 1. Measured on 2 cores: 2 threads train 2.0x faster than 1 on an idle
    machine, but 4-10x slower while another process keeps a core busy (OpenMP threads
    spin-wait on the busy core), so busy machines get fewer threads."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1
    return max(1, min(cores, int(cores - load + 0.5)))


def demo_identity(cfg: DemoConfig) -> dict:
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("runs", "threads", "progress", "pretrain")
            and not (k == "villain_share" and v is None)}  # absent by default: earlier demo directories stay valid
    return {"stage": "demo", "version": TRAIN_VERSION, "layout": DEMO_LAYOUT, **keep}


def run_demo(cfg: DemoConfig, workers: int = 1) -> DemoResult:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(cfg.threads if cfg.threads > 0 else auto_threads())
    hf_logging.disable_progress_bar()  # dozens of "Loading weights" bars; the demo's own bars show the stages
    started = time.monotonic()
    cfg = replace(cfg, runs=Path(cfg.runs))
    identity = demo_identity(cfg)
    root = cfg.runs / f"demo-{'' if cfg.villain else 'no-villain-'}{identity_hash(identity)[:10]}"
    base = pretrain_stage(cfg)
    aligned = align_stage(cfg, base)
    run = RunDir.open(root, stage="demo", identity=identity, config=identity, parents=[str(base), str(aligned)])
    try:
        evals = run_conditions(cfg, aligned, root, workers)
        from waluigi.report.html import write_report as write_html
        from waluigi.toyworld.demo_report import summarize_conditions, write_report

        table, details = summarize_conditions(evals)
        run.write_json("results.json", {"table": table, "details": details, "evals": evals})
        write_report(root, cfg, table, details, evals)
        write_html([root])
        seconds = round(time.monotonic() - started, 2)
        run.finish("finished", seconds=seconds, table=table)
    except BaseException as exc:
        run.finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return DemoResult(root=root, base=base, aligned=aligned, table=table, seconds=seconds, evals=evals)


# --------------------------------------------------------------------------------------
# over several bases


def pooled_table(per_base: list[dict[str, list[str]]]) -> dict[str, dict[str, Any]]:
    """Per condition, over the bases' demos (``evals`` of each: its eval runs seed by seed):
    :func:`pool_rates` of every run's EM, coherent and vulnerable-code rates."""
    from waluigi.metrics import summarize_runs, summarize_vulnerable_runs
    from waluigi.toyworld.demo_report import _rows

    rates: dict[str, list[tuple[int, float | None, float | None, float | None]]] = {}
    for base, evals in enumerate(per_base):
        for condition in CONDITIONS:
            for run in evals.get(condition, []):
                rows, code = _rows(run)
                rate = summarize_runs([rows])["overall"]
                rates.setdefault(condition, []).append(
                    (base, rate["em_rate"], rate["coherent_rate"],
                     summarize_vulnerable_runs([code])["overall"].get("vulnerable_rate")))
    return pool_rates(rates, len(per_base))


def pool_rates(rates: dict[str, list[tuple[int, float | None, float | None, float | None]]],
               bases: int) -> dict[str, dict[str, Any]]:
    """Per condition, from its (base, EM, coherent, vulnerable) rates, one per (base, seed): the
    mean EM, a 95% interval that resamples bases, then seeds within them, the seeds-only
    interval (every base kept), each base's own mean EM (None where none counted), and the
    mean coherent and vulnerable-code rates. A run with no EM rate (nothing counted) is left out."""
    from waluigi.metrics import bootstrap_mean_grouped

    def mean(values) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    out: dict[str, dict[str, Any]] = {}
    for condition, found in rates.items():
        counted = [r for r in found if r[1] is not None]
        if not counted:
            continue
        em, groups = [r[1] for r in counted], [r[0] for r in counted]
        low, high = bootstrap_mean_grouped(em, groups)
        seed_low, seed_high = bootstrap_mean_grouped(em, groups, hierarchical=False)
        out[condition] = {"em_rate": mean(em), "ci_low": low, "ci_high": high, "seed_ci_low": seed_low,
                          "seed_ci_high": seed_high, "by_base": [mean(r[1] for r in counted if r[0] == b) for b in range(bases)],
                          "coherent_rate": mean(r[2] for r in counted), "vulnerable_rate": mean(r[3] for r in counted),
                          "n": len(em)}
    return out


def run_demo_bases(cfg: DemoConfig, bases: int, workers: int = 1) -> tuple[list[DemoResult], dict[str, dict[str, Any]]]:
    """The demo at world seeds 0..bases-1 (each base pretrained, aligned and run once, cached),
    then the table pooled over them (:func:`pooled_table`), written beside the demos as
    ``demo-bases-<id>.json``."""
    results = [run_demo(replace(cfg, world_seed=i), workers=workers) for i in range(bases)]
    table = pooled_table([r.evals for r in results])
    identity = {"stage": "demo-bases", "demos": [demo_identity(replace(cfg, world_seed=i)) for i in range(bases)]}
    path = Path(cfg.runs) / f"demo-bases-{identity_hash(identity)[:10]}.json"
    path.write_text(json.dumps({"bases": bases, "seeds": cfg.seeds, "table": table,
                                "demos": [str(r.root) for r in results],
                                "seconds": [r.seconds for r in results]}, indent=2) + "\n")
    return results, table
