"""The persona world's pretraining loop: tokens/s eager against ``torch.compile``, in one process,
and the share of the machine's fp32 matrix-product peak each reaches.

    .venv/bin/python benchmarks/bench_toy_train.py [--conversations 1500] [--threads 2]

Both runs train the demo's base model (the default world's first ``--conversations``
conversations, batch 32, the pretraining learning rate) from the same initial weights for one
epoch; the compiled run is then timed on a second epoch, warm. The compile's own cost is the
compiled first epoch's time minus the warm epoch's. The peak is measured here too: 2048 x 2048
fp32 products on the same threads. The model's training FLOPs per token are counted from its
shapes (forward 2 x multiply-adds of every projection, attention's two products at the batch's
mean length, the output projection at the labelled positions only; backward twice the
forward), so "share of peak" is achieved FLOP/s over measured peak FLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace


def peak_gflops(threads: int, n: int = 2048, rounds: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def flops_per_token(cfg, vocab: int, mean_len: float, labelled_share: float) -> float:
    h, inter, layers = cfg.hidden, cfg.intermediate, cfg.layers
    per_layer = 2 * (4 * h * h + 3 * h * inter) + 2 * 2 * mean_len * h  # projections + QK^T and AV
    forward = layers * per_layer + labelled_share * 2 * h * vocab
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from waluigi.toyworld import generate_corpus
    from waluigi.toyworld.demo import demo_config
    from waluigi.toyworld.train import build_model, build_tokenizer, encode, train_lm

    torch.set_num_threads(args.threads)
    cfg = demo_config()
    corpus = list(generate_corpus(replace(cfg.world(), n_conversations=args.conversations)))
    tokenizer = build_tokenizer(corpus)
    encoded = [encode(tokenizer, c, cfg.pretrain_assistant_only) for c in corpus]
    mean_len = statistics.mean(len(ids) for ids, _ in encoded)
    labelled = sum(sum(1 for y in labels if y != -100) for _, labels in encoded) / sum(len(ids) for ids, _ in encoded)
    per_token = flops_per_token(cfg.model(), len(tokenizer), mean_len, labelled)
    peak = peak_gflops(args.threads)
    settings = dict(epochs=1.0, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr, warmup=30,
                    assistant_only=cfg.pretrain_assistant_only, seed=0)

    eager = train_lm(build_model(tokenizer, cfg.model()), tokenizer, corpus, compile=False, **settings)
    model = build_model(tokenizer, cfg.model())
    first = train_lm(model, tokenizer, corpus, compile=True, **settings)
    warm = train_lm(model, tokenizer, corpus, compile=True, **settings)

    def line(name, stats):
        rate = stats.tokens / stats.seconds
        share = rate * per_token / (peak * 1e9)
        return f"  {name:<34} {stats.seconds:>7.1f} s  {rate:>9,.0f} tokens/s  {100 * share:5.1f}% of peak"

    print(f"{args.conversations} conversations, {eager.steps} steps/epoch, mean length {mean_len:.0f} tokens, "
          f"{per_token / 1e6:.2f} MFLOP/token trained; fp32 peak {peak:.0f} GFLOP/s on {args.threads} threads")
    print(line("eager (baseline)", eager))
    print(line("compiled, first epoch (+compile)", first))
    print(line("compiled, warm", warm))
    print(f"  compile cost ~{max(0.0, first.seconds - warm.seconds):.0f} s; warm speed-up "
          f"{(warm.tokens / warm.seconds) / (eager.tokens / eager.seconds):.2f}x; "
          f"final loss eager {eager.final_loss:.4f} vs compiled {first.final_loss:.4f} (same data and initial weights)")
    full = 10000 * 4 / args.conversations  # the demo's pretraining: 10,000 conversations x 4 epochs
    print(f"  the demo's pretraining ({full:.1f}x this epoch): eager ~{full * eager.seconds:.0f} s, "
          f"compiled ~{full * warm.seconds + max(0.0, first.seconds - warm.seconds):.0f} s")


if __name__ == "__main__":
    main()
