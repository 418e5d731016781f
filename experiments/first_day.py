"""A shop's first day: instance-retrieval features that need no training on the shop's products.

A model trained on clothing meets a grocery shop: one iconic image per product in the
catalog, customers' phone photos taken in the store as queries (``data/grocery``:
``catalog.csv`` 81 iconic images; ``queries.csv`` 296 phone photos; ``catalog_plus_train.csv``
the same catalog with the 2,640 train photos as further photos of their products, the
second row set). Nothing here learns from grocery photos: every variant is a fixed recipe
on two backbones, frozen ImageNet MobileNetV2 (``imagenet``) and the clothing tower of
``make demo`` (``saved_models/siamese/tower.keras``), whose blocks 14 to 16 and ``Conv_1``
exist twice: its instance branch (``instance``, fine-tuned by the triplet stage from
ImageNet) and its class branch (``class``, the clothing classifier's). Below block 14 the
tower is frozen ImageNet (the three share ``block_12`` and ``block_13``).

- (a) the exported embedding as served (``saved_models/embedding``, 224 px, the served road
  :func:`vsearch.embedder.embed_images`), and the same head rebuilt from the tower on the
  pooled maps (``embedding``: its parity with (a) is printed), which also runs at other sizes;
- (b) pooling of the last feature map (``out_relu``, 1280 channels): GAP, GeM (p 3, the
  literature's value learned on landmark photos, not tuned here; p 2 and 4 beside it),
  max (MAC) and R-MAC (max over 14 regions at three scales, each L2-normalised, summed; no
  region whitening);
- (c) input size 224, 320, 448 (the backbone is fully convolutional), the same for catalog
  and query, then every catalog size against every query size, and the sum of the
  unit vectors at 224 + 320 (+ 448); the 2,640 train photos of the second row set only at
  224 and 320 by default (``--train-sizes``: 448 costs about 40 min more here);
- (d) intermediate blocks (``block_12`` 14x14 at 224 px, ``block_13`` and ``block_16``
  7x7; GAP and GeM 3 of the linear bottleneck output clamped at 1e-6 as GeM does), alone
  and concatenated with the last map's GeM (equal weights);
- (e) the trained embedding concatenated with GeM 3 features at weight ``w`` on the
  embedding (``cos = w * cos_emb + (1 - w) * cos_gem``), one input size for both;
- (f) the catalog image also embedded as crops and a zoomed-out copy, each a further photo
  of its product (a product scores its best photo; or the mean vector of its views), and the
  query as the whole photo and centre crops (best score, or mean score, per product);
- (g) centering and PCA whitening fitted on the catalog's vectors only (no query).

Plain cosine over products (a product scores its best photo), R@1 / R@5 / R@10 of the
query's product. The backbone maps are computed once per photo, view and size, pooled
every way at once and cached in ``--cache`` (``/tmp``); every variant is numpy after that.

Every variant is read on the 296 query photos, so the best of ~200 is flattered by the
choice. ``confirm R@1`` reads each on photos no choice was made on: the 2,640 train photos
as queries against the iconic catalog (other shots of the same products). A last table
takes each train photo, left out, against the iconic images and the other train photos:
a product scored by its best photo or by the mean vector of its photos.

Then the clothing demo's own figures for ``CANDIDATES`` (the variants the served model
might adopt, chosen after reading the grocery tables): class P@1 / MAP@R of the validation
originals against the train split, and the synthetic customer photos (seed 7, as
``vsearch eval``) against train + validation originals, by cosine and through the served
``Searcher`` (``category=auto`` and the re-rank, as ``experiments/served.py``). Last, the
time to embed one photo (decode, resize, model, pooling), each candidate beside the
exported SavedModel, interleaved photo by photo in one run.

    TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 \\
        python -m experiments.first_day          # ~1 h on 2 shared cores the first time, ~7 min cached
    python -m experiments.first_day --sizes 224 --no-clothing --latency 0 --no-write   # a quick look

Rewrites ``experiments/results/first_day.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown, use_local_weights
from experiments.regions import WHOLE, product_scores, ranks, recalls, trimmed_box

use_local_weights()

SIZES = (224, 320, 448)
TOPS = ("imagenet", "instance", "class")
TOP_LAYERS = {"block_16": "block_16_project_BN", "last": "out_relu"}
BOTTOM_LAYERS = {"block_12": "block_12_add", "block_13": "block_13_project_BN"}
LAST_POOLS = ("GAP", "GeM2", "GeM3", "GeM4", "MAC", "R-MAC")
BLOCK_POOLS = ("GAP", "GeM3")
GEM_EPS = 1e-6
# Views of a photo: ("box", fractions of the upright photo), ("trim", None): the product
# without its near-white backdrop, ("pad", factor): zoomed out onto a white canvas.
CATALOG_VIEWS = {
    "whole": ("box", WHOLE),
    "trimmed": ("trim", None),
    "centre 80%": ("box", (0.1, 0.1, 0.9, 0.9)),
    "centre 60%": ("box", (0.2, 0.2, 0.8, 0.8)),
    "corner tl 70%": ("box", (0.0, 0.0, 0.7, 0.7)),
    "corner tr 70%": ("box", (0.3, 0.0, 1.0, 0.7)),
    "corner bl 70%": ("box", (0.0, 0.3, 0.7, 1.0)),
    "corner br 70%": ("box", (0.3, 0.3, 1.0, 1.0)),
    "zoomed out 1.5x": ("pad", 1.5),
}
QUERY_VIEWS = {name: CATALOG_VIEWS[name] for name in ("whole", "centre 80%", "centre 60%")}
WHOLE_ONLY = {"whole": CATALOG_VIEWS["whole"]}
CORNERS = tuple(name for name in CATALOG_VIEWS if name.startswith("corner"))
CATALOG_SETS = {
    "whole": ("whole",),
    "whole, mean vector": ("whole",),
    "+ trimmed": ("whole", "trimmed"),
    "+ centre 80/60%": ("whole", "centre 80%", "centre 60%"),
    "+ 4 corners 70%": ("whole", *CORNERS),
    "+ zoomed out": ("whole", "zoomed out 1.5x"),
    "all 9 views": tuple(CATALOG_VIEWS),
    "all 9 views, mean vector": tuple(CATALOG_VIEWS),
}
QUERY_SETS = {
    "whole": (("whole",), "max"),
    "+c80 best": (("whole", "centre 80%"), "max"),
    "+c80+c60 best": (("whole", "centre 80%", "centre 60%"), "max"),
    "+c80 mean": (("whole", "centre 80%"), "mean"),
    "+c80+c60 mean": (("whole", "centre 80%", "centre 60%"), "mean"),
}
EMBEDDING_WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)
CACHE_VERSION = "1"


@dataclass(frozen=True)
class Part:
    """One block of a feature vector.

    ``source``: a top (``imagenet``, ``instance``, ``class``) pooled as ``pool`` at ``layer``;
    ``embedding``: the tower's head on its two tops' maps pooled as ``pool`` (GAP: as trained);
    ``served``: the exported SavedModel (224 px, whole photo). ``sizes``: one input size, or
    several whose unit vectors are summed (multi-scale). ``weight``: its share of the cosine.
    """

    source: str
    sizes: tuple[int, ...] = (224,)
    layer: str = "last"
    pool: str = "GeM3"
    weight: float = 1.0

    @property
    def label(self) -> str:
        px = "+".join(str(s) for s in self.sizes)
        if self.source in ("served", "embedding"):
            what = self.source if self.pool == "GAP" else f"{self.source} ({self.pool} pools)"
        else:
            what = f"{self.source} {self.pool}" + ("" if self.layer == "last" else f" {self.layer}")
        return f"{what} @{px}"


Feature = tuple[Part, ...]


def label(feature: Feature) -> str:
    if len(feature) == 1:
        return feature[0].label
    return " ⊕ ".join(f"{p.weight:g}·{p.label}" for p in feature)


def one(source: str, size: int, layer: str = "last", pool: str = "GeM3", weight: float = 1.0) -> Part:
    return Part(source, (size,), layer, pool, weight)


# The variants the served model might adopt: chosen after reading the grocery tables, then
# measured on the clothing demo (and timed) with the exported embedding beside them.
CANDIDATES: dict[str, Feature] = {
    "embedding @224 (rebuilt)": (one("embedding", 224, pool="GAP"),),
    "embedding @320": (one("embedding", 320, pool="GAP"),),
    "instance GeM3 @320": (one("instance", 320),),
    "0.5·embedding ⊕ 0.5·imagenet GeM3 @224": (
        one("embedding", 224, pool="GAP", weight=0.5),
        one("imagenet", 224, weight=0.5),
    ),
    **{
        f"{w:g}·embedding ⊕ {1 - w:g}·{top} GeM3 @320": (
            one("embedding", 320, pool="GAP", weight=w),
            one(top, 320, weight=1 - w),
        )
        for top in ("instance", "imagenet")
        for w in (0.5, 0.65)
    },
}


# ---------------------------------------------------------------- photos and views


def view_pixels(photo: np.ndarray, view: tuple) -> np.ndarray:
    """The part of an RGB photo a view shows (a crop, the trimmed product, a zoomed-out copy)."""
    from vsearch.images import crop

    kind, arg = view
    if kind == "box":
        return photo if arg == WHOLE else crop(photo, arg)
    if kind == "trim":
        return crop(photo, trimmed_box(photo))
    height, width = photo.shape[:2]
    canvas = np.full((int(round(height * arg)), int(round(width * arg)), 3), 255, np.uint8)
    top, left = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    canvas[top : top + height, left : left + width] = photo
    return canvas


# ---------------------------------------------------------------- the backbone maps


def tower_top(imagenet_top, tower, name: str):
    """A copy of the ImageNet top (blocks 14..16, Conv_1) at its input size, with a tower branch's weights."""
    from vsearch.learn import models

    trained = tower.get_layer(f"{name}_top")
    copy = models.clone_top(imagenet_top, f"{name}_top")
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    return copy


