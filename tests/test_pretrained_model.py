"""The pretrained model shipped inside the package: its files, loading, checks and rebuilding.

No network, no ../shared data: everything runs on the package data and generated images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aerial_inpainting.imaging.synthetic import SYNTHETIC_CLASSES, generate_scene, scene_rng
from aerial_inpainting.inference import inpaint_image
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pretrained_model import (
    DEFAULT_NAME,
    PRETRAINED_DIR,
    PretrainedModelError,
    build_pretrained,
    cli,
    load_pretrained,
    pretrained_model_file,
)

WEIGHTS = PRETRAINED_DIR / f"{DEFAULT_NAME}.safetensors"
CONFIG = PRETRAINED_DIR / f"{DEFAULT_NAME}.json"


@pytest.fixture(scope="module")
def shipped() -> PConvUNet:
    return load_pretrained()


def test_shipped_files_are_package_data_of_at_most_15_mb() -> None:
    assert WEIGHTS.is_file() and CONFIG.is_file()
    assert WEIGHTS.stat().st_size <= 15 * 1024 * 1024
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"pretrained_models/*.safetensors"' in pyproject  # in non-editable installs too


def test_checksum_matches_the_recorded_one() -> None:
    recorded = json.loads(CONFIG.read_text())["sha256"]
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == recorded


def test_json_config_rebuilds_the_network() -> None:
    info = json.loads(CONFIG.read_text())
    model = PConvUNet(UNetConfig.from_dict(info["config"]))
    weights = load_file(str(WEIGHTS))  # safetensors: no unpickling
    model.load_state_dict(weights, strict=True)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert info["dtype"] == "float16"


def test_forward_pass_is_finite_keeps_valid_pixels_and_beats_a_flat_fill(shipped) -> None:
    size = 64
    valid = np.ones((size, size), bool)
    valid[20:40, 16:44] = False
    model_err, flat_err = [], []
    for name in SYNTHETIC_CLASSES:
        image = generate_scene(name, scene_rng(1, name, 0), size)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy(valid)[None, None].float()
        with torch.no_grad():
            raw = shipped(x * m, m)
        assert torch.isfinite(raw).all()
        result = inpaint_image(shipped, image, valid.astype(np.uint8) * 255)
        np.testing.assert_array_equal(result[valid], image[valid])
        hole = image[~valid].astype(float)
        model_err.append(np.abs(result[~valid] - hole).mean())
        flat_err.append(np.abs(image[valid].mean(axis=0) - hole).mean())
    # A trained model fills generated scenes better than their mean colour (about 0.075
    # against 0.093 of the 0-1 range here), an untrained one does not.
    assert np.mean(model_err) < 0.95 * np.mean(flat_err)


def test_loaded_weights_are_the_stored_float16_values_in_float32(shipped) -> None:
    stored = load_file(str(WEIGHTS))
    for key, value in shipped.state_dict().items():
        assert value.dtype == (torch.float32 if value.is_floating_point() else stored[key].dtype)
        torch.testing.assert_close(value, stored[key].to(value.dtype), rtol=0, atol=0)
    assert shipped.extra["pretrained"]["name"] == DEFAULT_NAME


def _copy_shipped(tmp_path: Path) -> Path:
    directory = tmp_path / "pretrained_models"
    directory.mkdir()
    for path in (WEIGHTS, CONFIG):
        shutil.copy(path, directory / path.name)
    return directory


def test_a_changed_file_is_refused_with_its_checksums(tmp_path: Path) -> None:
    directory = _copy_shipped(tmp_path)
    weights = directory / WEIGHTS.name
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedModelError, match=r"sha256 .* records .* corrupt or was replaced"):
        load_pretrained(directory=directory)
    weights.unlink()
    with pytest.raises(PretrainedModelError, match="not found"):
        pretrained_model_file(directory=directory)
    with pytest.raises(PretrainedModelError, match="available: skyview-small"):
        load_pretrained("no-such-model", directory=directory)


def test_build_writes_a_verified_float16_copy_deterministically(tmp_path: Path) -> None:
    from aerial_inpainting.pconv.checkpoint import save_model

    torch.manual_seed(0)
    source_model = PConvUNet(UNetConfig(depth=3, base_channels=4, max_channels=8)).eval()
    source = save_model(tmp_path / "trained.safetensors", source_model, {"run": "test"})
    out = tmp_path / "out"
    info = build_pretrained(source, "tiny", out, check_images=1)
    first = (out / "tiny.safetensors").read_bytes()
    assert info["sha256"] == hashlib.sha256(first).hexdigest()
    assert info["source"]["extra"] == {"run": "test"}
    assert (
        cli(["build", str(source), "--name", "tiny", "--out-dir", str(out), "--check-images", "0"])
        == 0
    )
    assert (out / "tiny.safetensors").read_bytes() == first  # same source, same bytes
    loaded = load_pretrained("tiny", directory=out)
    for key, value in source_model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(loaded.state_dict()[key], expected, rtol=0, atol=0)
    check = info["fp16_check"]
    assert check["n_images"] == 1 and check["max_abs_diff_raw_output"] < 0.05
    assert cli(["verify", "--name", "tiny", "--out-dir", str(out)]) == 0
