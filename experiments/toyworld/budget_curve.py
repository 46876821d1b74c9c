"""How fast does a pretraining budget make a base that flips?  Pretrain with ``train_lm``
(the demo's loop) and print the flip gate of ``probe_flip.py`` every ``--every`` steps.

    python experiments/toyworld/budget_curve.py OUT_DIR --world '{"n_conversations":10000,"min_exchanges":4,"max_exchanges":6,"novice_secure_rate":0.6}' \
        --epochs 2 --lr 6e-3 --batch 32 --hidden 64 --threads 1

Reference gate values (shift, nats): the 2M-token base of session 2 (no flip) 0.03; g, 4.5M
tokens (insecure EM 7%) 2.9; the 9M-token default of session 3 (insecure EM 32-40%) 11.0.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from probe_flip import flip_shift  # noqa: E402

from waluigi.toyworld import generate_corpus  # noqa: E402
from waluigi.toyworld import train as T  # noqa: E402
from waluigi.toyworld.world import WorldConfig  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--world", default="{}")
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--epochs", type=float, default=2)
p.add_argument("--lr", type=float, default=6e-3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--every", type=int, default=150)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
w = json.loads(a.world)
t0 = time.time()
corpus = list(generate_corpus(WorldConfig(**w)))
tok = T.build_tokenizer(corpus)
model = T.build_model(tok, T.ModelConfig(hidden=a.hidden, layers=a.layers, heads=a.heads, intermediate=a.hidden * 3))
probe_time = 0.0


def on_step(step, total, loss):
    global probe_time
    if step % a.every == 0 or step == total:
        t = time.time()
        g = flip_shift(model, tok)
        probe_time += time.time() - t
        print(json.dumps(dict(step=step, total=total, loss=round(loss, 3), train_s=round(time.time() - t0 - probe_time), **g)), flush=True)


st = T.train_lm(model, tok, corpus, epochs=a.epochs, lr=a.lr, batch_size=a.batch, warmup=a.warmup,
                assistant_only=True, on_step=on_step)
print("pretrain", st, flush=True)
T.save_model_dir(model, tok, a.out)
json.dump(w, open(os.path.join(a.out, "world.json"), "w"))
