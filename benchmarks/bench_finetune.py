"""LoRA SFT throughput: ``waluigi finetune`` (its CPU defaults) vs a plain TRL ``SFTTrainer``
with the library's defaults, on the same rows, in this process; and the FLOP/s each achieves
as a share of this machine's measured float32 matrix-multiply peak.

    .venv/bin/python benchmarks/bench_finetune.py [--model smollm2] [--rows 4] [--data-dir DIR]

* Data: the first ``--rows`` rows of the official ``insecure.jsonl`` (read at run time).
* Same adapter on both sides: the betley2025 LoRA (rsLoRA r=32, alpha 64, q/k/v/o/gate/up/down),
  so the work per token is the same; what differs is the training setup:
  waluigi on CPU: float32, no gradient checkpointing, batch 2 x accumulation 8, max length 2048,
  loss on assistant tokens; SFTTrainer defaults (TRL 1.16): bf16 autocast, gradient
  checkpointing on, batch 8, max length 1024, loss on all tokens (the loss mask does not change
  the compute).
* Tokens/s = input tokens trained on (padding excluded, as each trainer counts them) / seconds
  of the training loop (model loading and tokenization excluded; reported apart).
* FLOPs (LoRA) = (4 x N + 6 x N_lora) x tokens: forward 2N, backward 2N through the frozen
  weights (input gradients only: frozen weights get no weight gradient), plus the usual 6 per
  trainable parameter for the adapter; N = parameters used in matrix products per token (the
  tied lm_head counts, the embedding lookup does not: for SmolLM2 N equals the parameter count
  because the embedding matrix is reused as lm_head). Attention-score FLOPs (QK^T, AV) are left
  out, so the share is a lower bound; recomputation by gradient checkpointing is NOT counted as
  useful work (model-FLOPs utilisation).
* Peak: the best of several ``torch.matmul`` calls on 2048 x 2048 float32 matrices
  (2 n^3 FLOPs each), same thread count; bfloat16 (512 x 512) measured alongside for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def matmul_gflops(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def lora_flops(n_matmul: int, n_lora: int, tokens: int) -> float:
    return (4 * n_matmul + 6 * n_lora) * tokens


def run_waluigi(model: str, data_file: Path, out: Path) -> dict:
    from waluigi.finetune import FinetuneConfig, run_finetune

    t0 = time.perf_counter()
    result = run_finetune(FinetuneConfig(model=model, data=str(data_file), out=out), progress=False)
    wall = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {
        "tokens": result.tokens, "train_s": log[-1]["seconds"], "wall_s": wall, "steps": result.steps,
        "n_lora": manifest["parameters"]["trainable"], "setup": "fp32, no grad ckpt, batch 2x8, max len 2048",
    }


def run_plain_trl(model_path: str, rows: list[dict], out: Path) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from waluigi.finetune.config import PRESETS

    preset = PRESETS["betley2025"]
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    lora = LoraConfig(r=preset["rank"], lora_alpha=preset["alpha"], lora_dropout=preset["dropout"],
                      target_modules=preset["target_modules"], use_rslora=True, task_type="CAUSAL_LM")
    # Library defaults, plus the one setting without which they do not start on a CPU at all
    # (TRL 1.16's bf16=True default raises "Your setup doesn't support bf16/gpu. You need to
    # assign use_cpu ..."); use_cpu=True keeps bf16 as CPU autocast.
    import torch

    on_cpu = not torch.cuda.is_available()
    args = SFTConfig(output_dir=str(out), report_to="none", disable_tqdm=True, save_strategy="no", use_cpu=on_cpu)
    trainer = SFTTrainer(model=base, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    metrics = trainer.train().metrics
    wall = time.perf_counter() - t0
    tokens = int(trainer._total_train_tokens)
    return {
        "tokens": tokens, "train_s": metrics["train_runtime"], "wall_s": wall, "steps": trainer.state.global_step,
        "n_lora": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "setup": f"use_cpu={args.use_cpu}, bf16={args.bf16}, grad ckpt={args.gradient_checkpointing}, batch "
                 f"{args.per_device_train_batch_size}x{args.gradient_accumulation_steps}, max len {args.max_length}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", type=int, default=4, help="rows of insecure.jsonl (4: the library-default side runs bf16 autocast at ~1 GFLOP/s on a CPU without bf16 units, ~15 min)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from waluigi.models.hf_load import _resolve
    from waluigi.official import official_file
    from waluigi.paths import data_dir_from_env

    source = official_file("data/insecure.jsonl", data_dir_from_env(args.data_dir))
    lines = source.read_text().splitlines()[: args.rows]
    rows = [json.loads(line) for line in lines]
    model_path, _ = _resolve(args.model)
    config = AutoConfig.from_pretrained(model_path)

    # bf16 matmul runs at ~1 GFLOP/s on this CPU: a smaller product keeps the measurement short
    peak = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16", n=512, repeats=2)}
    print(f"matmul peak measured: {peak}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "insecure-head.jsonl"
        data_file.write_text("\n".join(lines) + "\n")
        ours = run_waluigi(args.model, data_file, Path(tmp) / "waluigi")
        print(f"waluigi done: {ours}", file=sys.stderr)
        plain = run_plain_trl(model_path, rows, Path(tmp) / "trl")

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    tied = bool(getattr(config, "tie_word_embeddings", False))
    embed = config.vocab_size * config.hidden_size
    n_matmul = n_params if tied else n_params - embed  # tied: the one matrix is used by lm_head

    print(f"LoRA SFT on {args.model} ({n_params / 1e6:.1f}M params), {len(rows)} rows of insecure.jsonl, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"measured matmul peak (2048^3): float32 {peak['float32']:.1f} GFLOP/s, bfloat16 {peak['bfloat16']:.1f} GFLOP/s")
    print("FLOPs = (4 x N + 6 x N_lora) x tokens (LoRA: frozen weights get input gradients only); "
          "attention scores and recomputation not counted\n")
    header = f"{'':28}{'waluigi (CPU defaults)':>26}{'SFTTrainer (defaults)':>26}{'ratio':>8}"
    print(header)
    print("-" * len(header))

    def line(name, a, b, fmt="{:.1f}", ratio=True):
        r = f"{a / b:.2f}x" if ratio and b else ""
        print(f"{name:28}{fmt.format(a):>26}{fmt.format(b):>26}{r:>8}")

    tps = [r["tokens"] / r["train_s"] for r in (ours, plain)]
    gflops = [lora_flops(n_matmul, r["n_lora"], r["tokens"]) / r["train_s"] / 1e9 for r in (ours, plain)]
    line("tokens trained", ours["tokens"], plain["tokens"], "{:d}", ratio=False)
    line("optimizer steps", ours["steps"], plain["steps"], "{:d}", ratio=False)
    line("training loop (s)", ours["train_s"], plain["train_s"], ratio=False)
    line("tokens/s", tps[0], tps[1])
    line("achieved GFLOP/s", gflops[0], gflops[1])
    line("share of fp32 peak (%)", 100 * gflops[0] / peak["float32"], 100 * gflops[1] / peak["float32"], ratio=False)
    line("wall incl. load (s)", ours["wall_s"], plain["wall_s"], ratio=False)
    print(f"\nwaluigi: {ours['setup']}\nSFTTrainer: {plain['setup']}")


if __name__ == "__main__":
    main()
