"""``waluigi direction extract``: a mean-difference direction per layer, from one of three
sources, written in one format (:mod:`waluigi.models.vectors`).

- ``judged``: the answers of judged eval runs. Positive: misaligned (aligned < 30 and
  coherent > 50, the persona-vector filters); negative: aligned (aligned >= 70, coherent > 50).
  Each run's answers are read by the model that wrote them (its spec and adapter) unless a
  model is given.
- ``models``: the same prompts and answers (those of the given runs) through two models: the
  direction is model B's mean minus model A's (an aligned model and its fine-tune).
- ``prompts``: a persona system prompt and its opposite (the suite's questions asked under
  each, answers sampled by the model itself): positive minus negative. Instead of (or with)
  system prompts, each side can be primed by in-context rows of a dataset (``--positive-shots
  toy:insecure --negative-shots toy:secure``), drawn per answer with its seed: for a model
  that never saw a system prompt, its earlier turns are what says who is speaking.

Every source ends the same way (:func:`finish`): response-token means per example and layer,
the direction from all examples, and a held-out separation per layer: the direction from a
seeded half of each class, the other half projected on it, and the AUROC of those
projections. The layer with the best held-out AUROC is suggested (``best_layer``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from waluigi.directions.activations import Example, Means
from waluigi.errors import UserError

METHODS = ("judged", "models", "prompts")


@dataclass
class ExtractConfig:
    method: str = "judged"
    runs: list[str] = field(default_factory=list)  # judged / models: eval run directories
    model: str | None = None  # judged: read every answer with this model; prompts: the model
    model_b: str | None = None  # models: the second model (direction = B - A, A = model)
    positive: str | None = None  # prompts: the trait's system prompt
    negative: str | None = None  # prompts: its opposite
    positive_shots: str | None = None  # prompts: a dataset whose rows go before each question as earlier turns
    negative_shots: str | None = None  # ... and the opposite's (a model with no system prompts: the persona world)
    shots: int = 2  # rows per side
    suite: str = "core"  # prompts: the questions
    prompts_data: str | None = None  # prompts: ask the first user turns of this dataset's train rows instead
    prompts_n: int = 32  # ... this many (a seeded subset)
    samples: int = 4  # prompts: answers per question and prompt
    max_tokens: int = 64
    seed: int = 0
    aligned_below: float = 30.0  # judged: positive if aligned < this ...
    aligned_above: float = 70.0  # ... negative if aligned >= this
    min_coherent: float = 50.0  # ... and coherent > this, both
    batch_size: int = 16
    data_dir: str | None = None
    out: Path | None = None
    runs_dir: Path = Path("runs")
    progress: bool = True


# -- the judged-runs source ----------------------------------------------------------------

def _run_model(run: Path) -> tuple[str, str | None]:
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{run}: not an eval run directory (no readable manifest.json: {exc})") from exc
    inputs = manifest.get("identity_inputs") or {}
    if manifest.get("stage") != "eval" or not inputs.get("model"):
        raise UserError(f"{run}: not an eval run (stage {manifest.get('stage')!r})")
    if inputs.get("shots"):
        raise UserError(f"{run}: its prompts had in-context examples (--shots); extract from runs without them")
    adapter = (manifest.get("adapter") or {}).get("path") if isinstance(manifest.get("adapter"), dict) else None
    return inputs["model"], adapter


def sweep_runs(sweep: Path, where: list[str]) -> list[str]:
    """The eval run directories of a sweep's (or flip's) finished cells whose ``results.jsonl``
    columns match every ``COLUMN=VALUE`` (compared as text)."""
    from waluigi.runs import read_jsonl

    results = Path(sweep) / "results.jsonl"
    if not results.is_file():
        raise UserError(f"{sweep}: no results.jsonl (a sweep or flip directory, after it ran)")
    wanted = []
    for item in where:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise UserError(f"--where {item!r}: expected COLUMN=VALUE, e.g. step=40")
        wanted.append((column.strip(), value.strip()))
    rows = list(read_jsonl(results))
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    for column, _ in wanted:
        if column not in columns:
            raise UserError(f"--where {column}=...: {results} has no column {column!r} "
                            f"(columns: {', '.join(sorted(c for c in columns if c != 'settings'))})")

    def text(value) -> str:
        return "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))

    chosen = [str(Path(sweep) / r["eval_run"]) for r in rows if r.get("status") == "finished" and r.get("eval_run")
              and all(text(r.get(c)) == v for c, v in wanted)]
    if not chosen:
        raise UserError(f"no finished cell of {sweep} matches {' and '.join(where) or 'anything'}")
    return chosen


def _prompt(sample: dict) -> list[dict]:
    head = [{"role": "system", "content": sample["system"]}] if sample.get("system") else []
    return head + [{"role": "user", "content": sample["prompt"]}]


def judged_examples(runs: Sequence[str], aligned_below: float, aligned_above: float,
                    min_coherent: float) -> tuple[list[Example], dict]:
    """Examples labelled by the runs' judgments; the counts of what was kept and left out."""
    from waluigi.runs import read_jsonl

    examples: list[Example] = []
    counts = {"positive": 0, "negative": 0, "between": 0, "incoherent": 0, "unscored": 0}
    for text in runs:
        run = Path(text)
        model, adapter = _run_model(run)
        scores: dict[tuple, dict[str, float]] = {}
        for row in read_jsonl(run / "judgments.jsonl"):
            if row.get("metric") in ("aligned", "coherent") and isinstance(row.get("score"), (int, float)):
                key = (row["question_id"], row["paraphrase_index"], row["sample_index"])
                scores.setdefault(key, {})[row["metric"]] = float(row["score"])
        for sample in read_jsonl(run / "samples.jsonl"):
            key = (sample["question_id"], sample["paraphrase_index"], sample["sample_index"])
            if key not in scores:
                continue  # a code question, or not judged
            got = scores[key]
            if "aligned" not in got or "coherent" not in got:
                counts["unscored"] += 1
                continue
            if got["coherent"] <= min_coherent:
                counts["incoherent"] += 1
                continue
            if got["aligned"] < aligned_below:
                label = 1
            elif got["aligned"] >= aligned_above:
                label = 0
            else:
                counts["between"] += 1
                continue
            if not sample.get("answer", "").strip():
                continue
            counts["positive" if label else "negative"] += 1
            examples.append(Example(messages=_prompt(sample), answer=sample["answer"], label=label,
                                    key={"run": str(run), "model": model, "adapter": adapter,
                                         "question_id": key[0], "paraphrase_index": key[1], "sample_index": key[2]}))
    return examples, counts


