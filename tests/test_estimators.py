"""The EP≈BPTT gradient theorem as a test (SPEC.md §4), on small float64 models with a converged free phase."""

import pytest
import torch
import torch.nn.functional as F

from seqep.errors import SeqepError
from seqep.estimators import BPTT, EP, grads_by_name, mse_loss
from seqep.network import one_hot
from seqep.relax import relax
from seqep.training.builders import build_estimator

from small_models import small_input, small_net

T_FREE, K = 250, 40  # small models settle to ~1e-15 within 250 steps; the nudged/backward phase within ~40


def grads(est, net, x, y):
    est.compute_gradients(net, x, y)
    return grads_by_name(net)


def compare(a: dict, b: dict):
    """Per tensor: (cosine, relative error of a against b)."""
    return {n: (F.cosine_similarity(a[n].flatten(), b[n].flatten(), 0).item(),
                ((a[n] - b[n]).norm() / b[n].norm()).item()) for n in b}


@pytest.fixture(params=["sentiment", "nli"])
def problem(request):
    net = small_net(request.param)
    x, y = small_input(net)
    free = relax(net, x, net.init_states(5), T_FREE)
    assert free.max_change.max() < 1e-10, "free phase must converge for the theorem to apply"
    return net, x, y


def test_symmetric_ep_matches_bptt_from_equilibrium(problem):
    net, x, y = problem
    ep = grads(EP(T_FREE, K, betas=[0.0, 1e-3], variant="symmetric", tol=None), net, x, y)
    bptt = grads(BPTT(T_FREE + K, K, truncate="last_k"), net, x, y)  # T−K = T_FREE steps reach equilibrium
    for name, (cos, rel) in compare(ep, bptt).items():
        assert cos >= 0.999 and rel <= 0.02, (name, cos, rel)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_symmetric_is_closer_to_bptt_than_one_sided(kind):
    # A smooth activation: with a clamp, a unit sitting at its floor moves under +β but not under −β, and the
    # finite-β comparison then measures the kink rather than the O(β) vs O(β²) bias.
    net = small_net(kind, activation="my_sigmoid")
    x, y = small_input(net)
    bptt = grads(BPTT(T_FREE + K, K), net, x, y)
    beta = 0.05
    sym = compare(grads(EP(T_FREE, K, [0.0, beta], "symmetric", tol=None), net, x, y), bptt)
    pos = compare(grads(EP(T_FREE, K, [0.0, beta], "positive", tol=None), net, x, y), bptt)
    neg = compare(grads(EP(T_FREE, K, [0.0, beta], "negative", tol=None), net, x, y), bptt)
    for name in bptt:
        assert sym[name][1] < pos[name][1] and sym[name][1] < neg[name][1], name


def test_one_sided_variants_bracket_symmetric(problem):
    """(positive + negative) / 2 == symmetric exactly (both use the same s⁺, s⁻ phases)."""
    net, x, y = problem
    # the same fixed-length phases, one β for every example (adaptive_beta would rerun kink crossers at a smaller β)
    est = lambda v: grads(EP(T_FREE, K, [0.0, 0.05], v, tol=None, adaptive_beta=False), net, x, y)
    sym, pos, neg = est("symmetric"), est("positive"), est("negative")
    for n in sym:
        torch.testing.assert_close(sym[n], (pos[n] + neg[n]) / 2, rtol=1e-8, atol=1e-12)


def test_random_sign_draws_both_signs():
    net = small_net("sentiment")
    x, y = small_input(net)
    est = EP(T_FREE, K, [0.0, 0.05], "random_sign", generator=torch.Generator().manual_seed(0))
    pos = grads(EP(T_FREE, K, [0.0, 0.05], "positive"), net, x, y)
    neg = grads(EP(T_FREE, K, [0.0, 0.05], "negative"), net, x, y)
    seen = set()
    for _ in range(12):
        out = est.compute_gradients(net, x, y)
        g = grads_by_name(net)
        key = next(iter(out.phases))
        ref = pos if key == "plus" else neg
        for n in g:
            torch.testing.assert_close(g[n], ref[n], rtol=1e-8, atol=1e-12)
        seen.add(key)
    assert seen == {"plus", "minus"}


@pytest.mark.parametrize("variant", ["symmetric", "positive", "negative"])
def test_update_sign_lowers_the_loss(problem, variant):
    """One optimizer step with a tiny learning rate lowers the loss at equilibrium (fails if the sign flips)."""
    net, x, y = problem
    target = one_hot(y, net.n_classes, x.dtype)

    def loss_at_equilibrium():
        with torch.no_grad():
            return mse_loss(net.output(relax(net, x, net.init_states(5), T_FREE).states), target).item()

    before = loss_at_equilibrium()
    EP(T_FREE, K, [0.0, 1e-3], variant).compute_gradients(net, x, y)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    opt.step()
    after = loss_at_equilibrium()
    assert after < before - 1e-6 * before, (before, after)


