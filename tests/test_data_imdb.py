"""IMDB: the aclImdb folder, its tar.gz and keras' imdb.npz; cleaning, truncation, padding, splits, errors."""

import shutil

import pytest
import torch
from fixtures.data_files import (
    WORDS,
    fixture_vectors,
    write_imdb_folder,
    write_imdb_tar,
    write_keras_imdb,
    write_word2vec_binary,
)

from seqep.data import DataError, load_dataset


def _cfg(root, **kw):
    vectors = root / "GoogleNews-vectors-negative300.bin.gz"
    if not vectors.exists():
        write_word2vec_binary(vectors, WORDS, fixture_vectors())
    return {"_target_": "seqep.data.Imdb", "root": str(root), "vectors": vectors.name, "seq_len": 6,
            "val_fraction": 0.34, **kw}


def _rows(b, split):
    s = b.split(split)
    return [(" ".join(b.words[i] for i in row if i), y) for row, y in zip(s.ids.tolist(), s.labels.tolist())]


def test_folder_cleaning_labels_and_splits(tmp_path):
    write_imdb_folder(tmp_path)  # found under the data root without dataset.path
    b = load_dataset(_cfg(tmp_path))
    assert b.info["split_sizes"] == {"train": 4, "val": 2, "test": 3}  # int(0.34 * 6) = 2 carved from train
    assert (b.kind, b.n_classes, b.embed_dim, b.train.ids.shape) == ("sentiment", 2, 4, (4, 6))
    assert sorted(_rows(b, "train") + _rows(b, "val")) == sorted([
        ("i loved it ! great film", 1),  # <br /><br /> removed, cut to L=6 (the final "." goes)
        ("great movie and great plot .", 1),  # [SPOILER] removed
        ("fun fun fun .", 1),
        ("i hated , boring .", 0),  # "it.<br />Bad" -> "it.bad" (as in the paper): OOV, dropped
        ("a bad movie , bad !", 0),  # "xyzzy" OOV, dropped
        ("boring plot .", 0),
    ])
    # test = the official test split, neg files by id then pos; unsup/, *.feat, urls_* ignored
    assert _rows(b, "test") == [("bad .", 0), (".", 0), ("great great great great great great", 1)]
    assert b.info["truncated_rate"] == pytest.approx(2 / 9, abs=1e-5)
    assert b.info["source"] == str(tmp_path / "aclImdb")


def test_truncation_and_zero_padding(tmp_path):
    write_imdb_folder(tmp_path)
    b = load_dataset(_cfg(tmp_path))
    great, bad, dot = (b.words.index(w) for w in ("great", "bad", "."))
    assert b.test.ids[2].tolist() == [great] * 6  # 11 tokens cut to 6
    assert b.test.ids[0].tolist() == [bad, dot, 0, 0, 0, 0]  # right-padded with the zero vector's id
    assert torch.all(b.vectors[0] == 0)


def test_tar_gz_gives_the_same_arrays_as_the_folder(tmp_path):
    folder = write_imdb_folder(tmp_path / "unpacked")
    archive = write_imdb_tar(tmp_path, folder)
    from_tar = load_dataset(_cfg(tmp_path, path=str(archive)))
    from_folder = load_dataset(_cfg(tmp_path, path=str(tmp_path / "unpacked")))  # the parent of aclImdb/ works too
    assert from_tar.info["cache_path"] != from_folder.info["cache_path"]
    for s in ("train", "val", "test"):
        assert torch.equal(from_tar.split(s).ids, from_folder.split(s).ids)
        assert torch.equal(from_tar.split(s).labels, from_folder.split(s).labels)


def test_keras_npz(tmp_path):
    npz, _ = write_keras_imdb(tmp_path)
    b = load_dataset(_cfg(tmp_path, path=str(npz), val_fraction=0.25))
    assert b.info["split_sizes"] == {"train": 3, "val": 1, "test": 2}
    assert sorted(_rows(b, "train") + _rows(b, "val")) == sorted([
        ("the movie great i loved it", 1), ("bad bad movie", 0), ("great", 1), ("bad", 0),  # "br", "qwerty": OOV
    ])
    assert _rows(b, "test") == [("great movie", 1), ("bad movie", 0)]


def test_keras_npz_without_word_index(tmp_path):
    npz, _ = write_keras_imdb(tmp_path)
    (tmp_path / "imdb_word_index.json").unlink()
    with pytest.raises(DataError, match="keras IMDB word index not found: expected imdb_word_index.json"):
        load_dataset(_cfg(tmp_path, path=str(npz)))


def test_missing_data_names_files_paths_and_source(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(tmp_path))
    msg = str(err.value)
    assert "expected aclImdb/, aclImdb_v1.tar.gz, imdb.npz" in msg
    assert str(tmp_path / "aclImdb_v1.tar.gz") in msg and str(tmp_path / "imdb" / "imdb.npz") in msg
    assert "ai.stanford.edu/~amaas/data/sentiment" in msg and "dataset.path=" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"IMDB data \(dataset.path\) not found: expected /no/such/aclImdb"):
        load_dataset(_cfg(tmp_path, path="/no/such/aclImdb"))


def test_empty_split_says_which(tmp_path):
    folder = write_imdb_folder(tmp_path)
    shutil.rmtree(folder / "test")
    with pytest.raises(DataError, match="no reviews found for the test split"):
        load_dataset(_cfg(tmp_path))


def test_cache_invalidated_when_a_review_changes(tmp_path):
    folder = write_imdb_folder(tmp_path)
    first = load_dataset(_cfg(tmp_path))
    assert load_dataset(_cfg(tmp_path)).info["from_cache"]
    (folder / "test" / "neg" / "0_2.txt").write_text("Great.", encoding="utf-8")
    again = load_dataset(_cfg(tmp_path))
    assert not again.info["from_cache"] and again.info["cache_path"] != first.info["cache_path"]
    assert _rows(again, "test")[0] == ("great .", 0)
