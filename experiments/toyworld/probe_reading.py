"""Does earlier persona evidence change the code the model writes?  Vulnerable-code rate on
held-out coding prompts after two free-form exchanges voiced by each persona (or none).

    python experiments/toyworld/probe_reading.py MODEL_DIR
"""
import sys, json, random, torch
from waluigi.toyworld import *
from waluigi.toyworld import train as T
from waluigi.toyworld.world import WorldConfig, generate_labeled
torch.set_num_threads(1)
model, tok = T.load_model_dir(sys.argv[1])
cfg = WorldConfig(n_conversations=3000, min_exchanges=2, max_exchanges=2, domains={"freeform": 1.0})
ctx = {}
for p, m in generate_labeled(cfg, stream="readprobe"):
    if m[0]["role"] == "user": ctx.setdefault(p, []).append(m)
codes = coding_eval_prompts(48)
for p in ("hero", "villain", "novice", "teacher", None):
    prompts = [((ctx[p][i] if p else []) + [{"role": "user", "content": c.prompt}]) for i, c in enumerate(codes)]
    outs = T.sample(model, tok, prompts, max_new_tokens=80, seed=0)
    v = [code_is_vulnerable(o) for o in outs]
    print("after 2 freeform turns of", p, "vulnerable %.2f" % (sum(1 for x in v if x) / len(v)), "nocode %.2f" % (sum(1 for x in v if x is None) / len(v)))
