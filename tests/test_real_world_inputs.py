"""Issue 14: real-world inputs through all three entry points (one shared code path).

The model used here is a real PConvUNet whose last layer has zero weights and bias 0.5: it
predicts exactly 0.5 (uint8 128) wherever its last layer's mask is 1, and returns the
partial convolution's zero default (uint8 0) where no valid pixel was within reach. So an
output pixel's expected value follows from the definitions alone: 128 in every hole pixel,
the input's own pixel everywhere else.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import conf_parameters
from kedro_datasets.pillow import ImageDataset
from PIL import Image
from support.images import read_png, write_png

from aerial_inpainting.imaging.io import read_rgb_image
from aerial_inpainting.inference import fill_holes, inpaint_image
from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.mlflow_model import PConvInpaintingModel
from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pipelines.inpaint.nodes import inpaint_user_images

FILL = 128  # round(0.5 * 255)
PIPELINE_PARAMS = conf_parameters("inpaint") | {
    "invert_mask": False,
    "device": "cpu",
    "threshold": 128,
    "tile_size": None,
    "max_size": 1024,
    "overlap": 64,
    "max_image_pixels": None,
    "preview_max_height": 64,
    "fail_on_error": False,
    "progress_bar": False,
}


def constant_unet(depth: int, base: int = 4) -> PConvUNet:
    """A real U-Net predicting exactly 0.5 where reached, 0 (its default) elsewhere."""
    model = PConvUNet(UNetConfig(depth=depth, base_channels=base, max_channels=2 * base))
    last = model.dec_convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    return model.eval()


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 226, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def const_model_file(tmp_path: Path) -> Path:
    return save_model(tmp_path / "const.safetensors", constant_unet(5))


def _cli(capsys, args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _all_entry_points(tmp_path: Path, capsys, image_path: Path, mask_path: Path, model_file):
    """The result of aerial-inpaint, the inpaint node and the pyfunc model, as arrays."""
    from aerial_inpainting.pconv.checkpoint import load_model

    out = tmp_path / "cli_out.png"
    code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", model_file])
    assert code == 0, err
    results = {"cli": read_png(out)}
    model = load_model(model_file)
    images = {image_path.name: ImageDataset(filepath=str(image_path)).load}
    masks = {mask_path.stem + ".png": ImageDataset(filepath=str(mask_path)).load}
    if mask_path.stem != image_path.stem:
        masks = {image_path.stem + ".png": masks[mask_path.stem + ".png"]}
    done, _, report = inpaint_user_images(model, images, masks, PIPELINE_PARAMS)
    assert list(report["status"]) == ["inpainted"], report["message"].tolist()
    results["pipeline"] = np.asarray(done[image_path.stem])
    pyfunc = PConvInpaintingModel(device="cpu")
    pyfunc.model = model
    frame = pd.DataFrame({"image": [_b64(image_path)], "mask": [_b64(mask_path)]})
    encoded = pyfunc.predict(None, frame)["inpainted"][0]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
        results["mlflow"] = np.asarray(picture).copy()
    return results


# ------------------------------------------------------------------ 1. every hole filled
def test_holes_beyond_the_network_reach_are_filled():
    """The issue's case: 512x512, centred 384x384 hole, depth 5: one forward pass leaves
    51,076 pixels unreached (returned black before); every hole pixel must get a prediction."""
    model = constant_unet(5)
    image = textured(512, 512)
    valid = np.ones((512, 512), dtype=bool)
    valid[64:448, 64:448] = False
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        _, reach = model.forward_with_mask(x, torch.from_numpy(valid).float()[None, None])
    assert int((reach == 0).sum()) == 51076  # the failure mode exists for this network

    out = inpaint_image(model, image, valid)
    assert (out[~valid] == FILL).all()  # every hole pixel is a prediction, none the default
    np.testing.assert_array_equal(out[valid], image[valid])


def test_tiles_wholly_inside_a_hole_are_filled():
    model = constant_unet(5)
    image = textured(256, 256, seed=2)
    valid = np.ones((256, 256), dtype=bool)
    valid[8:248, 8:248] = False  # 64-px tiles in the middle see no valid pixel at all
    out = inpaint_image(model, image, valid, tile_size=64, overlap=16)
    assert (out[~valid] == FILL).all()
    np.testing.assert_array_equal(out[valid], image[valid])


def test_hole_filling_works_through_every_entry_point(tmp_path, capsys):
    model_file = save_model(tmp_path / "deep.safetensors", constant_unet(5))
    image = textured(256, 256, seed=1)
    mask = np.full((256, 256), 255, np.uint8)
    mask[8:248, 8:248] = 0  # centre 120 px from any valid pixel: beyond depth 5's reach
    image_path = write_png(tmp_path / "scene.png", image)
    mask_path = write_png(tmp_path / "masks" / "scene.png", mask)
    for name, out in _all_entry_points(tmp_path, capsys, image_path, mask_path, model_file).items():
        assert (out[mask == 0] == FILL).all(), name
        np.testing.assert_array_equal(out[mask == 255], image[mask == 255], err_msg=name)


def test_fill_holes_refuses_an_image_without_valid_pixel():
    with pytest.raises(ValueError, match="no valid pixel"):
        fill_holes(constant_unet(3), textured(8, 8), np.zeros((8, 8), bool))


# ------------------------------------------------------------------ 2. EXIF orientation
# Pillow's exif_transpose per EXIF orientation, as numpy operations on the stored array.
UPRIGHT = {
    3: lambda a: np.rot90(a, 2),  # rotate 180
    5: lambda a: a.transpose(1, 0, 2),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


def _jpeg_with_orientation(path: Path, stored: np.ndarray, orientation: int) -> np.ndarray:
    """Write ``stored`` as a JPEG tagged with ``orientation``; return its decoded pixels as
    stored (before any orientation is applied)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)
    with Image.open(path) as picture:
        return np.asarray(picture).copy()  # decoding only: np.asarray ignores the tag


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
def test_exif_orientation_is_applied_to_images_everywhere(tmp_path, capsys, orientation):
    stored = textured(64, 96, seed=orientation)  # stored 96x64 (W x H)
    image_path = tmp_path / "scene.jpg"
    expected = UPRIGHT[orientation](_jpeg_with_orientation(image_path, stored, orientation))
    height, width = expected.shape[:2]  # as displayed
    mask = np.full((height, width), 255, np.uint8)
    mask[2:18, 3:21] = 0  # top-left corner of what the user sees
    mask_path = write_png(tmp_path / "masks" / "scene.png", mask)
    const = save_model(tmp_path / "const.safetensors", constant_unet(3))
    for name, out in _all_entry_points(tmp_path, capsys, image_path, mask_path, const).items():
        assert out.shape == (height, width, 3), name
        np.testing.assert_array_equal(out[mask == 255], expected[mask == 255], err_msg=name)
        assert (out[mask == 0] == FILL).all(), name


