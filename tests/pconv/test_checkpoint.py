"""Model files and training checkpoints: round trips, atomic writes, fingerprints, RNG state."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from aerial_inpainting.pconv import checkpoint as ckpt
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig


def _model(seed: int = 0) -> PConvUNet:
    torch.manual_seed(seed)
    return PConvUNet(UNetConfig(depth=2, base_channels=4, max_channels=8))


def test_model_round_trip_rebuilds_same_network(tmp_path):
    model = _model()
    path = ckpt.save_model(tmp_path / "m.safetensors", model, extra={"note": "x"})
    with safe_open(str(path), framework="pt") as handle:  # a plain safetensors file
        raw = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert raw["format"] == "aerial-inpainting/pconv-unet/2"
    assert json.loads(raw["extra"]) == {"note": "x"}
    assert tensors.keys() == model.state_dict().keys()
    assert json.loads(raw["config"]) == {
        "in_channels": 3,
        "out_channels": 3,
        "depth": 2,
        "base_channels": 4,
        "max_channels": 8,
    }
    loaded = ckpt.load_model(path)
    assert not loaded.training
    assert loaded.extra == {"note": "x"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x, m = torch.rand(1, 3, 8, 8), (torch.rand(1, 1, 8, 8) > 0.3).float()
    assert torch.equal(model.eval()(x, m), loaded(x, m))


def test_model_saved_on_device_loads_anywhere(tmp_path, device):
    """A model on ``device`` is written as CPU tensors, reloads, and predicts the same there."""
    model = _model().to(device).eval()
    path = ckpt.save_model(tmp_path / "m.safetensors", model)
    from safetensors.torch import load_file

    assert all(v.device.type == "cpu" for v in load_file(str(path)).values())
    loaded = ckpt.load_model(path, map_location=device).to(device)
    x = torch.rand(1, 3, 8, 8, device=device)
    m = (torch.rand(1, 1, 8, 8, device=device) > 0.3).float()
    with torch.no_grad():  # the same kernels on the same device: equal (cuDNN: to 1e-6)
        tol = 0.0 if device == "cpu" else 1e-6
        torch.testing.assert_close(loaded(x, m), model(x, m), rtol=0, atol=tol)


def test_load_model_names_the_file_on_bad_input(tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not_a_model\.pt"):
        ckpt.load_model(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt.*not an aerial-inpainting model"):
        ckpt.load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        ckpt.load_model(tmp_path / "missing.pt")


def test_failed_write_leaves_previous_file_and_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    ckpt.atomic_torch_save({"value": 1}, target)
    real_fsync = os.fsync

    def crash(fd):  # the data is written but not yet durable/renamed: simulate a crash here
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        ckpt.atomic_torch_save({"value": 2, "big": torch.zeros(10_000)}, target)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert torch.load(target, weights_only=False) == {"value": 1}


def test_interrupted_write_is_never_visible_under_the_final_name(tmp_path, monkeypatch):
    """While the bytes are being written the final name still holds the old, complete file."""
    target = tmp_path / "ckpt-000000001.pt"
    seen = {}
    real_replace = os.replace

    def spy_replace(src, dst):
        seen["tmp_exists"] = os.path.exists(src)
        seen["final_before"] = os.path.exists(dst)
        seen["listed"] = [p for _, p in ckpt.list_checkpoints(tmp_path)]
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    ckpt.atomic_torch_save({"a": 1}, target)
    assert seen == {"tmp_exists": True, "final_before": False, "listed": []}
    assert ckpt.latest_checkpoint(tmp_path) == target


def test_checkpoint_rotation_and_latest(tmp_path):
    for step in (1, 2, 10, 3):
        ckpt.save_checkpoint(tmp_path, {"step": step, "fingerprint": "f"}, keep=2)
    (tmp_path / ".ckpt-000000099.pt.abc.tmp").write_bytes(b"partial")  # a crashed write
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 10]
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-000000010.pt"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), "f")["step"] == 10
    assert ckpt.clear_checkpoints(tmp_path) == 2
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_checkpoint_with_other_fingerprint_is_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, {"step": 5, "fingerprint": "aaaa"})
    with pytest.raises(ValueError, match=r"fingerprint 'aaaa'.*'bbbb'.*resume: false"):
        ckpt.load_checkpoint(path, expected_fingerprint="bbbb")


def test_fingerprint_is_stable_and_order_independent():
    a = ckpt.config_fingerprint({"x": 1, "y": {"b": 2, "a": 3}})
    assert a == ckpt.config_fingerprint({"y": {"a": 3, "b": 2}, "x": 1})
    assert a != ckpt.config_fingerprint({"x": 2, "y": {"b": 2, "a": 3}})


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = ckpt.capture_rng_state()
    path = ckpt.save_checkpoint(tmp_path, {"step": 1, "fingerprint": "f", "rng": state})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng_state(ckpt.load_checkpoint(path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class _CreatesFile:
    """Pickles to a call of ``open(path, "w")``: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    target = tmp_path / "created_by_the_pickle.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "aerial-inpainting/pconv-unet/1", "payload": _CreatesFile(target)}, evil)
    assert not target.exists()
    with pytest.raises(
        ckpt.UnsafeModelFileError, match=r"evil\.pt.*would run Python code.*convert"
    ):
        ckpt.load_model(evil)
    with pytest.raises(ckpt.UnsafeModelFileError):
        ckpt.load_checkpoint(evil)
    assert not target.exists()


