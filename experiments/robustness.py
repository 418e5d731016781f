"""Customer photos the model was not trained on: exact-item recall per kind of damage.

`vsearch eval`'s customer photos (crop, rotation, colour, blur, JPEG, padding) are made
with the same steps the tower's training views take, only with other code and ranges.
Real customers' photos, and any other evaluation's, have damage of their own. This makes
one seeded photo per validation image for each kind of damage below, one kind at a time,
and reports where the exact original ranks among catalog + validation originals (R@1,
R@10), for the exported model and the frozen ImageNet baseline in the same run:

- ``eval``: `vsearch eval`'s customer photo (the reference row);
- ``perspective``: the photo taken at an angle (each corner moved inwards by up to 8-18%);
- ``low_res``: a small photo (longest side 48-80 px) scaled back up;
- ``noise``: sensor noise (sigma 10-20 of 255) and JPEG quality 40;
- ``dark``: low light (brightness 0.35-0.55) with noise (sigma 6);
- ``white_balance``: a colour cast (per-channel gains 0.7-1.3);
- ``occlusion``: a rectangle of 10-25% of the area hidden (a hand, a tag);
- ``background``: the item shrunk to 45-70% onto a cluttered, textured background;
- ``rotate90``: a quarter turn (a phone held sideways, no EXIF orientation).

    python -m experiments.robustness                       # saved_models/embedding
    python -m experiments.robustness --model saved_models/embedding-int8.tflite --kinds eval,noise \
        --out experiments/results/robustness-int8.md

No kind here is used in training: the table measures how the tower generalizes, and is
no target to tune the training views against one by one (adding the quarter turn, the
hidden patch and the small photo to the training views was measured:
experiments/results/robustness.md). Needs `make demo`. Rewrites
`experiments/results/robustness.md`.
"""

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bench.common import ROOT, output_args, publish, shown
from experiments.branch_mix import load_queries


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _noisy(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8))


def perspective(img, rng):
    w, h = img.size
    mx, my = w * rng.uniform(0.08, 0.18), h * rng.uniform(0.08, 0.18)
    dx = lambda: mx * rng.random()  # noqa: E731
    dy = lambda: my * rng.random()  # noqa: E731
    # The input points each output corner samples (PIL's quad order: UL, LL, LR, UR), each
    # moved inwards by its own amount: the plane of the photo seen at an angle.
    quad = (dx(), dy(), dx(), h - dy(), w - dx(), h - dy(), w - dx(), dy())
    return img.transform((w, h), Image.QUAD, quad, resample=Image.BILINEAR)


def low_res(img, rng):
    side = int(rng.integers(48, 81))
    scale = side / max(img.size)
    small = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
    return _jpeg(small, 75).resize(img.size, Image.BICUBIC)


def noise(img, rng):
    return _jpeg(_noisy(img, rng.uniform(10, 20), rng), 40)


def dark(img, rng):
    a = np.asarray(img, dtype=np.float32) * rng.uniform(0.35, 0.55)
    return _jpeg(_noisy(Image.fromarray(a.astype(np.uint8)), 6, rng), 70)


def white_balance(img, rng):
    gains = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) * gains, 0, 255).astype(np.uint8))


def occlusion(img, rng):
    w, h = img.size
    area = rng.uniform(0.10, 0.25) * w * h
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    rw, rh = min(w, int(math.sqrt(area * aspect))), min(h, int(math.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    out = img.copy()
    out.paste(tuple(int(v) for v in rng.integers(0, 256, 3)), (x0, y0, x0 + rw, y0 + rh))
    return out


def clutter(w: int, h: int, rng) -> Image.Image:
    """A seeded cluttered, textured background of ``w`` x ``h``: a bedspread, a floor, a shelf."""
    # Coloured blobs at several scales.
    layers = [
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC),
            dtype=np.float32,
        )
        for s in (4, 16, 64)
    ]
    texture = 0.5 * layers[0] + 0.3 * layers[1] + 0.2 * layers[2]
    texture = 0.5 * texture + 0.5 * texture.mean(axis=2, keepdims=True)  # half the saturation
    return Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))


def background_placed(img, rng) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """:func:`background`'s photo and where the item is in it (x0, y0, x1, y1 fractions, a box)."""
    w, h = img.size
    canvas = clutter(w, h, rng)
    scale = rng.uniform(0.45, 0.70)
    item = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
    x, y = int(rng.integers(0, w - item.size[0] + 1)), int(rng.integers(0, h - item.size[1] + 1))
    canvas.paste(item, (x, y))
    box = (x / w, y / h, (x + item.size[0]) / w, (y + item.size[1]) / h)
    return canvas.filter(ImageFilter.GaussianBlur(0.6)), box


def background(img, rng):
    return background_placed(img, rng)[0]


