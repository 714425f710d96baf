"""Word-vector readers: word2vec binary (with/without trailing newlines, gzipped), word2vec text, GloVe text,
gensim .kv and the installed GloVe 6B 50-d package; restricted to a vocabulary; errors name file and line."""

import gzip

import numpy as np
import pytest
from fixtures.data_files import WORDS, fixture_vectors, write_kv, write_text_vectors, write_word2vec_binary
from gensim.models import KeyedVectors

from seqep.data import DataError
from seqep.data.vectors import (
    GLOVE_PACKAGE,
    glove_package_files,
    glove_package_words,
    load_vectors,
    resolve_vectors_path,
)

MATRIX = fixture_vectors()
WANTED = {"movie", "great", ".", "zzz-not-there", "the"}


def _as_dict(vecs):
    return {w: vecs.matrix[i] for i, w in enumerate(vecs.words)}


def _check(vecs):
    got = _as_dict(vecs)
    assert set(got) == {"movie", "great", ".", "the"}
    for word, vec in got.items():
        np.testing.assert_array_equal(vec, MATRIX[WORDS.index(word)])
    assert vecs.matrix.dtype == np.float32


@pytest.mark.parametrize("name", ["v.bin", "v.bin.gz"])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_word2vec_binary(tmp_path, name, trailing_newline):
    path = write_word2vec_binary(tmp_path / name, WORDS, MATRIX, trailing_newline=trailing_newline)
    _check(load_vectors(str(path), WANTED, root=tmp_path))
    # gensim reads the same file to the same numbers
    kv = KeyedVectors.load_word2vec_format(str(path), binary=True)
    np.testing.assert_array_equal(kv["movie"], MATRIX[WORDS.index("movie")])


def test_word2vec_binary_streams_across_chunks(tmp_path, monkeypatch):
    import seqep.data.vectors as vectors

    monkeypatch.setattr(vectors, "_CHUNK", 7)  # forces entries to straddle chunk boundaries
    path = write_word2vec_binary(tmp_path / "v.bin", WORDS, MATRIX, trailing_newline=False)
    vecs = load_vectors(str(path), set(WORDS), root=tmp_path)
    assert vecs.words == WORDS
    np.testing.assert_array_equal(vecs.matrix, MATRIX)


def test_word2vec_binary_bytes_that_look_like_separators(tmp_path):
    # vectors whose raw bytes are spaces and newlines must not be taken for separators
    matrix = np.frombuffer(b" \n  \n\n  " * 2, dtype="<f4").reshape(2, 2).copy()
    path = write_word2vec_binary(tmp_path / "v.bin", ["x", "y"], matrix, trailing_newline=False)
    vecs = load_vectors(str(path), {"x", "y"}, root=tmp_path)
    assert vecs.words == ["x", "y"]
    np.testing.assert_array_equal(vecs.matrix.view(np.uint32), matrix.view(np.uint32))


@pytest.mark.parametrize("name,header,fmt", [
    ("w2v.txt", True, "auto"), ("glove.6B.4d.txt", False, "auto"), ("glove.txt.gz", False, "auto"),
    ("w2v.txt", True, "word2vec_text"), ("glove.txt", False, "glove_text"),
])
def test_text_formats(tmp_path, name, header, fmt):
    path = write_text_vectors(tmp_path / name, WORDS, MATRIX, header=header)
    _check(load_vectors(str(path), WANTED, root=tmp_path, fmt=fmt))


def test_gensim_kv(tmp_path):
    path = write_kv(tmp_path / "vectors.kv", WORDS, MATRIX)
    _check(load_vectors(str(path), WANTED, root=tmp_path))


def test_glove_package():
    vecs = load_vectors(GLOVE_PACKAGE, {"the", "movie", "qqqqzzzz"}, root=None)
    got = _as_dict(vecs)
    assert set(got) == {"the", "movie"}
    npy, _ = glove_package_files()
    full = np.load(npy, mmap_mode="r")
    words = glove_package_words()
    assert words[0] == "the" and len(words) == full.shape[0] == 400_000
    np.testing.assert_array_equal(got["movie"], full[words.index("movie")])
    assert vecs.matrix.shape == (2, 50)


def test_first_duplicate_wins(tmp_path):
    path = write_text_vectors(tmp_path / "g.txt", ["a", "a", "b"], MATRIX[:3], header=False)
    got = _as_dict(load_vectors(str(path), {"a", "b"}, root=tmp_path))
    np.testing.assert_array_equal(got["a"], MATRIX[0])