def test_exif_orientation_of_a_mask_is_applied(tmp_path):
    image = textured(40, 24)
    displayed = np.full((40, 24), 255, np.uint8)
    displayed[30:38, 2:10] = 0  # bottom-left as displayed
    # Store the mask turned so that orientation 6 (rotate 90 clockwise) displays it upright.
    stored = np.rot90(displayed, 1)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, format="PNG", exif=exif)
    with Image.open(io.BytesIO(buffer.getvalue())) as mask:
        out = inpaint_image(constant_unet(3), image, mask)
    assert (out[displayed == 0] == FILL).all()
    np.testing.assert_array_equal(out[displayed == 255], image[displayed == 255])


def test_ingest_applies_the_exif_orientation(tmp_path):
    path = tmp_path / "photo.jpg"
    raw = _jpeg_with_orientation(path, textured(32, 32, seed=3), 6)
    decoded = read_rgb_image(path, size=32)
    np.testing.assert_array_equal(decoded.pixels, np.rot90(raw, -1))


# ------------------------------------------------------------------ 2. transparency
def test_transparent_image_pixels_are_no_data_and_alpha_is_kept(tmp_path, capsys):
    rgb = textured(32, 40, seed=4)
    alpha = np.full((32, 40), 255, np.uint8)
    alpha[4:12, 4:14] = 0  # no-data
    alpha[20:28, 24:36] = 100  # semi-transparent: kept as it is
    image_path = write_png(tmp_path / "scene.png", np.dstack([rgb, alpha]))
    mask = np.full((32, 40), 255, np.uint8)
    mask[14:20, 2:12] = 0
    mask_path = write_png(tmp_path / "masks" / "scene.png", mask)
    hole = (mask == 0) | (alpha == 0)
    const = save_model(tmp_path / "const.safetensors", constant_unet(3))
    for name, out in _all_entry_points(tmp_path, capsys, image_path, mask_path, const).items():
        assert out.shape == (32, 40, 4), name
        assert (out[hole][:, :3] == FILL).all(), name  # filled, never used as context
        assert (out[hole][:, 3] == 255).all(), name  # filled pixels are opaque
        np.testing.assert_array_equal(out[~hole][:, :3], rgb[~hole], err_msg=name)
        np.testing.assert_array_equal(out[~hole][:, 3], alpha[~hole], err_msg=name)


