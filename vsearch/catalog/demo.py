"""A demo product catalog from a ``<category>/<photo>`` folder: products with photos and attributes.

The clothing photos are one photo per item; the store holds products with several photos
each and typed attributes to filter on. This module makes such a catalog from the photos,
for demos and for the filtered search on the page:

* each source photo becomes one **product** with three photos: the original (re-encoded),
  its mirror image, and a seeded crop of 75-90% of each side;
* each product gets seeded attributes: ``title``, ``price`` (float), ``brand``, ``colour``
  and ``in_stock`` (bool). They are invented, not read from the photo: ``colour=red``
  keeps a random fifth of the catalog, whatever its photos show;
* ``manifest.csv`` lists one photo per row (``product_id, image, category, title, price,
  brand, colour, in_stock``; ``image`` relative to the manifest), which
  :func:`vsearch.catalog.manifest.read_manifest` reads back; ``demo_catalog.json`` records the
  source, seed, limit, counts and the photos that could not be read.

Photos are read through :func:`vsearch.images.load_image` (the one decoder) and written as
JPEGs with Pillow. The whole folder is built beside ``out_dir`` and swapped in at once
(:func:`vsearch.artifacts.replace_dir`): re-running replaces it, and a failed run leaves
the old one. The same source, seed and limit give the same files.

    python -m vsearch.catalog.demo data/photos/train data/products          # make products
    python -m vsearch.catalog.demo data/photos/train /tmp/products --limit 20 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vsearch.artifacts import printable, replace_dir
from vsearch.errors import DataError, ImageError
from vsearch.images import IMAGE_EXTENSIONS, crop, list_images, load_image

BRANDS = ("Acme", "Northwind", "Zeta", "Kestrel", "Lumen")
COLOURS = ("black", "white", "red", "blue", "green")
VARIANTS = ("original", "mirrored", "cropped")
COLUMNS = ("product_id", "image", "category", "title", "price", "brand", "colour", "in_stock")
IN_STOCK_SHARE = 0.8
JPEG_QUALITY = 90


def source_photos(split_dir: str | os.PathLike, limit: int | None = None, seed: int = 0) -> list[tuple[str, Path]]:
    """(category, path) of the photos under ``split_dir/<category>/``, sorted.

    ``limit``: at most this many photos per category, a seeded sample (for quick demos).

    Raises:
        DataError: no such folder, or no photos in its category folders.
    """
    root = Path(split_dir)
    if not root.is_dir():
        raise DataError(f"{printable(root)}: no such folder (expected <category>/<photo> image files)")
    rng = np.random.default_rng(seed)
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = [p for p in list_images(folder) if not p.name.startswith(".")]
        if limit is not None and len(photos) > limit:
            photos = [photos[i] for i in sorted(rng.choice(len(photos), size=limit, replace=False))]
        found += [(folder.name, p) for p in photos]
    if not found:
        raise DataError(f"{printable(root)}: no photos ({', '.join(IMAGE_EXTENSIONS)}) in <category>/ folders")
    return found


def attributes(category: str, rng: np.random.Generator) -> dict:
    """One product's invented attributes, drawn from ``rng``."""
    brand, colour = str(rng.choice(BRANDS)), str(rng.choice(COLOURS))
    price = round(float(np.exp(rng.normal(3.4, 0.6))), 2)  # log-normal, median about 30
    return {
        "title": f"{brand} {colour} {category}",
        "price": price,
        "brand": brand,
        "colour": colour,
        "in_stock": bool(rng.random() < IN_STOCK_SHARE),
    }


