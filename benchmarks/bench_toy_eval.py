"""A persona-world eval cell's generation: noise for the rows still answering vs for every row.

    .venv/bin/python benchmarks/bench_toy_eval.py [--threads 2] [--repeats 5] [--model DIR]

The requests are the ones a study's eval cell sends (the ``toyworld`` suite, 246 answers of up
to 96 tokens, temperature 1, one batch of 256, each answer's own seed), to the shipped aligned
model (or ``--model``). The baseline is the sampler as it was before (a uniform vector drawn
for every sampled row on every step, also for rows that ended their answer steps before);
it runs in this process, alternating with today's sampler, on the same loaded model. Prints
both medians, their ratio, and whether the 246 answers are the same text.
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

    def run(sampler) -> tuple[float, list[str], int]:
        hf._GumbelSampler = sampler
        start = time.perf_counter()
        out = dict(gen.generate(requests))
        took = time.perf_counter() - start
        return took, [out[i].text for i in range(len(requests))], sum(out[i].completion_tokens for i in out)

    run(_GumbelSampler)  # warm-up
    times: dict[str, list[float]] = {"every row": [], "live rows": []}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, sampler in (("every row", EveryRow), ("live rows", _GumbelSampler)):
            took, texts[name], tokens = run(sampler)
            times[name].append(took)
    hf._GumbelSampler = _GumbelSampler
    base, now = (statistics.median(times[k]) for k in ("every row", "live rows"))
    print(f"{len(requests)} answers, {tokens} tokens generated, {args.threads} threads, {args.repeats} repeats")
    print(f"every row (before): {base:.3f} s   live rows (now): {now:.3f} s   ratio {base / now:.2f}x")
    print(f"the same {len(requests)} answers: {texts['every row'] == texts['live rows']}")


if __name__ == "__main__":
    main()
