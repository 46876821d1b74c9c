"""Pretrain a toy base model outside the demo (for knob experiments).

    python experiments/toyworld/pretrain.py OUT_DIR --world '{"min_exchanges":4,"max_exchanges":6,"novice_secure_rate":0.6,"n_conversations":10000}' --epochs 4

Writes OUT_DIR (an HF model directory) and OUT_DIR/world.json (the WorldConfig fields used).
"""
import sys, os, json, time, argparse, torch
from waluigi.toyworld import generate_corpus
from waluigi.toyworld import train as T
from waluigi.toyworld.world import WorldConfig
p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("--world", default="{}"); p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=2); p.add_argument("--epochs", type=float, default=4); p.add_argument("--lr", type=float, default=6e-3)
a = p.parse_args()
torch.set_num_threads(1)
w = json.loads(a.world)
cfg = WorldConfig(**w)
t0 = time.time()
corpus = list(generate_corpus(cfg))
tok = T.build_tokenizer(corpus)
model = T.build_model(tok, T.ModelConfig(hidden=a.hidden, layers=a.layers, heads=4, intermediate=a.hidden * 3))
st = T.train_lm(model, tok, corpus, epochs=a.epochs, lr=a.lr, batch_size=32, warmup=30, assistant_only=True,
                on_step=lambda s, n, l: print(f"  pre {s}/{n} {l:.3f} {time.time()-t0:.0f}s", flush=True) if s % 100 == 0 else None)
print("pretrain", st, flush=True)
T.save_model_dir(model, tok, a.out)
json.dump(w, open(a.out + "/world.json", "w"))
