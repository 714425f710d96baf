"""Checkpoints: atomic writes, weights_only loads, old-code imports, clear errors, RNG round trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seqep.errors import SeqepError
from seqep.network import HopfieldEPNet
from seqep.training import checkpoint as ckpt


def tiny(fc=(16, 2)):
    return HopfieldEPNet(kind="sentiment", seq_len=6, embed_dim=8, fc=list(fc))


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    net = tiny()
    ckpt.save_checkpoint(path, {"model_state_dict": net.state_dict(), "epoch": 1})
    before = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o666 & ~ckpt._umask()  # not mkstemp's 0600

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the process dies after a partial write
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"model_state_dict": tiny().state_dict(), "epoch": 2})
    assert path.read_bytes() == before
    assert ckpt.read_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind


def test_leftover_temp_file_does_not_matter(tmp_path):
    """A hard kill mid-write leaves a temp file; the checkpoint itself is still the old one."""
    path = tmp_path / "best.pt"
    ckpt.save_checkpoint(path, {"epoch": 3, "model_state_dict": tiny().state_dict()})
    (tmp_path / ".best.pt.abc.tmp").write_bytes(b"garbage")
    assert ckpt.read_checkpoint(path)["epoch"] == 3


def test_our_checkpoint_loads_with_weights_only(tmp_path):
    net = tiny()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    gen = torch.Generator().manual_seed(3)
    state = ckpt.training_state(model=net, optimizer=opt, scheduler=sched, epoch=4, best_val_acc=0.7,
                                best_epoch=3, generators={"data": gen}, config={"seed": 0, "model": {"fc": [16, 2]}})
    path = ckpt.save_checkpoint(tmp_path / "last.pt", state)
    loaded = torch.load(path, weights_only=True)  # the file holds only tensors and primitives
    assert loaded["epoch"] == 4 and loaded["best"] == {"val_acc": 0.7, "epoch": 3}
    assert loaded["config"]["model"]["fc"] == [16, 2]
    assert set(loaded["model_state_dict"]) == {"synapses.0.weight", "synapses.1.weight", "synapses.1.bias",
                                               "synapses.2.weight", "synapses.2.bias"}
    other = tiny()
    meta = ckpt.load_weights(other, path)
    assert meta["kind"] == "seqep" and meta["epoch"] == 4
    for k, v in net.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_rng_round_trip():
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = ckpt.capture_rng({"data": gen})
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    ckpt.restore_rng(state, {"data": gen})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])


def _old_code_checkpoint(net, path: Path) -> None:
    """The dict the old code saved as checkpoint.tar (numpy floats in its accuracy lists)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    torch.save({"model_state_dict": net.state_dict(), "opt": opt.state_dict(),
                "train_acc": [51.0, np.float64(63.5)], "test_acc": [50.0, np.float64(61.0)],
                "best": np.float64(61.0), "epoch": 2, "scheduler": sched.state_dict()}, path)


def test_import_old_code_checkpoint_tar(tmp_path):
    source = tiny()
    _old_code_checkpoint(source, tmp_path / "checkpoint.tar")
    net = tiny()
    meta = ckpt.load_weights(net, tmp_path / "checkpoint.tar")
    assert meta["kind"] == "old-code checkpoint.tar" and meta["epoch"] == 2
    for k, v in source.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)


def test_import_bare_state_dict(tmp_path):
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    net = tiny()
    assert ckpt.load_weights(net, tmp_path / "weights.pt")["kind"] == "bare state dict"
    assert torch.equal(net.synapses[1].weight, source.synapses[1].weight)


def test_a_run_dir_means_its_best_checkpoint(tmp_path):
    source = tiny()
    ckpt.save_checkpoint(tmp_path / "checkpoints" / "best.pt",
                         {"format": ckpt.FORMAT, "model_state_dict": source.state_dict(), "epoch": 5})
    net = tiny()
    assert ckpt.load_weights(net, tmp_path)["epoch"] == 5
    assert torch.equal(net.synapses[0].weight, source.synapses[0].weight)


def test_shape_mismatch_names_both_architectures(tmp_path):
    _old_code_checkpoint(tiny(fc=(32, 2)), tmp_path / "checkpoint.tar")
    with pytest.raises(SeqepError) as err:
        ckpt.load_weights(tiny(fc=(16, 2)), tmp_path / "checkpoint.tar")
    msg = str(err.value)
    assert "\n" not in msg
    assert "synapses.1.weight is (32, 48) in the file, (16, 48) expected" in msg
    assert "model.fc=[16, 2]" in msg and "model.fc" in msg.split("Set ")[-1]


def test_missing_layers_are_a_mismatch(tmp_path):
    torch.save(tiny(fc=(16, 8, 2)).state_dict(), tmp_path / "deeper.pt")
    with pytest.raises(SeqepError, match="unexpected synapses.3.weight"):
        ckpt.load_weights(tiny(), tmp_path / "deeper.pt")


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", b"PK\x03\x04 broken zip"])
def test_corrupt_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "checkpoint.tar"
    path.write_bytes(content)
    with pytest.raises(SeqepError, match="corrupt or not a PyTorch file") as err:
        ckpt.load_weights(tiny(), path)
    assert "\n" not in str(err.value)


def test_truncated_checkpoint_is_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"model_state_dict": tiny().state_dict()})
    path.write_bytes(path.read_bytes()[: 200])
    with pytest.raises(SeqepError, match="corrupt"):
        ckpt.read_checkpoint(path)


def test_pickled_model_is_refused_with_a_hint(tmp_path):
    torch.save(tiny(), tmp_path / "model.pt")  # the old code's pickled whole model
    with pytest.raises(SeqepError, match=r"pickled Python object .*HopfieldEPNet.*checkpoint\.tar"):
        ckpt.load_weights(tiny(), tmp_path / "model.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SeqepError, match="checkpoint not found"):
        ckpt.load_weights(tiny(), tmp_path / "nope.pt")
    with pytest.raises(SeqepError, match="no checkpoint in"):
        ckpt.load_weights(tiny(), tmp_path)


def test_nan_weights_in_a_file_are_refused(tmp_path):
    state = tiny().state_dict()
    state["synapses.2.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(SeqepError, match="NaN or Inf in synapses.2.bias"):
        ckpt.load_weights(tiny(), tmp_path / "nan.pt")


def _flip_tensor_bytes(path, n=64):
    """Flip n bytes in the middle of the largest member of the zip (tensor data), keeping the zip readable."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:  # local header: 30 bytes + name + extra, then the data
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bit_flipped_tensor_data_is_refused(tmp_path):
    """torch.load does not check the zip's CRCs: 64 flipped bytes of weights loaded silently before."""
    path = ckpt.save_checkpoint(tmp_path / "best.pt", {"format": ckpt.FORMAT, "epoch": 1,
                                                        "model_state_dict": tiny(fc=(64, 2)).state_dict()})
    _flip_tensor_bytes(path)
    with pytest.raises(SeqepError, match=r"best.pt is corrupt: the CRC of .* does not match its data"):
        ckpt.load_weights(tiny(fc=(64, 2)), path)


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    path = tmp_path / "last.pt"
    (tmp_path / ".last.pt.k1ll3d.tmp").write_bytes(b"partial")
    (tmp_path / ".best.pt.other.tmp").write_bytes(b"another file's")
    ckpt.save_checkpoint(path, {"epoch": 1, "model_state_dict": tiny().state_dict()})
    assert not (tmp_path / ".last.pt.k1ll3d.tmp").exists() and (tmp_path / ".best.pt.other.tmp").exists()
