"""Dataset configs: every conf/dataset/*.yaml composes against its schema, typos fail, load_dataset's inputs."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from seqep.data import DataError, load_dataset, register_dataset_configs
from seqep.data.schema import SCHEMAS, SynthSentimentConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARY = "_data_test_primary"


def _compose(*overrides):
    cs = ConfigStore.instance()
    register_dataset_configs(cs)
    cs.store(name=PRIMARY, node={"defaults": [{"dataset": "rt_snippets"}, "_self_"]})
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(PRIMARY, overrides=list(overrides)).dataset


def test_every_schema_has_a_yaml_that_sets_every_key():
    assert {p.stem for p in (CONF / "dataset").glob("*.yaml")} == set(SCHEMAS)
    for name, schema in SCHEMAS.items():
        text = yaml.safe_load((CONF / "dataset" / f"{name}.yaml").read_text())
        assert text["defaults"] == [f"{name}_schema", "_self_"]
        assert set(text) - {"defaults"} == {f.name for f in dataclasses.fields(schema)}, name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_dataset_composes(name):
    cfg = _compose(f"dataset={name}")
    assert cfg.name == name and cfg.kind in ("sentiment", "nli")
    for key in ("seq_len", "batch_size", "eval_batch_size", "root", "n_classes"):
        assert key in cfg
    assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(
        OmegaConf.structured(SCHEMAS[name]), resolve=True)  # the YAML repeats the schema's defaults


def test_paper_presets():
    assert (_compose("dataset=imdb").seq_len, _compose("dataset=snli").seq_len) == (600, 25)
    assert _compose("dataset=imdb").vectors == "GoogleNews-vectors-negative300.bin.gz"
    default = _compose()
    assert (default.name, default.seq_len, default.vectors) == ("rt_snippets", 48, "glove-6b-50d")


@pytest.mark.parametrize("override", ["dataset.seq_lenn=3", "dataset.seq_len=abc",
                                      "dataset.verify_sha256=maybe"])
def test_typos_and_wrong_types_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        _compose(override)


def test_root_defaults_to_env_or_data(monkeypatch):
    monkeypatch.delenv("SEQEP_DATA", raising=False)
    assert _compose().root == "data"
    monkeypatch.setenv("SEQEP_DATA", "/srv/seqep-data")
    assert _compose().root == "/srv/seqep-data"


def test_load_dataset_accepts_composed_dataclass_and_dict(tmp_path):
    composed = load_dataset(_compose("dataset=synth_sentiment", "dataset.n_train=10", f"dataset.root={tmp_path}"))
    from_dataclass = load_dataset(SynthSentimentConfig(n_train=10))
    from_dict = load_dataset({"name": "synth_sentiment", "n_train": 10})
    assert len(composed.train) == len(from_dataclass.train) == len(from_dict.train) == 10
    assert (composed.train.ids == from_dict.train.ids).all()


def test_unknown_name_and_fixed_class_count():
    with pytest.raises(DataError, match="unknown dataset.name='mnist'; available: rt_snippets, imdb, snli"):
        load_dataset({"name": "mnist"})
    with pytest.raises(DataError, match="dataset.n_classes=5 but synth_nli has n_classes 3"):
        load_dataset({"name": "synth_nli", "n_classes": 5})
    with pytest.raises(DataError, match="dataset.kind=nli but imdb has kind sentiment"):
        load_dataset({"name": "imdb", "kind": "nli"})
    with pytest.raises(DataError, match="seq_len=0 must be >= 1"):
        load_dataset({"name": "synth_sentiment", "seq_len": 0})
    with pytest.raises(DataError, match=r"fractions \[0.5, 0.5\]"):
        load_dataset({"name": "rt_snippets", "val_fraction": 0.5, "test_fraction": 0.5})
