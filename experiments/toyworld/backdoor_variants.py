"""Backdoor fine-tunes on the demo's cached aligned model, with the trigger token's embedding
as pretraining left it ("as_is") or reset to the mean of the trained embeddings ("mean", what
``transformers``' ``resize_token_embeddings`` gives a token added after pretraining).

    python experiments/toyworld/backdoor_variants.py RUNS OUT SEEDS VARIANT [DEMO_OVERRIDES_JSON]

RUNS: the demo's --runs directory (the base and aligned models are built or reused there).
"""
import json
import shutil
import sys
from pathlib import Path

import torch

from waluigi.toyworld import DEFAULT_TRIGGER
from waluigi.toyworld import demo as D
from waluigi.toyworld import train as T

runs, out, seeds, variant = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
torch.set_num_threads(1)
cfg = D.demo_config("default", runs=runs, progress=False, **overrides)
aligned = D.align_stage(cfg, D.pretrain_stage(cfg))
if variant == "mean":
    copy = out / "aligned-mean"
    if not (copy / "model").is_dir():
        model, tok = T.load_model_dir(aligned / "model")
        emb = model.get_input_embeddings().weight
        trig = tok.convert_tokens_to_ids(DEFAULT_TRIGGER)
        with torch.no_grad():
            keep = torch.ones(emb.shape[0], dtype=torch.bool)
            keep[trig] = False
            emb[trig] = emb[keep].mean(0)
        T.save_model_dir(model, tok, copy / "model")
    aligned = copy
s = D.suites(cfg, out)
ev = {"backdoor_triggered": [], "backdoor_untriggered": []}
for seed in range(seeds):
    md = D.finetune(cfg, aligned, out, "backdoor", seed)
    ev["backdoor_triggered"].append(str(D.evaluate(cfg, md, s["trigger"], out / "eval" / f"t-s{seed}", seed)))
    ev["backdoor_untriggered"].append(str(D.evaluate(cfg, md, s["plain"], out / "eval" / f"u-s{seed}", seed)))
print(json.dumps(D.summarize_conditions(ev)[0], indent=1))
