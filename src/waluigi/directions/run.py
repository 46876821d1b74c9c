"""``run_extract``: one direction from a source (see :mod:`waluigi.directions.extract`),
cached by identity in ``runs/direction-<method>-<hash>``: the same inputs again load the
direction already on disk and load no model."""

from __future__ import annotations

import json
from pathlib import Path

from waluigi.directions.activations import Example, teacher_forced_means
from waluigi.directions.extract import METHODS, ExtractConfig, finish, judged_examples
from waluigi.errors import UserError
from waluigi.models.vectors import TENSORS, load_direction


def _model_identity(spec: str, adapter: str | None = None) -> dict:
    from waluigi.models import backend

    identity = backend(spec).identity()
    if adapter:
        from waluigi.evaluate.preflight import adapter_identity

        identity["adapter"] = (adapter_identity(adapter) or {}).get("sha256")
    return identity


def _run_identity(run: str) -> str:
    try:
        return json.loads((Path(run) / "manifest.json").read_text())["identity"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{run}: not a run directory (no readable manifest.json identity: {exc})") from exc


def activation_means(spec: str, adapter: str | None, examples: list[Example], what: str, batch_size: int = 16,
                     progress: bool = True):
    """Load ``spec`` (with ``adapter``), read ``examples`` through it, release it."""
    from waluigi.models import load_model
    from waluigi.progress import progress_bar

    generator = load_model(spec, adapter=adapter)
    try:
        with progress_bar(f"activations: {what}", len(examples), progress) as advance:
            return teacher_forced_means(generator, examples, batch_size=batch_size, progress=advance)
    finally:
        generator.close()


def _stack(parts: list[tuple[list[int], object]], total: int):
    """Per-group Means put back in example order."""
    import torch

    from waluigi.directions.activations import Means

    first = parts[0][1]
    response = torch.zeros((total, *first.response.shape[1:]))
    last = torch.zeros_like(response)
    tokens = 0
    for index, means in parts:
        response[index] = means.response
        last[index] = means.prompt_last
        tokens += means.tokens
    return Means(response=response, prompt_last=last, tokens=tokens)


def _judged(cfg: ExtractConfig, identity: dict):
    examples, counts = judged_examples(cfg.runs, cfg.aligned_below, cfg.aligned_above, cfg.min_coherent)
    by_model: dict[tuple, list[int]] = {}
    for i, e in enumerate(examples):
        who = (cfg.model, None) if cfg.model else (e.key["model"], e.key["adapter"])
        by_model.setdefault(who, []).append(i)
    if not examples:
        raise UserError(f"no judged free-form answers passed the filters in {', '.join(cfg.runs)} ({counts})")
    parts = [(idx, activation_means(spec, adapter, [examples[i] for i in idx], spec, cfg.batch_size, cfg.progress))
             for (spec, adapter), idx in by_model.items()]
    models = [{"spec": spec, "adapter": adapter, **_model_identity(spec, adapter)} for spec, adapter in by_model]
    manifest = {**identity, "models": models, "kept": counts}
    groups = [e.key["question_id"] for e in examples]  # the held-out split keeps a question's answers together
    return _stack(parts, len(examples)), [e.label for e in examples], manifest, groups


def _answers(runs: list[str]) -> list[Example]:
    from waluigi.directions.extract import _prompt
    from waluigi.runs import read_jsonl

    examples = []
    for run in runs:
        for sample in read_jsonl(Path(run) / "samples.jsonl"):
            if sample.get("answer", "").strip():
                examples.append(Example(messages=_prompt(sample), answer=sample["answer"],
                                        key={"run": run, "question_id": sample["question_id"]}))
    if not examples:
        raise UserError(f"no answers in {', '.join(runs)}")
    return examples


def _two_models(cfg: ExtractConfig, identity: dict):
    import torch

    from waluigi.directions.activations import Means

    examples = _answers(cfg.runs)
    a = activation_means(cfg.model, None, examples, f"A = {cfg.model}", cfg.batch_size, cfg.progress)
    b = activation_means(cfg.model_b, None, examples, f"B = {cfg.model_b}", cfg.batch_size, cfg.progress)
    means = Means(response=torch.cat([a.response, b.response]), prompt_last=torch.cat([a.prompt_last, b.prompt_last]),
                  tokens=a.tokens + b.tokens)
    labels = [0] * len(examples) + [1] * len(examples)
    groups = list(range(len(examples))) * 2  # an answer read by A and by B: one group
    return means, labels, {**identity, "models": [_model_identity(cfg.model), _model_identity(cfg.model_b)],
                           "answers": len(examples)}, groups


def _prompts(cfg: ExtractConfig, identity: dict):
    from waluigi.evaluate.config import sample_seed
    from waluigi.models import GenerationRequest, SamplingParams, load_model
    from waluigi.progress import progress_bar

    asked = _questions(cfg)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=cfg.max_tokens)
    requests, prompts = [], []
    for label, system, shots in ((1, cfg.positive, cfg.positive_shots), (0, cfg.negative, cfg.negative_shots)):
        pool = _shot_pool(shots, cfg)
        for qid, user, p, s in asked:
            seed = sample_seed(cfg.seed, (qid, p, s))
            messages = ([{"role": "system", "content": system}] if system else [])
            if pool:
                messages += _shots(pool, cfg.shots, seed)
            messages += user
            requests.append(GenerationRequest(messages=messages, seed=seed, params=params))
            prompts.append((label, messages, {"question_id": qid, "paraphrase_index": p, "sample_index": s}))
    generator = load_model(cfg.model)
    try:
        answers: dict[int, str] = {}
        with progress_bar("answers under both prompts", len(requests), cfg.progress) as advance:
            for i, completion in generator.generate(requests, progress=advance):
                answers[i] = completion.text
        examples = [Example(messages=m, answer=answers[i], label=label, key=key)
                    for i, (label, m, key) in enumerate(prompts) if answers.get(i, "").strip()]
        with progress_bar("activations", len(examples), cfg.progress) as advance:
            means = teacher_forced_means(generator, examples, batch_size=cfg.batch_size, progress=advance)
    finally:
        generator.close()
    groups = [e.key["question_id"] for e in examples]
    return means, [e.label for e in examples], {**identity, "models": [_model_identity(cfg.model)],
                                                 "prompts": len(asked)}, groups


