"""The README's picture of the upload page: docs/web.png (run by hand, or `make screenshot`).

Starts the real server over the real catalog on a loopback port, opens the page in the
system's headless Chromium (Playwright drives it; no browser is downloaded), uploads a
customer-like photo through the file input, drags a box around one item on it with the
mouse, waits until the search of that part is drawn (with the verdict banner when the
catalog is calibrated) and every result image has loaded, and saves the page.

The default photo is four validation photos (not in the catalog) on one canvas, two by two:
a hat, a t-shirt, trousers and shoes, the box around the t-shirt.

    .venv/bin/python docs/make_screenshot.py
    .venv/bin/python docs/make_screenshot.py --photo data/photos/validation/dress/X.jpg --box none -k 8
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_PNG_BYTES = 300 * 1024  # keep the repository light
VALIDATION = ROOT / "data" / "photos" / "validation"
# A validation t-shirt (not in the catalog) whose results show the page well.
DEFAULT_TSHIRT = VALIDATION / "t-shirt" / "06de9ebd-be39-4cc6-aea7-1d047ccf1a52.jpg"
CELL = 360  # pixels: each photo is fitted into a square cell of the canvas
GAP = 16  # white pixels between the cells
MARGIN = 0.01  # of the canvas, between a photo's edge and the default box


def default_photos() -> list[Path]:
    """A hat, the t-shirt, trousers and shoes from the validation photos (the first of each other folder)."""
    first = {c: sorted((VALIDATION / c).glob("*.jpg"))[:1] for c in ("hat", "pants", "shoes")}
    return [*first["hat"], DEFAULT_TSHIRT, *first["pants"], *first["shoes"]]


def on_one_canvas(photos: list[Path], out: Path) -> list[tuple[float, float, float, float]]:
    """The photos on one white canvas, in rows of up to ceil(sqrt(n)); returns each photo's box (fractions)."""
    import math

    from PIL import Image

    from vsearch.images import load_image

    cols = math.ceil(math.sqrt(len(photos)))
    rows = math.ceil(len(photos) / cols)
    width, height = cols * CELL + (cols - 1) * GAP, rows * CELL + (rows - 1) * GAP
    canvas = Image.new("RGB", (width, height), "white")
    boxes = []
    for i, path in enumerate(photos):
        image = Image.fromarray(load_image(path))
        image.thumbnail((CELL, CELL))
        x = (i % cols) * (CELL + GAP) + (CELL - image.width) // 2
        y = (i // cols) * (CELL + GAP) + (CELL - image.height) // 2
        canvas.paste(image, (x, y))
        boxes.append((x / width, y / height, (x + image.width) / width, (y + image.height) / height))
    canvas.save(out, quality=92)
    return boxes


def box_to_drag(arg: str | None, boxes: list, pick: int):
    """``--box`` as given (``none``: no box), else the box around photo ``pick`` of several, inset."""
    from vsearch.images import parse_box

    if arg == "none":
        return None
    if arg:
        return parse_box(arg, "--box")
    if len(boxes) < 2:
        return None
    x0, y0, x1, y1 = boxes[pick]
    return (x0 + MARGIN, y0 + MARGIN, x1 - MARGIN, y1 - MARGIN)


def shoot(url: str, photo: Path, box, out: Path, k: int, category: str, chromium: str) -> dict:
    """Uploads ``photo`` on the page at ``url``, drags ``box`` on it (None: none), saves the page.

    Returns the answer the page drew.
    """
    from playwright.sync_api import sync_playwright

    def drawn(action) -> dict:
        with page.expect_response(lambda r: r.url.endswith("/api/search"), timeout=60_000) as response:
            action()
        answer = response.value.json()
        if not response.value.ok:
            raise SystemExit(f"the search failed: {answer.get('error')}")
        page.wait_for_function(
            "n => document.querySelectorAll('#results .card').length === n", arg=len(answer["matches"]), timeout=60_000
        )
        return answer

    def drag():
        rect = page.locator("#preview").bounding_box()
        x0, y0, x1, y1 = (
            rect["x"] + box[0] * rect["width"],
            rect["y"] + box[1] * rect["height"],
            rect["x"] + box[2] * rect["width"],
            rect["y"] + box[3] * rect["height"],
        )
        page.mouse.move(x0, y0)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
        page.mouse.up()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        page.fill("#k", str(k))
        page.select_option("#category", category)
        answer = drawn(lambda: page.set_input_files("#file", str(photo)))
        if box is not None:
            answer = drawn(drag)
        if "match" in answer:
            page.wait_for_selector("#verdict", state="visible")
        page.wait_for_function(
            "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=60_000,
        )
        error = page.text_content("#error")
        if error:
            raise SystemExit(f"the page shows an error: {error}")
        page.mouse.move(0, 0)  # no hover state
        page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    return answer


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
    parser.add_argument(
        "--store",
        default=f"faiss:{ROOT / 'saved_models' / 'catalog.vsi'}",
        help="the catalog: faiss:FILE or milvus:FILE.db|http://HOST:19530",
    )
    parser.add_argument(
        "--photo",
        type=Path,
        action="append",
        help="query photo; given more than once, the photos on one canvas (default: a validation "
        "hat, t-shirt, trousers and shoes)",
    )
    parser.add_argument(
        "--box", default=None, help="x0,y0,x1,y1 to drag on the photo, or none (default: around the --pick photo)"
    )
    parser.add_argument(
        "--pick", type=int, default=1, help="with several photos, the one boxed (default 1: the second)"
    )
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--category", default="auto")
    parser.add_argument("--chromium", default=os.environ.get("VSEARCH_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web.png")
    args = parser.parse_args()
    photos = args.photo or default_photos()
    if not Path(args.chromium).is_file():
        sys.exit(f"no Chromium at {args.chromium}: apt-get install chromium (or pass --chromium)")
    for photo in photos:
        if not photo.is_file():
            sys.exit(f"{photo}: no such photo (run `make data`, or pass --photo)")

    from vsearch.catalog.search import Searcher
    from vsearch.errors import DataError, ImageError
    from vsearch.stores import parse_spec
    from vsearch.web.app import create_app
    from vsearch.web.server import BackgroundServer, warm_up

    try:
        backend, where = parse_spec(args.store)
    except DataError as exc:
        sys.exit(str(exc))
    if not Path(args.model).exists() or (backend == "faiss" and not Path(where).is_file()):
        sys.exit(f"needs a trained model and its catalog: {args.model}, {args.store} (`make demo index`)")

    with tempfile.TemporaryDirectory() as tmp:
        if len(photos) == 1:
            photo, boxes = photos[0], [(0.0, 0.0, 1.0, 1.0)]
        else:
            photo = Path(tmp) / "photos.jpg"
            boxes = on_one_canvas(photos, photo)
        try:
            box = box_to_drag(args.box, boxes, args.pick)
        except ImageError as exc:
            sys.exit(str(exc))
        except IndexError:
            sys.exit(f"--pick {args.pick}: there are {len(photos)} photos")
        searcher = Searcher.from_paths(args.model, f"{backend}:{where}")
        warm_up(searcher)  # the page shows the search time: leave out the one-off graph tracing
        with BackgroundServer(create_app(searcher)) as server:
            answer = shoot(server.url, photo, box, args.out, args.k, args.category, args.chromium)
    shrink_png(args.out)
    verdict = answer.get("match", {}).get("verdict", "none shown: the catalog has no calibration (vsearch calibrate)")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB); box {answer.get('box')}; verdict {verdict}")


if __name__ == "__main__":
    main()