def variants(pixels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A photo's three views: as it is, mirrored left-right, and a seeded crop."""
    width, height = rng.uniform(0.75, 0.9, size=2)
    x0, y0 = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    return {
        "original": pixels,
        "mirrored": np.ascontiguousarray(pixels[:, ::-1]),
        "cropped": crop(pixels, (x0, y0, x0 + width, y0 + height)),
    }


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def product_id(category: str, path: Path) -> str:
    """``<category>-<file stem>``: stable across runs, unique across category folders."""
    return f"{category}-{path.stem}"


def write_products(
    photos: list[tuple[str, Path]], out: Path, seed: int, log: Callable[[str], None]
) -> tuple[list[dict], dict[str, str]]:
    """Writes three JPEGs per readable photo under ``out/images/<category>/``.

    Returns:
        The manifest's rows (one per photo written) and the unreadable photos (path -> why).
    """
    rng = np.random.default_rng(seed)
    rows, skipped = [], {}
    for number, (category, path) in enumerate(photos, start=1):
        # Draw this product's numbers before reading the photo, so that an unreadable photo
        # does not shift every later product's attributes.
        attrs, view_rng = attributes(category, rng), np.random.default_rng(rng.integers(2**63))
        try:
            pixels = load_image(path)
        except ImageError as exc:
            skipped[printable(path)] = exc.reason
            continue
        pid = product_id(category, path)
        for name, view in variants(pixels, view_rng).items():
            image = Path("images") / category / f"{path.stem}-{name}.jpg"
            (out / image).parent.mkdir(parents=True, exist_ok=True)
            (out / image).write_bytes(jpeg_bytes(view))
            rows.append({"product_id": pid, "image": image.as_posix(), "category": category, **attrs})
        if number % 500 == 0:
            log(f"{number}/{len(photos)} photos")
    return rows, skipped


def write_manifest(rows: list[dict], path: Path) -> None:
    """``rows`` as a CSV manifest; prices with two decimals (so the column reads as float)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    f"{row[c]:.2f}" if c == "price" else str(row[c]).lower() if c == "in_stock" else row[c]
                    for c in COLUMNS
                ]
            )


def make_demo_catalog(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    limit: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Turns a ``<category>/<photo>`` folder into a product catalog with a manifest.

    Args:
        split_dir: The photos, ``<category>/<photo>`` (e.g. ``data/photos/train``).
        out_dir: The catalog's folder; replaced as a whole when it exists.
        seed: Seeds the attributes, the crops and the ``limit`` sample.
        limit: At most this many products per category (default: every photo).
        log: Progress lines.
    Returns:
        The path of ``out_dir/manifest.csv``.
    Raises:
        DataError: no photos, or none of them readable.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1 product per category, got {limit}")
    photos = source_photos(split_dir, limit, seed)
    summary: dict = {}

    def fill(staging: Path) -> None:
        rows, skipped = write_products(photos, staging, seed, log)
        if not rows:
            raise DataError(f"{printable(split_dir)}: none of the {len(photos)} photos could be read")
        write_manifest(rows, staging / "manifest.csv")
        summary.update(
            {
                "source": printable(split_dir),
                "seed": seed,
                "limit": limit,
                "variants": list(VARIANTS),
                "products": len(rows) // len(VARIANTS),
                "photos": len(rows),
                "skipped": skipped,
            }
        )
        (staging / "demo_catalog.json").write_text(json.dumps(summary, indent=2) + "\n")

    out = replace_dir(out_dir, fill)
    log(
        f"{summary['products']} products, {summary['photos']} photos in {printable(out)}"
        + (
            f"; {len(summary['skipped'])} unreadable photos left out (see demo_catalog.json)"
            if summary["skipped"]
            else ""
        )
    )
    return out / "manifest.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vsearch.catalog.demo", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="photos laid out <category>/<photo>, e.g. data/photos/train")
    ap.add_argument("out", help="the catalog's folder (replaced), e.g. data/products")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most N products per category")
    args = ap.parse_args(argv)
    try:
        manifest = make_demo_catalog(args.src, args.out, seed=args.seed, limit=args.limit, log=print)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"manifest: {printable(manifest)}")


if __name__ == "__main__":
    main()
