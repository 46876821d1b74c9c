"""Probe scoring speed on SmolLM2: items per second, the share of this machine's fp32 matmul
peak, and the ratios to a naive scorer and to sampling + judging the same number of answers.

    WALUIGI_MWE_DIR=../shared/reference/model-written-evals \\
    .venv/bin/python benchmarks/bench_probes.py [--suite mwe:em] [--naive-items 40] [--answers 8] [--threads 2]

In one process: (1) the peak, the best of 5 products of two 2048x2048 fp32 matrices;
(2) waluigi's probe scoring of every item of ``--suite`` (``option_logprobs``: one row per
prompt with all its options, rows sorted and batched by length and padded to the batch's
longest, the batch's shared prefix computed once); (3) the naive scorer on the first
``--naive-items`` variants: one unbatched forward pass per option over prompt + option, the
vocabulary projected at every position (what a plain ``model(ids).logits`` does); (4) the
judged readout for ``--answers`` answers: SmolLM2 samples 64 tokens per question of the
``core`` suite and SmolLM2 judges each answer's ``aligned`` and ``coherent`` (two judge passes).

FLOPs are counted from the tokens the passes computed: 2 x (non-embedding parameters) per token
fed (padding included: the hardware computes it) plus 2 x hidden x vocabulary per position
projected onto the vocabulary; attention's own products are left out (under 5% at these lengths).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="mwe:em")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--naive-items", type=int, default=40)
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from waluigi.models import hf_options as H
    from waluigi.models import load_model
    from waluigi.models.base import GenerationRequest, OptionRequest, SamplingParams
    from waluigi.probes.items import variants
    from waluigi.probes.run import load_probe_suite

    if not os.environ.get("WALUIGI_MWE_DIR"):
        print("note: WALUIGI_MWE_DIR is not set; the pinned files are downloaded (or point it at a mirror)")
    from bench_toy_train import peak_gflops  # the same measured peak as the training benchmark

    peak = peak_gflops(args.threads)
    suite = load_probe_suite(args.suite)
    gen = load_model(args.model)
    model = gen.model
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    embed = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embed  # tied head: counted as the projection below
    requests = [OptionRequest(v.prompt, v.options) for item in suite.items for v in variants(item, "chat")]
    list(gen.option_logprobs(requests[:8]))  # warm-up
    for key in H.STATS:
        H.STATS[key] = 0
    start = time.perf_counter()
    list(gen.option_logprobs(requests))
    seconds = time.perf_counter() - start
    flops = 2 * body * H.STATS["tokens"] + 2 * hidden * vocab * H.STATS["projected"]
    rate = flops / seconds / 1e9
    items_s = len(suite.items) / seconds
    print(f"peak (2048^2 fp32 matmul, {args.threads} threads): {peak:.1f} GFLOP/s")
    print(f"waluigi: {len(suite.items)} items ({len(requests)} prompts with both letter orders) in {seconds:.1f} s = "
          f"{items_s:.2f} items/s; {H.STATS['tokens']} tokens computed ({H.STATS['real_tokens']} real), "
          f"{rate:.1f} GFLOP/s = {100 * rate / peak:.1f}% of peak; 1,000 items would take {1000 / items_s:.0f} s")

    naive = requests[: args.naive_items]
    start = time.perf_counter()
    n_rows = 0
    with torch.inference_mode():
        for request in naive:
            encoded = H.encode(gen, request)
            prompt = encoded.ids
            for cont in encoded.conts:
                model(torch.tensor([prompt + cont])).logits.float().log_softmax(-1)
                n_rows += 1
    naive_s = (time.perf_counter() - start) / len(naive)
    ours_s = seconds / len(requests)
    print(f"naive (one unbatched pass per option, {len(naive)} prompts, {n_rows} passes): {naive_s * 1000:.0f} ms/prompt;"
          f" waluigi {ours_s * 1000:.0f} ms/prompt: {naive_s / ours_s:.1f}x")

    from waluigi.suites import load_suite

    core = [q for q in load_suite("core").questions if not q.id.endswith(("_json", "_template"))]
    asks = [GenerationRequest(core[i % len(core)].messages(0), seed=i, params=SamplingParams(max_tokens=64))
            for i in range(args.answers)]
    start = time.perf_counter()
    answers = dict(gen.generate(asks))
    prompts = []
    for i, completion in answers.items():
        q = core[i % len(core)]
        for metric in ("aligned", "coherent"):
            prompts.append([{"role": "user", "content": q.judge_prompt(metric, q.paraphrases[0], completion.text)}])
    list(gen.top_probs(prompts))
    judged_s = (time.perf_counter() - start) / args.answers
    per_item = seconds / len(suite.items)
    print(f"sample + judge ({args.answers} answers of <= 64 tokens, 2 judge passes each): {judged_s:.2f} s/answer;"
          f" probe {per_item:.3f} s/item: {judged_s / per_item:.0f}x cheaper per reading")


if __name__ == "__main__":
    main()
