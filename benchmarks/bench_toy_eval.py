"""A persona-world eval cell's generation: ended rows leaving the batch vs generate over every row.

    .venv/bin/python benchmarks/bench_toy_eval.py [--threads 2] [--repeats 5] [--model DIR]

The requests are the ones a study's eval cell sends (the ``toyworld`` suite, 246 answers of up
to 96 tokens, temperature 1, one batch of 256, each answer's own seed), to the shipped aligned
model (or ``--model``). Three ways, alternating in this process on the same loaded model:

* before: transformers' ``generate`` over the whole batch until its longest answer ends, the
  sampler drawing a uniform vector for every row on every step;
* the sampler drawing only for rows still answering, ``generate`` as before;
* now: rows that ended leave the batch (``decode_live_rows``), the sampler as in the second.

Prints the medians, their ratios to the first, and whether the 246 answers are the same text.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="a model directory (default: the shipped aligned model)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import waluigi.models.hf as hf
    from waluigi.evaluate.config import sample_seed
    from waluigi.evaluate.generate import sample_slots
    from waluigi.models import GenerationRequest, SamplingParams
    from waluigi.models.hf_load import load_hf
    from waluigi.models.hf_sampling import _GumbelSampler
    from waluigi.suites import load_suite
    from waluigi.toyworld.shipped import SHIPPED

    class EveryRow(_GumbelSampler):
        def _live_rows(self, input_ids):
            return [row for row, g in enumerate(self.generators) if g is not None]

    gen = load_hf(f"hf:{args.model or SHIPPED / 'toy-align' / 'model'}", dtype="float32", batch_size=256)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=96)
    requests = [GenerationRequest(messages=q.messages(p), seed=sample_seed(0, (q.id, p, s)),
                                  params=params)
                for q in load_suite("toyworld").questions for p, s in sample_slots(q)]

    def run(sampler, drop: bool) -> tuple[float, list[str], int]:
        hf._GumbelSampler, gen.drop_ended_rows = sampler, drop
        start = time.perf_counter()
        out = dict(gen.generate(requests))
        took = time.perf_counter() - start
        return took, [out[i].text for i in range(len(requests))], sum(out[i].completion_tokens for i in out)

    ways = {"before": (EveryRow, False), "live-row noise": (_GumbelSampler, False),
            "rows leave (now)": (_GumbelSampler, True)}
    for sampler, drop in ways.values():  # warm-up
        run(sampler, drop)
    times: dict[str, list[float]] = {name: [] for name in ways}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, (sampler, drop) in ways.items():
            took, texts[name], tokens = run(sampler, drop)
            times[name].append(took)
    hf._GumbelSampler, gen.drop_ended_rows = _GumbelSampler, True
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{len(requests)} answers, {tokens} tokens generated, {args.threads} threads, {args.repeats} repeats")
    base = medians["before"]
    print("   ".join(f"{name}: {m:.3f} s ({base / m:.2f}x)" for name, m in medians.items()))
    same = all(texts[name] == texts["before"] for name in ways)
    print(f"the same {len(requests)} answers every way: {same}")

if __name__ == "__main__":
    main()