def test_old_model_files_load_with_weights_only_and_a_conversion_hint(tmp_path):
    model = _model(1)
    old = tmp_path / "old.pt"
    torch.save(
        {
            "format": "aerial-inpainting/pconv-unet/1",
            "config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "extra": {"note": "old"},
        },
        old,
    )
    with pytest.warns(FutureWarning, match=r"python -m aerial_inpainting.convert_model .*old\.pt"):
        loaded = ckpt.load_model(old)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    from aerial_inpainting.convert_model import main

    assert main([str(old), str(tmp_path / "new.safetensors")]) == 0
    converted = ckpt.load_model(tmp_path / "new.safetensors")
    assert converted.extra == {"note": "old"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted.state_dict()[key]), key


def test_checkpoints_load_with_weights_only_and_keep_extra_entries(tmp_path):
    """Numpy values are stored as plain numbers/tensors; floats, strings, nested dicts and
    tensors added by the training loop (EMA weights, elapsed time) come back unchanged."""
    ema = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {
        "step": 3,
        "fingerprint": "f",
        "rng": ckpt.capture_rng_state(),
        "history": [{"step": 1, "loss": np.float32(0.5)}],
        "elapsed_seconds": 12.5,
        "ema": ema,
        "note": "x",
        "array": np.arange(4, dtype=np.int16),
    }
    path = ckpt.save_checkpoint(tmp_path, state)
    raw = torch.load(path, weights_only=True)  # what load_checkpoint does: no code run
    assert raw["history"] == [{"step": 1, "loss": 0.5}]
    assert raw["elapsed_seconds"] == 12.5 and raw["note"] == "x"
    assert torch.equal(raw["ema"]["w"], ema["w"])
    assert torch.equal(raw["array"], torch.arange(4, dtype=torch.int16))
    with pytest.raises(TypeError, match=r"checkpoint\['bad'\] is a set"):
        ckpt.save_checkpoint(tmp_path, {"step": 4, "fingerprint": "f", "bad": {1}})


def test_checkpoints_of_the_earlier_format_still_resume(tmp_path):
    """Before issue 14 the RNG states were Python's tuple and numpy's (str, ndarray, ...)
    tuple: such checkpoints still load with weights_only=True and restore the generators."""
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    old_rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    path = tmp_path / "ckpt-000000002.pt"
    torch.save(
        {"format": ckpt.CHECKPOINT_FORMAT, "step": 2, "fingerprint": "f", "rng": old_rng}, path
    )
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(0)
    np.random.seed(0)
    ckpt.restore_rng_state(ckpt.load_checkpoint(path, expected_fingerprint="f")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