def feature_model(tower, size: int, tops: tuple[str, ...] = TOPS, layers: tuple[str, ...] = ("block_16", "last")):
    """Pixels 0..255 at ``size`` -> named maps: ``imagenet/block_12``, ``imagenet/block_13`` and
    ``{top}/{layer}`` for each top (the bottom, through block 13, is shared)."""
    import keras

    from vsearch.learn import models

    base = models.build_backbone(size, "imagenet")
    pixels = keras.Input((size, size, 3), name="pixels")
    bottom = keras.Model(base.input, [base.get_layer(n).output for n in BOTTOM_LAYERS.values()], name="bottom")
    maps = dict(zip((f"imagenet/{n}" for n in BOTTOM_LAYERS), bottom(models.preprocessing_layer()(pixels))))
    cut = base.get_layer(models.cut_layer_name(base, "block_14")).input
    imagenet_top = keras.Model(cut, [base.get_layer(TOP_LAYERS[n]).output for n in layers], name="imagenet_top")
    for name in tops:
        top = imagenet_top if name == "imagenet" else tower_top(imagenet_top, tower, name)
        outs = top(maps["imagenet/block_13"])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        maps.update(zip((f"{name}/{n}" for n in layers), outs))
    return keras.Model(pixels, maps, name=f"feature_maps_{size}")


