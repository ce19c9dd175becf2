"""The aerial-inpaint command line: results, model lookup, and every bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.images import box_mask, read_png, smooth_image, write_png
from support.model_scores import shipped_psnr, write_score

from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.pconv.checkpoint import save_model


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A 37x53 (odd) image and its mask as PNG files (white = keep)."""
    image = smooth_image(37, 53)
    mask = box_mask(37, 53, [(4, 6, 19, 31), (22, 40, 35, 50)])
    return (
        write_png(tmp_path / "in" / "scene.png", image),
        write_png(tmp_path / "in" / "scene_mask.png", mask * 255),
        image,
        mask,
    )


def _run(capsys, args: list[str]) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_inpaints_odd_size_image_keeping_valid_pixels(tmp_path, pair, model_file, capsys):
    image_path, mask_path, image, mask = pair
    out = tmp_path / "out" / "result.png"
    code, _ = _run(
        capsys, [image_path, mask_path, "-o", out, "--model", model_file, "--device", "cpu"]
    )
    assert code == 0
    result = read_png(out)
    assert result.shape == (37, 53, 3)
    np.testing.assert_array_equal(result[mask == 1], image[mask == 1])
    assert not np.array_equal(result[mask == 0], image[mask == 0])


def test_inverted_mask_gives_the_same_result(tmp_path, pair, model_file, capsys):
    image_path, mask_path, _, mask = pair
    inverted = write_png(tmp_path / "inverted.png", (1 - mask) * 255)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert _run(capsys, [image_path, mask_path, "-o", a, "--model", model_file])[0] == 0
    code, _ = _run(capsys, [image_path, inverted, "-o", b, "--model", model_file, "--invert-mask"])
    assert code == 0
    np.testing.assert_array_equal(read_png(a), read_png(b))


def _fake_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "aerial_inpainting"\n')
    return root


def test_finds_the_latest_model_version_in_the_project(
    tmp_path, pair, tiny_model, capsys, monkeypatch
):
    image_path, mask_path, image, mask = pair
    project = _fake_project(tmp_path / "project")
    versions = project / "data" / "06_models" / "pconv_unet.safetensors"
    old = versions / "2026-01-01T00.00.00.000Z" / "pconv_unet.safetensors"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"not a model")  # would fail to load if chosen
    save_model(versions / "2026-02-01T00.00.00.000Z" / "pconv_unet.safetensors", tiny_model)
    write_score(project, tiny_model, psnr=shipped_psnr() + 1)  # made up: better than shipped
    monkeypatch.chdir(project)
    out = tmp_path / "found.png"
    code, err = _run(capsys, [image_path, mask_path, "-o", out])
    assert code == 0, err
    assert "2026-02-01" in err
    np.testing.assert_array_equal(read_png(out)[mask == 1], image[mask == 1])


def test_without_a_trained_model_the_pretrained_one_is_used_and_named(
    tmp_path, pair, capsys, monkeypatch
):
    image_path, mask_path, image, mask = pair
    monkeypatch.chdir(_fake_project(tmp_path / "empty_project"))
    out = tmp_path / "x.png"
    code, err = _run(capsys, [image_path, mask_path, "-o", out])
    assert code == 0, err
    assert "pretrained model skyview-small" in err
    assert "no trained model in" in err and "pconv_unet.safetensors" in err
    result = read_png(out)
    np.testing.assert_array_equal(result[mask == 1], image[mask == 1])
    assert not np.array_equal(result[mask == 0], image[mask == 0])
    code, err = _run(
        capsys, [image_path, mask_path, "-o", tmp_path / "x.png", "--model", tmp_path / "nope.pt"]
    )
    assert code == 1 and "nope.pt" in err and "no such file" in err


def test_outside_a_project_the_pretrained_model_is_used_and_named(
    tmp_path, pair, capsys, monkeypatch
):
    image_path, mask_path, _, _ = pair
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, [image_path, mask_path, "-o", tmp_path / "x.png"])
    assert code == 0, err
    assert "pretrained model skyview-small" in err and "not inside a Kedro project" in err


def test_model_pretrained_wins_over_the_projects_trained_model(
    tmp_path, pair, tiny_model, capsys, monkeypatch
):
    image_path, mask_path, _, _ = pair
    project = _fake_project(tmp_path / "project")
    trained = project / "data/06_models/pconv_unet.safetensors/2026-02-01T00.00.00.000Z"
    save_model(trained / "pconv_unet.safetensors", tiny_model)
    write_score(project, tiny_model, psnr=shipped_psnr() + 1)  # made up: better than shipped
    monkeypatch.chdir(project)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    code, err = _run(capsys, [image_path, mask_path, "-o", a])
    assert code == 0 and "latest trained model" in err and "2026-02-01" in err
    code, err = _run(capsys, [image_path, mask_path, "-o", b, "--model", "pretrained"])
    assert code == 0 and "pretrained model skyview-small" in err and "[--model pretrained]" in err
    assert not np.array_equal(read_png(a), read_png(b))  # two different networks