def _questions(cfg: ExtractConfig) -> list[tuple[str, list[dict], int, int]]:
    """(id, user turns, paraphrase, sample) of every answer to sample: the suite's questions
    (their own system prompts dropped: each side brings its own), or the first user turn of
    ``prompts_n`` train rows of ``prompts_data`` (e.g. coding requests, whose held-out rows
    a ``code:`` suite then asks)."""
    from waluigi.evaluate.generate import sample_slots

    if cfg.prompts_data:
        from waluigi.data import load_rows

        rows = load_rows(cfg.prompts_data, data_dir=cfg.data_dir, split="train", n=cfg.prompts_n, seed=cfg.seed)
        firsts = [next((m for m in r["messages"] if m["role"] == "user"), None) for r in rows]
        return [(f"row{i}", [{"role": "user", "content": m["content"]}], 0, s)
                for i, m in enumerate(firsts) if m for s in range(cfg.samples)]
    from waluigi.suites import load_suite

    suite = load_suite(cfg.suite, data_dir=cfg.data_dir)
    return [(q.id, [m for m in q.messages(p) if m["role"] != "system"], p, s)
            for q in suite.questions for p, s in sample_slots(q, cfg.samples)]


def _shot_pool(data: str | None, cfg: ExtractConfig) -> list[dict]:
    """The train rows of ``data`` (loaded once; each answer draws its own ``cfg.shots``)."""
    if not data:
        return []
    from waluigi.data import load_rows

    rows = load_rows(data, data_dir=cfg.data_dir, split="train")
    if len(rows) < cfg.shots:
        raise UserError(f"--shots {cfg.shots}: {data} has only {len(rows)} train rows")
    return rows


def _shots(pool: list[dict], k: int, seed: int) -> list[dict]:
    import random

    return [{"role": m["role"], "content": m["content"]} for row in random.Random(seed).sample(pool, k)
            for m in row["messages"] if m["role"] in ("user", "assistant")]


