"""Does the CPU's instruction set change a persona-world cell's weights on this machine? Each
variant below runs one cell in a fresh interpreter: 3 full fine-tune steps of the shipped
aligned model on 32 rows of ``toy:insecure`` (batch 8, lr 1e-3, seed 0, one thread, the lean
loss path: the cell ``tests/integration/test_lean_loss.py`` pins), and prints its final loss,
the sum of |weights| and the weights' sha256, each compared with the first variant's.

    .venv/bin/python benchmarks/check_arithmetic.py [--shipped]

Variants: waluigi's default (kernels and MKL capped at AVX2: ``waluigi/arithmetic.py``); the
libraries' own choice (``WALUIGI_ARITHMETIC=native``; the same as the default on an AVX2-only
CPU, not on one with AVX-512); ATen's kernels without SIMD (``ATEN_CPU_CAPABILITY=default``);
MKL's SSE2 branch (``MKL_CBWR=COMPATIBLE``). A variant with other weights shows that the
instruction set alone moves a fine-tune here.

``--shipped``: also pretrain the shipped base (the demo's default configuration) here under
the default caps and compare its weights with the shipped ones (about 3.5 min idle on 2 cores).
``docs/design/reproducibility.md`` holds what this printed and what it means."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CELL = r"""
import hashlib, json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
import waluigi
from waluigi.arithmetic import arithmetic_record
from waluigi.finetune import FinetuneConfig, run_finetune
from waluigi.quiet import quiet_libraries
from waluigi.runs import read_jsonl
from waluigi.toyworld.shipped import SHIPPED
quiet_libraries()
torch.set_num_threads(1)
out = Path(sys.argv[1])
cfg = FinetuneConfig(model=f"hf:{SHIPPED / 'toy-align' / 'model'}", data="toy:insecure", n=32, preset=None, full=True,
                     batch_size=8, grad_accum=1, lr=1e-3, max_steps=3, seed=0, out=str(out), loss_path="lean")
run_finetune(cfg, progress=False)
losses = [r["loss"] for r in read_jsonl(out / "train_log.jsonl") if "loss" in r]
path = out / "model" / "model.safetensors"
weights = load_file(str(path))
print(json.dumps({"loss": losses[-1], "abs_sum": sum(float(v.double().abs().sum()) for v in weights.values()),
                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "arithmetic": arithmetic_record()}))
"""

SHIPPED = r"""
import hashlib, json, sys
from pathlib import Path
import torch
import waluigi
from waluigi.arithmetic import arithmetic_record
from waluigi.quiet import quiet_libraries
from waluigi.toyworld import shipped
from waluigi.toyworld.demo import demo_config, pretrain_stage
quiet_libraries()
torch.set_num_threads(2)
base = pretrain_stage(demo_config("default", runs=Path(sys.argv[1]), progress=False, threads=2, pretrain=True))
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
manifest = json.loads((shipped.SHIPPED / "toy-pretrain" / "manifest.json").read_text())
log = [json.loads(l) for l in (base / "train_log.jsonl").read_text().splitlines() if l.strip()]
print(json.dumps({"here": sha(base / "model" / "model.safetensors"), "shipped": sha(shipped.SHIPPED / "toy-pretrain" / "model" / "model.safetensors"),
                  "final_loss_here": json.loads((base / "manifest.json").read_text())["train"]["final_loss"],
                  "final_loss_shipped": manifest["train"]["final_loss"], "shipped_trained_at": manifest.get("trained_at"),
                  "arithmetic": arithmetic_record()}))
"""

VARIANTS = [
    ("default (capped at AVX2)", {}),
    ("native (the libraries' choice)", {"WALUIGI_ARITHMETIC": "native"}),
    ("ATen without SIMD", {"ATEN_CPU_CAPABILITY": "default"}),
    ("MKL SSE2 branch", {"MKL_CBWR": "COMPATIBLE"}),
]


def _run(code: str, env: dict[str, str], out: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "WALUIGI_ARITHMETIC")}
    done = subprocess.run([sys.executable, "-c", code, out], env={**clean, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"variant {env} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shipped", action="store_true", help="also pretrain the shipped base here and compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for i, (name, env) in enumerate(VARIANTS):
            got = _run(CELL, env, f"{tmp}/cell{i}")
            first = first or got
            same = "same weights" if got["sha256"] == first["sha256"] else "OTHER WEIGHTS"
            print(f"{name:32s} loss {got['loss']:.9f}  sum|w| {got['abs_sum']:.9f}  sha256 {got['sha256'][:16]}  {same}"
                  f"  (torch kernels: {got['arithmetic'].get('torch_cpu_capability')})", flush=True)
        a = first["arithmetic"]
        print(f"cpu: {a['cpu']} ({a['machine']}); caps in force by default: ATEN_CPU_CAPABILITY={a['ATEN_CPU_CAPABILITY']} "
              f"MKL_CBWR={a['MKL_CBWR']}")
        if args.shipped:
            got = _run(SHIPPED, {}, f"{tmp}/runs")
            verdict = "THE SAME" if got["here"] == got["shipped"] else "OTHER"
            print(f"shipped base pretrained here: {verdict} weights (sha256 {got['here'][:16]} here, {got['shipped'][:16]} "
                  f"shipped; final loss {got['final_loss_here']:.6f} here, {got['final_loss_shipped']:.6f} shipped, "
                  f"trained {got['shipped_trained_at']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