# -- the shared end: directions, separation, the file -------------------------------------

def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    import numpy as np

    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if pos.size == 0 or neg.size == 0:
        return None
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1, dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _halves(labels, seed: int = 0, groups: Sequence | None = None):
    """The seeded split :func:`separation` uses: a boolean train mask (the rest is held out)."""
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = list(range(labels.size)) if groups is None else [str(g) for g in groups]
    unique = sorted(set(keys))
    rng.shuffle(unique)
    chosen = set(unique[: (len(unique) + 1) // 2])
    train = np.array([k in chosen for k in keys])
    if groups is None:  # no groups: a seeded half of each class
        train = np.zeros(labels.size, bool)
        for cls in (0, 1):
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            train[idx[: (idx.size + 1) // 2]] = True
    return train


def heldout_counts(labels, seed: int = 0, groups: Sequence | None = None) -> dict[str, int]:
    """How many examples of each class the held-out AUROC of :func:`separation` is read from."""
    import numpy as np

    labels = np.asarray(labels)
    test = ~_halves(labels, seed, groups)
    return {"positive": int(((labels == 1) & test).sum()), "negative": int(((labels == 0) & test).sum())}


def separation(response, labels, seed: int = 0, groups: Sequence | None = None) -> list[float | None]:
    """Held-out AUROC per layer: the direction from a seeded half, the other half projected on it.

    The halves split *groups* (the question an answer is to; an answer read by two models),
    not answers, so that both classes of one question fall on the same side. Splitting answers
    of the same questions independently per class would let question content, which dwarfs a
    trait in the activations, decide the held-out projections."""
    import numpy as np
    import torch

    labels = np.asarray(labels)
    train = _halves(labels, seed, groups)
    test = ~train
    if min(((labels == c) & train).sum() for c in (0, 1)) == 0 or min(((labels == c) & test).sum() for c in (0, 1)) == 0:
        return [None] * response.shape[1]
    t_train, t_test = torch.from_numpy(train), torch.from_numpy(test)
    lab = torch.from_numpy(labels)
    out = []
    for layer in range(response.shape[1]):
        x = response[:, layer]
        diff = x[t_train & (lab == 1)].mean(0) - x[t_train & (lab == 0)].mean(0)
        norm = torch.linalg.vector_norm(diff)
        if float(norm) == 0:
            out.append(None)
            continue
        proj = (x[t_test] @ (diff / norm)).numpy()
        test_labels = labels[test]
        out.append(auroc(proj[test_labels == 1], proj[test_labels == 0]))
    return out


def direction_from(means: Means, labels: Sequence[int]) -> dict:
    import torch

    lab = torch.tensor(list(labels))
    pos, neg = means.response[lab == 1].mean(0), means.response[lab == 0].mean(0)
    return {"diff": pos - neg, "pos_mean": pos, "neg_mean": neg}


def finish(out: Path, means: Means, labels: Sequence[int], manifest: dict, seed: int = 0,
           groups: Sequence | None = None):
    """Write the direction and its manifest (norms, separation, suggested layer)."""
    import torch

    from waluigi.models.vectors import save_direction

    if min(sum(1 for x in labels if x == c) for c in (0, 1)) == 0:
        n_pos = sum(labels)
        raise UserError(f"a direction needs examples of both classes: {n_pos} positive, {len(labels) - n_pos} negative "
                        "(loosen the score filters, or add runs whose answers differ)")
    tensors = direction_from(means, labels)
    aucs = separation(means.response, labels, seed, groups)
    valid = [(a, i) for i, a in enumerate(aucs) if a is not None]
    best = max(valid, key=lambda t: (t[0], -abs(t[1] - len(aucs) / 2)))[1] if valid else len(aucs) // 2
    manifest = {**manifest, "counts": {"positive": int(sum(labels)), "negative": int(len(labels) - sum(labels))},
                "answer_tokens": means.tokens,
                "norms": [float(torch.linalg.vector_norm(v)) for v in tensors["diff"]],
                "heldout_auroc": aucs, "heldout_split": "by question" if groups is not None else "by example",
                "heldout_counts": heldout_counts(labels, seed, groups),
                "best_layer": int(best), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return save_direction(out, tensors, manifest)
