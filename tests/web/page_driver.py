"""Drive ``aerial-inpainting serve`` in headless Chromium (Playwright's Python API).

Shared by the browser test (tests/web/test_serve_browser.py) and the screenshot script
(tests/web/serve_screenshot.py). Nothing is downloaded: Chromium is Debian's package
(``apt-get install chromium``), driven through ``executable_path``; Playwright's own
browsers (``playwright install``) are never used.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("AERIAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing_reason() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        return 'Gradio is not installed (pip install -e ".[app]")'
    if importlib.util.find_spec("playwright") is None:
        return 'Playwright is not installed (pip install -e ".[test]")'
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set AERIAL_CHROMIUM)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    port: int, temp_dir: Path, options: Sequence[str] = (), timeout: float = 120.0
) -> Iterator[subprocess.Popen]:
    """``aerial-inpainting serve --port PORT OPTIONS`` in a subprocess whose TMPDIR is
    ``temp_dir``; yields once the page answers, stops it with SIGTERM on exit."""
    env = dict(os.environ, TMPDIR=str(temp_dir), GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, "-m", "aerial_inpainting", "serve", "--port", str(port)]
    log = temp_dir.parent / f"serve-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([*command, *options], env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server stopped: {log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no page after {timeout} s: {log.read_text()}") from None
                time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A headless Chromium page (Debian's Chromium, nothing downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def upload_photo(page, path: Path, timeout: float = 60.0) -> None:
    """Upload ``path`` as the photograph and wait until the editor shows it."""
    page.locator("#photo-file input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "() => !!document.querySelector('#editor') && "
        "!document.querySelector('#editor').innerText.includes('select the draw tool')",
        timeout=timeout * 1000,
    )
    time.sleep(1.0)  # the canvas fits the picture after it is shown


def image_to_page(page, image_size: tuple[int, int]):
    """A function (x, y) in image pixels -> page coordinates of the editor's canvas.

    The editor shows the picture centred in its canvas at the zoom it displays ("300%").
    """
    width, height = image_size
    text = page.locator("#editor .zoom-number").inner_text()
    zoom = float(re.search(r"([\d.]+)\s*%", text).group(1)) / 100.0
    box = page.locator("#editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def to_page(x: float, y: float) -> tuple[float, float]:
        return cx + (x - width / 2) * zoom, cy + (y - height / 2) * zoom

    return to_page


def _drag(page, to_page, start, end, steps: int) -> None:
    page.mouse.move(*to_page(*start))
    page.mouse.down()
    page.wait_for_timeout(100)
    for t in np.linspace(0.0, 1.0, steps):
        page.mouse.move(*to_page(*(np.asarray(start) + t * (np.subtract(end, start)))))
        page.wait_for_timeout(20)
    page.wait_for_timeout(100)
    page.mouse.up()
    page.wait_for_timeout(300)


def _painted(page, points) -> bool:
    """Whether every page point shows the magenta brush (R and B well above G)."""
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    for x, y in points:
        r, g, b = shot[int(y + 0.5), int(x + 0.5)]
        if not (r - g > 80 and b - g > 80):
            return False
    return True


def paint_stroke(page, image_size, start, end, steps: int = 25, attempts: int = 4) -> None:
    """Drag the brush from ``start`` to ``end`` (image pixel coordinates (x, y)).

    Gradio's editor (headless, software rendering) sometimes drops pointer moves, so
    that only part of a stroke is drawn: the stroke is dragged again over itself until
    the screen shows the brush along the middle 80 % of it. RuntimeError after
    ``attempts`` tries.
    """
    to_page = image_to_page(page, image_size)
    inner = [
        to_page(*(np.asarray(start) + t * np.subtract(end, start)))
        for t in np.linspace(0.1, 0.9, 9)
    ]
    for _ in range(attempts):
        _drag(page, to_page, start, end, steps)
        if _painted(page, inner):
            return
    raise RuntimeError(f"the editor did not draw the stroke in {attempts} tries")


def press_fill(page, timeout: float = 300.0) -> None:
    """Press the button and wait for the result file (or an error message)."""
    page.locator("#fill-button").click()
    page.wait_for_selector("#result-file a, .toast-body", timeout=timeout * 1000)


def download(page, elem_id: str) -> tuple[np.ndarray, str]:
    """The file offered by the gr.File ``elem_id``: (its pixels, its URL)."""
    href = page.locator(f"#{elem_id} a").first.get_attribute("href")
    response = page.request.get(href)
    assert response.ok, f"{href}: HTTP {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body()))), href
