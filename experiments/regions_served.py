"""Regions on the served road: what searching a photo's centre beside it adds on real photos, and its cost.

``experiments/regions.py`` chose the regions on embeddings alone. This runs the queries
through the :class:`~vsearch.catalog.search.Searcher` as a server answers them. Per model
(``--models``): the catalog manifest in an exact FAISS store with its re-rank keypoints
stored (:func:`~vsearch.catalog.building.build_catalog`, as ``vsearch index build``); each
real query photo cut into its parts by :meth:`~vsearch.catalog.search.Searcher.query`
(``regions=centre``: the whole photo and its centre 80%, each from the full-resolution
photo; the whole photo's input is the one ``regions=none`` searches), embedded (photos
batched into one model call for speed: a server makes one call per photo, with the same
vectors) and answered by :meth:`~vsearch.catalog.search.Searcher.search_query` on four roads:
the plain cosine (``category=any``, no re-rank) and the served defaults (``category=auto``
with the re-rank), each with ``regions`` none and centre. "region used": the share of
answers whose first product came from the centre rather than the whole photo.

Latency: ``POST /api/search`` on a loopback server (the app ``vsearch serve`` builds, its
catalog keypoints stored), every ``--latency``-th query photo sent in turn on the
cosine-only road (``category=any``, ``rerank=false``, ``regions=none``), the served
defaults, and the served defaults with ``regions=centre``: p50, and its ratio to the
cosine-only road of the same run (the target: at most 2x).

Synthetic (``--synthetic-model``): the clothing demo's seeded customer photos
(``experiments/served.py``'s sets: the validation items' photos against a store of train +
validation originals), served R@1 with ``regions`` none and centre, mean over the seeds
(the demo must keep >= 0.95).

    python -m experiments.regions_served --models saved_models/grocery/embedding,saved_models/embedding --no-write

Rewrites ``experiments/results/regions_served.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown
from bench.http_timing import COSINE_ONLY, served_p50

K = 10
BATCH = 16  # photos whose parts go through the model together (the figures' speed, not the server's)
ROADS = {  # label -> (category, re-rank, regions)
    "cosine": ("any", False, "none"),
    "cosine, centre": ("any", False, "centre"),
    "served": ("auto", True, "none"),
    "served, centre": ("auto", True, "centre"),
}
LATENCY = {  # label -> the request's fields
    "cosine only": {**COSINE_ONLY, "regions": "none"},
    "served": {"regions": "none"},
    "served, centre": {"regions": "centre"},
}


def parts_of(searcher, photos: list, progress: str) -> list[tuple]:
    """Each photo's (Query with regions=centre, its parts' unit vectors), photos batched per model call."""
    out = []
    started = time.perf_counter()
    for start in range(0, len(photos), BATCH):
        queries = [searcher.query(photo, regions="centre") for photo in photos[start : start + BATCH]]
        vectors = np.asarray(searcher.embedder.embed_pixels(np.concatenate([q.inputs for q in queries])), np.float32)
        out += [(q, v) for q, v in zip(queries, np.split(vectors, len(queries)))]
        print(f"  {progress}: {len(out)}/{len(photos)} photos, {time.perf_counter() - started:.0f} s", flush=True)
    return out


def answers(searcher, parts: list[tuple], category: str, rerank: bool, regions: str) -> list:
    """Each photo's SearchResult on one road (``regions=none``: its whole-photo part alone)."""
    from vsearch.catalog.regions import Query

    out = []
    for query, vectors in parts:
        if regions == "none":
            query, vectors = Query(query.inputs[:1], query.boxes[:1]), vectors[:1]
        out.append(searcher.search_query(query, vectors, K, category, rerank=rerank))
    return out


def figures(results: list, truth: list[str]) -> dict:
    ranks = []
    for result, target in zip(results, truth):
        ids = [m["product_id"] for m in result.matches]
        ranks.append(ids.index(target) if target in ids else K)
    ranks = np.asarray(ranks)
    used = np.mean([r.region is not None for r in results])
    return {**{f"R@{k}": float((ranks < k).mean()) for k in (1, 5, 10)}, "region used": float(used)}


def real_photos(model: str, catalog: str, queries: str, every: int, work: Path) -> dict:
    """One model's roads on the real query photos, and its served latency."""
    from vsearch.catalog.building import build_catalog
    from vsearch.catalog.manifest import read_manifest
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import load_embedder

    embedder = load_embedder(model)
    store, report = build_catalog(embedder, catalog, f"faiss:{work / 'catalog.vsi'}", kind="exact", progress="catalog")
    try:
        searcher = Searcher(embedder, store)
        products = {p.product_id for p in read_manifest(catalog).photos}
        photos = [q for q in read_manifest(queries).photos if q.product_id in products]
        parts = parts_of(searcher, [q.image for q in photos], shown(model))
        truth = [q.product_id for q in photos]
        roads = {label: figures(answers(searcher, parts, *road), truth) for label, road in ROADS.items()}
        timed = [Path(q.image).read_bytes() for q in photos[::every]]
        latency = served_p50(searcher, timed, LATENCY, K)
    finally:
        store.close()
    return {"roads": roads, "latency": latency, "queries": len(photos), "timed": len(timed), "photos": report.photos}