def rotate90(img, rng):
    return img.transpose(Image.ROTATE_90 if rng.random() < 0.5 else Image.ROTATE_270)


KINDS = {
    "eval": None,
    "perspective": perspective,
    "low_res": low_res,
    "noise": noise,
    "dark": dark,
    "white_balance": white_balance,
    "occlusion": occlusion,
    "background": background,
    "rotate90": rotate90,
}


KINDS_INDEX = {k: i for i, k in enumerate(KINDS)}


def decode_all(paths) -> list[np.ndarray]:
    """The images of ``paths`` as upright RGB uint8 (decoded once, for every kind of damage)."""
    from vsearch.images import to_pixels

    return [to_pixels(path) for path in paths]


def photo_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of image ``index``'s photo with damage ``kind``."""
    return np.random.default_rng([seed, KINDS_INDEX[kind], index])


def placed_photos(images: list[np.ndarray], seed: int = 11) -> tuple[list[np.ndarray], list[tuple]]:
    """The ``background`` photos of :func:`damaged_photos` (same seeds) and the item's box in each."""
    placed = [
        background_placed(Image.fromarray(pixels, "RGB"), photo_rng(seed, "background", i))
        for i, pixels in enumerate(images)
    ]
    return [np.asarray(img.convert("RGB")) for img, _ in placed], [box for _, box in placed]


def damaged_photos(images: list[np.ndarray], kind: str, seed: int = 11) -> list[np.ndarray]:
    """One seeded photo of each RGB uint8 image with damage ``kind`` (RGB uint8)."""
    from vsearch.augment import customer_photo

    out = []
    for i, pixels in enumerate(images):
        rng = photo_rng(seed, kind, i)
        if kind == "eval":
            out.append(customer_photo(pixels, rng))
        else:
            out.append(np.asarray(KINDS[kind](Image.fromarray(pixels, "RGB"), rng).convert("RGB")))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--no-baseline", action="store_true", help="skip the frozen ImageNet baseline")
    ap.add_argument("--save", help="write each kind's first 8 photos side by side to this PNG")
    output_args(ap, "robustness", "experiments")
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    from vsearch.embedder import KerasEmbedder, load_embedder
    from vsearch.learn import models  # after the checks: importing TensorFlow takes seconds
    from vsearch.learn.evaluate import customer_matching, embed_all

    t0 = time.perf_counter()
    data = load_queries(Path(args.data), customer_photos=False)  # the photos are made below
    paths = data["queries"].paths
    decoded = decode_all(paths)
    photos = {k: damaged_photos(decoded, k) for k in kinds}
    del decoded
    if args.save:
        save_strip(photos, args.save)
    exported = load_embedder(args.model)
    embedders = [(Path(args.model).name, exported)]
    if not args.no_baseline:
        frozen = models.build_backbone(exported.image_size, "imagenet")
        embedders.insert(
            0, ("frozen ImageNet", KerasEmbedder(models.build_pooled_features(frozen, exported.image_size)))
        )
    targets = np.arange(len(paths))
    rows = {}
    for name, embedder in embedders:
        catalog = embed_all(embedder, data["catalog"].paths, 32, f"{name} catalog")
        originals = embed_all(embedder, paths, 32, f"{name} queries")
        for kind in kinds:
            c = customer_matching(embed_all(embedder, photos[kind], 32), targets, catalog, originals)
            rows.setdefault(kind, []).append((c["recall@1"], c["recall@10"]))
    names = [n for n, _ in embedders]
    lines = [
        f"Model `{shown(args.model)}`. {len(paths)} photos per kind (one seeded photo per validation image; "
        f"ranges in the script's docstring), matched among {len(data['catalog'].paths)} catalog + "
        f"{len(paths)} originals, as in `vsearch eval`; {time.perf_counter() - t0:.0f} s.",
        "",
        "| damage | " + " | ".join(f"{n} R@1 | {n} R@10" for n in names) + " |",
        "|---" * (1 + 2 * len(names)) + "|",
    ]
    lines += [f"| {kind} | " + " | ".join(f"{r1:.3f} | {r10:.3f}" for r1, r10 in rows[kind]) + " |" for kind in kinds]
    publish(args, "Customer photos with damage the tower never trained on", lines)
    return 0


def save_strip(photos: dict, path: str, n: int = 8, side: int = 112) -> None:
    """Each kind's first ``n`` photos in a row, for a look at what the table measures."""
    sheet = Image.new("RGB", (n * side, len(photos) * side), (255, 255, 255))
    for r, kind in enumerate(photos):
        for c, pixels in enumerate(photos[kind][:n]):
            img = Image.fromarray(pixels)
            img.thumbnail((side, side))
            sheet.paste(img, (c * side, r * side))
    sheet.save(path)


if __name__ == "__main__":
    sys.exit(main())
