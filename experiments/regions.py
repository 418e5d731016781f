"""Where the product is in a real photo: searching regions of it beside the whole photo.

Real customer photos (a query manifest: phone photos with their ``product_id``) against a
catalog manifest, through the road the server uses (:func:`vsearch.images.model_input` at
the photo's full resolution, the model's ``embed_pixels``) and the plain cosine over
products (a product scores its best photo). Each query photo is embedded whole and in a
fixed set of regions; strategies merge those searches:

- a set of regions scored by ``max``: a product's score is its best score over the regions
  (the whole photo always among them), so a region can only lift a product that it shows;
- ``best region``: the ranking of the one region whose first answer scores highest.

The catalog is embedded as it is and with its photos trimmed to the product (near-white
margins cut: a shop's catalog photo is a product on a white backdrop), to see whether
the framing of the two sides matters. Embeddings are computed once; every strategy is a
numpy read of them, so the table is cheap to extend.

    python -m experiments.regions --model saved_models/embedding.tflite \\
        --catalog data/grocery/catalog.csv --queries data/grocery/queries.csv

Rewrites ``experiments/results/regions.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import output_args, publish, shown
from vsearch.catalog.manifest import read_manifest
from vsearch.embedder import embed_images, load_embedder
from vsearch.images import Box, crop, model_input, to_pixels

WHOLE: Box = (0.0, 0.0, 1.0, 1.0)
# Named regions as fractions of the upright photo (x0, y0, x1, y1).
REGIONS: dict[str, Box] = {
    "whole": WHOLE,
    "centre 80%": (0.1, 0.1, 0.9, 0.9),
    "centre 60%": (0.2, 0.2, 0.8, 0.8),
    "centre 40%": (0.3, 0.3, 0.7, 0.7),
    **{f"grid {r}{c}": (0.25 * c, 0.25 * r, 0.25 * c + 0.5, 0.25 * r + 0.5) for r in range(3) for c in range(3)},
}
STRATEGIES: dict[str, tuple[str, ...]] = {
    "whole photo": ("whole",),
    "whole + centre 80%": ("whole", "centre 80%"),
    "whole + centre 60%": ("whole", "centre 60%"),
    "whole + centre 80% + 60%": ("whole", "centre 80%", "centre 60%"),
    "whole + centres 80/60/40%": ("whole", "centre 80%", "centre 60%", "centre 40%"),
    "whole + 3x3 grid of halves": ("whole", *(f"grid {r}{c}" for r in range(3) for c in range(3))),
    "all 13 regions": tuple(REGIONS),
}
WHITE = 245  # a backdrop pixel: every channel at least this bright
TRIM_MARGIN = 0.04  # of the product box's side, kept around it


def frozen_imagenet():
    """The baseline: ImageNet MobileNetV2 features (global average pooling), as `vsearch eval` builds it."""
    from bench.common import use_local_weights

    use_local_weights()  # before Keras is imported: it reads KERAS_HOME once
    from vsearch.embedder import KerasEmbedder
    from vsearch.learn import models

    return KerasEmbedder(models.build_pooled_features(models.build_backbone(224, "imagenet"), 224))


def trimmed_box(pixels: np.ndarray) -> Box:
    """The box of a catalog photo that is not near-white backdrop (the whole photo if none is found)."""
    ink = (pixels < WHITE).any(axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return WHOLE
    height, width = ink.shape
    dy, dx = TRIM_MARGIN * (rows[-1] - rows[0] + 1), TRIM_MARGIN * (cols[-1] - cols[0] + 1)
    return (
        max(0.0, (cols[0] - dx) / width),
        max(0.0, (rows[0] - dy) / height),
        min(1.0, (cols[-1] + 1 + dx) / width),
        min(1.0, (rows[-1] + 1 + dy) / height),
    )


def embed_catalog(embedder, paths: list[str], trim: bool) -> np.ndarray:
    """Unit vectors of the catalog photos, as they are or trimmed to the product."""
    if not trim:
        embedded = embed_images(embedder, paths, progress="catalog")
        if embedded.bad:
            raise SystemExit(f"catalog photos could not be read: {embedded.bad}")
        return embedded.vectors
    pixels = []
    for path in paths:
        photo = to_pixels(path)
        pixels.append(crop(photo, trimmed_box(photo)))
    return embed_images(embedder, pixels, progress="catalog trimmed").vectors


def embed_regions(embedder, paths: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    """Per region name, the (queries, dim) unit vectors of that region of every query photo."""
    size = int(embedder.image_size)
    names = list(REGIONS)
    out = {name: [] for name in names}
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        inputs = []
        for path in paths[start : start + batch]:
            photo = to_pixels(path)
            inputs += [model_input(crop(photo, REGIONS[name]), size) for name in names]
        vectors = embedder.embed_pixels(np.stack(inputs))
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, name in enumerate(names):
            out[name].append(vectors[i :: len(names)])
        print(f"  regions: {min(start + batch, len(paths))}/{len(paths)} photos, {time.perf_counter() - started:.0f}s")
    return {name: np.concatenate(parts) for name, parts in out.items()}


def product_scores(queries: np.ndarray, catalog: np.ndarray, owner: np.ndarray, products: int) -> np.ndarray:
    """(queries, products): each product scored by its best photo."""
    scores = np.full((len(queries), products), -np.inf, np.float32)
    np.maximum.at(scores.T, owner, (queries @ catalog.T).T)
    return scores


def ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each query's product (ties counted against it)."""
    return (scores > scores[np.arange(len(targets)), targets][:, None]).sum(axis=1)


