"""Screenshot of ``aerial-inpainting serve`` after a fill (the picture in the docs).

Run from the repository root (needs the app extra, Playwright and Debian's Chromium)::

    python -m tests.web.serve_screenshot --image PHOTO --out docs/images/serve.png

It starts the server on a free localhost port, uploads PHOTO, paints one stroke (``--stroke
X0 Y0 X1 Y1`` as fractions of the width and height), presses the button and saves the page
as a PNG (colours reduced to a 256-colour palette, to keep the file small).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tests.web import page_driver


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="photograph to upload")
    parser.add_argument("--out", default="docs/images/serve.png")
    parser.add_argument("--model", default="pretrained")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stroke", nargs=4, type=float, default=(0.35, 0.3, 0.6, 0.65), metavar="F"
    )
    parser.add_argument("--width", type=int, default=1280, help="browser window width")
    args = parser.parse_args(argv)
    reason = page_driver.missing_reason()
    if reason:
        print(f"serve_screenshot: {reason}", file=sys.stderr)
        return 1
    with Image.open(args.image) as image:
        width, height = image.size
    x0, y0, x1, y1 = args.stroke
    options = ["--model", args.model, "--device", args.device]
    with tempfile.TemporaryDirectory() as temp:
        server_tmp = Path(temp) / "server"
        server_tmp.mkdir()
        port = page_driver.free_port()
        with (
            page_driver.running_server(port, server_tmp, options),
            page_driver.browser_page(width=args.width, height=900) as page,
        ):
            page.goto(f"http://127.0.0.1:{port}/")
            page_driver.upload_photo(page, Path(args.image))
            page_driver.paint_stroke(
                page, (width, height), (x0 * width, y0 * height), (x1 * width, y1 * height)
            )
            page_driver.press_fill(page)
            page.wait_for_timeout(1500)  # the three views are drawn
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"serve_screenshot: wrote {args.out} ({shot.width}x{shot.height})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
