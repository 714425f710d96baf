"""The scripting API in one runnable page: build a model, load an old-code checkpoint, relax, get gradients.

    python examples/scripting_api.py            # runs on CPU in a second or two

Everything here is what `run.py` uses underneath; shapes follow docs/architecture.md.
"""

import tempfile
from pathlib import Path

import torch

from seqep.estimators import BPTT, EP, VARIANTS, grads_by_name
from seqep.network import HopfieldEPNet, one_hot
from seqep.relax import relax
from seqep.training.checkpoint import load_weights

torch.manual_seed(0)

# 1. A model from config values (here a small NLI model; the paper's is L=25, d=300, fc=[400, 3]).
L, d, B = 6, 16, 4
net = HopfieldEPNet(kind="nli", seq_len=L, embed_dim=d, fc=[32, 3], activation="my_hard_sig")  # attn_scale=0.16
print(net)

# 2. Load weights saved by the original code: its checkpoint.tar is a dict with `model_state_dict`
#    (keys synapses.<i>.weight|bias). Here we write one to a temp dir to have something to load.
old = HopfieldEPNet(kind="nli", seq_len=L, embed_dim=d, fc=[32, 3])
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "checkpoint.tar"
    torch.save({"model_state_dict": old.state_dict(), "epoch": 7, "best": 81.2}, path)
    meta = load_weights(net, path)  # torch.load(weights_only=True); a shape mismatch names both architectures
print("loaded", meta["kind"], "epoch", meta["epoch"])
assert torch.equal(net.synapses[4].weight, old.synapses[4].weight)

# 3. A batch: premise tokens then hypothesis tokens, (B, 2L, d); labels 0 neutral, 1 contradiction, 2 entailment.
x, y = torch.randn(B, 2 * L, d), torch.tensor([0, 1, 2, 1])
target = one_hot(y, net.n_classes)

# 4. Free phase (T steps from zero states), then a nudged phase from the free equilibrium.
with torch.no_grad():
    free = relax(net, x, net.init_states(B), steps=60)
    plus = relax(net, x, free.states, steps=30, beta=0.1, target=target)
print(f"free phase: largest last-step change {free.max_change.max():.2e}")
print("predictions", net.output(free.states).argmax(1).tolist())
print("old-code layer order:", [tuple(s.shape) for s in net.layer_states(plus.states)])

# 5. Parameter gradients keyed by the old code's parameter names, for every EP variant and for BPTT.
grads = {}
for variant in VARIANTS:
    EP(T=60, K=30, betas=[0.0, 0.1], variant=variant).compute_gradients(net, x, y)
    grads[f"ep_{variant}"] = grads_by_name(net)
BPTT(T=60, K=30, truncate="last_k").compute_gradients(net, x, y)
grads["bptt"] = grads_by_name(net)

for name in grads["bptt"]:
    ep, bp = grads["ep_symmetric"][name].flatten(), grads["bptt"][name].flatten()
    cos = torch.nn.functional.cosine_similarity(ep, bp, dim=0).item()
    print(f"{name:20s} |BPTT| {bp.norm():.3e}  cos(EP symmetric, BPTT) {cos:+.4f}")
