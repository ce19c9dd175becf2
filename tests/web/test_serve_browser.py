"""``aerial-inpainting serve`` in a real browser: upload, paint, fill, download.

Headless Debian Chromium driven by Playwright (tests/web/page_driver.py); skipped, with the
reason, when Gradio, Playwright or Chromium is missing. The server runs in a subprocess with
the shipped model on the CPU. References: the photograph written here, the stroke's
geometry, and the CLI itself (aerial_inpainting.inpaint_cli.main) on the same image and the
mask the page used.
"""

import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aerial_inpainting import inpaint_cli

from . import page_driver

pytestmark = pytest.mark.skipif(
    page_driver.missing_reason() is not None, reason=str(page_driver.missing_reason())
)

WIDTH, HEIGHT = 192, 144


def _photograph(path: Path) -> np.ndarray:
    """A smooth generated scene (fields and a road), uint8 (HEIGHT, WIDTH, 3), as PNG."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
    rgb = np.stack(
        [
            110 + 40 * np.sin(xx / 17.0) + 20 * np.cos(yy / 11.0),
            130 + 30 * np.cos(xx / 23.0 + yy / 31.0),
            90 + 25 * np.sin(yy / 13.0),
        ],
        axis=2,
    )
    rgb[np.abs(xx - 0.8 * yy - 30) < 4] = (200, 200, 190)  # a road crossing the stroke
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _distance_to_segment(shape, start, end) -> np.ndarray:
    """Distance (pixels) of every pixel centre (x + 0.5, y + 0.5) to the segment."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64) + 0.5
    p, q = np.asarray(start, float), np.asarray(end, float)
    d = q - p
    t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d), 0.0, 1.0)
    return np.hypot(xx - (p[0] + t * d[0]), yy - (p[1] + t * d[1]))


def test_paint_fill_download_in_chromium(tmp_path: Path) -> None:
    photo_path = tmp_path / "scene.png"
    photo = _photograph(photo_path)
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    start, end = (0.3 * WIDTH, 0.5 * HEIGHT), (0.7 * WIDTH, 0.5 * HEIGHT)
    port = page_driver.free_port()
    options = ["--model", "pretrained", "--device", "cpu", "--max-upload-mb", "5"]
    with page_driver.running_server(port, server_tmp, options) as server:
        with page_driver.browser_page() as page:
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page_driver.upload_photo(page, photo_path)
            page_driver.paint_stroke(page, (WIDTH, HEIGHT), start, end)
            page_driver.press_fill(page)
            status = page.locator("#status").inner_text()
            assert "filled" in status and "skyview-small" in status, status
            result, result_url = page_driver.download(page, "result-file")
            mask, _ = page_driver.download(page, "used-mask")
            session_file = Path(urllib.parse.unquote(result_url.split("file=", 1)[1]))
            assert session_file.is_file()
            page.close()
        # Offline: the page fetched nothing from anywhere but this server (no CDN, fonts).
        local = (f"http://127.0.0.1:{port}/", "blob:", "data:")
        assert [url for url in requested if not url.startswith(local)] == []
        # The session's files are deleted once its tab is closed.
        deadline = time.monotonic() + 30
        while session_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not session_file.exists(), "the result was kept after the session"
        # ... all of them: the upload and every copy made of it (the last tab was closed).
        deadline = time.monotonic() + 10
        while any(p.is_file() for p in server_tmp.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [p for p in server_tmp.rglob("*") if p.is_file()] == []
        assert server.poll() is None
    # The server's private folder is gone once it stopped.
    assert list(server_tmp.iterdir()) == []

    # The returned image is a lossless PNG of the photograph's size.
    assert result.shape == photo.shape and result.dtype == np.uint8
    hole = mask == 0
    assert mask.shape == photo.shape[:2] and set(np.unique(mask)) <= {0, 255}
    # The hole is the stroke: its centre line, and nothing far from it. (Gradio's editor
    # may drop the first and last pointer moves of a stroke, so only the middle half of
    # the centre line is required.)
    distance = _distance_to_segment(hole.shape, start, end)
    inner = _distance_to_segment(hole.shape, (0.4 * WIDTH, HEIGHT / 2), (0.6 * WIDTH, HEIGHT / 2))
    assert hole[inner < 1.0].all()
    middle_column = hole[:, WIDTH // 2]
    radius = middle_column.sum() / 2  # the brush's radius, measured across the stroke
    assert 0 < radius < HEIGHT / 4
    assert distance[hole].max() <= radius + 2.0
    # The result differs from the input only inside the stroke, and does there.
    changed = (result != photo).any(axis=2)
    assert changed.any()
    assert not changed[~hole].any()
    # ... and is exactly what aerial-inpaint writes for this image and this mask.
    mask_path, cli_path = tmp_path / "mask.png", tmp_path / "cli.png"
    Image.fromarray(mask).save(mask_path)
    options = ["--model", "pretrained", "--device", "cpu", "-q"]
    assert inpaint_cli.main([str(photo_path), str(mask_path), "-o", str(cli_path), *options]) == 0
    np.testing.assert_array_equal(result, np.asarray(Image.open(cli_path)))


def test_bad_uploads_and_empty_mask_are_messages_on_the_page(tmp_path: Path) -> None:
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    not_an_image = tmp_path / "broken.png"
    not_an_image.write_text("this is not a picture")
    too_big = tmp_path / "huge.png"
    too_big.write_bytes(np.random.default_rng(0).bytes(int(1.5 * 2**20)))
    photo_path = tmp_path / "scene.png"
    _photograph(photo_path)
    port = page_driver.free_port()
    with (
        page_driver.running_server(port, server_tmp, ["--device", "cpu", "--max-upload-mb", "1"]),
        page_driver.browser_page() as page,
    ):
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#photo-file input[type=file]").set_input_files(str(too_big))
        toast = page.wait_for_selector(".toast-body", timeout=60_000)
        assert "maximum allowed size of 1.0 Mb" in toast.inner_text()
        assert not any(p.name == "huge.png" for p in server_tmp.rglob("*")), "refused, kept"
        page.reload()
        page.wait_for_selector("#photo-file")
        page.locator("#photo-file input[type=file]").set_input_files(str(not_an_image))
        toast = page.wait_for_selector(".toast-body", timeout=60_000)
        text = toast.inner_text()
        assert "broken.png" in text and "not a readable image" in text, text
        assert "Traceback" not in page.content()
        page.reload()
        page_driver.upload_photo(page, photo_path)
        page.locator("#fill-button").click()  # nothing painted
        toast = page.wait_for_selector(".toast-body:has-text('no hole')", timeout=60_000)
        assert "paint over what should be filled" in toast.inner_text()
