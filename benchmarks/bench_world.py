"""Persona-world corpus generation: conversations per second (the timing that used to be a
test assert), against a baseline in the same process: the same generator asked for plain
conversations only (no JSON / template variants), to show what the variety costs.

    .venv/bin/python benchmarks/bench_world.py [--n 20000]
"""

from __future__ import annotations

import argparse
import time


def rate(config) -> tuple[float, int]:
    from waluigi.toyworld import generate_corpus

    start = time.perf_counter()
    n = sum(1 for _ in generate_corpus(config))
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    from waluigi.toyworld import WorldConfig

    default, n = rate(WorldConfig(seed=0, n_conversations=args.n))
    plain, _ = rate(WorldConfig(seed=0, n_conversations=args.n, json_rate=0.0))
    print(f"{n} conversations: default world {default:,.0f}/s   plain only (json_rate=0) {plain:,.0f}/s   "
          f"ratio {default / plain:.2f}x")


if __name__ == "__main__":
    main()