def test_corrupt_model_file(tmp_path, pair, capsys):
    image_path, mask_path, _, _ = pair
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    code, err = _run(capsys, [image_path, mask_path, "-o", tmp_path / "x.png", "--model", bad])
    assert code == 1 and "bad.pt" in err and "cannot be loaded" in err


def test_sizes_differ(tmp_path, pair, model_file, capsys):
    image_path, _, _, _ = pair
    small_mask = write_png(tmp_path / "small.png", np.full((20, 20), 255, np.uint8))
    code, err = _run(
        capsys, [image_path, small_mask, "-o", tmp_path / "x.png", "--model", model_file]
    )
    assert code == 1 and "small.png" in err and "20x20" in err and "53x37" in err
    assert not (tmp_path / "x.png").exists()


def test_non_binary_mask_refused_unless_threshold_given(tmp_path, pair, model_file, capsys):
    image_path, _, image, _ = pair
    gray = np.tile(np.linspace(0, 255, 53).astype(np.uint8), (37, 1))
    gray_path = write_png(tmp_path / "gray.png", gray)
    out = tmp_path / "x.png"
    code, err = _run(capsys, [image_path, gray_path, "-o", out, "--model", model_file])
    assert code == 1 and "gray.png" in err and "not binary" in err and "--threshold" in err
    assert not out.exists()
    code, err = _run(
        capsys, [image_path, gray_path, "-o", out, "--model", model_file, "--threshold", "128"]
    )
    assert code == 0 and "warning" in err and "thresholded at 128" in err
    keep = gray >= 128
    np.testing.assert_array_equal(read_png(out)[keep], image[keep])


def test_mask_without_hole_copies_the_image(tmp_path, pair, capsys):
    image_path, _, image, _ = pair
    white = write_png(tmp_path / "white.png", np.full((37, 53), 255, np.uint8))
    out = tmp_path / "copy.png"
    # no model needed: nothing to fill
    code, err = _run(capsys, [image_path, white, "-o", out, "--model", tmp_path / "none.pt"])
    assert code == 3 and "no hole" in err
    np.testing.assert_array_equal(read_png(out), image)


def test_mask_without_valid_pixel(tmp_path, pair, model_file, capsys):
    image_path, _, _, _ = pair
    black = write_png(tmp_path / "black.png", np.zeros((37, 53), np.uint8))
    code, err = _run(capsys, [image_path, black, "-o", tmp_path / "x.png", "--model", model_file])
    assert code == 1 and "black.png" in err and "no valid pixel" in err


@pytest.mark.parametrize("which", ["image", "mask"])
def test_unreadable_or_missing_files(tmp_path, pair, model_file, capsys, which):
    image_path, mask_path, _, _ = pair
    junk = tmp_path / f"junk_{which}.png"
    junk.write_bytes(b"this is not a PNG")
    args = [junk, mask_path] if which == "image" else [image_path, junk]
    code, err = _run(capsys, [*args, "-o", tmp_path / "x.png", "--model", model_file])
    assert code == 1 and f"junk_{which}.png" in err and which in err
    missing = tmp_path / "missing.png"
    args = [missing, mask_path] if which == "image" else [image_path, missing]
    code, err = _run(capsys, [*args, "-o", tmp_path / "x.png", "--model", model_file])
    assert code == 1 and "missing.png" in err and "not found" in err


def test_unwritable_output(tmp_path, pair, model_file, capsys):
    image_path, mask_path, _, _ = pair
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, err = _run(
        capsys, [image_path, mask_path, "-o", blocker / "out.png", "--model", model_file]
    )
    assert code == 1 and "cannot write" in err


def test_help_from_the_installed_console_script():
    script = shutil.which("aerial-inpaint", path=str(Path(sys.executable).parent))
    assert script, "console script not installed: pip install -e ."
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "usage: aerial-inpaint" in done.stdout and "--model" in done.stdout
    assert "--invert-mask" in done.stdout and done.stderr == ""


def test_model_may_be_a_folder(tmp_path, pair, model_file, tiny_model, capsys):
    """A folder holding the model file, or a versioned-dataset folder (latest version wins)."""
    image_path, mask_path, _, _ = pair
    direct = _run(
        capsys, [image_path, mask_path, "-o", tmp_path / "a.png", "--model", model_file.parent]
    )
    assert direct[0] == 0
    versions = tmp_path / "versions" / "pconv_unet.safetensors"
    save_model(versions / "2026-03-01T00.00.00.000Z" / "pconv_unet.safetensors", tiny_model)
    code, err = _run(capsys, [image_path, mask_path, "-o", tmp_path / "b.png", "--model", versions])
    assert code == 0 and "2026-03-01" in err
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png"))