def synthetic(model: str, data_dir: str, seeds: list[int], work: Path) -> dict[str, float]:
    """Served R@1 of the clothing demo's seeded customer photos with regions none and centre (mean over seeds)."""
    from experiments.served import load_sets
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import embed_images, load_embedder
    from vsearch.learn.served_ranking import photo_store

    embedder = load_embedder(model)
    data = load_sets(Path(data_dir), seeds, 0)
    cat, val = data["catalog"], data["val"]
    paths = [str(p) for p in list(cat.paths) + list(val.paths)]
    pool = embed_images(embedder, paths, progress="clothing catalog + validation originals").vectors
    labels = np.concatenate([cat.labels, val.labels])
    store = photo_store(work / "clothing.vsi", paths, labels, list(cat.class_names), pool, embedder.fingerprint)
    try:
        searcher = Searcher(embedder, store)
        r1: dict[str, list[float]] = {"none": [], "centre": []}
        for name, (photos, items) in data["sets"].items():
            if not name.startswith("customer"):
                continue
            parts = parts_of(searcher, photos, name)
            truth = [str(int(i) + len(cat.paths)) for i in items]
            for regions in r1:
                r1[regions].append(figures(answers(searcher, parts, "auto", True, regions), truth)["R@1"])
    finally:
        store.close()
    return {regions: float(np.mean(values)) for regions, values in r1.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="saved_models/grocery/embedding,saved_models/embedding",
        help="comma-separated SavedModel folders or .tflite files",
    )
    parser.add_argument("--catalog", default="data/grocery/catalog.csv", help="catalog manifest")
    parser.add_argument("--queries", default="data/grocery/queries.csv", help="query manifest (real photos)")
    parser.add_argument("--latency", type=int, default=2, metavar="N", help="time every N-th query photo over HTTP")
    parser.add_argument(
        "--synthetic-model", default="saved_models/embedding", help="the clothing demo's model ('': skip)"
    )
    parser.add_argument("--synthetic-data", default=str(ROOT / "data" / "photos"))
    parser.add_argument("--seeds", default="7,8,9", help="customer-photo seeds of the synthetic figure")
    output_args(parser, "regions_served", folder="experiments")
    args = parser.parse_args()

    started = time.time()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="regions-served-") as tmp:
        for n, model in enumerate(m for m in args.models.split(",") if m):
            work = Path(tmp) / str(n)
            work.mkdir()
            runs[model] = real_photos(model, args.catalog, args.queries, args.latency, work)
        syn = (
            synthetic(args.synthetic_model, args.synthetic_data, [int(s) for s in args.seeds.split(",")], Path(tmp))
            if args.synthetic_model
            else None
        )
    first = next(iter(runs.values()))
    lines = [
        f"Real photos: `{shown(args.queries)}` ({first['queries']} phone photos whose product is in the catalog) "
        f"against `{shown(args.catalog)}` ({first['photos']} photos), through `Searcher.search_query`, k {K}. "
        "Roads: cosine = `category=any`, no re-rank; served = the defaults (`category=auto`, re-rank); centre = "
        "`regions=centre` (the whole photo and its centre 80% in one model call, a product scored by its best "
        "part and verified against it). Latency: `POST /api/search` p50 on a loopback server, each timed photo "
        "sent on the three roads in turn; ratio: to the cosine-only road of the same run. This machine's cores "
        "are shared with other work: compare within a model's row.",
        "",
        "| model | road | R@1 | R@5 | R@10 | region used |",
        "|---|---|---|---|---|---|",
    ]
    for model, run in runs.items():
        for label, f in run["roads"].items():
            lines.append(
                f"| `{shown(model)}` | {label} | {f['R@1']:.3f} | {f['R@5']:.3f} | {f['R@10']:.3f} | "
                f"{f['region used']:.3f} |"
            )
    lines += ["", "| model | photos timed | " + " | ".join(f"{n} ms p50 (ratio)" for n in LATENCY) + " |"]
    lines.append("|---|---|" + "---|" * len(LATENCY))
    for model, run in runs.items():
        base = run["latency"]["cosine only"]
        cells = " | ".join(f"{ms:.1f} ({ms / base:.2f}x)" for ms in run["latency"].values())
        lines.append(f"| `{shown(model)}` | {run['timed']} | {cells} |")
    if syn is not None:
        lines += [
            "",
            f"Synthetic: `{shown(args.synthetic_model)}`, the clothing demo's customer photos (seeds {args.seeds}), "
            f"served R@1: regions none {syn['none']:.3f}, centre {syn['centre']:.3f}.",
        ]
    lines += ["", f"Run time {(time.time() - started) / 60:.0f} min."]
    publish(args, "Regions on the served road: real photos, latency, the synthetic figure", lines)


if __name__ == "__main__":
    main()
