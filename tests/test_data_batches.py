"""iterate_batches: per-batch vector lookup, order, shuffling, drop_last, dtype."""

import pytest
import torch

from seqep.data import TokenSplit, iterate_batches


def _split(n=10, s=6, v=7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, v, (n, s), generator=g, dtype=torch.int32)
    return TokenSplit(ids=ids, labels=torch.arange(n, dtype=torch.int64)), torch.randn(v, 3, generator=g)


def test_unshuffled_batches_look_up_vectors():
    split, vectors = _split()
    batches = list(iterate_batches(split, vectors, 4, shuffle=False))
    assert [x.shape for x, _ in batches] == [(4, 6, 3), (4, 6, 3), (2, 6, 3)]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, torch.arange(10))
    assert torch.equal(x, vectors[split.ids.long()])
    assert y.dtype == torch.int64 and x.dtype == torch.float32


def test_shuffle_is_a_seeded_permutation():
    split, vectors = _split()
    run = [torch.cat([y for _, y in iterate_batches(split, vectors, 3, shuffle=True,
                                                    generator=torch.Generator().manual_seed(5))]) for _ in range(2)]
    assert torch.equal(run[0], run[1])
    assert sorted(run[0].tolist()) == list(range(10)) and run[0].tolist() != list(range(10))
    for x, y in iterate_batches(split, vectors, 3, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(x, vectors[split.ids[y].long()])  # rows stay paired with their labels


def test_drop_last_dtype_and_zero_padding_row():
    split, vectors = _split()
    vectors[0] = 0
    batches = list(iterate_batches(split, vectors, 4, shuffle=False, drop_last=True, dtype=torch.float64))
    assert len(batches) == 2 and all(x.dtype == torch.float64 for x, _ in batches)
    x, _ = batches[0]
    assert torch.all(x[split.ids[:4] == 0] == 0)


def test_empty_split_and_bad_batch_size():
    split, vectors = _split(n=0)
    assert list(iterate_batches(split, vectors, 4, shuffle=True)) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(split, vectors, 0, shuffle=False))
