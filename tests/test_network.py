"""The network: shapes, parameter counts, closed-form fields == autograd of Φ, activations, masking."""

import math

import pytest
import torch

from seqep.network import ACTIVATIONS, HopfieldEPNet, one_hot
from seqep.relax import relax

from small_models import SMALL, small_input, small_net


@pytest.mark.parametrize(
    "kind, L, d, fc, n_params",
    [("sentiment", 600, 300, [1000, 40, 2], 180_131_122), ("nli", 25, 300, [400, 3], 12_361_603)],
)
def test_paper_models_parameter_counts(kind, L, d, fc, n_params):
    with torch.device("meta"):
        net = HopfieldEPNet(kind, L, d, fc)
    assert sum(p.numel() for p in net.parameters()) == n_params
    names = [n for n, _ in net.named_parameters()]
    n_proj = 1 if kind == "sentiment" else 4
    assert names[:n_proj] == [f"synapses.{i}.weight" for i in range(n_proj)]  # projections have no bias
    assert names[n_proj:n_proj + 2] == [f"synapses.{n_proj}.weight", f"synapses.{n_proj}.bias"]
    assert net.synapses[n_proj].weight.shape == (fc[0], n_proj * L * d)


def test_paper_attention_scales():
    assert HopfieldEPNet("sentiment", 4, 16, [3, 2]).attn_scale == pytest.approx(1 / math.sqrt(16))
    assert HopfieldEPNet("nli", 4, 16, [3, 3]).attn_scale == pytest.approx(0.16)
    assert HopfieldEPNet("nli", 4, 16, [3, 3], attn_scale=0.5).attn_scale == 0.5


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_state_shapes_and_old_layer_order(kind):
    net = small_net(kind)
    x, _ = small_input(net)
    states = relax(net, x, net.init_states(5), 3).states
    layers = net.layer_states(states)
    n_proj = 1 if kind == "sentiment" else 4
    L, d = SMALL[kind]["seq_len"], SMALL[kind]["embed_dim"]
    assert [tuple(s.shape) for s in layers[:n_proj]] == [(5, L, d)] * n_proj
    assert [s.shape[1] for s in layers[n_proj:]] == SMALL[kind]["fc"]


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("beta", [0.0, 0.3, "per-sample"])
def test_closed_form_equals_autograd_of_phi(kind, dtype, rtol, beta):
    net = small_net(kind, dtype)
    x, y = small_input(net, dtype=dtype)
    target = one_hot(y, net.n_classes, dtype)
    if beta == "per-sample":
        beta = torch.linspace(-0.5, 0.5, x.shape[0], dtype=dtype)
    start = relax(net, x, net.init_states(5), 4).states  # a non-trivial starting point
    closed = relax(net, x, start, 15, beta, target, field_mode="closed").states
    auto = relax(net, x, start, 15, beta, target, field_mode="autograd").states
    for a, b in zip(closed, auto):
        assert torch.linalg.norm(a - b) <= rtol * torch.linalg.norm(b)
    # the fields themselves, too
    fields = net.fields(x, start, beta, target)
    leaves = [s.detach().requires_grad_(True) for s in start]
    auto_fields = torch.autograd.grad(net.phi(x, leaves, beta, target).sum(), leaves)
    for a, b in zip(fields, auto_fields):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


def test_hopfield_update_is_softmax_retrieval():
    """SPEC.md §3: s_P <- softmax(β_att g_P X_Pᵀ) X_P with keys = values = the block's raw input tokens."""
    net = small_net("nli")
    x, _ = small_input(net)
    states = net.init_states(5, dtype=torch.float64)
    states[1] = torch.rand_like(states[1])
    new = net.step(x, states)
    L = net.seq_len
    xp, xh = x[:, :L], x[:, L:]
    W = [s.weight for s in net.synapses[:4]]
    feedback = (states[1] @ net.synapses[4].weight).view(5, 4, L, net.embed_dim)
    for p, (q, k) in enumerate([(xp, xh), (xh, xp), (xp, xp), (xh, xh)]):
        g = q @ W[p].T + feedback[:, p]
        expected = torch.softmax(0.16 * g @ k.transpose(1, 2), -1) @ k
        torch.testing.assert_close(new[0][:, p], expected)


def test_activations_match_spec_formulas():
    v = torch.linspace(-3, 3, 61, dtype=torch.float64)
    expected = {
        "my_hard_sig": torch.clamp(v / 2, 0, 1),
        "hard_sigmoid": torch.clamp(v, 0, 1),
        "my_sigmoid": 1 / (1 + torch.exp(-4 * (v - 0.5))),
        "sigmoid": 1 / (1 + torch.exp(-v)),
        "tanh": (torch.exp(v) - torch.exp(-v)) / (torch.exp(v) + torch.exp(-v)),
    }
    assert set(expected) == set(ACTIVATIONS)
    for name, want in expected.items():
        torch.testing.assert_close(ACTIVATIONS[name](v), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_padding_mask_changes_nothing_without_padding(kind):
    plain, masked = small_net(kind), small_net(kind, mask_padding=True)
    x, _ = small_input(net := plain)
    a = relax(plain, x, net.init_states(5), 10).states
    b = relax(masked, x, net.init_states(5), 10).states
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


def test_padding_mask_ignores_zero_tokens():
    net = small_net("sentiment", mask_padding=True)
    x, _ = small_input(net)
    x[:, 2:] = 0.0  # the last two tokens are padding
    new = net.step(x, net.init_states(5))
    # retrieval is a convex combination of the two real tokens only: with all-zero states the query is x W_0ᵀ
    g = x @ net.synapses[0].weight.T
    real = x[:, :2]
    p = torch.softmax(net.attn_scale * g @ real.transpose(1, 2), -1)  # (B, L, 2)
    torch.testing.assert_close(new[0][:, 0], p @ real)
    unmasked = small_net("sentiment").step(x, net.init_states(5))
    assert not torch.allclose(unmasked[0], new[0])


def test_determinism_under_seed():
    a, b = small_net("nli", seed=3), small_net("nli", seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x, _ = small_input(a)
    for s, t in zip(relax(a, x, a.init_states(5), 7).states, relax(b, x, b.init_states(5), 7).states):
        assert torch.equal(s, t)


def test_tolerance_stops_early_and_reports_steps():
    net = small_net("sentiment")
    x, _ = small_input(net)
    res = relax(net, x, net.init_states(5), 500, tol=1e-9)
    assert res.steps < 500 and bool((res.max_change < 1e-9).all())
    short = relax(net, x, net.init_states(5), 2)
    assert short.steps == 2 and bool((short.max_change > 1e-6).any())


def test_the_earlier_scripting_api_still_imports():
    """Scripts written against the earlier README: `build_model` and `seqep.checkpoint` still work."""
    from seqep.checkpoint import load_weights
    from seqep.network import build_model
    from seqep.training.checkpoint import load_weights as moved

    assert load_weights is moved
    net = build_model("nli", 3, 5, [4, 3])
    assert isinstance(net, HopfieldEPNet) and net.attn_scale == pytest.approx(0.16)