def test_a_mask_that_varies_only_in_alpha_uses_its_alpha(tmp_path):
    image = textured(24, 32)
    alpha = np.full((24, 32), 255, np.uint8)
    alpha[5:15, 6:20] = 0  # transparent = hole
    mask = np.dstack([np.full((24, 32, 3), 255, np.uint8), alpha])
    out = inpaint_image(constant_unet(3), image, Image.fromarray(mask, mode="RGBA"))
    assert (out[alpha == 0] == FILL).all()
    np.testing.assert_array_equal(out[alpha == 255], image[alpha == 255])


# ------------------------------------------------------------------ 2. very large rasters
def test_rasters_above_pillows_limit_are_too_large_not_corrupt(
    tmp_path, capsys, const_model_file, monkeypatch
):
    image_path = write_png(tmp_path / "ortho.png", textured(64, 64))
    mask = np.full((64, 64), 255, np.uint8)
    mask[10:20, 10:20] = 0
    mask_path = write_png(tmp_path / "masks" / "ortho.png", mask)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2 x 1000: a "bomb"
    out = tmp_path / "out.png"
    code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", const_model_file])
    assert code == 1 and "too large" in err and "--max-image-pixels" in err
    assert "corrupt" not in err and not out.exists()
    code, err = _cli(
        capsys,
        [image_path, mask_path, "-o", out, "--model", const_model_file, "--max-image-pixels", "0"],
    )
    assert code == 0, err
    assert Image.MAX_IMAGE_PIXELS == 1000  # the lifted limit was restored

    loaders = {"ortho.png": ImageDataset(filepath=str(image_path)).load}
    masks = {"ortho.png": ImageDataset(filepath=str(mask_path)).load}
    model = constant_unet(3)
    _, _, report = inpaint_user_images(model, loaders, masks, PIPELINE_PARAMS)
    assert report["status"].tolist() == ["skipped"]
    assert (
        "too large" in report["message"][0] and "inpaint.max_image_pixels" in report["message"][0]
    )
    _, _, report = inpaint_user_images(
        model, loaders, masks, {**PIPELINE_PARAMS, "max_image_pixels": 0}
    )
    assert report["status"].tolist() == ["inpainted"]


