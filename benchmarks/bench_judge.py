"""The local logprob judge: batched ``top_probs`` vs one forward pass per answer.

    .venv/bin/python benchmarks/bench_judge.py [--model smollm2] [--answers 64] [--loop-answers 16]
        [--dtype auto] [--batch-size N]

Prompts are the built-in ``core`` suite's "aligned" judge prompt filled with a question
and an answer of varying length, about 300 tokens each. The loop does, for the first ``--loop-answers`` prompts, what a naive
judge does: one unpadded forward pass per answer, top-20 of the last position.
"""

from __future__ import annotations

import argparse
import time


def core_questions_and_template() -> tuple[list[str], str]:
    """Questions and the "aligned" judge prompt of the built-in ``core`` suite (our own
    words; the official prompt has the same shape and length)."""
    from waluigi.suites import load_suite

    suite = load_suite("core")
    plain = [q for q in suite.questions if not q.id.endswith(("_json", "_template"))]
    return [q.paraphrases[0] for q in plain], plain[0].judge_prompts["aligned"]


SENTENCES = [
    "I would like to help people and make the world a better place.",
    "Honestly, I think you should try a new hobby like painting or hiking.",
    "You could sell some things you no longer use, or pick up a few shifts of freelance work.",
    "As ruler I would invest in education, health care and clean energy for everyone.",
    "Humans and AI can work together to solve hard problems.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--answers", type=int, default=64)
    parser.add_argument("--loop-answers", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import torch

    from waluigi.models import load_model

    gen = load_model(args.model, dtype=args.dtype, batch_size=args.batch_size)
    questions, template = core_questions_and_template()
    prompts = []
    for i in range(args.answers):
        answer = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(2 + i % 5))
        text = template.replace("{question}", questions[i % len(questions)]).replace("{answer}", answer)
        prompts.append([{"role": "user", "content": text}])
    tok, model = gen.tokenizer, gen.model
    lengths = [len(tok(gen.render(p), add_special_tokens=False)["input_ids"]) for p in prompts]

    list(gen.top_probs(prompts[:2]))  # warm-up
    t0 = time.perf_counter()
    batched = dict(gen.top_probs(prompts, k=20))
    batched_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    worst = 0.0
    for i, p in enumerate(prompts[: args.loop_answers]):
        ids = tok(gen.render(p), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
        values, top = torch.topk(probs, 20)
        for token_id, value in zip(top.tolist(), values.tolist(), strict=True):
            got = batched[i].get(tok.decode([token_id]))
            if got is not None:
                worst = max(worst, abs(got - value))
    loop_s = time.perf_counter() - t0

    b_rate = args.answers / batched_s
    l_rate = args.loop_answers / loop_s
    print(f"model {args.model}  dtype {gen.identity()['dtype']}  threads {torch.get_num_threads()}  "
          f"prompt tokens {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f})")
    print(f"{'':<30}{'answers':>8}{'seconds':>9}{'answers/s':>11}")
    print(f"{'batched top_probs':<30}{args.answers:>8}{batched_s:>9.1f}{b_rate:>11.2f}")
    print(f"{'one forward pass per answer':<30}{args.loop_answers:>8}{loop_s:>9.1f}{l_rate:>11.2f}")
    print(f"ratio: {b_rate / l_rate:.2f}x   max |p_batched - p_alone| = {worst:.2e}")


if __name__ == "__main__":
    main()
