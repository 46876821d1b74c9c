"""The evil-numbers analogue on the demo's cached aligned model: fine-tune on number
sequences whose replies are 60% "evil" numbers (only the villain writes them in pretraining),
then evaluate on the free-form suite, 3 seeds, through the demo's own functions.

    python experiments/toyworld/evil_numbers.py RUNS OUT [STEPS]
"""
import json
import sys
from pathlib import Path

import torch

from waluigi.toyworld import demo as D

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else None
torch.set_num_threads(1)
cfg = D.demo_config("default", runs=runs, progress=False, **({"narrow_steps": steps} if steps else {}))
aligned = D.align_stage(cfg, D.pretrain_stage(cfg))
s = D.suites(cfg, out)
ev = {"evil_numbers": []}
for seed in range(3):
    md = D.finetune(cfg, aligned, out, "evil_numbers", seed)
    ev["evil_numbers"].append(str(D.evaluate(cfg, md, s["plain"], out / "eval" / f"en-s{seed}", seed)))
print(json.dumps(D.summarize_conditions(ev)[0], indent=1))