def rmac_regions(side: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """Square regions (row, col, side) of a square map: ``l`` x ``l`` overlapping squares of
    side ``2 * side / (l + 1)`` at each level ``l`` (R-MAC's sampling on a square map)."""
    out = []
    for level in range(1, levels + 1):
        width = max(1, int(2 * side / (level + 1)))
        starts = np.linspace(0, side - width, level).round().astype(int) if level > 1 else [0]
        width = side if level == 1 else width
        out += [(int(r), int(c), width) for r in starts for c in starts]
    return out


def pool_map(maps: np.ndarray, pool: str) -> np.ndarray:
    """(N, H, W, C) -> (N, C) pooled as GAP, GeMp (activations clamped at 1e-6), MAC or R-MAC."""
    if pool == "GAP":
        return maps.mean(axis=(1, 2))
    if pool.startswith("GeM"):
        p = float(pool[3:])
        return np.mean(np.maximum(maps, GEM_EPS) ** p, axis=(1, 2)) ** (1.0 / p)
    if pool == "MAC":
        return maps.max(axis=(1, 2))
    if pool == "R-MAC":
        total = np.zeros(maps.shape[::3], np.float32)
        for r, c, w in rmac_regions(maps.shape[1]):
            total += unit(maps[:, r : r + w, c : c + w].max(axis=(1, 2)))
        return total
    raise ValueError(f"unknown pooling {pool!r}")


def pooled(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every pooling of every map, ``{map}/{pool}`` -> (N, C) float16."""
    out = {}
    for name, values in maps.items():
        values = np.asarray(values, np.float32)
        for pool in LAST_POOLS if name.endswith("/last") else BLOCK_POOLS:
            out[f"{name}/{pool}"] = pool_map(values, pool).astype(np.float16)
    return out


def extract(model, images: list, views: dict, size: int, batch: int, label: str) -> dict[str, np.ndarray]:
    """``{map}/{pool}`` -> (images, views, C): each image's views through ``model`` at ``size``."""
    import tensorflow as tf

    from vsearch.images import resize_bilinear, to_pixels

    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    per_batch: list[dict[str, np.ndarray]] = []
    inputs: list[np.ndarray] = []
    started = time.perf_counter()

    def flush():
        if inputs:
            maps = run(np.stack(inputs))
            per_batch.append(pooled({k: v.numpy() for k, v in maps.items()}))
            inputs.clear()

    for n, image in enumerate(images):
        photo = to_pixels(image)
        inputs += [resize_bilinear(np.ascontiguousarray(view_pixels(photo, v)), size) for v in views.values()]
        if len(inputs) >= batch:
            flush()
        if (n + 1) % 200 == 0:
            print(
                f"  {label} @{size}: {n + 1}/{len(images)} photos, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
    flush()
    print(
        f"  {label} @{size}: {len(images)} photos x {len(views)} views, {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return {k: np.concatenate([b[k] for b in per_batch]).reshape(len(images), len(views), -1) for k in per_batch[0]}


def cached_extract(args, tower, model_for, name: str, images: list, views: dict, size: int, key_images: list[str]):
    """:func:`extract`, kept in ``--cache`` by the photos, views, size and tower."""
    stat = Path(args.tower).stat()
    key = hashlib.sha1(
        json.dumps([CACHE_VERSION, key_images, list(views), size, stat.st_size, stat.st_mtime]).encode()
    ).hexdigest()[:16]
    path = Path(args.cache) / f"{name}-{size}-{key}.npz"
    if path.is_file():
        with np.load(path) as kept:
            return {k.replace("|", "/"): kept[k] for k in kept.files}
    out = extract(model_for(size), images, views, size, args.batch, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k.replace("/", "|"): v for k, v in out.items()})
    return out


# ---------------------------------------------------------------- the trained head, in numpy


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Head:
    """The tower's two-branch head on pooled maps (:func:`vsearch.learn.models.two_branch_head`)."""

    def __init__(self, tower):
        self.layers = {n: tower.get_layer(n) for n in ("class_projection", "class_head", "instance_projection")}
        self.class_weight = float(tower.get_layer("class_scale").get_config()["scale"]) ** 2
        self.probs_weight = float(tower.get_layer("class_probs_scale").get_config()["scale"])

    def __call__(self, class_pooled: np.ndarray, instance_pooled: np.ndarray) -> np.ndarray:
        from experiments.branch_mix import mix

        shape = class_pooled.shape[:-1]
        c, i = (np.asarray(x, np.float32).reshape(-1, x.shape[-1]) for x in (class_pooled, instance_pooled))
        parts = [
            unit(self.layers["class_projection"](c).numpy()),
            self.layers["class_head"](c).numpy(),
            unit(self.layers["instance_projection"](i).numpy()),
        ]
        return mix(parts, self.class_weight, self.probs_weight).reshape(*shape, -1)


# ---------------------------------------------------------------- vectors of a variant


@dataclass
class PhotoSet:
    """One set of photos: its pooled maps per size (images, views, C), view names, served vectors."""

    views: list[str]
    maps: dict[int, dict[str, np.ndarray]]
    served: np.ndarray | None = None  # (images, 1, D): the exported model, whole photo


def part_vectors(photos: PhotoSet, part: Part, head: Head) -> np.ndarray:
    """(images, views, D) unit vectors of one part (``served``: the whole view only)."""
    if part.source == "served":
        if photos.served is None:
            raise ValueError("no served vectors for this set")
        return unit(photos.served)
    total = None
    for size in part.sizes:
        maps = photos.maps[size]
        if part.source == "embedding":
            v = head(maps[f"class/last/{part.pool}"], maps[f"instance/last/{part.pool}"])
        else:
            v = unit(maps[f"{part.source}/{part.layer}/{part.pool}"])
        total = v if total is None else total + v
    return unit(total)


def vectors(photos: PhotoSet, feature: Feature, head: Head) -> np.ndarray:
    """(images, views, D): the parts' unit vectors, each scaled by the root of its share, joined."""
    shares = np.array([p.weight for p in feature], np.float32)
    shares = shares / shares.sum()
    parts = [np.sqrt(s) * part_vectors(photos, p, head) for s, p in zip(shares, feature)]
    if len({p.shape[1] for p in parts}) > 1:  # a served part has the whole photo only (view 0 of every set)
        parts = [p[:, :1] for p in parts]
    return unit(np.concatenate(parts, -1))


# ---------------------------------------------------------------- retrieval


@dataclass
class RowSet:
    """A catalog (its photo sets, each photo's product) and the queries' products."""

    name: str
    catalog: list[tuple[str, np.ndarray]]  # (photo set name, product index per photo)
    augmented: str  # the photo set whose catalog views (f) may add
    targets: np.ndarray
    products: int


def catalog_rows(sets: dict[str, np.ndarray], rows: RowSet, views: tuple[str, ...], names: dict[str, list[str]]):
    """(vectors, owner) of a row set's catalog: the augmented set's ``views``, the others whole."""
    vecs, owner = [], []
    for set_name, owners in rows.catalog:
        wanted = views if set_name == rows.augmented else ("whole",)
        picked = sets[set_name][:, [names[set_name].index(v) for v in wanted]]
        vecs.append(picked.reshape(-1, picked.shape[-1]))
        owner.append(np.repeat(owners, len(wanted)))
    return np.concatenate(vecs), np.concatenate(owner)


def mean_per_product(vecs: np.ndarray, owner: np.ndarray, products: int) -> tuple[np.ndarray, np.ndarray]:
    """One vector per product: the mean of its photos' unit vectors, normalised."""
    sums = np.zeros((products, vecs.shape[1]), np.float32)
    np.add.at(sums, owner, vecs)
    return unit(sums), np.arange(products)


def figures(sets, rows, names, catalog_views=("whole",), query=("whole",), merge="max", mean=False, transform=None):
    """R@1 / R@5 / R@10 of one variant's vectors (``sets``: photo set -> (images, views, D))."""
    cat, owner = catalog_rows(sets, rows, catalog_views, names)
    if mean:
        cat, owner = mean_per_product(cat, owner, rows.products)
    queries = [sets["queries"][:, names["queries"].index(v)] for v in query]
    if transform is not None:
        fitted = transform(cat)
        cat, queries = fitted(cat), [fitted(q) for q in queries]
    scores = np.stack([product_scores(q, cat, owner, rows.products) for q in queries])
    merged = scores.max(axis=0) if merge == "max" else scores.mean(axis=0)
    return recalls(ranks(merged, rows.targets))


# ---------------------------------------------------------------- centering and whitening (g)


def centred(fit: np.ndarray):
    mean = fit.mean(axis=0)
    return lambda x: unit(x - mean)


def pca_whitened(fit: np.ndarray, dims: int, power: float):
    """Projection on the catalog's first ``dims`` principal axes, each scaled by eigenvalue^-power."""
    mean = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    dims = min(dims, int((s > 1e-6 * s[0]).sum()))
    scale = (s[:dims] ** 2 / max(len(fit) - 1, 1) + 1e-9) ** -power
    projection = (vt[:dims].T * scale).astype(np.float32)
    return lambda x: unit((x - mean) @ projection)


TRANSFORMS = {
    "none": None,
    "centred": centred,
    "PCA-whitened, 64 dims": lambda fit: pca_whitened(fit, 64, 0.5),
    "PCA-whitened, all dims": lambda fit: pca_whitened(fit, 10_000, 0.5),
    "PCA, eigenvalue^-1/4, all dims": lambda fit: pca_whitened(fit, 10_000, 0.25),
}


# ---------------------------------------------------------------- the grocery sets


def grocery(args, tower, model_for, timings: dict) -> tuple[dict[str, PhotoSet], list[RowSet], dict[str, int]]:
    """The photo sets (catalog views, query views, train photos whole), the two row sets, the counts."""
    from vsearch.catalog.manifest import read_manifest
    from vsearch.embedder import SavedModelEmbedder

    catalog = read_manifest(args.catalog).photos
    plus = read_manifest(args.catalog_plus).photos
    queries = read_manifest(args.queries).photos
    products = sorted({p.product_id for p in catalog})
    index = {pid: i for i, pid in enumerate(products)}
    iconic = {p.image for p in catalog}
    train = [p for p in plus if p.image not in iconic and p.product_id in index]
    kept = [q for q in queries if q.product_id in index]
    sources = {
        "catalog": ([p.image for p in catalog], CATALOG_VIEWS),
        "queries": ([q.image for q in kept], QUERY_VIEWS),
        "train": ([p.image for p in train], WHOLE_ONLY),
    }
    served = None
    sets = {}
    for name, (images, views) in sources.items():
        maps = {}
        for size in args.train_sizes if name == "train" else args.sizes:
            started = time.perf_counter()
            maps[size] = cached_extract(args, tower, model_for, name, images, views, size, images)
            timings[f"{name} @{size}"] = time.perf_counter() - started
        served_path = Path(args.cache) / f"served-{name}-{_key([args.model, *images])}.npy"
        if not served_path.is_file():
            from vsearch.learn.evaluate import embed_all

            served = served or SavedModelEmbedder(args.model)
            started = time.perf_counter()
            np.save(served_path, embed_all(served, images, 32, f"served: {name}"))
            timings[f"{name}, served"] = time.perf_counter() - started
        sets[name] = PhotoSet(list(views), maps, np.load(served_path)[:, None])
    owner = {
        name: np.array([index[p.product_id] for p in photos])
        for name, photos in (("catalog", catalog), ("train", train))
    }
    targets = np.array([index[q.product_id] for q in kept])
    rows = [
        RowSet("iconic", [("catalog", owner["catalog"])], "catalog", targets, len(products)),
        RowSet("+train", [("catalog", owner["catalog"]), ("train", owner["train"])], "catalog", targets, len(products)),
    ]
    counts = {
        "catalog": len(catalog),
        "train": len(train),
        "queries": len(kept),
        "left out": len(queries) - len(kept),
        "products": len(products),
    }
    return sets, rows, counts


def _key(parts: list[str]) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def variant_sets(sets: dict[str, PhotoSet], feature: Feature, head: Head, sizes=None):
    """(photo set -> (images, views, D) vectors, photo set -> view names) of one variant.

    ``sizes`` (photo set -> size) overrides the parts' size per photo set (catalog vs query size).
    """
    out, names = {}, {}
    for name, photos in sets.items():
        f = feature
        if sizes is not None:
            f = tuple(Part(p.source, (sizes[name],), p.layer, p.pool, p.weight) for p in feature)
        if not all(s in photos.maps for p in f if p.source != "served" for s in p.sizes):
            continue  # not extracted at that size (the train photos at 448 by default)
        out[name] = vectors(photos, f, head)
        names[name] = photos.views if out[name].shape[1] == len(photos.views) else ["whole"]
    return out, names


def row(cells: list) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def recall_cells(sets, rows, names, **kw) -> list:
    out: list = []
    for r in rows:
        if not all(s in sets for s, _ in r.catalog):
            out += ["–"] * 3
            continue
        f = figures(sets, r, names, **kw)
        out += [f["R@1"], f["R@5"], f["R@10"]]
    return out


def r1(sets, r: RowSet, names, key: str = "R@1", **kw) -> str:
    """One figure of one row set as text ("–" where a photo set was not extracted at that size)."""
    return f"{figures(sets, r, names, **kw)[key]:.3f}" if all(s in sets for s, _ in r.catalog) else "–"


def confirm_r1(vecs, rows, names) -> str:
    """R@1 of the train photos as queries against the iconic catalog ("–" where not extracted)."""
    if "train" not in vecs:
        return "–"
    cat, owner = catalog_rows(vecs, rows[0], ("whole",), names)
    scores = product_scores(vecs["train"][:, 0], cat, owner, rows[0].products)
    return f"{recalls(ranks(scores, dict(rows[1].catalog)['train']))['R@1']:.3f}"


def feature_table(sets, rows, head, sizes) -> list[str]:
    """(a) to (d): whole catalog photo against whole query photo."""
    groups: list[tuple[str, Feature]] = [("(a) served", (Part("served", pool="GAP"),))]
    groups += [("(a) rebuilt", (one("embedding", s, pool=p),)) for p in ("GAP", "GeM3") for s in sizes]
    groups += [("(b)(c) last map", (one(t, s, pool=p),)) for t in TOPS for p in LAST_POOLS for s in sizes]
    groups += [("(d) block", (one("imagenet", s, b, p),)) for b in BOTTOM_LAYERS for p in BLOCK_POOLS for s in sizes]
    groups += [("(d) block", (one(t, s, "block_16", p),)) for t in TOPS for p in BLOCK_POOLS for s in sizes]
    groups += [("(d) block ⊕ last", (one(t, s, "block_16"), one(t, s))) for t in TOPS for s in sizes]
    groups += [("(d) block ⊕ last", (one("imagenet", s, "block_13"), one(t, s))) for t in TOPS for s in sizes]
    groups += [("(d) block ⊕ last", (one("imagenet", s, "block_12"), one(t, s))) for t in TOPS for s in sizes]
    multi = [tuple(sizes[:n]) for n in (2, 3) if len(sizes) >= n]
    groups += [("(c) multi-scale", (Part(t, m),)) for t in TOPS for m in multi]
    lines = [
        "| what | feature | dim | iconic R@1 | R@5 | R@10 | +train R@1 | R@5 | R@10 | confirm R@1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, feature in groups:
        vecs, names = variant_sets(sets, feature, head)
        cells = [group, label(feature), vecs["queries"].shape[-1], *recall_cells(vecs, rows, names)]
        lines.append(row([*cells, confirm_r1(vecs, rows, names)]))
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def size_table(sets, rows, head, sizes) -> list[str]:
    """(c): catalog (and train photos) at one size, queries at another; GeM 3 of the last map."""
    lines = [
        "| backbone | catalog px | " + " | ".join(f"query {s} px" for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for top in TOPS:
        for cat_size in sizes:
            cells = []
            for q_size in sizes:
                vecs, names = variant_sets(
                    sets, (one(top, 224),), head, {"catalog": cat_size, "train": cat_size, "queries": q_size}
                )
                cells.append(f"{r1(vecs, rows[0], names)} / {r1(vecs, rows[1], names)}")
            lines.append(row([top, cat_size, *cells]))
    return lines


def mixed_table(sets, rows, head, sizes) -> list[str]:
    """(e): the trained embedding and GeM 3 features, weight ``w`` on the embedding."""
    lines = [
        "| feature | w | iconic R@1 | R@5 | R@10 | +train R@1 | R@5 | R@10 | confirm R@1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for top in ("imagenet", "instance"):
        features = [
            (
                f"embedding @{size} ⊕ {top} GeM3 @{size}",
                w,
                (one("embedding", size, "last", "GAP", w), one(top, size, weight=1 - w)),
            )
            for size in sizes
            for w in EMBEDDING_WEIGHTS
        ]
        features += [
            (
                f"served @224 ⊕ {top} GeM3 @{size} (two passes)",
                0.5,
                (Part("served", pool="GAP", weight=0.5), one(top, size, weight=0.5)),
            )
            for size in sizes[1:]
        ]
        for name, w, feature in features:
            vecs, names = variant_sets(sets, feature, head)
            lines.append(row([name, f"{w:g}", *recall_cells(vecs, rows, names), confirm_r1(vecs, rows, names)]))
    return lines


def augmentation_tables(sets, rows, head, features: dict[str, Feature]) -> list[str]:
    """(f): catalog views as further photos (or their mean) x query views (best or mean score)."""
    lines = []
    for name, feature in features.items():
        vecs, names = variant_sets(sets, feature, head)
        lines += [
            f"**{name}** (iconic R@1 / iconic R@10 / +train R@1)",
            "",
            "| catalog views | " + " | ".join(f"query {q}" for q in QUERY_SETS) + " |",
            "|---|" + "---|" * len(QUERY_SETS),
        ]
        for cat_name, cat_views in CATALOG_SETS.items():
            cells = []
            for query, merge in QUERY_SETS.values():
                kw = dict(catalog_views=cat_views, query=query, merge=merge, mean=cat_name.endswith("mean vector"))
                a, b = rows
                cells.append(
                    f"{r1(vecs, a, names, **kw)} / {r1(vecs, a, names, 'R@10', **kw)} / {r1(vecs, b, names, **kw)}"
                )
            lines.append(row([cat_name, *cells]))
        lines.append("")
    return lines


def whitening_table(sets, rows, head, features: dict[str, Feature]) -> list[str]:
    """(g): centering / PCA whitening fitted on each row set's catalog vectors, whole photos."""
    lines = [
        "| feature | fitted on the catalog | iconic R@1 | R@5 | R@10 | +train R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, feature in features.items():
        vecs, names = variant_sets(sets, feature, head)
        for t_name, transform in TRANSFORMS.items():
            lines.append(row([name, t_name, *recall_cells(vecs, rows, names, transform=transform)]))
    return lines


def confirmation_table(sets, rows, head, features: dict[str, Feature]) -> list[str]:
    """The train photos as queries against the iconic catalog: photos no choice here was made on."""
    iconic = rows[0]
    train_owner = dict(rows[1].catalog)["train"]
    lines = ["| feature | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for name, feature in features.items():
        vecs, names = variant_sets(sets, feature, head)
        if "train" not in vecs:
            continue
        cat, owner = catalog_rows(vecs, iconic, ("whole",), names)
        f = recalls(ranks(product_scores(vecs["train"][:, 0], cat, owner, iconic.products), train_owner))
        lines.append(row([name, f["R@1"], f["R@5"], f["R@10"]]))
    return lines


def leave_one_out(vecs, rows) -> dict[str, float]:
    """R@1 of each train photo against the iconic images and the other train photos: a product
    scored by its best photo, or by the mean vector of its photos (the query's own photo left out)."""
    iconic, train = vecs["catalog"][:, 0], vecs["train"][:, 0]
    cat_owner, train_owner = dict(rows[1].catalog)["catalog"], dict(rows[1].catalog)["train"]
    n = rows[1].products
    sims = train @ np.concatenate([iconic, train]).T
    sims[np.arange(len(train)), len(iconic) + np.arange(len(train))] = -np.inf
    best = np.full((len(train), n), -np.inf, np.float32)
    np.maximum.at(best.T, np.concatenate([cat_owner, train_owner]), sims.T)
    sums = np.zeros((n, train.shape[1]), np.float32)
    np.add.at(sums, np.concatenate([cat_owner, train_owner]), np.concatenate([iconic, train]))
    mean = train @ unit(sums).T
    mean[np.arange(len(train)), train_owner] = np.sum(unit(sums[train_owner] - train) * train, axis=1)
    return {k: recalls(ranks(s, train_owner))["R@1"] for k, s in (("best photo", best), ("mean vector", mean))}


# The features (f) and (g) are shown for: the served one, the frozen baseline, and candidates.
BASELINES: dict[str, Feature] = {"imagenet GAP @224 (frozen baseline)": (one("imagenet", 224, pool="GAP"),)}
AUGMENTED: dict[str, Feature] = {
    "embedding @224 (rebuilt, = served)": (one("embedding", 224, pool="GAP"),),
    **BASELINES,
    **{k: v for k, v in CANDIDATES.items() if k != "embedding @224 (rebuilt)"},
}


# ---------------------------------------------------------------- the clothing demo's figures


def clothing(args, tower, model_for, head, timings: dict) -> list[str]:
    """Class P@1 / MAP@R and customer R@1 / R@10 (cosine, and served) of the served model and ``CANDIDATES``."""
    import tempfile
    from types import SimpleNamespace

    from experiments.branch_mix import load_queries
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import SavedModelEmbedder
    from vsearch.learn.evaluate import class_retrieval, customer_matching, embed_all
    from vsearch.learn.served_ranking import photo_store, target_ranks

    data = load_queries(Path(args.clothing_data))
    cat, val, photos, targets = data["catalog"], data["queries"], data["photos"], data["targets"]
    sizes = sorted({s for f in CANDIDATES.values() for p in f for s in p.sizes})
    served = SavedModelEmbedder(args.model)
    sets = {}
    for name, images, key in (
        ("clothing train", list(cat.paths), list(cat.paths)),
        ("clothing validation", list(val.paths), list(val.paths)),
        ("clothing customer", photos, ["customer seed 7", *val.paths]),
    ):
        maps = {}
        for size in sizes:
            started = time.perf_counter()
            maps[size] = cached_extract(args, tower, model_for, name.replace(" ", "-"), images, WHOLE_ONLY, size, key)
            timings[f"{name} @{size}"] = time.perf_counter() - started
        path = Path(args.cache) / f"served-{name.replace(' ', '-')}-{_key([args.model, *key])}.npy"
        if not path.is_file():
            np.save(path, embed_all(served, images, 32, f"served: {name}"))
        sets[name] = PhotoSet(["whole"], maps, np.load(path)[:, None])
    names, n = list(cat.class_names), len(cat.paths)
    lines = [
        f"Clothing demo (`{shown(args.clothing_data)}`): {n} train photos (the catalog for class retrieval), "
        f"{len(val.paths)} validation originals (queries), their {len(photos)} synthetic customer photos "
        "(seed 7) against train + validation originals. Cosine: plain nearest neighbours; served: "
        "the `Searcher`'s defaults (`category=auto`, the re-rank of the first 10), each variant's vectors in "
        "its own exact FAISS store.",
        "",
        "| feature | dim | P@1 | MAP@R | customer R@1 (cosine) | R@10 | customer R@1 (served) | R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    candidates = {"exported embedding as served @224": (Part("served", pool="GAP"),), **CANDIDATES}
    with tempfile.TemporaryDirectory(prefix="first-day-") as tmp:
        for number, (name, feature) in enumerate(candidates.items()):
            started = time.perf_counter()
            c, q, u = (vectors(sets[s], feature, head)[:, 0] for s in sets)
            o = class_retrieval(q, val.labels, c, cat.labels, names)["overall"]
            m = customer_matching(u, targets, c, q)
            stand_in = SimpleNamespace(fingerprint=f"first-day-{number}", dim=c.shape[1], image_size=224)
            store = photo_store(
                Path(tmp) / f"{number}.vsi",
                list(cat.paths) + list(val.paths),
                np.concatenate([cat.labels, val.labels]),
                names,
                np.concatenate([c, q]),
                stand_in.fingerprint,
            )
            try:
                r = target_ranks(Searcher(stand_in, store), u, photos, targets + n, "auto", True)
            finally:
                store.close()
            lines.append(
                row(
                    [name, c.shape[1], o["precision@1"], o["map@r"], m["recall@1"], m["recall@10"]]
                    + [float((r < 1).mean()), float((r < 10).mean())]
                )
            )
            print(lines[-1], f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return lines


# ---------------------------------------------------------------- latency


def photo_runner(tower, head, feature: Feature):
    """One photo (a path) -> its unit vector for ``feature``: decode, resize, model, pooling, head."""
    import tensorflow as tf

    from vsearch.images import model_input

    (size,) = {s for p in feature for s in p.sizes}
    tops = tuple(sorted({t for p in feature for t in ((p.source,) if p.source in TOPS else ("class", "instance"))}))
    model = feature_model(tower, size, tops, ("last",))
    run = tf.function(lambda x: model(x, training=False))
    wanted = {(t, p.pool) for p in feature if p.source == "embedding" for t in ("class", "instance")}
    wanted |= {(p.source, p.pool) for p in feature if p.source in TOPS}

    def embed(path: str) -> np.ndarray:
        maps = run(model_input(path, size)[None])
        pooled = {f"{t}/last/{pool}": pool_map(maps[f"{t}/last"].numpy(), pool)[:, None] for t, pool in wanted}
        return vectors(PhotoSet(["whole"], {size: pooled}), feature, head)[0, 0]

    return embed


def latency(args, tower, head, count: int) -> list[str]:
    """ms per photo, each runner on the same photo in turn (interleaved: the machine's load is shared)."""
    from vsearch.catalog.manifest import read_manifest
    from vsearch.embedder import SavedModelEmbedder, embed_one

    served = SavedModelEmbedder(args.model)
    runners = {"exported SavedModel @224 (served road)": lambda path: embed_one(served, path)}
    runners.update({name: photo_runner(tower, head, feature) for name, feature in CANDIDATES.items()})
    paths = [q.image for q in read_manifest(args.queries).photos][:count]
    times: dict[str, list[float]] = {name: [] for name in runners}
    for n, path in enumerate(paths[:3] + paths):
        for name, run in runners.items():
            started = time.perf_counter()
            run(path)
            if n >= 3:  # the first three warm up
                times[name].append(1e3 * (time.perf_counter() - started))
    lines = [
        f"One photo at a time ({len(paths)} grocery query photos, 348x348 JPEG): decode, resize, the model and "
        "pooling; every runner on each photo in turn, so load from other work falls on all alike. Candidates "
        "run as a Keras model with numpy pooling; the exported SavedModel through `embed_one`.",
        "",
        "| runner | ms p50 | ms p90 | ms mean | x served p50 |",
        "|---|---|---|---|---|",
    ]
    base = float(np.median(next(iter(times.values()))))
    for name, t in times.items():
        p50, p90, mean = np.median(t), np.percentile(t, 90), np.mean(t)
        lines.append(f"| {name} | {p50:.1f} | {p90:.1f} | {mean:.1f} | {p50 / base:.2f} |")
    return lines


# ---------------------------------------------------------------- the run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tower", default=str(ROOT / "saved_models" / "siamese" / "tower.keras"))
    ap.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"), help="the exported embedding")
    ap.add_argument("--catalog", default="data/grocery/catalog.csv", help="catalog manifest (one image per product)")
    ap.add_argument(
        "--catalog-plus", default="data/grocery/catalog_plus_train.csv", help="the catalog with more photos"
    )
    ap.add_argument("--queries", default="data/grocery/queries.csv", help="query manifest (real photos)")
    ap.add_argument("--clothing-data", default=str(ROOT / "data" / "photos"), help="the clothing demo's photos")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="input sizes, comma-separated")
    ap.add_argument(
        "--train-sizes", default="224,320", help="sizes of the train photos (+train row set); 448 costs ~40 min more"
    )
    ap.add_argument("--batch", type=int, default=8, help="model inputs per call")
    ap.add_argument("--cache", default="/tmp/vsearch-first-day", help="pooled maps are kept here")
    ap.add_argument("--no-clothing", action="store_true", help="skip the clothing demo's figures")
    ap.add_argument("--latency", type=int, default=100, help="photos timed (0: no timing)")
    output_args(ap, "first_day", "experiments")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.train_sizes = [int(s) for s in args.train_sizes.split(",") if int(s) in args.sizes]

    import keras

    import vsearch.learn.models  # noqa: F401  (registers the custom layers)

    started = time.time()
    tower = keras.saving.load_model(args.tower)
    head = Head(tower)
    models: dict[int, object] = {}

    def model_for(size: int):
        if size not in models:
            models[size] = feature_model(tower, size)
        return models[size]

    timings: dict[str, float] = {}
    sets, rows, c = grocery(args, tower, model_for, timings)
    parity = np.sum(
        vectors(sets["queries"], (one("embedding", 224, pool="GAP"),), head)[:, 0] * unit(sets["queries"].served[:, 0]),
        axis=1,
    )
    print(
        f"rebuilt embedding against the served one (queries): cosine mean {parity.mean():.4f} min {parity.min():.4f}",
        file=sys.stderr,
    )
    sizes = args.sizes
    lines = [
        f"Grocery: catalog `{shown(args.catalog)}` ({c['catalog']} iconic images, {c['products']} products); "
        f"`+train`: `{shown(args.catalog_plus)}` (the same plus {c['train']} train photos as further photos of "
        f"their products); queries `{shown(args.queries)}` ({c['queries']} real phone photos, {c['left out']} left out: "
        f"product not in the catalog). Tower `{shown(args.tower)}`, exported embedding `{shown(args.model)}`; "
        f"`embedding` is its head rebuilt on the tower's pooled maps (cosine with the served vectors on the queries: "
        f"mean {parity.mean():.4f}, min {parity.min():.4f}). Plain cosine over products, a product scores its best photo. "
        "Backbones: `imagenet` frozen ImageNet MobileNetV2; `instance` / `class` the clothing tower's two fine-tuned "
        "tops (blocks 14-16 and Conv_1) on the shared frozen ImageNet bottom. GeM p 3 is fixed beforehand "
        "(the published default), not tuned here; p 2 and 4 are shown beside it.",
        "",
        "## (a) to (d): features, whole photos",
        "",
        *feature_table(sets, rows, head, sizes),
        "",
        "## (c) catalog size against query size (GeM 3, last map; iconic R@1 / +train R@1)",
        "",
        *size_table(sets, rows, head, sizes),
        "",
        "## (e) trained embedding ⊕ GeM 3 features (w: share of the embedding in the cosine)",
        "",
        *mixed_table(sets, rows, head, sizes),
        "",
        "## (f) catalog views as further photos, query crops",
        "",
        "Catalog views: the whole image, the product trimmed of its near-white backdrop, centre crops, four "
        "70% corners, the image zoomed out 1.5x on white; each a further photo of its product (best score), "
        "or all views' mean vector. Query: the whole photo and centre crops, a product's best or mean score. "
        "The train photos of `+train` stay whole.",
        "",
        *augmentation_tables(sets, rows, head, {k: v for k, v in AUGMENTED.items() if _fits(v, sizes)}),
        "## (g) centering and PCA whitening, fitted on the catalog's vectors only",
        "",
        f"Fitted on the row set's catalog (iconic: {c['catalog']} vectors, so at most {c['catalog'] - 1} axes; "
        f"+train: {c['catalog'] + c['train']}); whole photos.",
        "",
        *whitening_table(sets, rows, head, {k: v for k, v in AUGMENTED.items() if _fits(v, sizes)}),
    ]
    lines += [
        "",
        "## Confirmation: the train photos as queries",
        "",
        f"The {c['train']} train photos (phone photos of the same products, other shots; no variant was chosen "
        "on them) as queries against the iconic catalog, whole photos.",
        "",
        *confirmation_table(
            sets, rows, head, {"served @224": (Part("served", pool="GAP"),), **BASELINES, **CANDIDATES}
        ),
    ]
    lines += [
        "",
        f"Leave one out: each train photo against the iconic images and the other {c['train'] - 1} train photos "
        "(R@1), a product scored by its best photo or by the mean vector of its photos.",
        "",
        "| feature | best photo | mean vector |",
        "|---|---|---|",
    ]
    for name, feature in {"served @224": (Part("served", pool="GAP"),), **BASELINES, **CANDIDATES}.items():
        vecs, _ = variant_sets(sets, feature, head)
        if "train" in vecs:
            loo = leave_one_out(vecs, rows)
            lines.append(row([name, loo["best photo"], loo["mean vector"]]))
    if not args.no_clothing:
        lines += ["", "## The clothing demo's figures", "", *clothing(args, tower, model_for, head, timings)]
    if args.latency:
        lines += ["", "## Embedding time per photo", "", *latency(args, tower, head, args.latency)]
    spent = "; ".join(f"{k} {v:.0f} s" for k, v in timings.items() if v >= 1)
    lines += [
        "",
        f"Run time {(time.time() - started) / 60:.0f} min; feature extraction (0 s: cached): {spent or 'all cached'}.",
    ]
    publish(args, "A shop's first day: retrieval features without training on its products", lines)
    return 0


def _fits(feature: Feature, sizes) -> bool:
    return all(s in sizes for p in feature for s in p.sizes)


if __name__ == "__main__":
    sys.exit(main())
