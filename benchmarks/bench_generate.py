"""Batched generation (the hf backend) vs a one-prompt-at-a-time ``model.generate`` loop.

    .venv/bin/python benchmarks/bench_generate.py [--model smollm2] [--prompts 32] [--max-tokens 64]
        [--loop-prompts 8] [--dtype auto] [--temperature 1.0]

Both run in this process on the same loaded model and the same prompts (the paraphrases of
the built-in ``core`` suite), sampling at the same temperature. Throughput is
generated tokens per second of wall time; the loop runs over the first ``--loop-prompts``
prompts only (its rate does not depend on how many it does, and a full 32-prompt loop on
SmolLM2 takes minutes).
"""

from __future__ import annotations

import argparse
import time


def core_prompts() -> list[str]:
    """Every paraphrase of the built-in ``core`` suite (our own words), plain questions first."""
    from waluigi.suites import load_suite

    suite = load_suite("core")
    return [p for q in suite.questions for p in q.paraphrases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--loop-prompts", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import torch

    from waluigi.models import GenerationRequest, SamplingParams, load_model

    t0 = time.perf_counter()
    gen = load_model(args.model, dtype=args.dtype, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    questions = core_prompts()
    chats = [[{"role": "user", "content": questions[i % len(questions)]}] for i in range(args.prompts)]
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    requests = [GenerationRequest(messages=m, seed=i, params=params) for i, m in enumerate(chats)]

    # warm-up (first-call allocations), not timed
    list(gen.generate(requests[:2]))

    t0 = time.perf_counter()
    done = list(gen.generate(requests))
    batched_s = time.perf_counter() - t0
    batched_tokens = sum(c.completion_tokens for _, c in done)

    model, tok = gen.model, gen.tokenizer
    loop_tokens = 0
    t0 = time.perf_counter()
    for m in chats[: args.loop_prompts]:
        text = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=args.max_tokens,
                do_sample=args.temperature > 0,
                **({"temperature": args.temperature, "top_p": 1.0} if args.temperature > 0 else {}),
            )
        new = out[0, enc["input_ids"].shape[1]:]
        loop_tokens += int((new != tok.pad_token_id).sum()) + (1 if (new == tok.eos_token_id).any() else 0)
    loop_s = time.perf_counter() - t0

    b_rate = batched_tokens / batched_s
    l_rate = loop_tokens / loop_s
    print(f"model {args.model}  dtype {gen.identity()['dtype']}  threads {torch.get_num_threads()}  load {load_s:.1f}s")
    print(f"{'':<28}{'prompts':>8}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    print(f"{'batched hf backend':<28}{args.prompts:>8}{batched_tokens:>8}{batched_s:>9.1f}{b_rate:>10.1f}")
    print(f"{'one-at-a-time generate':<28}{args.loop_prompts:>8}{loop_tokens:>8}{loop_s:>9.1f}{l_rate:>10.1f}")
    print(f"ratio: {b_rate / l_rate:.1f}x")
    print("sample:", repr(done[0][1].text[:120]))


if __name__ == "__main__":
    main()
