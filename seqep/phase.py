"""The closed-form phase engine: synchronous steps of a `HopfieldEPNet` without autograd and without per-step
allocation (SPEC.md §3). `seqep.relax.relax` uses it for EP's phases, under `torch.no_grad()`."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from seqep.network import HopfieldEPNet, States
from seqep.network.model import _column, _is_zero
from seqep.precision import LOW_DTYPE

# `twin` first steps halve their products only for at least this many examples a half: at a few rows a product costs
# the streaming of its weight, whatever the rows (default shape: 0.29 ms a step at 2 rows, 0.38 at 4)
TWIN_MIN = 16


def _halves_repeat(states: States) -> bool:
    """Whether the second half of every state repeats the first, with at least `TWIN_MIN` examples a half, on a
    CPU (the check reads the states back, which would cost an accelerator a host synchronisation)."""
    return (len(states[0]) >= 2 * TWIN_MIN and states[0].device.type == "cpu"
            and all(torch.equal(*s.chunk(2)) for s in states))


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

    `around = (states, low_weight)` (`precision=bf16-delta`'s nudged phases): the two products with the first
    dense weight `W` — the largest, `W vec(s_P)ᵀ` and the feedback `s_1 W` — are taken as their float32 value at
    `states` (once per phase) plus `low_weight` (a low-precision copy of `W`) times the deviation from `states`,
    rounded to its dtype. A nudged phase moves its states little from the free state it starts at, so the
    rounding falls on that small deviation, not on the states: the states, every other product, and the fields'
    sums stay float32.

    `alternate` (`updates="alternating"`, `seqep.relax.UPDATES`): a step updates the even layers (the
    projections, the second dense layer, ...) from the given states and then the odd ones from the even layers'
    new states (the dense chain's fields involve only neighbouring layers, so the layers split in two halves that
    never read themselves: a red-black Gauss-Seidel sweep). Same products, same cost per step, the same fixed
    points; on a layered network it contracts about as much per step as two synchronous steps.
    """

    def __init__(self, net: HopfieldEPNet, x: Tensor, beta: float | Tensor = 0.0, target: Tensor | None = None,
                 drive: Tensor | None = None, keys: tuple[Tensor, Tensor | None] | None = None,
                 around: tuple[States, Tensor] | None = None, alternate: bool = False, twin: bool = False) -> None:
        self.net = net
        keys, mask = net.keys(x) if keys is None else keys
        B, P, L, d = keys.shape
        self.blocks = (B * P, L, d)
        drive = net.input_drive(x) if drive is None else drive
        self.keys = keys.reshape(self.blocks)
        # twin: the second half of the batch repeats the first (x, drive, keys), so its constants are copies
        n = B * P // 2 if twin else B * P
        twice = (lambda t: torch.cat([t, t])) if twin else (lambda t: t)
        scaled_keys_t = (net.attn_scale * self.keys[:n]).transpose(1, 2).contiguous()
        self.scaled_keys_t = twice(scaled_keys_t)
        self.drive_scores = twice(torch.bmm(drive.reshape(self.blocks)[:n], scaled_keys_t))
        self.twin = twin
        self.mask = None if mask is None else mask.reshape(B * P, 1, L)
        # what a step reads of the weights, bound once (a step is ~20 small kernels, where Python's lookups weigh)
        self.weights = [syn.weight for syn in net.dense]
        self.biases = [syn.bias.unsqueeze(1) for syn in net.dense]  # (h, 1): broadcast over the batch
        self.nudge = None  # β (e_y − s_out) as βe_y and β, transposed as the fields are: (n_out, B) and (1, B)
        if target is not None and not _is_zero(beta):
            beta = _column(beta)
            self.nudge = ((beta * target).T.contiguous(), beta.reshape(1, -1) if isinstance(beta, Tensor) else beta)
        self.alternate = alternate
        self.low_weight = None
        if around is not None:
            self.ref_states, self.low_weight = around  # the caller's start states: never written
            self.ref_proj, self.ref_h = self.ref_states[0].flatten(1), self.ref_states[1]
            # from twin reference states (symmetric EP's ±β phases both start from the free state) the float32
            # products are taken for the first half and copied, as a twin first step does (`__call__`)
            m = B // 2 if twin and _halves_repeat(self.ref_states) else B
            self.base_feedback = torch.mm(self.ref_h[:m], self.weights[0])  # (B, P·L·d)
            self.base_field = torch.addmm(self.biases[0], self.weights[0], self.ref_proj[:m].T)  # (h, B)
            if m < B:
                self.base_feedback = torch.cat([self.base_feedback, self.base_feedback])
                self.base_field = torch.cat([self.base_field, self.base_field], 1)
        self._allocate(B)
        self.first = True  # no step taken yet (`__call__`)

    def _allocate(self, B: int) -> None:
        """The per-batch work buffers, in the keys' dtype and device."""
        P, (L, d), keys = self.net.n_proj, self.blocks[1:], self.keys
        self.feedback = keys.new_empty(B, P * L * d)
        self.scores = keys.new_empty(B * P, L, L)
        self.attention = keys.new_empty(B * P, L, L)
        # softmax of bfloat16 scores: computed in float32 (on CPU 2-3x faster than bfloat16's), then rounded
        self.probs = keys.new_empty(B * P, L, L, dtype=torch.float32) if keys.dtype == LOW_DTYPE else None
        self.fields_t = [keys.new_empty(h, B) for h in self.net.fc]
        if self.low_weight is not None:  # the deviations from `around`, in the low weight's dtype
            self.dev_proj = self.low_weight.new_empty(B, P * L * d)
            self.dev_h = self.low_weight.new_empty(B, self.net.fc[0])
        # every step writes every unit of the buffer it returns, so they start uninitialised
        shapes = [(B, P, L, d), *((B, h) for h in self.net.fc)]
        self.buffers: list[States] = [[keys.new_empty(shape) for shape in shapes] for _ in range(2)]
        self.turn = 0
        # what the projections' update reads and writes besides the states, bound once (`_project`)
        self.work = (self.feedback, self.scores, self.attention, self.probs, self.drive_scores, self.scaled_keys_t,
                     self.keys, self.mask)

    def _first_half(self, m: int) -> tuple:
        """`work` for the first `m` examples of the batch (a twin first step)."""
        feedback, *blocks = self.work
        b = m * self.net.n_proj
        return (feedback[:m], *(None if t is None else t[:b] for t in blocks))

    def select(self, rows: Tensor) -> ClosedFormPhase:
        """The same phase for some of its examples (`rows`, indices into its batch): the prepared constants are
        indexed, not recomputed (per-example settling shrinks a phase to the examples still moving)."""
        P, old_B = self.net.n_proj, self.feedback.shape[0]
        blocks = (rows[:, None] * P + torch.arange(P, device=rows.device)).flatten()  # (B·P) rows of the blocks
        new = copy.copy(self)
        new.blocks = (len(blocks), *self.blocks[1:])
        new.keys, new.scaled_keys_t = self.keys[blocks], self.scaled_keys_t[blocks]
        new.drive_scores = self.drive_scores[blocks]
        new.mask = None if self.mask is None else self.mask[blocks]
        if self.nudge is not None:
            beta_target_t, beta_t = self.nudge
            per_row = isinstance(beta_t, Tensor) and beta_t.shape[1] == old_B
            new.nudge = (beta_target_t[:, rows], beta_t[:, rows] if per_row else beta_t)
        if self.low_weight is not None:
            new.ref_proj, new.ref_h, new.base_feedback = self.ref_proj[rows], self.ref_h[rows], self.base_feedback[rows]
            new.base_field = self.base_field[:, rows]
        new._allocate(len(rows))
        return new

    def __call__(self, states: States) -> States:
        """One step from `states` (the start states or the last states returned; never written): synchronous
        (every layer from `states`), or with `alternate` the even layers (the projections, the second dense layer,
        ...) from `states` and then the odd ones from the even layers' new states."""
        new, self.turn = self.buffers[self.turn], 1 - self.turn
        layers = range(len(new))
        # The first step's shortcuts, the same numbers with fewer products (one check per phase): from all-zero
        # states (the free phase) the products with them are zero and skipped (`zero`); from twin states (the
        # ±β phases of symmetric EP start both from the free state) the projections and the first dense layer's
        # input product are the same for both halves, so they are computed for the first half and copied (`twin`:
        # the nudge reaches them only from the next step on). On a CPU only: the checks read the states back, which
        # costs an accelerator a host synchronisation, and there a product's cost is mostly its launch anyway
        # With `around`, a first step from the reference states themselves has no deviation from them: the
        # products with the first weight are their reference values (`at_ref`; an identity check, no sync)
        zero = twin = at_ref = False
        if self.first and self.low_weight is None and self.keys.device.type == "cpu":
            zero = not any(bool(s.any()) for s in states)
            twin = not zero and self.twin and _halves_repeat(states)
        elif self.first and self.low_weight is not None:
            at_ref = all(s is r for s, r in zip(states, self.ref_states))
        self.first = False
        if self.alternate:
            for i in layers[0::2]:
                self._update(i, states, states, new, zero, twin, at_ref)
            for i in layers[1::2]:
                self._update(i, new, states, new, twin=twin)
        else:
            for i in layers:
                self._update(i, states, states, new, zero, twin, at_ref)
        return new

    def _project(self, s1: Tensor, out: Tensor, work: tuple, zero: bool = False, at_ref: bool = False) -> None:
        """The projections' new states into `out` from the first dense layer's `s1`, with `work` (`self.work`, or
        `_first_half`'s part of it); `zero`: `s1` is zero, so the scores are the drive's; `at_ref`: `s1` is
        `around`'s, so the top-down feedback is its reference value."""
        feedback, scores, attention, probs, drive_scores, scaled_keys_t, keys, mask = work
        if zero:
            scores.copy_(drive_scores)
        else:
            if at_ref:
                feedback = self.base_feedback
            elif self.low_weight is None:
                torch.mm(s1, self.weights[0], out=feedback)
            else:
                torch.sub(s1, self.ref_h, out=self.dev_h)
                torch.add(self.base_feedback, self.dev_h @ self.low_weight, out=feedback)
            torch.baddbmm(drive_scores, feedback.view_as(keys), scaled_keys_t, out=scores)
        if mask is not None:
            scores.masked_fill_(mask, torch.finfo(scores.dtype).min)
        if probs is None:
            torch.softmax(scores, dim=-1, out=attention)
        else:
            attention.copy_(torch.softmax(scores, dim=-1, dtype=torch.float32, out=probs))
        torch.bmm(attention, keys, out=out.view_as(keys))

    def _update(self, i: int, src: States, states: States, new: States, zero: bool = False,
                twin: bool = False, at_ref: bool = False) -> None:
        """Layer i's new state into `new[i]`, from its neighbours' states in `src` and its own in `states` (the
        nudge's β(e_y − s_out)); layer 0 is the projections. `zero`: every state in `src` is zero (the products
        with them are skipped); `twin`: the second half of `src[0]` and `src[1]` repeats the first (their
        products are taken for the first half and copied); `at_ref`: `src` is `around`'s reference states (the
        first weight's products are their reference values)."""
        weights = self.weights
        if i == 0:  # g_P = drive + unvec(W_1ᵀ s_1); s_P <- softmax(β_att g_P X_Pᵀ) X_P
            if twin:  # the first half, then copied
                m = len(src[1]) // 2
                self._project(src[1][:m], new[0][:m], self._first_half(m))
                new[0][m:].copy_(new[0][:m])
            else:
                self._project(src[1], new[0], self.work, zero, at_ref)
            return
        # dense layer k = i - 1: g_k = W_{k-1} vec(s_{k-1}) + b_{k-1} + W_kᵀ s_{k+1} (+ β (e_y − s_out) at the top)
        k, g = i - 1, self.fields_t[i - 1]
        prev = src[i - 1].flatten(1) if i == 1 else src[i - 1]
        if zero:
            g.copy_(self.biases[k].expand_as(g))
        elif k == 0 and twin:
            m = g.shape[1] // 2
            torch.addmm(self.biases[0], weights[0], prev[:m].T, out=g[:, :m])
            g[:, m:].copy_(g[:, :m])
        elif k == 0 and at_ref:
            g.copy_(self.base_field)
        elif k == 0 and self.low_weight is not None:
            torch.sub(prev, self.ref_proj, out=self.dev_proj)
            torch.add(self.base_field, self.low_weight @ self.dev_proj.T, out=g)
        else:
            torch.addmm(self.biases[k], weights[k], prev.T, out=g)
        if k + 1 < len(weights):
            if not zero:
                g.addmm_(weights[k + 1].T, src[i + 1].T)
        elif self.nudge is not None:
            beta_target_t, beta_t = self.nudge
            g.add_(beta_target_t)
            if isinstance(beta_t, Tensor):
                g.addcmul_(beta_t, states[i].T, value=-1.0)
            else:
                g.add_(states[i].T, alpha=-beta_t)
        new[i].copy_(self.net.act(g.T))
