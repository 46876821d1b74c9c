"""Steering's cost on generation, and extraction throughput, in one process.

    .venv/bin/python benchmarks/bench_steering.py [--model smollm2] [--prompts 32] [--tokens 64] [--rounds 3]

Generation: the same seeded requests through the plain model, through the model with a
vector added at one layer (``add_vector``, every token), and with a direction ablated at every
layer (``ablate``: 3 hooks per layer), alternated over ``--rounds`` so that load drifts hit
all three alike; the ratios are steered / plain wall time (best round). The direction is a
random vector (the cost does not depend on which one). Extraction: teacher-forced
answer-token means (every layer) of the generated answers, examples per second.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    from waluigi.directions.activations import Example, teacher_forced_means
    from waluigi.models import GenerationRequest, SamplingParams, load_model
    from waluigi.models import layers as names
    from waluigi.models.hooks import ablate, add_vector
    from waluigi.suites import load_suite

    gen = load_model(args.model)
    model = gen.model
    layers, hidden = names.n_layers(model), names.hidden_size(model)
    questions = [q for q in load_suite("core").questions if not q.id.endswith(("_json", "_template"))]
    params = SamplingParams(temperature=1.0, max_tokens=args.tokens)
    requests = [GenerationRequest(messages=questions[i % len(questions)].messages(0), seed=i, params=params)
                for i in range(args.prompts)]
    torch.manual_seed(0)
    vector = torch.randn(hidden)
    unit = vector / vector.norm()
    modes = {
        "plain": lambda: torch.no_grad(),
        "add (1 layer)": lambda: add_vector(model, f"resid.{layers // 2}", vector, 0.5),
        "ablate (all layers)": lambda: ablate(model, unit),
    }
    list(gen.generate(requests[:2]))  # warm-up
    best = {name: float("inf") for name in modes}
    tokens = {}
    for _ in range(args.rounds):
        for name, context in modes.items():
            t0 = time.perf_counter()
            with context():
                done = list(gen.generate(requests))
            best[name] = min(best[name], time.perf_counter() - t0)
            tokens[name] = sum(c.completion_tokens for _, c in done)
    print(f"{args.model}: {layers} layers x {hidden}; {args.prompts} prompts x up to {args.tokens} new tokens, "
          f"best of {args.rounds} rounds, torch threads {torch.get_num_threads()}")
    for name in modes:
        print(f"  {name:<20} {best[name]:7.2f} s  {tokens[name] / best[name]:7.1f} tokens/s  "
              f"ratio {best[name] / best['plain']:.3f}")
    answers = [c.text for _, c in sorted(gen.generate(requests), key=lambda x: x[0])]
    examples = [Example(messages=r.messages, answer=a) for r, a in zip(requests, answers, strict=True)]
    t0 = time.perf_counter()
    means = teacher_forced_means(gen, examples, batch_size=args.batch_size)
    spent = time.perf_counter() - t0
    print(f"  extraction: {len(examples)} examples ({means.tokens} answer tokens), all {layers} layers: "
          f"{spent:.2f} s, {len(examples) / spent:.1f} examples/s, {means.tokens / spent:.0f} answer tokens/s")


if __name__ == "__main__":
    main()
