"""``waluigi data screen``: how far a dataset's answers sit along a direction, before any
fine-tune (the persona-vector work's projection difference).

For each row: the dataset's final assistant answer, and the model's own answer to the same
prompt (sampled with a seed), are each read through the model; the row's score is the
projection of the dataset answer's mean activation (``resid.L``, answer tokens) on the unit
direction minus that of the model's own answer. A dataset's score is the mean over its rows,
with a bootstrap interval; rows are ranked by score. Nothing of the datasets is changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from waluigi.directions.activations import Example
from waluigi.errors import UserError
from waluigi.formats import safe_name
from waluigi.runs import write_atomic


@dataclass
class ScreenConfig:
    datasets: list[str]
    direction: str
    model: str
    layer: int | None = None
    n: int | None = 200  # rows per dataset (a seeded subset); None: all
    max_tokens: int = 128  # the model's own answers
    seed: int = 0
    batch_size: int = 16
    data_dir: str | None = None
    out: Path | None = None
    runs: Path = Path("runs")
    progress: bool = True


def _examples(rows: list[dict], where: str) -> tuple[list[list[dict]], list[str]]:
    prompts, answers = [], []
    for i, row in enumerate(rows):
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: row {i + 1} does not end with an assistant answer to screen")
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages[:-1]])
        answers.append(messages[-1]["content"])
    return prompts, answers


def screen(cfg: ScreenConfig) -> dict:
    """Score every dataset; write ``screen.json`` and ``rows-<dataset>.jsonl``; return the summary."""
    import torch

    from waluigi.data import load_rows
    from waluigi.directions.activations import teacher_forced_means
    from waluigi.evaluate.config import sample_seed
    from waluigi.metrics import bootstrap_mean
    from waluigi.models import GenerationRequest, SamplingParams, backend, load_model
    from waluigi.models.vectors import load_direction
    from waluigi.progress import progress_bar
    from waluigi.runs import identity_hash

    direction = load_direction(cfg.direction)
    layer = direction.best_layer if cfg.layer is None else cfg.layer % direction.layers
    unit = direction.unit(layer)
    loaded = {name: load_rows(name, data_dir=cfg.data_dir, n=cfg.n, seed=cfg.seed) if cfg.n is not None
              else load_rows(name, data_dir=cfg.data_dir) for name in cfg.datasets}
    identity = {"direction": direction.sha256, "layer": layer, "model": backend(cfg.model).identity(),
                "datasets": cfg.datasets, "n": cfg.n, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    out = Path(cfg.out) if cfg.out else Path(cfg.runs) / f"screen-{identity_hash(identity)[:10]}"
    out.mkdir(parents=True, exist_ok=True)
    generator = load_model(cfg.model)
    summary = {"identity": identity, "direction": str(direction.path), "model": cfg.model, "layer": layer, "datasets": []}
    try:
        for name, rows in loaded.items():
            prompts, answers = _examples(rows, name)
            params = SamplingParams(temperature=1.0, max_tokens=cfg.max_tokens)
            requests = [GenerationRequest(messages=p, seed=sample_seed(cfg.seed, (name, i, 0)), params=params)
                        for i, p in enumerate(prompts)]
            own: dict[int, str] = {}
            with progress_bar(f"screen {name}: the model's own answers", len(requests), cfg.progress) as advance:
                for i, completion in generator.generate(requests, progress=advance):
                    own[i] = completion.text
            examples = [Example(messages=p, answer=a) for p, a in zip(prompts, answers, strict=True)]
            examples += [Example(messages=p, answer=own[i]) for i, p in enumerate(prompts)]
            with progress_bar(f"screen {name}: activations", len(examples), cfg.progress) as advance:
                means = teacher_forced_means(generator, examples, [layer], cfg.batch_size, advance)
            proj = (means.response[:, 0] @ unit).tolist()
            k = len(prompts)
            scored = [{"row": i, "score": proj[i] - proj[k + i], "dataset_projection": proj[i], "own_projection": proj[k + i],
                       "own_answer_empty": not own[i].strip()} for i in range(k)]
            path = out / f"rows-{safe_name(name, empty='data')}.jsonl"
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in sorted(scored, key=lambda r: -r["score"])))
            scores = [r["score"] for r in scored]
            low, high = bootstrap_mean(scores)
            summary["datasets"].append({"dataset": name, "rows": k, "score": float(torch.tensor(scores).mean()),
                                        "ci_low": low, "ci_high": high, "file": path.name,
                                        "mean_dataset_projection": float(torch.tensor(proj[:k]).mean()),
                                        "mean_own_projection": float(torch.tensor(proj[k:]).mean())})
    finally:
        generator.close()
    summary["datasets"].sort(key=lambda d: -d["score"])
    (out / "screen.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["out"] = str(out)
    return summary