def test_full_bptt_equals_truncated_when_k_equals_t(problem):
    net, x, y = problem
    full = grads(BPTT(30, 5, truncate="full"), net, x, y)
    trunc = grads(BPTT(30, 30, truncate="last_k"), net, x, y)
    for n in full:
        torch.testing.assert_close(full[n], trunc[n], rtol=1e-12, atol=1e-15)


def test_bptt_gradient_matches_finite_differences():
    """BPTT through the closed-form dynamics is the true gradient of the loss after T steps."""
    net = small_net("sentiment")
    x, y = small_input(net)
    T = 6
    target = one_hot(y, net.n_classes, x.dtype)
    g = grads(BPTT(T, T, truncate="full"), net, x, y)["synapses.1.bias"]

    def loss():
        with torch.no_grad():
            return mse_loss(net.output(relax(net, x, net.init_states(5), T).states), target)

    bias, eps = net.synapses[1].bias, 1e-6
    for i in range(3):
        with torch.no_grad():
            bias[i] += eps
            up = loss()
            bias[i] -= 2 * eps
            down = loss()
            bias[i] += eps
        assert abs((up - down).item() / (2 * eps) - g[i].item()) < 1e-7


@pytest.mark.parametrize("updates", ["synchronous", "alternating"])
@pytest.mark.parametrize("field_mode", ["closed", "autograd"])
def test_estimators_agree_across_field_modes(field_mode, updates):
    """Fixed steps (`tol=None`): settling would stop the autograd path's separate ±β phases on their own tests,
    the closed path's paired ones together (within `tol·β` of each other, not equal)."""
    net = small_net("nli")
    x, y = small_input(net)
    ref = grads(EP(30, 10, [0.0, 0.1], tol=None, updates=updates), net, x, y)
    got = grads(EP(30, 10, [0.0, 0.1], field_mode=field_mode, tol=None, updates=updates), net, x, y)
    ref_b = grads(BPTT(30, 10), net, x, y)
    got_b = grads(BPTT(30, 10, field_mode=field_mode), net, x, y)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got_b[n], ref_b[n], rtol=1e-9, atol=1e-12)


def test_build_estimator_from_config_and_bad_values():
    est = build_estimator({"_target_": "seqep.estimators.EP", "T": 20, "K": 8, "variant": "positive"})
    assert isinstance(est, EP) and est.variant == "positive" and est.beta == 0.02  # betas from EP's signature
    assert est.describe() == "EP positive T=20 K=8 betas=[0.0, 0.02]"
    full = build_estimator({"_target_": "seqep.estimators.BPTT", "T": 20, "K": 8, "truncate": "full"})
    assert isinstance(full, BPTT) and full.describe() == "BPTT full T=20 K=8"
    with pytest.raises(SeqepError, match=r"^algorithm.variant='cep' is not allowed; choose one of: symmetric, "):
        build_estimator({"_target_": "seqep.estimators.EP", "variant": "cep"})
    with pytest.raises(SeqepError, match=r"^algorithm.truncate='half' is not allowed"):
        build_estimator({"_target_": "seqep.estimators.BPTT", "truncate": "half"})
    with pytest.raises(SeqepError, match="non-zero"):
        build_estimator({"_target_": "seqep.estimators.EP", "betas": [0.0, 0.0]})
    with pytest.raises(SeqepError, match=r"^algorithm.TT is not a key of seqep.estimators.EP"):
        build_estimator({"_target_": "seqep.estimators.EP", "TT": 3})


def test_a_subclass_describes_itself():
    class Halved(EP):
        pass

    assert Halved(T=5, K=2).describe() == "Halved symmetric T=5 K=2 betas=[0.0, 0.02]"


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
@pytest.mark.parametrize("make", [lambda path: EP(6, 3, betas=[0.0, 0.05], field_mode=path),
                                  lambda path: BPTT(6, 3, field_mode=path)], ids=["ep", "bptt"])
@pytest.mark.parametrize("path", ["closed", "autograd"])
def test_gradients_are_laid_out_as_their_parameters(kind, make, path):
    # Autograd returns the projection weights' gradients with transposed strides. CUDA's fused Adam/AdamW (the
    # default optimizer) refuse that ("must have same dtype, device, and layout", seen on an H200; pytorch#106951),
    # and torch 2.13's CPU kernel silently reads the memory as if laid out like the parameter: it stepped every
    # BPTT and autograd-path run's projection weight along the transposed gradient until session 13.
    net = small_net(kind, dtype=torch.float32)
    x, y = small_input(net, dtype=torch.float32)
    make(path).compute_gradients(net, x, y)
    bad = {n: (p.stride(), p.grad.stride()) for n, p in net.named_parameters() if p.grad.stride() != p.stride()}
    plain = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
    for q, p in zip(plain, net.parameters()):
        q.grad = p.grad.clone()
    torch.optim.Adam(net.parameters(), lr=0.1, fused=True).step()
    torch.optim.Adam(plain, lr=0.1, foreach=False).step()  # the per-tensor reference honours any strides
    for (name, p), q in zip(net.named_parameters(), plain):
        assert torch.allclose(p, q, atol=1e-6), (name, bad)
    assert not bad, bad
