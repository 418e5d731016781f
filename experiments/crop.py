"""Searching a part of the photo (a box): exact-item recall with and without the box.

Issue 21's measurement of ``box=x0,y0,x1,y1``. Two kinds of photo of the validation
images, each searched through the served road (the exported model; the box cut from the
upright photo at full resolution, as `Searcher.search(..., box=...)` does), ranked among
catalog (train) + validation originals as in `vsearch eval` and `experiments.robustness`:

- ``clutter``: `experiments.robustness`'s ``background`` photos (the same seeded photos:
  the item shrunk to 45-70% onto a cluttered background), searched whole, and with a box
  where the item was pasted; compared with the clean photo (the original itself, so its
  R@1 is a self-match: the ceiling);
- ``composite``: validation photos in seeded groups of ``--per-canvas`` (4: a 2 x 2 grid on
  a white canvas, each photo at 80-95% of its cell, placed at random in it), each searched
  with a box around it (R@1 per box), and the whole canvas searched once: how often its
  first result is any of its items, and each item's R@1 / R@10 from that one search.

Both kinds are also searched with a hand-drawn box (:func:`drawn_box`): the exact box with
each edge moved on its own by a seeded uniform amount within +-``--spreads`` (15% and 30%)
of the box's width or height, in or out (so the box is loose on one side, tight on
another), clipped to the photo. The 30% box is the 15% box's draw doubled, so the two
rows differ only in how far the hand strays.

    python -m experiments.crop                 # saved_models/embedding
    python -m experiments.crop --model saved_models/embedding.tflite   # same model, faster on CPU
    python -m experiments.crop --limit 100     # a seeded subset of the validation photos

Needs `make demo`. Rewrites `experiments/results/crop.md`.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT, output_args, publish, shown
from experiments.branch_mix import load_queries
from experiments.robustness import decode_all, placed_photos

CELL = 400  # px, a composite's cell (the validation photos are about 400 x 533)
CLUTTER_DRAWS, COMPOSITE_DRAWS = 3, 4  # seed streams of the hand-drawn boxes (robustness.py uses 0-8 per kind)


def composite(images: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """``images`` in a grid on one white canvas, and the box (fractions) of each."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    canvas = Image.new("RGB", (cols * CELL, rows * CELL), (255, 255, 255))
    boxes = []
    for i, pixels in enumerate(images):
        img = Image.fromarray(pixels, "RGB")
        scale = rng.uniform(0.80, 0.95) * CELL / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
        cx, cy = (i % cols) * CELL, (i // cols) * CELL
        x = cx + int(rng.integers(0, CELL - img.size[0] + 1))
        y = cy + int(rng.integers(0, CELL - img.size[1] + 1))
        canvas.paste(img, (x, y))
        boxes.append(
            (
                x / canvas.size[0],
                y / canvas.size[1],
                (x + img.size[0]) / canvas.size[0],
                (y + img.size[1]) / canvas.size[1],
            )
        )
    return np.asarray(canvas), boxes


def drawn_box(box: tuple, spread: float, draw: np.ndarray) -> tuple:
    """``box`` as a person might drag it: edge k moved by ``draw[k] * spread`` of the box's size.

    Args:
        box: The exact box, ``x0, y0, x1, y1`` fractions of the photo.
        spread: The largest move of an edge, as a share of the box's width (x0, x1) or
            height (y0, y1); below 0.5, so the box cannot turn inside out.
        draw: Four numbers in -1..1 (uniform, seeded), one per edge; negative moves left / up.
    Returns:
        The moved box, clipped to the photo (0..1).
    """
    if not 0 <= spread < 0.5:
        raise ValueError(f"spread {spread} must be in [0, 0.5): a larger move can turn the box inside out")
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    moved = np.array([x0, y0, x1, y1]) + np.asarray(draw) * spread * np.array([w, h, w, h])
    return tuple(float(v) for v in np.clip(moved, 0.0, 1.0))


def edge_draws(count: int, seed: int, stream: int) -> np.ndarray:
    """(count, 4) seeded uniform -1..1: box i's edge moves, the same for every spread."""
    return np.stack([np.random.default_rng([seed, stream, i]).uniform(-1, 1, 4) for i in range(count)])


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def cut(photos: list[np.ndarray], boxes: list[tuple]) -> list[np.ndarray]:
    """Each photo's box, cut as the served road cuts it (`Searcher.model_input(..., box=)` cuts the
    full-resolution photo with `to_pixels(..., box=)`, then resizes)."""
    from vsearch.images import to_pixels

    return [to_pixels(p, f"<photo {i}>", box=b) for i, (p, b) in enumerate(zip(photos, boxes))]


def make_photos(paths: list, seed: int, limit: int | None, per_canvas: int) -> dict:
    """Step 1: the clutter photos and composite canvases, and the exact box of each item."""
    decoded = decode_all(paths)
    # The clutter photos are made for every validation image (robustness.py's seeds), then subset.
    clutter, clutter_boxes = placed_photos(decoded, seed)
    chosen = np.arange(len(paths))
    if limit and limit < len(paths):
        chosen = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
    order = np.random.default_rng([seed, 1]).permutation(chosen)
    groups = [order[i : i + per_canvas] for i in range(0, len(order) - per_canvas + 1, per_canvas)]
    canvases, canvas_boxes = [], []
    for g, group in enumerate(groups):
        canvas, boxes = composite([decoded[i] for i in group], np.random.default_rng([seed, 2, g]))
        canvases.append(canvas)
        canvas_boxes.append(boxes)
    return {
        "chosen": chosen,
        "clutter": [clutter[i] for i in chosen],
        "clutter_boxes": [clutter_boxes[i] for i in chosen],
        # Drawn per validation image, so a photo gets the same hand whatever --limit is.
        "clutter_draws": edge_draws(len(paths), seed, CLUTTER_DRAWS)[chosen],
        "groups": groups,
        "canvases": canvases,
        "canvas_boxes": canvas_boxes,
    }


def box_rows(
    kind: str,
    embedder,
    recall,
    photos: list,
    boxes: list,
    draws: np.ndarray,
    targets: np.ndarray,
    spreads: list[float],
    queries: str,
) -> tuple[list[str], dict]:
    """Step 3: ``photos`` searched with the exact box and with a hand-drawn box per spread.

    Returns the table rows and each search's recall (``"exact"``, then each spread).
    """
    from vsearch.learn.evaluate import embed_all

    found = {"exact": recall(embed_all(embedder, cut(photos, boxes), 32, f"{kind} boxes"), targets)}
    rows = [
        f"| {kind} | exact box around the item | {queries} | **{found['exact']['recall@1']:.3f}** | "
        f"{found['exact']['recall@10']:.3f} |"
    ]
    for spread in spreads:
        drawn = [drawn_box(b, spread, d) for b, d in zip(boxes, draws)]
        found[spread] = recall(embed_all(embedder, cut(photos, drawn), 32, f"{kind} boxes +-{spread:.0%}"), targets)
        overlap = np.mean([iou(a, b) for a, b in zip(boxes, drawn)])
        rows.append(
            f"| {kind} | hand-drawn box, edges +-{spread:.0%} (mean IoU {overlap:.2f}) | {queries} | "
            f"**{found[spread]['recall@1']:.3f}** | {found[spread]['recall@10']:.3f} |"
        )
    return rows, found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"))
    ap.add_argument("--per-canvas", type=int, default=4, help="validation photos on one composite canvas")
    ap.add_argument("--limit", type=int, help="a seeded subset of this many validation photos (default: all)")
    ap.add_argument(
        "--spreads",
        default="0.15,0.30",
        help="hand-drawn boxes: the largest move of each edge, shares of the box's size (< 0.5)",
    )
    ap.add_argument("--seed", type=int, default=11)
    output_args(ap, "crop", "experiments")
    args = ap.parse_args(argv)
    spreads = [float(s) for s in args.spreads.split(",") if s]
    for spread in spreads:
        if not 0 <= spread < 0.5:
            ap.error(f"--spreads: {spread} is not in [0, 0.5)")
    from vsearch.embedder import load_embedder
    from vsearch.learn import metrics
    from vsearch.learn.evaluate import customer_matching, embed_all

    t0 = time.perf_counter()
    # Step 1: the photos.
    data = load_queries(Path(args.data), customer_photos=False)
    paths = data["queries"].paths
    made = make_photos(paths, args.seed, args.limit, args.per_canvas)
    sub, groups = made["chosen"], made["groups"]

    # Step 2: the catalog and the originals, the pool every search is ranked in.
    embedder = load_embedder(args.model)
    catalog = embed_all(embedder, data["catalog"].paths, 32, "catalog")
    originals = embed_all(embedder, paths, 32, "originals")
    pool = np.concatenate([catalog, originals])

    def recall(vectors, tgt):
        return customer_matching(vectors, np.asarray(tgt), catalog, originals)

    # Step 3: clutter photos, whole and boxed.
    n = len(sub)
    clean = recall(originals[sub], sub)
    whole = recall(embed_all(embedder, made["clutter"], 32, "clutter"), sub)
    boxed_rows, boxed = box_rows(
        "clutter", embedder, recall, made["clutter"], made["clutter_boxes"], made["clutter_draws"], sub, spreads, str(n)
    )
    rows = [
        f"| clutter | clean photo (the original: a self-match) | {n} | {clean['recall@1']:.3f} | "
        f"{clean['recall@10']:.3f} |",
        f"| clutter | whole photo, no box | {n} | {whole['recall@1']:.3f} | {whole['recall@10']:.3f} |",
        *boxed_rows,
    ]

    # Step 4: composite canvases, box by box and whole.
    items = np.concatenate(groups)
    per_box_rows, per_box = box_rows(
        "composite",
        embedder,
        recall,
        [c for c, bs in zip(made["canvases"], made["canvas_boxes"]) for _ in bs],
        [b for bs in made["canvas_boxes"] for b in bs],
        edge_draws(len(items), args.seed, COMPOSITE_DRAWS),
        items,
        spreads,
        f"{len(items)} boxes",
    )
    canvas_vectors = embed_all(embedder, made["canvases"], 32, "composites")
    ranks = metrics.rank_of_targets(
        np.repeat(canvas_vectors, args.per_canvas, axis=0), pool, items + len(catalog)
    ).reshape(len(groups), args.per_canvas)
    any_first = float(np.mean(ranks.min(axis=1) == 0))
    any_top10 = float(np.mean(ranks.min(axis=1) < 10))
    found10 = float(np.mean((ranks < 10).sum(axis=1)))
    rows += [
        *per_box_rows,
        f"| composite | whole canvas, each item | {len(items)} items | {np.mean(ranks == 0):.3f} | "
        f"{np.mean(ranks < 10):.3f} |",
        f"| composite | whole canvas, any of its items | {len(groups)} canvases | {any_first:.3f} | {any_top10:.3f} |",
    ]

    # Step 5: the results file.
    target = 0.95 * clean["recall@1"]
    verdicts = "; ".join(
        f"{name} {'met' if boxed[key]['recall@1'] >= target else 'not met'} ({boxed[key]['recall@1']:.3f})"
        for name, key in [("exact box", "exact"), *((f"+-{s:.0%}", s) for s in spreads)]
    )
    subset = (
        f"a seeded subset of {n} of the {len(paths)} validation photos"
        if n < len(paths)
        else f"the {n} validation photos"
    )
    lines = [
        f"Model `{shown(args.model)}`, through the served road (`embed_images`; a box is cut from the "
        f"full-resolution photo by `to_pixels(..., box=)` as `Searcher.search(..., box=)` does). "
        f"{subset.capitalize()}, matched among {len(data['catalog'].paths)} catalog + {len(paths)} "
        f"validation originals, as in `vsearch eval`; {time.perf_counter() - t0:.0f} s.",
        "",
        "- clutter: `experiments.robustness`'s `background` photos (same seeds), the exact box being "
        "where the item was pasted;",
        f"- composite: {len(groups)} canvases of {args.per_canvas} photos (a grid on white, each photo at "
        f"80-95% of a {CELL} px cell); the whole canvas is one search, its items' ranks read from it;",
        "- hand-drawn box: the exact box with each edge moved on its own by a seeded uniform amount "
        f"within +-{' / +-'.join(f'{s:.0%}' for s in spreads)} of the box's width or height, in or out, "
        "clipped to the photo (the same draws for every spread, scaled); IoU is with the exact box.",
        "",
        "| photo | searched | queries | R@1 | R@10 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Target (issue 21): clutter R@1 with a box >= 0.95 x clean = {target:.3f}: {verdicts}. "
        f"The whole canvas's first result is one of its items for {any_first:.0%} of canvases "
        f"(on average {found10:.1f} of its {args.per_canvas} items in its top 10); "
        f"an exact box finds each item first {per_box['exact']['recall@1']:.0%} of the time"
        + "".join(f", a +-{s:.0%} box {per_box[s]['recall@1']:.0%}" for s in spreads)
        + ".",
    ]
    publish(args, "Searching a part of the photo (a box)", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
