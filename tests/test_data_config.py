"""Dataset options: each conf/dataset/*.yaml builds its class, keys come from the class's fields, typos fail."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object

import seqep.config  # noqa: F401  (registers the schemas)
from seqep.data import DataError, Dataset, SynthSentiment, load_dataset
from seqep.errors import SeqepError

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides)).dataset


@pytest.mark.parametrize("name", DATASETS)
def test_each_yaml_names_its_class_and_repeats_no_default(name):
    text = yaml.safe_load((CONF / "dataset" / f"{name}.yaml").read_text())
    assert text["defaults"] == [f"{name}_schema", "_self_"]
    assert set(text) == {"defaults", "_target_"}  # every default lives in the class
    cls = get_object(text["_target_"])
    assert issubclass(cls, Dataset) and cls().name == name
    cfg = _compose(f"dataset={name}")
    assert {f.name for f in dataclasses.fields(cls)} | {"_target_"} == set(cfg)
    assert cls.kind in ("sentiment", "nli") and cls.n_classes in (2, 3)


def test_paper_presets():
    assert (_compose("dataset=imdb").seq_len, _compose("dataset=snli").seq_len) == (600, 25)
    assert _compose("dataset=imdb").vectors == "GoogleNews-vectors-negative300.bin.gz"
    default = _compose()
    assert (default.name, default.seq_len, default.vectors) == ("rt_snippets", 48, "glove-6b-50d")


@pytest.mark.parametrize("override", ["dataset.seq_lenn=3", "dataset.seq_len=abc",
                                      "dataset.verify_sha256=maybe", "dataset.kind=nli"])
def test_typos_and_wrong_types_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        _compose(override)


def test_root_defaults_to_env_or_data(monkeypatch):
    monkeypatch.delenv("SEQEP_DATA", raising=False)
    assert _compose().root == "data"
    assert SynthSentiment().root == "data"
    monkeypatch.setenv("SEQEP_DATA", "/srv/seqep-data")
    assert _compose().root == "/srv/seqep-data"
    assert SynthSentiment().root == "/srv/seqep-data"


def test_load_dataset_accepts_composed_node_object_and_dict(tmp_path):
    composed = load_dataset(_compose("dataset=synth_sentiment", "dataset.n_train=10", f"dataset.root={tmp_path}"))
    from_object = SynthSentiment(n_train=10).load()
    from_dict = load_dataset({"_target_": "seqep.data.SynthSentiment", "n_train": 10})
    assert len(composed.train) == len(from_object.train) == len(from_dict.train) == 10
    assert (composed.train.ids == from_dict.train.ids).all()


def test_values_no_loader_can_honour():
    with pytest.raises(SeqepError, match="dataset.seq_len=0 must be >= 1"):
        load_dataset({"_target_": "seqep.data.SynthSentiment", "seq_len": 0})
    with pytest.raises(SeqepError, match=r"fractions \[0.5, 0.5\]"):
        load_dataset({"_target_": "seqep.data.RtSnippets", "val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(DataError, match="seq_len=0 must be >= 1"):
        SynthSentiment(seq_len=0)
    with pytest.raises(SeqepError, match="dataset.n_classes"):
        load_dataset({"_target_": "seqep.data.SynthNli", "n_classes": 5})
