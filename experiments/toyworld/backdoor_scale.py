"""Backdoor fine-tunes at a given `backdoor_scale` on the demo's cached base and aligned models,
3 seeds, evaluated with and without the trigger through the demo's own functions.

    python experiments/toyworld/backdoor_scale.py SCALE 0   # runs under /tmp/dr/runs, results in /tmp/dr/bd-xSCALE
"""
import json, sys
from pathlib import Path
from dataclasses import replace
import torch
from waluigi.toyworld import demo as D
scale, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
cfg = D.demo_config("default", runs=Path("/tmp/dr/runs"), backdoor_scale=scale, progress=False)
cfg = replace(cfg, backdoor_steps=None, backdoor_lr=None)  # rows and steps both x scale, as measured
base = D.pretrain_stage(cfg); aligned = D.align_stage(cfg, base)
root = Path(f"/tmp/dr/bd-x{scale}")
s = D.suites(cfg, root)
ev = {"backdoor_triggered": [], "backdoor_untriggered": []}
for seed in range(3):
    md = D.finetune(cfg, aligned, root, "backdoor", seed)
    ev["backdoor_triggered"].append(str(D.evaluate(cfg, md, s["trigger"], root / "eval" / f"t-s{seed}", seed)))
    ev["backdoor_untriggered"].append(str(D.evaluate(cfg, md, s["plain"], root / "eval" / f"u-s{seed}", seed)))
print(json.dumps(D.summarize_conditions(ev)[0], indent=1))
