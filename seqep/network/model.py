"""The convergent RNN with modern-Hopfield projection layers (SPEC.md §1-3), both paper models in one class.

A model has `n_proj` Hopfield projection blocks followed by a dense chain. Block `p` reads input segment
`query_seg[p]` through the token-wise map `W_p` (synapse `p`, d x d, no bias) and retrieves from the raw
tokens of segment `key_seg[p]` (keys = values). The dense chain starts with `Linear(n_proj*L*d, h1)` on the
flattened blocks. Sentiment: one segment, one block. NLI: segments [premise, hypothesis], four blocks
(premise->hypothesis, hypothesis->premise, premise->premise, hypothesis->hypothesis), as in the old code.

All blocks are held in one state tensor `(B, n_proj, L, d)` so a step is a handful of batched matmuls.

Φ is the *primitive function* the dynamics ascend, not an energy: Φ = ½‖s‖² − E (SPEC.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqep.network.activations import get_activation
from seqep.network.protocol import States

# (query segment, key segment) per projection block, in synapse order (SPEC.md §1 tables).
BLOCKS = {
    "sentiment": [(0, 0)],
    "nli": [(0, 1), (1, 0), (0, 0), (1, 1)],
}
N_SEGMENTS = {"sentiment": 1, "nli": 2}
PAPER_ATTN_SCALE = {"sentiment": None, "nli": 0.16}  # Hopfield β_att when attn_scale=None; None -> 1/sqrt(d)


def one_hot(y: Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """`(B,)` class indices -> `(B, n_classes)` one-hot targets `e_y` in the state dtype."""
    return F.one_hot(y, n_classes).to(dtype)


def _column(beta: float | Tensor) -> float | Tensor:
    """A per-sample β `(B,)` becomes `(B, 1)` so it broadcasts over class neurons."""
    return beta.unsqueeze(-1) if isinstance(beta, Tensor) else beta


def _is_zero(beta: float | Tensor) -> bool:
    return not isinstance(beta, Tensor) and beta == 0.0


class HopfieldEPNet(nn.Module):
    """States `[proj (B, n_proj, L, d), h1 (B, h1), ..., out (B, n_classes)]`; input `x (B, n_seg*L, d)`."""

    def __init__(
        self,
        kind: str,
        seq_len: int,
        embed_dim: int,
        fc: Sequence[int],
        activation: str = "my_hard_sig",
        attn_scale: float | None = None,
        mask_padding: bool = False,
        out_bias_init: float | None = None,
    ) -> None:
        """`kind`: sentiment | nli (the block layout, `BLOCKS`); `fc`: hidden sizes then classes (the old
        `--fc_layers`); `attn_scale`: Hopfield β_att, None = the paper's preset (1/√d sentiment, 0.16 NLI);
        `mask_padding`: mask zero-vector padding keys in the softmax (the paper does not); `out_bias_init`: a
        constant for the output bias (SPEC §8 pitfall 2), None = PyTorch's default init.
        `seq_len` and `embed_dim` come from the data (seqep's builder passes them)."""
        super().__init__()
        if kind not in BLOCKS:
            raise ValueError(f"kind={kind!r} is not allowed; choose one of: {', '.join(BLOCKS)}")
        if len(fc) < 1 or any(h < 1 for h in fc):
            raise ValueError(f"fc={list(fc)} must list at least the number of classes, all sizes >= 1 "
                             f"(like the old --fc_layers, e.g. [128, 2])")
        if attn_scale is not None and attn_scale <= 0:
            raise ValueError(f"attn_scale={attn_scale} must be > 0 (or null for the paper's preset)")
        if attn_scale is None:
            attn_scale = PAPER_ATTN_SCALE[kind]
        self.kind, self.seq_len, self.embed_dim = kind, seq_len, embed_dim
        self.fc = list(fc)
        self.activation = activation
        self.act = get_activation(activation)
        self.attn_scale = 1.0 / math.sqrt(embed_dim) if attn_scale is None else float(attn_scale)
        self.mask_padding = mask_padding
        blocks = BLOCKS[kind]
        self.n_proj, self.n_seg = len(blocks), N_SEGMENTS[kind]
        self.register_buffer("query_seg", torch.tensor([q for q, _ in blocks]), persistent=False)
        self.register_buffer("key_seg", torch.tensor([k for _, k in blocks]), persistent=False)
        sizes = [self.n_proj * seq_len * embed_dim, *self.fc]
        self.synapses = nn.ModuleList(
            [nn.Linear(embed_dim, embed_dim, bias=False) for _ in blocks]
            + [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        if out_bias_init is not None:  # SPEC §8 pitfall 2: a positive output bias keeps outputs off the floor
            with torch.no_grad():
                self.synapses[-1].bias.fill_(float(out_bias_init))

    # ----------------------------------------------------------------------------------------- helpers
    @property
    def n_classes(self) -> int:
        return self.fc[-1]

    @property
    def dense(self) -> list[nn.Linear]:
        return list(self.synapses[self.n_proj:])

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, L={self.seq_len}, d={self.embed_dim}, fc={self.fc}, "
                f"activation={self.activation}, attn_scale={self.attn_scale:.4g}, mask_padding={self.mask_padding}")

    def _segments(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        return x.reshape(B, self.n_seg, self.seq_len, self.embed_dim)

    def init_states(self, batch_size: int, *, device=None, dtype=None) -> States:
        """All-zero states, as at the start of every mini-batch."""
        like = next(self.parameters())
        kw = dict(device=device or like.device, dtype=dtype or like.dtype)
        proj = torch.zeros(batch_size, self.n_proj, self.seq_len, self.embed_dim, **kw)
        return [proj] + [torch.zeros(batch_size, h, **kw) for h in self.fc]

    def layer_states(self, states: States) -> States:
        """The old code's layer order: `s1 (B,L,d)` [, `s2`, `s3`, `s4`], `h1`, ..., `out`."""
        return list(states[0].unbind(1)) + list(states[1:])

    def output(self, states: States) -> Tensor:
        return states[-1]

    def input_drive(self, x: Tensor) -> Tensor:
        """`x_P W_Pᵀ` for every block, `(B, n_proj, L, d)`: constant during a phase, computed once."""
        queries = self._segments(x)[:, self.query_seg]  # (B, n_proj, L, d)
        weights = torch.stack([s.weight for s in self.synapses[: self.n_proj]])  # (n_proj, d, d)
        return torch.einsum("bpld,ped->bple", queries, weights)

    def keys(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Hopfield keys (= values) per block `(B, n_proj, L, d)`, and the padding mask `(B, n_proj, 1, L)`."""
        keys = self._segments(x)[:, self.key_seg]
        mask = (keys == 0).all(-1).unsqueeze(2) if self.mask_padding else None
        return keys, mask

    # ----------------------------------------------------------------------------------------- dynamics
    def phi(self, x: Tensor, states: States, beta: float | Tensor = 0.0, target: Tensor | None = None,
            drive: Tensor | None = None) -> Tensor:
        """Φ per sample `(B,)` (SPEC.md §2); differentiable in states and parameters."""
        proj, *dense = states
        drive = self.input_drive(x) if drive is None else drive
        phi = (drive * proj).flatten(1).sum(1)
        prev = proj.flatten(1)
        for syn, h in zip(self.dense, dense):
            phi = phi + (h * syn(prev)).sum(1)
            prev = h
        if target is not None and not _is_zero(beta):
            phi = phi - beta * 0.5 * ((dense[-1] - target) ** 2).sum(1)
        return phi

    def fields(self, x: Tensor, states: States, beta: float | Tensor = 0.0, target: Tensor | None = None,
               drive: Tensor | None = None) -> States:
        """Local fields `g_k = ∂Φ/∂s_k` in closed form (SPEC.md §3), one per state tensor."""
        proj, *dense = states
        drive = self.input_drive(x) if drive is None else drive
        syns = self.dense
        # top-down feedback into each layer from the layer above: W_{k+1}ᵀ s_{k+1}
        g_proj = torch.addmm(drive.flatten(1), dense[0], syns[0].weight).view_as(proj)
        inputs = [proj.flatten(1), *dense[:-1]]
        g_dense = []
        for k, (syn, prev) in enumerate(zip(syns, inputs)):
            g = F.linear(prev, syn.weight, syn.bias)
            if k + 1 < len(syns):
                g = g + dense[k + 1] @ syns[k + 1].weight
            g_dense.append(g)
        if target is not None and not _is_zero(beta):
            g_dense[-1] = g_dense[-1] + _column(beta) * (target - dense[-1])
        return [g_proj, *g_dense]

    def attention_scores(self, g_proj: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
        """`β_att g_P X_Pᵀ` per block, `(B, n_proj, L, L)` with keys last; padding keys masked out."""
        scores = self.attn_scale * (g_proj @ keys.transpose(-1, -2))
        if mask is not None:
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        return scores

    def update(self, fields: States, keys: Tensor, mask: Tensor | None) -> States:
        """Apply the update rule to fields: one Hopfield retrieval per block, σ for dense layers."""
        g_proj, *g_dense = fields
        proj = torch.softmax(self.attention_scores(g_proj, keys, mask), dim=-1) @ keys
        return [proj, *(self.act(g) for g in g_dense)]

    def step(self, x: Tensor, states: States, beta: float | Tensor = 0.0, target: Tensor | None = None,
             drive: Tensor | None = None, keys: tuple[Tensor, Tensor | None] | None = None) -> States:
        """One synchronous step from the old state, closed-form fields."""
        keys = self.keys(x) if keys is None else keys
        return self.update(self.fields(x, states, beta, target, drive), *keys)

    def step_autograd(self, x: Tensor, states: States, beta: float | Tensor = 0.0,
                      target: Tensor | None = None, drive: Tensor | None = None,
                      keys: tuple[Tensor, Tensor | None] | None = None) -> States:
        """One step with fields from autograd of Φ, the old code's way (oracle and speed baseline).

        When a graph is being built (BPTT), the fields stay differentiable (create_graph)."""
        keys = self.keys(x) if keys is None else keys
        building = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = [s if (building and s.requires_grad) else s.detach().requires_grad_(True) for s in states]
            phi = self.phi(x, leaves, beta, target, drive).sum()
            fields = torch.autograd.grad(phi, leaves, create_graph=building)
        return self.update(list(fields), *keys)

    def phi_grad_difference(self, x: Tensor, a: States, b: States, scale: float | Tensor = 1.0,
                            out: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """`Σ_batch scale · (∂Φ/∂θ(a) − ∂Φ/∂θ(b))` for every parameter in closed form (SPEC.md §4), `scale` one
        number or one per example `(B,)` (EP with a β per example):
        `∂Φ/∂W_k = s_{k+1} s_kᵀ`, `∂Φ/∂b_k = s_{k+1}`, `∂Φ/∂W_P = Σ_l s_P,l x_P,lᵀ`; the nudge term of Φ does not
        depend on θ. Written into `out` (one tensor or None per parameter) where given: reusing last step's
        `p.grad` saves the page faults of a fresh large tensor (12 ms for the 48 MB SNLI weight, 170 ms at IMDB).

        Formed from state differences rather than as the difference of two large sums: EP's two state sets
        differ by O(β), and in float32 the difference of the sums loses digits of the small projection gradient
        (SPEC.md §8, pitfall 4). Dense layers use `h pᵀ − h' p'ᵀ = ½[(h − h')(p + p')ᵀ + (h + h')(p − p')ᵀ]`,
        one matmul over the stacked pair, `scale` applied to the small factor."""
        params = list(self.parameters())
        grads = [torch.empty_like(p) if g is None else g for p, g in zip(params, out or [None] * len(params))]
        queries = self._segments(x)[:, self.query_seg]  # (B, n_proj, L, d)
        rows = isinstance(scale, Tensor) and scale.ndim > 0
        per = (lambda t: scale.view(-1, *[1] * (t.ndim - 1)) * t) if rows else (lambda t: scale * t)
        proj = torch.einsum("bple,bpld->ped", per(a[0] - b[0]), queries)
        for g, block in zip(grads, proj.unbind(0)):
            g.copy_(block)
        inputs = lambda s: [s[0].flatten(1), *s[1:-1]]
        for k, (p_a, p_b, h_a, h_b) in enumerate(zip(inputs(a), inputs(b), a[1:], b[1:])):
            dh = per(h_a - h_b)
            left = torch.cat([dh, per(h_a + h_b)]).mul_(0.5)
            weight, bias = grads[self.n_proj + 2 * k], grads[self.n_proj + 2 * k + 1]
            torch.mm(left.T, torch.cat([p_a + p_b, p_a - p_b]), out=weight)
            torch.sum(dh, 0, out=bias)
        return grads


def build_model(kind: str, seq_len: int, embed_dim: int, fc: Sequence[int], activation: str = "my_hard_sig",
                attn_scale: float | None = None, mask_padding: bool = False) -> HopfieldEPNet:
    """`HopfieldEPNet(...)`, under the name the earlier scripting API used (kept so that its scripts still run)."""
    return HopfieldEPNet(kind, seq_len, embed_dim, fc, activation, attn_scale, mask_padding)
