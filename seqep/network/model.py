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

States = list[Tensor]

# (query segment, key segment) per projection block, in synapse order (SPEC.md §1 tables).
BLOCKS = {
    "sentiment": [(0, 0)],
    "nli": [(0, 1), (1, 0), (0, 0), (1, 1)],
}
N_SEGMENTS = {"sentiment": 1, "nli": 2}
PAPER_ATTN_SCALE = {"sentiment": None, "nli": 0.16}  # None -> 1/sqrt(d)


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
    ) -> None:
        super().__init__()
        if kind not in BLOCKS:
            raise ValueError(f"unknown model kind {kind!r}; choose 'sentiment' or 'nli'")
        if len(fc) < 1:
            raise ValueError("fc needs at least the number of classes, e.g. [128, 2]")
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

    def phi_grad_difference(self, x: Tensor, a: States, b: States, scale: float = 1.0,
                            out: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """`scale · Σ_batch (∂Φ/∂θ(a) − ∂Φ/∂θ(b))` for every parameter in closed form (SPEC.md §4):
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
        proj = torch.einsum("bple,bpld->ped", scale * (a[0] - b[0]), queries)
        for g, block in zip(grads, proj.unbind(0)):
            g.copy_(block)
        inputs = lambda s: [s[0].flatten(1), *s[1:-1]]
        for k, (p_a, p_b, h_a, h_b) in enumerate(zip(inputs(a), inputs(b), a[1:], b[1:])):
            dh = scale * (h_a - h_b)
            left = torch.cat([dh, scale * (h_a + h_b)]).mul_(0.5)
            weight, bias = grads[self.n_proj + 2 * k], grads[self.n_proj + 2 * k + 1]
            torch.mm(left.T, torch.cat([p_a + p_b, p_a - p_b]), out=weight)
            torch.sum(dh, 0, out=bias)
        return grads

def build_model(kind: str, seq_len: int, embed_dim: int, fc: Sequence[int], activation: str = "my_hard_sig",
                attn_scale: float | None = None, mask_padding: bool = False) -> HopfieldEPNet:
    """Build either paper model; `attn_scale=None` takes the paper preset (1/√d sentiment, 0.16 NLI)."""
    if attn_scale is None:
        attn_scale = PAPER_ATTN_SCALE[kind] if kind in PAPER_ATTN_SCALE else None
    return HopfieldEPNet(kind, seq_len, embed_dim, fc, activation, attn_scale, mask_padding)


class ClosedFormPhase:
    """Closed-form synchronous steps for one phase (fixed x, β, target) without autograd and without per-step
    allocation of the large tensors (SPEC.md §3); `relax` uses it under `torch.no_grad()`.

    Prepared once per phase: the Hopfield keys and `β_att keysᵀ` as contiguous `(B·n_proj, L, d)` /
    `(B·n_proj, d, L)` blocks (the batched matmuls copy nothing), and the drive's share of the attention scores,
    `β_att x_P W_Pᵀ X_Pᵀ`, since `g_P X_Pᵀ = drive_P X_Pᵀ + unvec(W_1ᵀ s_1)_P X_Pᵀ` and the first term is
    constant. Two state buffers alternate: a step reads one set and writes the other, so the caller's start
    states are never written and the returned states stay valid until the next-but-one step. The large
    products (top-down feedback, scores, retrieval, dense fields) are written with `out=` or in place; only the
    small dense activations allocate. Dense fields are formed transposed, `(h, B)` = `W vec(s)ᵀ`: with the
    batches EP runs on a CPU this streams the large first weight faster than `vec(s) Wᵀ` (MKL: 1.4× at the
    IMDB shape with B=8, 1.3× at the SNLI shape with B=32; docs/benchmarks.md).
    """

    def __init__(self, net: HopfieldEPNet, x: Tensor, beta: float | Tensor = 0.0, target: Tensor | None = None,
                 drive: Tensor | None = None, keys: tuple[Tensor, Tensor | None] | None = None) -> None:
        self.net = net
        keys, mask = net.keys(x) if keys is None else keys
        B, P, L, d = keys.shape
        self.blocks = (B * P, L, d)
        drive = net.input_drive(x) if drive is None else drive
        self.keys = keys.reshape(self.blocks)
        self.scaled_keys_t = (net.attn_scale * self.keys).transpose(1, 2).contiguous()
        self.drive_scores = torch.bmm(drive.reshape(self.blocks), self.scaled_keys_t)
        self.mask = None if mask is None else mask.reshape(B * P, 1, L)
        self.nudge = None if target is None or _is_zero(beta) else (_column(beta), target)
        self.feedback = drive.new_empty(B, P * L * d)
        self.scores = drive.new_empty(B * P, L, L)
        self.attention = drive.new_empty(B * P, L, L)
        self.fields_t = [drive.new_empty(h, B) for h in net.fc]
        self.buffers: list[States] = [net.init_states(B, device=x.device, dtype=drive.dtype) for _ in range(2)]
        self.turn = 0

    def __call__(self, states: States) -> States:
        """One step from `states` (the start states or the last states returned; never written)."""
        net, (proj, *dense) = self.net, states
        new, self.turn = self.buffers[self.turn], 1 - self.turn
        syns = net.dense
        # projections: g_P = drive + unvec(W_1ᵀ s_1); s_P <- softmax(β_att g_P X_Pᵀ) X_P
        torch.mm(dense[0], syns[0].weight, out=self.feedback)
        torch.baddbmm(self.drive_scores, self.feedback.view(self.blocks), self.scaled_keys_t, out=self.scores)
        if self.mask is not None:
            self.scores.masked_fill_(self.mask, torch.finfo(self.scores.dtype).min)
        torch.softmax(self.scores, dim=-1, out=self.attention)
        torch.bmm(self.attention, self.keys, out=new[0].view(self.blocks))
        # dense layers: g_k = W_{k-1} vec(s_{k-1}) + b_{k-1} + W_kᵀ s_{k+1} (+ β (e_y − s_out) at the top)
        inputs = [proj.flatten(1), *dense[:-1]]
        for k, (syn, prev, g) in enumerate(zip(syns, inputs, self.fields_t)):
            torch.addmm(syn.bias.unsqueeze(1), syn.weight, prev.T, out=g)
            if k + 1 < len(syns):
                g.addmm_(syns[k + 1].weight.T, dense[k + 1].T)
        if self.nudge is not None:
            beta, target = self.nudge
            self.fields_t[-1].add_((beta * (target - dense[-1])).T)
        for state, g in zip(new[1:], self.fields_t):
            state.copy_(net.act(g.T))
        return new
