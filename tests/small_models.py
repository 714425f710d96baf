"""Small float64 models and inputs shared by the engine, estimator and GDU tests."""

import torch

from seqep.network import HopfieldEPNet

SMALL = {"sentiment": dict(seq_len=4, embed_dim=6, fc=[10, 3]), "nli": dict(seq_len=3, embed_dim=5, fc=[8, 7, 3])}


def small_net(kind, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return HopfieldEPNet(kind, **{**SMALL[kind], **kw}).to(dtype)


def small_input(net, B=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = net.seq_len * net.n_seg
    x = torch.randn(B, S, net.embed_dim, generator=g, dtype=dtype)
    y = torch.randint(0, net.n_classes, (B,), generator=g)
    return x, y


class CountRows:
    """Counts the rows of every `torch.mm` / `torch.addmm` product with the first dense weight (the big ones)."""

    def __init__(self, monkeypatch, weight):
        self.rows, self.weight = [], weight
        for name in ("mm", "addmm"):
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name)))

    def _wrap(self, product):
        def counted(*args, **kw):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(t is self.weight for t in tensors):
                other = tensors[-1] if tensors[-1] is not self.weight else tensors[-2]
                self.rows.append(other.shape[0] if other.shape[0] != self.weight.shape[1] else other.shape[1])
            return product(*args, **kw)
        return counted
