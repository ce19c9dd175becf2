"""Reading and converting image files to 8-bit RGB, against independently computed pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aerial_inpainting.imaging.io import ImageReadError, center_crop_resize, read_rgb_image


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_and_tif_are_kept_pixel_for_pixel(tmp_path: Path):
    rgb = _pattern(16, 16)
    for name in ("a.png", "a.tif", "a.tiff"):
        Image.fromarray(rgb).save(tmp_path / name)
        out = read_rgb_image(tmp_path / name, 16)
        assert out.pixels.dtype == np.uint8
        np.testing.assert_array_equal(out.pixels, rgb)
        assert (out.original_width, out.original_height, out.original_mode) == (16, 16, "RGB")


def test_jpeg_of_right_size_equals_plain_decode(tmp_path: Path):
    Image.fromarray(_pattern(16, 16)).save(tmp_path / "a.jpg", quality=90)
    expected = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "a.jpg", 16).pixels, expected)


def test_grayscale_is_replicated(tmp_path: Path):
    gray = _pattern(16, 16)[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_rgb_image(tmp_path / "g.png", 16).pixels
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_on_black(tmp_path: Path):
    rgba = np.concatenate([_pattern(16, 16), _pattern(16, 16, 1)[..., :1]], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    expected = np.floor(rgba[..., :3].astype(float) * rgba[..., 3:].astype(float) / 255 + 0.5)
    out = read_rgb_image(tmp_path / "a.png", 16).pixels.astype(float)
    assert np.abs(out - expected).max() <= 1  # rounding convention may differ by one level
    assert out[rgba[..., 3] == 0].max(initial=0) == 0
    opaque = rgba[..., 3] == 255
    np.testing.assert_array_equal(out[opaque], rgba[..., :3][opaque])


def test_palette_expands_through_palette(tmp_path: Path):
    palette = [(10, 20, 30), (200, 100, 50), (0, 255, 0), (255, 255, 255)]
    idx = np.random.default_rng(3).integers(0, 4, (16, 16)).astype(np.uint8)
    image = Image.fromarray(idx, mode="P")
    image.putpalette([v for rgb in palette for v in rgb] + [0] * (768 - 12))
    image.save(tmp_path / "p.png")
    expected = np.array(palette, np.uint8)[idx]
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "p.png", 16).pixels, expected)


def test_cmyk_matches_formula(tmp_path: Path):
    cmyk = np.random.default_rng(4).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    c = cmyk.astype(float)
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
    out = read_rgb_image(tmp_path / "c.tif", 16)
    assert out.original_mode == "CMYK"
    assert np.abs(out.pixels.astype(float) - expected).max() <= 1


def test_16bit_grayscale_is_scaled(tmp_path: Path):
    values = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    values = np.tile(values, (1, 1))
    Image.fromarray(values).save(tmp_path / "d.png")  # 16-bit grey PNG
    out = read_rgb_image(tmp_path / "d.png", 4)
    assert out.original_mode.startswith("I")
    np.testing.assert_array_equal(out.pixels[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out.pixels[..., 0], out.pixels[..., 2])


def test_non_square_is_centre_cropped_then_resized(tmp_path: Path):
    rgb = _pattern(20, 40)
    Image.fromarray(rgb).save(tmp_path / "w.png")
    out = read_rgb_image(tmp_path / "w.png", 20).pixels
    np.testing.assert_array_equal(out, rgb[:, 10:30])  # crop only: same side
    smaller = read_rgb_image(tmp_path / "w.png", 10).pixels
    expected = np.asarray(Image.fromarray(rgb[:, 10:30]).resize((10, 10), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(smaller, expected)
    assert center_crop_resize(rgb, 20).shape == (20, 20, 3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"hello, not an image", "not a readable image")],
)
def test_unreadable_files_raise_a_clear_error(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_rgb_image(path, 16)
    assert str(path) in str(info.value)


def test_truncated_jpeg_raises(tmp_path: Path):
    Image.fromarray(_pattern(64, 64)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_rgb_image(tmp_path / "t.jpg", 64)


def test_small_image_policy(tmp_path: Path):
    Image.fromarray(_pattern(8, 8)).save(tmp_path / "s.png")
    with pytest.raises(ImageReadError, match="smaller than the crop"):
        read_rgb_image(tmp_path / "s.png", 16, small_images="skip")
    up = read_rgb_image(tmp_path / "s.png", 16, small_images="upscale")
    assert up.upscaled and up.pixels.shape == (16, 16, 3)
