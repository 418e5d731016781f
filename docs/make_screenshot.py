"""The README's picture of the upload page: docs/web.png (run by hand).

Starts the real server over the real catalog on a loopback port, opens the page in the
system's headless Chromium (Playwright drives it; no browser is downloaded), uploads a
validation photo through the file input, waits until every result image has loaded and
saves a full-page screenshot.

    .venv/bin/python docs/make_screenshot.py
    .venv/bin/python docs/make_screenshot.py --photo data/clothing/validation/dress/X.jpg -k 8
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_PNG_BYTES = 300 * 1024  # keep the repository light


# A validation photo (not in the catalog) whose results show the page well.
DEFAULT_PHOTO = ROOT / "data" / "clothing" / "validation" / "t-shirt" / "06de9ebd-be39-4cc6-aea7-1d047ccf1a52.jpg"


def shoot(url: str, photo: Path, out: Path, k: int, category: str, chromium: str) -> None:
    """Uploads ``photo`` on the page at ``url`` and saves the page with its results."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        page.fill("#k", str(k))
        page.select_option("#category", category)
        page.set_input_files("#file", str(photo))
        page.wait_for_function(f"document.querySelectorAll('#results .card').length === {k}", timeout=60_000)
        page.wait_for_function("[...document.querySelectorAll('#results img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
        error = page.text_content("#error")
        if error:
            raise SystemExit(f"the page shows an error: {error}")
        page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def shrink_png(path: Path, limit: int = MAX_PNG_BYTES) -> None:
    """Re-encodes with 256 colours when the screenshot is over ``limit`` bytes."""
    from PIL import Image

    if path.stat().st_size <= limit:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    parser.add_argument("--index", default=str(ROOT / "saved_models" / "catalog.vsi"))
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="query photo (default: a validation t-shirt)")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--category", default="auto")
    parser.add_argument("--chromium", default=os.environ.get("VSEARCH_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web.png")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        sys.exit(f"no Chromium at {args.chromium}: apt-get install chromium (or pass --chromium)")
    if not args.photo.is_file():
        sys.exit(f"{args.photo}: no such photo (run `make data`, or pass --photo)")

    from vsearch.search import Searcher
    from vsearch.app import create_app
    from vsearch.serve import BackgroundServer, warm_up

    searcher = Searcher.from_paths(args.model, args.index)
    warm_up(searcher)  # the page shows the search time: leave out the one-off graph tracing
    with BackgroundServer(create_app(searcher)) as server:
        shoot(server.url, args.photo, args.out, args.k, args.category, args.chromium)
    shrink_png(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
