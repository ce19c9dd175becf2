"""Issue 27, second round of real-world cases: F29 greyscale photographs, F30 outputs that
would overwrite an input or be left truncated, F31 model files declaring absurd networks.

Every input is generated here. Expected values come from the definitions, not from the code
under test: input files are compared byte for byte, modes are read back with Pillow, and the
fill of a grey image is the ITU-R 601 luma of a colour the test model is built to predict.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.pconv import unet as unet_module
from aerial_inpainting.pconv.checkpoint import MODEL_FORMAT, load_model, save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig


def grey_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W) grey values in [1, 254]."""
    return np.random.default_rng(seed).integers(1, 255, (height, width), dtype=np.uint8)


def hole_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 (H, W) mask file content: 255 = keep, 0 inside (top, left, bottom, right)."""
    mask = np.full((height, width), 255, np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 0
    return mask


def run_cli(capsys, args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *needles: str) -> bool:
    """Exit 1, no traceback, the last stderr line an error naming every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        code == 1
        and "Traceback" not in err
        and last.startswith("aerial-inpaint: error:")
        and all(n.lower() in last.lower() for n in needles)
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes); links read through."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------ F31 absurd model files
def _model_file(path: Path, tensors: dict[str, torch.Tensor], config) -> Path:
    metadata = {"format": MODEL_FORMAT, "config": json.dumps(config), "extra": "{}"}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def f31_pair(tmp_path: Path) -> tuple[Path, Path]:
    pixels = np.random.default_rng(31).integers(1, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    Image.fromarray(hole_mask(32, 32, (8, 8, 20, 20))).save(tmp_path / "mask.png")
    return tmp_path / "img.png", tmp_path / "mask.png"


def test_f31_bomb_config_is_refused_without_building_the_network(
    tmp_path, f31_pair, capsys, monkeypatch
):
    """A 1-tensor file declaring ~175 M parameters: refused, nothing built off the meta device."""
    config = {"in_channels": 3, "out_channels": 3, "depth": 6}
    config |= {"base_channels": 1024, "max_channels": 1024}
    bomb = _model_file(tmp_path / "bomb.safetensors", {"x": torch.zeros(1)}, config)
    built_on: list[str] = []
    real_init = PConvUNet.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the device new tensors would go to
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(unet_module.PConvUNet, "__init__", recording_init)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    image, mask = f31_pair
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", bomb, "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert one_line_error(code, err, "bomb.safetensors"), err
    assert "do not fit" in err
    assert all(device == "meta" for device in built_on)
    assert seconds < 5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 300  # the declared network alone would take ~700 MiB
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"depth": 40, "base_channels": 1, "max_channels": 1}, "depth 40"),
        ({"depth": 11, "base_channels": 1, "max_channels": 1}, "depth 11"),
        ({"depth": 2, "base_channels": 1, "max_channels": 100000}, "max_channels 100000"),
        ({"depth": 2, "base_channels": 5000, "max_channels": 1}, "base_channels 5000"),
        ({"depth": 2, "in_channels": 300, "base_channels": 1, "max_channels": 1}, "in_channels"),
    ],
)
def test_f31_absurd_declared_networks_are_refused_in_one_line(
    tmp_path, f31_pair, capsys, config, needle
):
    """Even with tensors that match the declaration (as save_model writes them)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in PConvUNet(UNetConfig(**config)).state_dict().items()}
    tensors = {k: torch.zeros(shape) for k, shape in shapes.items()}
    path = _model_file(tmp_path / "absurd.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"absurd\.safetensors") as caught:
        load_model(path)
    assert needle in str(caught.value) and "supported range" in str(caught.value)
    image, mask = f31_pair
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", path])
    assert one_line_error(code, err, "absurd.safetensors", needle), err
    assert not out.exists()


def test_f31_config_that_does_not_match_the_stored_shapes_is_refused(tmp_path, tiny_model):
    """The real tensors of a 4..8-channel network under a header declaring 8..16 channels."""
    config = tiny_model.config.to_dict() | {"base_channels": 8, "max_channels": 16}
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    path = _model_file(tmp_path / "edited.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"edited\.safetensors.*do not fit together.*declared"):
        load_model(path)


@pytest.mark.parametrize(
    "config_text",
    ["[1, 2, 3]", '{"depth": 1e400}', '{"depth": "deep"}', '{"depth": 3, "wings": 2}', "[" * 5000],
)
def test_f31_unreadable_configs_are_one_line_errors(tmp_path, f31_pair, capsys, config_text):
    path = tmp_path / "odd.safetensors"
    metadata = {"format": MODEL_FORMAT, "config": config_text, "extra": "{}"}
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    image, mask = f31_pair
    code, err = run_cli(capsys, [image, mask, "-o", tmp_path / "out.png", "--model", path])
    assert one_line_error(code, err, "odd.safetensors"), err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize("prefill", ["none", "pushpull"])
def test_f31_valid_model_files_still_load_exactly(tmp_path, prefill):
    torch.manual_seed(0)
    config = UNetConfig(depth=3, base_channels=4, max_channels=8, prefill=prefill)
    model = PConvUNet(config).eval()
    loaded = load_model(save_model(tmp_path / "m.safetensors", model))
    assert loaded.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