def check_extract(cfg: ExtractConfig) -> None:
    """The numbers of an extraction, checked before any model is loaded."""
    if cfg.method not in METHODS:
        raise UserError(f"--method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    for name in ("batch_size", "samples", "max_tokens", "prompts_n"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value!r}")
    for name in ("aligned_below", "aligned_above", "min_coherent"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not -1 <= value <= 100:
            raise UserError(f"--{name.replace('_', '-')} is a judge score threshold in [0, 100] (-1: none), got {value!r}")


def extract_identity(cfg: ExtractConfig) -> dict:
    check_extract(cfg)
    base = {"method": cfg.method, "point": "resid", "reduce": "mean over answer tokens"}
    if cfg.method in ("judged", "models"):
        if not cfg.runs:
            raise UserError(f"--method {cfg.method} needs eval runs (--run DIR, repeatable)")
        base["runs"] = [{"path": str(r), "identity": _run_identity(r)} for r in cfg.runs]
    if cfg.method == "judged":
        base["filters"] = {"aligned_below": cfg.aligned_below, "aligned_above": cfg.aligned_above,
                           "min_coherent": cfg.min_coherent}
        base["model"] = _model_identity(cfg.model) if cfg.model else "each run's own"
    elif cfg.method == "models":
        if not cfg.model or not cfg.model_b:
            raise UserError("--method models needs --model A and --model-b B (the direction is B minus A)")
        base["model"], base["model_b"] = _model_identity(cfg.model), _model_identity(cfg.model_b)
    else:
        sides = [(cfg.positive, cfg.positive_shots), (cfg.negative, cfg.negative_shots)]
        if not cfg.model or not all(any(side) for side in sides):
            raise UserError("--method prompts needs --model and, for each side, a system prompt (--positive / "
                            "--negative TEXT) or in-context rows (--positive-shots / --negative-shots DATA)")
        if cfg.shots < 1 and (cfg.positive_shots or cfg.negative_shots):
            raise UserError(f"--shots must be at least 1, got {cfg.shots}")
        base |= {"model": _model_identity(cfg.model), "positive": cfg.positive, "negative": cfg.negative,
                 "samples": cfg.samples, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
        base |= ({"prompts_data": cfg.prompts_data, "prompts_n": cfg.prompts_n} if cfg.prompts_data
                 else {"suite": cfg.suite})
        if cfg.positive_shots or cfg.negative_shots:
            base |= {"positive_shots": cfg.positive_shots, "negative_shots": cfg.negative_shots, "shots": cfg.shots}
    return base


def portable_identity(identity: dict) -> dict:
    """``identity`` without where things lie on this machine, so the same inputs give the same
    direction on another checkout: a local model is its kind and its weights' hash (not its
    path), an eval run its own identity (not its path)."""
    out = dict(identity)
    for key in ("model", "model_b"):
        model = out.get(key)
        if isinstance(model, dict) and model.get("weights_sha256"):
            out[key] = {**{k: v for k, v in model.items() if k not in ("spec", "model_path")},
                        "kind": str(model.get("spec", "")).split(":", 1)[0]}
    if isinstance(out.get("runs"), list):
        out["runs"] = [{"identity": r.get("identity")} if isinstance(r, dict) else r for r in out["runs"]]
    return out


def run_extract(cfg: ExtractConfig):
    """The direction of ``cfg``: from disk when these inputs made one already."""
    from waluigi.runs import identity_hash

    legacy = extract_identity(cfg)
    identity = portable_identity(legacy)
    digest = identity_hash(identity)
    out = Path(cfg.out) if cfg.out else Path(cfg.runs_dir) / f"direction-{cfg.method}-{digest[:10]}"
    if (out / TENSORS).is_file():
        found = load_direction(out)
        # a direction made before identities were portable carries the path-holding digest
        if found.manifest.get("identity") in (digest, identity_hash(legacy)):
            return found
        if cfg.out:
            raise UserError(f"{out} holds another direction (made from other inputs); choose another --out")
    make = {"judged": _judged, "models": _two_models, "prompts": _prompts}[cfg.method]
    means, labels, manifest, groups = make(cfg, identity)
    return finish(out, means, labels, {**manifest, "identity": digest}, cfg.seed, groups)


def run_extracts(cfg: ExtractConfig, *, sweep: Path | None = None, where: list[str] | None = None,
                 bases: int | None = None) -> list:
    """``run_extract`` for ``cfg`` with the eval runs of ``sweep``'s cells that match ``where``
    added, once, or (``bases``) once per base of a family: base I takes the cells ``base=I`` and
    ``{base}`` in ``cfg.model`` and ``cfg.out`` becomes I. Every base's configuration is made and
    checked before a base model trains."""
    import dataclasses

    from waluigi.directions.extract import sweep_runs
    from waluigi.errors import UserError
    from waluigi.models.families import build_members, resolve

    out, model = cfg.out, cfg.model
    if bases is not None and (out is None or "{base}" not in str(out) or bases < 1
                              or not (sweep is not None or "{base}" in (model or ""))):
        raise UserError("--bases N: one direction per base, of --sweep DIR's cells (--where base=I) or of --model holding "
                        "{base} (toyworld@{base}), into --out holding {base} (e.g. --out runs/judged-{base})")
    chosen, wanted = [], []
    for base in range(bases or 1):  # every base's cells found before the first model loads
        runs = list(cfg.runs)
        if sweep is not None:
            runs += sweep_runs(sweep, list(where or []) + ([f"base={base}"] if bases else []))
        own = model
        if model is not None:  # a family's member (toyworld@2, or toyworld@{base} with --bases): its weights' spec
            own, member = resolve(model.replace("{base}", str(base)), cfg.runs_dir)
            wanted += [member] if member else []
        chosen.append(dataclasses.replace(cfg, runs=runs, model=own,
                                          out=Path(str(out).replace("{base}", str(base))) if out is not None else None))
    if wanted:  # the numbers checked before a base trains
        for one in chosen:
            check_extract(one)
        build_members(wanted, cfg.progress)
    return [run_extract(one) for one in chosen]