def recalls(rank: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": float((rank < k).mean()) for k in (1, 5, 10)}


def strategy_ranks(per_region: dict[str, np.ndarray], regions: tuple[str, ...], targets: np.ndarray) -> dict:
    """Ranks under ``max`` over the regions, and under the best region's own ranking."""
    stacked = np.stack([per_region[name] for name in regions])  # (regions, queries, products)
    best = stacked.max(axis=2).argmax(axis=0)
    chosen = stacked[best, np.arange(stacked.shape[1])]
    return {"max": ranks(stacked.max(axis=0), targets), "best region": ranks(chosen, targets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="saved_models/embedding.tflite",
        help="SavedModel folder, .tflite, or imagenet (frozen features)",
    )
    parser.add_argument("--catalog", default="data/grocery/catalog.csv", help="catalog manifest")
    parser.add_argument("--queries", default="data/grocery/queries.csv", help="query manifest (real photos)")
    output_args(parser, "regions", folder="experiments")
    args = parser.parse_args()

    embedder = frozen_imagenet() if args.model == "imagenet" else load_embedder(args.model)
    catalog, queries = read_manifest(args.catalog).photos, read_manifest(args.queries).photos
    products = sorted({p.product_id for p in catalog})
    index = {pid: i for i, pid in enumerate(products)}
    owner = np.array([index[p.product_id] for p in catalog])
    kept = [q for q in queries if q.product_id in index]
    targets = np.array([index[q.product_id] for q in kept])
    per_region = embed_regions(embedder, [q.image for q in kept])

    rows = []
    for trim in (False, True):
        vectors = embed_catalog(embedder, [p.image for p in catalog], trim)
        scores = {name: product_scores(v, vectors, owner, len(products)) for name, v in per_region.items()}
        for label, regions in STRATEGIES.items():
            for merge, rank in strategy_ranks(scores, regions, targets).items():
                if merge == "best region" and len(regions) == 1:
                    continue
                figures = recalls(rank)
                rows.append(
                    f"| {'trimmed' if trim else 'as it is'} | {label} | {merge} | {len(regions)} | "
                    + " | ".join(f"{figures[k]:.3f}" for k in ("R@1", "R@5", "R@10"))
                    + " |"
                )
    lines = [
        f"Model `{shown(args.model)}`; catalog `{shown(args.catalog)}` ({len(catalog)} photos of "
        f"{len(products)} products); queries `{shown(args.queries)}` ({len(kept)} real photos whose product "
        f"is in the catalog, {len(queries) - len(kept)} left out). Plain cosine over products; "
        '"crops" is the number of model inputs per query (the cost of a search, against 1).',
        "",
        "| catalog photos | regions searched | merge | crops | R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    publish(args, "Searching regions of a real photo", lines)


if __name__ == "__main__":
    main()
