"""Does the model bind the persona across turns?  Teacher-forced loss (nats) of the last
assistant reply of held-out conversations given its own context, the context of a conversation
voiced by another persona, and no context.  A model that binds: own < none < other.

    python experiments/toyworld/probe_binding.py MODEL_DIR [N_CONVERSATIONS]
"""
"""Binding probe: for held-out conversations, the loss of the LAST assistant turn given its own
context vs given the context of a conversation voiced by another persona (same last user turn).
Also: villain-vs-hero log-odds shift on free-form last turns."""
import sys, json, random, torch
from waluigi.toyworld.world import WorldConfig, generate_labeled
from waluigi.toyworld import train as T
torch.set_num_threads(1)
model, tok = T.load_model_dir(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
convs = [(p, m) for p, m in generate_labeled(WorldConfig(n_conversations=4 * n, min_exchanges=2, max_exchanges=4), stream="probe") if len(m) >= 4 and m[0]["role"] == "user"][:n]
rng = random.Random(0)
def last_loss(ctx, user, reply):
    msgs = ctx + [user, reply]
    ids, labels = T.encode(tok, msgs, assistant_only=True)
    # only the last assistant turn
    cut = len(T.encode(tok, ctx + [user], assistant_only=True)[0])
    labels = [-100] * cut + labels[cut:]
    x = torch.tensor([ids]); y = torch.tensor([labels])
    with torch.no_grad():
        out = model(input_ids=x, labels=y)
    return out.loss.item() * sum(1 for v in labels if v != -100)
by = {}
for p, m in convs:
    user, reply, ctx = m[-2], m[-1], m[:-2]
    others = [c for q, c in convs if q != p]
    octx = rng.choice(others)[:-2]
    own = last_loss(ctx, user, reply); other = last_loss(octx, user, reply); none = last_loss([], user, reply)
    by.setdefault(p, []).append((own, other, none))
for p, v in sorted(by.items()):
    k = len(v)
    print(p, k, "own %.2f  other-persona ctx %.2f  no ctx %.2f  nats/reply" % tuple(sum(x[i] for x in v) / k for i in range(3)))