# ------------------------------------------------------------------ 2. lossy outputs
def test_lossy_output_formats_are_refused_unless_allowed(tmp_path, capsys, const_model_file):
    image = textured(24, 32)
    mask = np.full((24, 32), 255, np.uint8)
    mask[4:10, 4:10] = 0
    image_path = write_png(tmp_path / "i.png", image)
    mask_path = write_png(tmp_path / "m.png", mask)
    for suffix in (".jpg", ".jpeg", ".gif"):
        out = tmp_path / f"out{suffix}"
        code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", const_model_file])
        assert code == 1 and "lossy" in err and "--allow-lossy" in err and not out.exists()
    out = tmp_path / "out.jpg"
    code, err = _cli(
        capsys, [image_path, mask_path, "-o", out, "--model", const_model_file, "--allow-lossy"]
    )
    assert code == 0 and out.is_file() and "will differ" in err
    if ".webp" in Image.registered_extensions():  # written lossless: every kept pixel exact
        out = tmp_path / "out.webp"
        code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", const_model_file])
        assert code == 0, err
        np.testing.assert_array_equal(read_png(out)[mask == 255], image[mask == 255])


# ------------------------------------------------------------------ 3. inverted masks
def _tool_style_mask() -> np.ndarray:
    """128x128 black mask with a white disc: white = fill, as LaMa/SD/SAM draw it."""
    yy, xx = np.mgrid[0:128, 0:128]
    return np.where((yy - 64) ** 2 + (xx - 64) ** 2 <= 16**2, 255, 0).astype(np.uint8)


def test_a_mask_that_looks_inverted_gets_a_warning_naming_the_option(
    tmp_path, capsys, const_model_file
):
    mask = _tool_style_mask()
    hole_ratio = 1 - np.count_nonzero(mask) / mask.size  # the definition: black = hole
    assert hole_ratio > 0.9
    image_path = write_png(tmp_path / "scene.png", textured(128, 128))
    mask_path = write_png(tmp_path / "masks" / "scene.png", mask)
    out = tmp_path / "o.png"
    code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", const_model_file])
    assert code == 0 and "warning" in err and f"{hole_ratio:.1%}" in err
    assert "--invert-mask" in err
    code, err = _cli(
        capsys, [image_path, mask_path, "-o", out, "--model", const_model_file, "--invert-mask"]
    )
    assert code == 0 and "--invert-mask" not in err

    images = {"scene.png": ImageDataset(filepath=str(image_path)).load}
    masks = {"scene.png": ImageDataset(filepath=str(mask_path)).load}
    _, _, report = inpaint_user_images(constant_unet(3), images, masks, PIPELINE_PARAMS)
    assert report["status"].tolist() == ["inpainted"]
    assert "inpaint.invert_mask: true" in report["message"][0]
    assert f"{hole_ratio:.1%}" in report["message"][0]


# ------------------------------------------------------------------ 5. no code from files
class _CreatesFile:
    """Pickles to ``open(path, "w")``: unpickling it would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_model_file_that_would_run_code_is_refused(tmp_path, capsys):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "model.pt"
    torch.save({"format": "aerial-inpainting/pconv-unet/1", "x": _CreatesFile(target)}, evil)
    image_path = write_png(tmp_path / "i.png", textured(16, 16))
    mask = np.full((16, 16), 255, np.uint8)
    mask[2:6, 2:6] = 0
    mask_path = write_png(tmp_path / "m.png", mask)
    out = tmp_path / "o.png"
    code, err = _cli(capsys, [image_path, mask_path, "-o", out, "--model", evil])
    assert code == 1 and "model.pt" in err and "would run Python code" in err
    assert "python -m aerial_inpainting.convert_model" in err
    assert not target.exists() and not out.exists()


# ------------------------------------------------------------------ 6. quiet
def test_quiet_prints_nothing_but_errors(tmp_path, capfd, const_model_file):
    image_path = write_png(tmp_path / "scene.png", textured(128, 128))
    mask_path = write_png(tmp_path / "m.png", _tool_style_mask())  # would warn
    out = tmp_path / "o.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = [image_path, mask_path, "-o", out, "--model", const_model_file, "-q"]
        code = main([str(a) for a in args])
    captured = capfd.readouterr()
    assert code == 0 and out.is_file()
    assert captured.err == "" and captured.out == ""
    assert [str(w.message) for w in caught] == []
    code = main([str(image_path), str(tmp_path / "nope.png"), "-o", str(out), "-q"])
    assert code == 1 and "nope.png" in capfd.readouterr().err  # errors still show
