"""The web page's handlers (aerial_inpainting.web_app), without a browser.

References: the CLI itself (aerial_inpainting.inpaint_cli.main) for the fill, OpenCV's
cv2.inpaint for Telea, Pillow's ImageOps.exif_transpose for the orientation, and masks
drawn here with numpy.
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from support.model_scores import shipped_psnr, write_score

from aerial_inpainting import inpaint_cli, web_app
from aerial_inpainting.pconv.checkpoint import load_model
from aerial_inpainting.web_app import PageError

MB = 2**20


def _photo(tmp_path: Path, name: str = "photo.png", shape=(40, 56)) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path, rgb


def _disc_layer(shape, centre, radius) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA brush layer with a disc painted (alpha 153, as a 60 % brush) and the disc."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    layer = np.zeros((*shape, 4), dtype=np.uint8)
    layer[disc] = (255, 0, 255, 153)
    return layer, disc


def test_serve_listens_on_localhost_by_default() -> None:
    args = web_app.build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    assert args.max_upload_mb == web_app.DEFAULT_MAX_UPLOAD_MB


def test_empty_mask_is_refused_with_a_message() -> None:
    layer = np.zeros((8, 8, 4), dtype=np.uint8)  # nothing painted
    with pytest.raises(PageError, match="no hole: paint over what should be filled"):
        web_app.mask_from_layers([layer], (8, 8, 3))
    with pytest.raises(PageError, match="no hole"):
        web_app.mask_from_layers([], (8, 8, 3))


def test_painted_pixels_are_the_hole() -> None:
    layer, disc = _disc_layer((30, 40), (12, 20), 5)
    valid = web_app.mask_from_layers([layer], (30, 40, 3))
    np.testing.assert_array_equal(valid, ~disc)


def test_layer_of_another_size_is_refused() -> None:
    layer, _ = _disc_layer((30, 40), (12, 20), 5)
    with pytest.raises(PageError, match="is 40x30 pixels but the photograph is 20x10"):
        web_app.mask_from_layers([layer], (10, 20, 3))


def test_upload_above_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (MB + 1))
    with pytest.raises(PageError, match=r"1\.0 MB is above the upload limit of 1\.0 MB"):
        web_app.check_upload(path, MB, "photograph")
    with pytest.raises(PageError, match="above the upload limit"):
        web_app.open_photo(path, MB)


def test_not_an_image_gives_a_message_naming_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(PageError) as caught:
        web_app.open_photo(path, MB)
    message = str(caught.value)
    assert "notes.png" in message and "not a readable image" in message
    assert str(tmp_path) not in message  # the server's folders are not shown


def test_nothing_uploaded_gives_a_message() -> None:
    with pytest.raises(PageError, match="no photograph uploaded"):
        web_app.open_photo(None, MB)


def test_photo_is_shown_upright(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "turned.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = web_app.open_photo(path, MB)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert shown.shape == (32, 24, 3)
    np.testing.assert_array_equal(shown, expected)


def test_tiff_photo_is_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    path = tmp_path / "scan.tif"
    Image.fromarray(grey16).save(path)
    shown = web_app.open_photo(path, MB)
    expected = ((grey16.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 16 -> 8 bits
    assert shown.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(shown[:, :, channel], expected)


def _fake_model():
    raise AssertionError("the model must not be loaded for input that is refused")


def test_uploaded_mask_without_hole_is_refused(tmp_path: Path) -> None:
    photo, _ = _photo(tmp_path)
    mask = tmp_path / "white.png"
    Image.fromarray(np.full((40, 56), 255, np.uint8)).save(mask)
    with pytest.raises(PageError, match=r"mask white\.png: has no hole"):
        web_app.fill(photo, None, mask, tmp_path / "out", _fake_model, max_bytes=MB)


def test_all_black_mask_is_refused(tmp_path: Path) -> None:
    photo, _ = _photo(tmp_path)
    mask = tmp_path / "black.png"
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(mask)
    with pytest.raises(PageError, match="nothing is left to fill it from"):
        web_app.fill(photo, None, mask, tmp_path / "out", _fake_model, max_bytes=MB)


def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    photo, _ = _photo(tmp_path)
    mask = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    with pytest.raises(PageError, match="must have the same size") as caught:
        web_app.fill(photo, None, mask, tmp_path / "out", _fake_model, max_bytes=MB)
    assert str(tmp_path) not in str(caught.value)


def test_fill_equals_the_cli_and_telea_equals_opencv(tmp_path: Path, model_file: Path) -> None:
    photo, rgb = _photo(tmp_path)
    layer, disc = _disc_layer(rgb.shape[:2], (20, 28), 7)
    cache = web_app.ModelCache()
    result = web_app.fill(
        photo,
        [layer],
        None,
        tmp_path / "out",
        lambda: cache.get(web_app.MODEL_OTHER, str(model_file)),
        max_bytes=MB,
        device="cpu",
    )
    # The mask the page wrote is the painted disc, in the CLI's convention (white = keep).
    written_mask = np.asarray(Image.open(result.mask_path))
    np.testing.assert_array_equal(written_mask, np.where(disc, 0, 255))
    # The result is what aerial-inpaint gives for the same image and mask.
    cli_out = tmp_path / "cli.png"
    options = ["--model", str(model_file), "--device", "cpu", "-q"]
    code = inpaint_cli.main([str(photo), str(result.mask_path), "-o", str(cli_out), *options])
    assert code == 0
    ours = np.asarray(Image.open(result.result_path))
    np.testing.assert_array_equal(ours, np.asarray(Image.open(cli_out)))
    np.testing.assert_array_equal(result.ours, ours)
    np.testing.assert_array_equal(ours[~disc], rgb[~disc])  # kept pixels untouched
    # Telea: OpenCV directly (hole = 255), radius 3.
    expected = cv2.inpaint(rgb, disc.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA)
    np.testing.assert_array_equal(result.telea[disc], expected[disc])
    np.testing.assert_array_equal(result.telea[~disc], rgb[~disc])
    # The view with the hole: magenta inside, the photograph outside.
    assert (result.with_hole[disc] == web_app.HOLE_COLOUR).all()
    np.testing.assert_array_equal(result.with_hole[~disc], rgb[~disc])
    assert result.hole_ratio == pytest.approx(disc.mean())
    assert str(model_file) in result.model_label


def test_large_photo_takes_the_cli_tiled_path(tmp_path: Path, model_file: Path) -> None:
    photo, rgb = _photo(tmp_path, "wide.png", shape=(24, 1100))  # wider than --max-size 1024
    layer = np.zeros((24, 1100, 4), dtype=np.uint8)
    layer[8:16, 1000:1060, 3] = 255  # a hole in the last tile
    cache = web_app.ModelCache()
    result = web_app.fill(
        photo,
        [layer],
        None,
        tmp_path / "out",
        lambda: cache.get(web_app.MODEL_OTHER, str(model_file)),
        max_bytes=MB,
        device="cpu",
    )
    cli_out = tmp_path / "cli.png"
    options = ["--model", str(model_file), "--device", "cpu", "-q"]
    assert inpaint_cli.main([str(photo), str(result.mask_path), "-o", str(cli_out), *options]) == 0
    np.testing.assert_array_equal(result.ours, np.asarray(Image.open(cli_out)))
    assert (result.ours[8:16, 1000:1060] != rgb[8:16, 1000:1060]).any()


def test_uploaded_mask_is_used_and_brush_strokes_noted(tmp_path: Path, model_file: Path) -> None:
    photo, rgb = _photo(tmp_path)
    hole = np.zeros(rgb.shape[:2], dtype=bool)
    hole[5:15, 10:30] = True
    mask = tmp_path / "hole.png"
    Image.fromarray(np.where(hole, 0, 255).astype(np.uint8)).save(mask)
    layer, _ = _disc_layer(rgb.shape[:2], (30, 40), 4)
    cache = web_app.ModelCache()
    result = web_app.fill(
        photo,
        [layer],
        mask,
        tmp_path / "out",
        lambda: cache.get(web_app.MODEL_OTHER, str(model_file)),
        max_bytes=MB,
        device="cpu",
    )
    np.testing.assert_array_equal(np.asarray(Image.open(result.mask_path)) == 0, hole)
    assert any("brush strokes are not" in note for note in result.notes)


def test_model_choices(tmp_path: Path, model_file: Path, kedro_project: Path, monkeypatch) -> None:
    cache = web_app.ModelCache()
    with pytest.raises(PageError, match="type an MLflow URI"):
        cache.get(web_app.MODEL_OTHER, "  ")
    with pytest.raises(PageError, match="no such file or directory"):
        cache.get(web_app.MODEL_OTHER, str(tmp_path / "missing.safetensors"))
    _, label = cache.get(web_app.MODEL_SHIPPED)
    assert "pretrained model skyview-small" in label
    # Inside a Kedro project with a trained model: the page offers it.
    monkeypatch.chdir(kedro_project)
    assert web_app.ModelCache().project_model() is None  # none trained yet
    version = kedro_project / inpaint_cli.MODEL_DATASET_PATH / "2026-01-01T00.00.00.000Z"
    version.mkdir(parents=True)
    shutil.copy2(model_file, version / "pconv_unet.safetensors")
    inside = web_app.ModelCache()
    assert inside.project_model() == version / "pconv_unet.safetensors"
    _, label = inside.get(web_app.MODEL_PROJECT)  # offered whatever its score
    assert str(version / "pconv_unet.safetensors") in label


def test_session_files_are_deleted(tmp_path: Path) -> None:
    sessions = web_app.SessionFiles(tmp_path)
    sessions.open("abc")
    sessions.open("other")
    folder = sessions.folder("abc")
    (folder / "result.png").write_bytes(b"x")
    upload_dir = tmp_path / "0123abcd"
    upload_dir.mkdir()
    upload = upload_dir / "photo.png"
    upload.write_bytes(b"y")
    sessions.add("abc", upload)
    gradio_copy = tmp_path / "4567ef" / "background.png"  # a copy no session registered
    gradio_copy.parent.mkdir()
    gradio_copy.write_bytes(b"z")
    other = sessions.folder("other")
    sessions.delete("abc")
    assert not folder.exists() and not upload.exists() and not upload_dir.exists()
    assert other.exists() and gradio_copy.exists()  # another tab is still open
    sessions.delete("other")  # the last tab: everything goes
    assert list(tmp_path.iterdir()) == []


def test_private_temp_dir_is_deleted(tmp_path: Path) -> None:
    with web_app.private_temp_dir() as work_dir:
        (work_dir / "upload.png").write_bytes(b"x")
        import os
        import tempfile

        assert os.environ["GRADIO_TEMP_DIR"] == str(work_dir)
        assert Path(tempfile.gettempdir()) == work_dir
    assert not work_dir.exists()


def _model_radio(app):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-kind")


def test_page_preselects_the_model_as_the_cli(
    tmp_path: Path, model_file: Path, kedro_project: Path, monkeypatch
) -> None:
    pytest.importorskip("gradio", reason='needs the app extra: pip install ".[app]"')
    monkeypatch.chdir(tmp_path)  # not inside a Kedro project
    outside = web_app.build_app(web_app.ServeConfig(), tmp_path)
    assert outside.title == "Aerial inpainting"
    radio = _model_radio(outside)
    assert radio.value == web_app.MODEL_SHIPPED
    assert [c[0] for c in radio.choices] == [web_app.MODEL_SHIPPED, web_app.MODEL_OTHER]
    given = web_app.build_app(web_app.ServeConfig(model="runs:/abc/model"), tmp_path)
    assert _model_radio(given).value == web_app.MODEL_OTHER
    monkeypatch.chdir(kedro_project)
    version = kedro_project / inpaint_cli.MODEL_DATASET_PATH / "2026-01-01T00.00.00.000Z"
    version.mkdir(parents=True)
    shutil.copy2(model_file, version / "pconv_unet.safetensors")
    # No recorded score for the project's model: offered, but the shipped one is preselected,
    # as aerial-inpaint would take it.
    inside = _model_radio(web_app.build_app(web_app.ServeConfig(), tmp_path))
    assert inside.value == web_app.MODEL_SHIPPED
    assert web_app.MODEL_PROJECT in [c[0] for c in inside.choices]
    # A (made-up) test score above the shipped model's: the project's model is preselected.
    write_score(kedro_project, load_model(version / "pconv_unet.safetensors"), shipped_psnr() + 1)
    better = _model_radio(web_app.build_app(web_app.ServeConfig(), tmp_path))
    assert better.value == web_app.MODEL_PROJECT
    shipped = web_app.build_app(web_app.ServeConfig(model="pretrained"), tmp_path)
    assert _model_radio(shipped).value == web_app.MODEL_SHIPPED