def test_relative_path_searched_under_root_and_gz_toggled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    gz = write_word2vec_binary(root / "GoogleNews-vectors-negative300.bin.gz", WORDS, MATRIX)
    assert resolve_vectors_path("GoogleNews-vectors-negative300.bin", root) == gz
    assert resolve_vectors_path("GoogleNews-vectors-negative300.bin.gz", root).is_file()


def test_missing_vectors_file_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        load_vectors("GoogleNews-vectors-negative300.bin.gz", {"a"}, root=tmp_path)
    msg = str(err.value)
    assert "GoogleNews-vectors-negative300.bin.gz" in msg and "GoogleNews-vectors-negative300.bin," in msg
    assert str(tmp_path) in msg and "dataset.vectors=glove-6b-50d" in msg and "\n" not in msg


def test_malformed_text_line_names_file_and_line(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2 3\nmovie 1 2\ngreat 1 2 3\n")
    with pytest.raises(DataError, match=r"glove\.txt:2: malformed vector line"):
        load_vectors(str(path), {"movie"}, root=tmp_path)
    path.write_text("the 1 2 3\nmovie 1 x 3\n")
    with pytest.raises(DataError, match=r"glove\.txt:2: malformed"):
        load_vectors(str(path), {"movie"}, root=tmp_path)


def test_truncated_and_bad_header_binary(tmp_path):
    path = write_word2vec_binary(tmp_path / "v.bin", WORDS, MATRIX)
    path.write_bytes(path.read_bytes()[:-10])  # cuts into the last vector
    with pytest.raises(DataError, match=f"ends at entry {len(WORDS)} of {len(WORDS)}"):
        load_vectors(str(path), {"the"}, root=tmp_path)
    (tmp_path / "h.bin.gz").write_bytes(gzip.compress(b"not a header\n"))
    with pytest.raises(DataError, match=r"h\.bin\.gz:1: malformed word2vec header"):
        load_vectors(str(tmp_path / "h.bin.gz"), {"the"}, root=tmp_path)


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(DataError, match="vectors_format='fasttext'"):
        load_vectors("x.vec", {"a"}, root=tmp_path, fmt="fasttext")


def test_bad_headers_and_layouts_are_one_line_errors(tmp_path):
    """Each case names the file and what is wrong (before: 0-d vectors, NaN/2e38 values, silent short files)."""
    words, matrix = WORDS[:6], fixture_vectors(WORDS[:6])
    one_number = tmp_path / "one_number.txt"
    one_number.write_text("6\n" + "\n".join(f"{w} 1.0 2.0" for w in words) + "\n")
    with pytest.raises(DataError, match=r"one_number.txt:1: malformed word2vec header '6'"):
        load_vectors(str(one_number), words, root=tmp_path)
    words_only = tmp_path / "words_only.txt"
    words_only.write_text("\n".join(words) + "\n")
    with pytest.raises(DataError, match=r"words_only.txt:1: 'the' has no numbers after the word"):
        load_vectors(str(words_only), words, root=tmp_path)
    short = write_text_vectors(tmp_path / "short.txt", words, matrix, header=True)
    short.write_text(short.read_text().replace("6 4", "9 4", 1))
    with pytest.raises(DataError, match=r"short.txt: the header promises 9 words but the file holds 6"):
        load_vectors(str(short), words, root=tmp_path)
    wrong_dim = write_word2vec_binary(tmp_path / "wrong_dim.bin", words, matrix)
    data = wrong_dim.read_bytes()
    wrong_dim.write_bytes(data.replace(b"6 4\n", b"6 3\n", 1))
    with pytest.raises(DataError, match=r"wrong_dim.bin: (the header promises 6 words of 3 floats|the vector of)"):
        load_vectors(str(wrong_dim), words, root=tmp_path)


def test_a_broken_preparation_is_never_cached(tmp_path):
    """A vectors file that fails validation leaves no cache behind: fixing the file is enough."""
    from fixtures.data_files import snippets_text

    from seqep.data import load_dataset

    (tmp_path / "s.txt").write_bytes(snippets_text(40))
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("3\n" + "\n".join(f"{w} 1.0" for w in WORDS) + "\n")  # a one-number header
    cfg = {"_target_": "seqep.data.RtSnippets", "root": str(tmp_path), "vectors": str(vectors), "seq_len": 5,
           "txt": str(tmp_path / "s.txt"), "verify_sha256": False}
    with pytest.raises(DataError, match="malformed word2vec header"):
        load_dataset(cfg)
    assert not list(tmp_path.glob("cache/*"))
    write_text_vectors(vectors, WORDS, fixture_vectors(), header=False)  # fixed: prepared and cached now
    assert load_dataset(cfg).embed_dim == 4 and list(tmp_path.glob("cache/*"))
