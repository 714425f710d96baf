"""SNLI: jsonl, txt and the old code's CSV, folder and zip; label map, '-' rows, premise/hypothesis layout, errors."""

import pytest
import torch
from fixtures.data_files import WORDS, fixture_vectors, write_snli_folder, write_snli_zip, write_text_vectors

from seqep.data import DataError, load_dataset

L = 6


def _cfg(root, **kw):
    vectors = root / "glove.txt"
    if not vectors.exists():
        write_text_vectors(vectors, WORDS, fixture_vectors(), header=False)
    return {"_target_": "seqep.data.Snli", "root": str(root), "vectors": str(vectors), "seq_len": L, **kw}


def _rows(b, split):
    s = b.split(split)
    text = lambda ids: " ".join(b.words[i] for i in ids if i)  # noqa: E731
    return [(text(row[:L]), text(row[L:]), y) for row, y in zip(s.ids.tolist(), s.labels.tolist())]


EXPECTED = {
    "train": [
        ("a man in a hat runs", "the man is fun .", 0),  # neutral 0; premise cut to L
        ("a dog sleeps .", "the dog runs .", 1),  # contradiction 1
        ("two people a man and a", "people are outside .", 2),  # entailment 2; commas dropped
        ("a woman runs outside !", "a woman runs ?", 2),  # the "-" row before it is dropped
    ],
    "val": [("a dog runs .", "a dog sleeps .", 1), ("a man .", "a man in a hat .", 0)],  # official dev
    "test": [("two people are in a hat", "people are in a hat .", 2)],
}


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "csv"])
def test_each_format_reads_the_same_rows(tmp_path, fmt):
    write_snli_folder(tmp_path, fmt)
    b = load_dataset(_cfg(tmp_path))
    assert (b.kind, b.n_classes, b.seq_len, b.train.ids.shape) == ("nli", 3, L, (4, 2 * L))
    for split, rows in EXPECTED.items():
        assert _rows(b, split) == rows
    assert b.info["dropped_no_label_train"] == 1 and b.info["dropped_no_label_test"] == 1
    assert b.info["source_files"]["val"] == f"snli_1.0_dev.{fmt}"


def test_premise_then_hypothesis_each_padded_to_L(tmp_path):
    write_snli_folder(tmp_path, "jsonl")
    b = load_dataset(_cfg(tmp_path))
    w = {word: b.words.index(word) for word in ("a", "dog", "sleeps", ".", "the", "runs")}
    assert b.train.ids[1].tolist() == [w["a"], w["dog"], w["sleeps"], w["."], 0, 0,
                                       w["the"], w["dog"], w["runs"], w["."], 0, 0]


def test_zip_and_format_choice(tmp_path):
    write_snli_folder(tmp_path / "other", "csv")
    archive = write_snli_zip(tmp_path)  # jsonl and txt inside snli_1.0/, plus __MACOSX junk
    from_zip = load_dataset(_cfg(tmp_path, path=str(archive)))
    assert from_zip.info["source_files"]["train"] == "snli_1.0/snli_1.0_train.jsonl"
    as_txt = load_dataset(_cfg(tmp_path, path=str(archive), format="txt"))
    from_csv = load_dataset(_cfg(tmp_path, path=str(tmp_path / "other")))  # parent of snli_1.0/
    for b in (from_zip, as_txt, from_csv):
        for split, rows in EXPECTED.items():
            assert _rows(b, split) == rows
    assert load_dataset(_cfg(tmp_path)).info["source"] == str(tmp_path / "snli_1.0.zip")  # found under the root


def test_old_code_csv_folder_without_dev(tmp_path):
    folder = tmp_path / "snli_data"
    folder.mkdir()
    for split in ("train", "test"):
        src = write_snli_folder(tmp_path / "tmp", "csv") / f"snli_1.0_{split}.csv"
        (folder / src.name).write_text(src.read_text())
    with pytest.raises(DataError, match="SNLI dev split not found: expected snli_1.0_dev.jsonl, snli_1.0_dev.txt, "
                                        "snli_1.0_dev.csv; .*dataset.val_fraction=0.02"):
        load_dataset(_cfg(tmp_path))
    b = load_dataset(_cfg(tmp_path, val_fraction=0.5))
    assert b.info["split_sizes"] == {"train": 2, "val": 2, "test": 1}
    assert sorted(_rows(b, "train") + _rows(b, "val")) == sorted(EXPECTED["train"])


def test_malformed_lines_name_file_and_line(tmp_path):
    folder = write_snli_folder(tmp_path, "jsonl")
    path = folder / "snli_1.0_train.jsonl"
    path.write_text(path.read_text() + '{"gold_label": "neutral", "sentence1": "A man."\n')
    with pytest.raises(DataError, match=r"snli_1.0_train.jsonl:6: malformed SNLI jsonl line"):
        load_dataset(_cfg(tmp_path))
    path.write_text('{"gold_label": "maybe", "sentence1": "A man.", "sentence2": "A dog."}\n')
    with pytest.raises(DataError, match=r"snli_1.0_train.jsonl:1: unknown gold_label 'maybe'"):
        load_dataset(_cfg(tmp_path))


def test_malformed_txt_and_csv(tmp_path):
    folder = write_snli_folder(tmp_path, "txt")
    path = folder / "snli_1.0_dev.txt"
    path.write_text(path.read_text() + "neutral\tonly two\n")
    with pytest.raises(DataError, match=r"snli_1.0_dev.txt:4: 2 tab-separated fields, the header has 14"):
        load_dataset(_cfg(tmp_path))
    for split in ("train", "test"):
        (folder / f"snli_1.0_{split}.csv").write_text("label,premise,hypothesis\nneutral,a,b\n")
    with pytest.raises(DataError, match=r"snli_1.0_train.csv:1: header .* lacks one of gold_label"):
        load_dataset(_cfg(tmp_path, format="csv", val_fraction=0.5))


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(tmp_path))
    msg = str(err.value)
    assert "SNLI data not found: expected snli_1.0/, snli_1.0.zip, snli_data/" in msg
    assert str(tmp_path / "snli_1.0.zip") in msg and "nlp.stanford.edu/projects/snli" in msg
    folder = write_snli_folder(tmp_path, "jsonl")
    (folder / "snli_1.0_test.jsonl").write_text('{"gold_label": "-", "sentence1": "A.", "sentence2": "B."}\n')
    with pytest.raises(DataError, match="the test split is empty"):
        load_dataset(_cfg(tmp_path))


def test_cached_and_identical(tmp_path):
    write_snli_folder(tmp_path, "jsonl")
    first, second = load_dataset(_cfg(tmp_path)), load_dataset(_cfg(tmp_path))
    assert second.info["from_cache"] and torch.equal(first.train.ids, second.train.ids)
    assert second.info["dropped_no_label_train"] == 1
