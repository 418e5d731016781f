"""Real customer photos against a catalog: does the product come back, and first?

``vsearch eval --queries QUERIES --catalog CATALOG`` measures what a customer gets from real
photos. Both are manifests (:mod:`vsearch.catalog.manifest`; any catalog, any labelled query
set: ``python -m vsearch.learn.layouts`` writes them for public datasets). For each model the
catalog is built into a temporary store as ``vsearch index build`` builds it
(:func:`~vsearch.catalog.building.build_catalog`, an exact FAISS store), the query photos are
embedded through the served road (:func:`~vsearch.embedder.embed_images`) and each is answered
by a :class:`~vsearch.catalog.search.Searcher` over that store. The roads, in one run:

* ``served``: the model behind the search settings (``EvalConfig.search``, a
  :class:`~vsearch.config.SearchConfig`: by default the category prior of ``category=auto``
  and the re-rank of the short list; ``regions="centre"`` searches the photo's centre too),
  each photo answered as the server answers it (:meth:`~vsearch.catalog.search.Searcher.query`,
  then :meth:`~vsearch.catalog.search.Searcher.search_query`): what a customer gets;
* ``cosine``: the same model and store, plain cosine (whole photo, ``category=any``, no re-rank);
* ``frozen``: frozen ImageNet MobileNetV2 features (global average pooling), plain cosine:
  what any trained model has to beat.

Figures, each a small pure function below: R@k, the share of queries whose product is among
the first k products (k = 1, 5, 10); top-1 category, the share whose first product is in the
query's category. Overall and per query category. A query whose product is not in the
catalog is a miss on every road, and counted; an unreadable query photo is left out of every
road, and listed. The report (markdown, with JSON beside it) says where it came from.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsearch import config as cfg_mod
from vsearch.artifacts import printable, provenance, write_atomic, write_json
from vsearch.catalog.manifest import Photo, read_manifest
from vsearch.config import EvalConfig, SearchConfig
from vsearch.embedder import Embedder
from vsearch.errors import BackboneError, DataError

KS = (1, 5, 10)
NO_CATEGORY = "(none)"  # the per-category key of queries that name no category
CONFUSIONS = 10  # most frequent wrong first products shown in the report


@dataclass(frozen=True)
class Road:
    """One way of answering a query: a key, a label for the report, and the search's choices."""

    key: str
    name: str
    category: str  # the search's category mode: "auto" (the prior), "any" (plain cosine) or a category
    rerank: bool
    regions: str = "none"  # the parts of the photo searched beside it (SearchConfig.regions)


@dataclass(frozen=True)
class ModelRoads:
    """A model (an :class:`~vsearch.embedder.Embedder`), the roads that answer with it, and the
    settings of its :class:`~vsearch.catalog.search.Searcher` (the category prior, the re-rank's,
    the photo limits)."""

    label: str
    embedder: Embedder
    roads: tuple[Road, ...]
    search: SearchConfig = field(default_factory=SearchConfig)


def served_road(label: str, search: SearchConfig) -> Road:
    """The road a customer gets under the search settings ``search``."""
    name = f"served: {label}, category {search.category}" + (" + re-rank" if search.rerank else "")
    name += f", regions {search.regions}" if search.regions != "none" else ""
    return Road("served", name, search.category, search.rerank, search.regions)


def model_roads(label: str, embedder, search: SearchConfig = SearchConfig()) -> ModelRoads:
    """The evaluated model's two roads: served under the settings ``search``, and the plain cosine."""
    return ModelRoads(
        label, embedder, (served_road(label, search), Road("cosine", f"cosine: {label}", "any", False)), search
    )


def baseline_roads(label: str, embedder) -> ModelRoads:
    """A baseline's one road: the plain cosine."""
    return ModelRoads(label, embedder, (Road("frozen", f"cosine: {label}", "any", False),))


# ---------------------------------------------------------------- figures: small pure functions


def target_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """0-based position of each query's product in its ranked product list; ``inf`` when absent.

    Args:
        ranked: Per query, the product ids answered, best first.
        targets: Per query, its product id.
    """
    return np.array([list(r).index(t) if t in r else np.inf for r, t in zip(ranked, targets)], dtype=np.float64)


def recall_at(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """R@k per k: the share of queries whose product ranks within the first k (nan for no query)."""
    ranks = np.asarray(ranks, np.float64)
    return {f"recall@{k}": float(np.mean(ranks < k)) if ranks.size else float("nan") for k in ks}


def category_at_1(top_categories: Sequence[str], expected: Sequence[str]) -> float:
    """The share of queries whose first product is in their category (``top_categories``: the
    first product's category per query); queries without a category are left out (nan when
    none has one)."""
    pairs = [(f, e) for f, e in zip(top_categories, expected) if e]
    return float(np.mean([f == e for f, e in pairs])) if pairs else float("nan")


def figures(ranks: np.ndarray, top_categories: Sequence[str], expected: Sequence[str], ks: Sequence[int] = KS) -> dict:
    """R@k, top-1 category and the number of queries, for one set of queries."""
    return {**recall_at(ranks, ks), "category@1": category_at_1(top_categories, expected), "queries": int(len(ranks))}


def per_category(
    ranks: np.ndarray, top_categories: Sequence[str], expected: Sequence[str], ks: Sequence[int] = KS
) -> dict:
    """:func:`figures` per query category (``(none)`` for queries without one), by name."""
    ranks = np.asarray(ranks, np.float64)
    out = {}
    for name in sorted(set(expected)):
        rows = [i for i, e in enumerate(expected) if e == name]
        out[name or NO_CATEGORY] = figures(ranks[rows], [top_categories[i] for i in rows], [name] * len(rows), ks)
    return out


def confusions(first: Sequence[str], targets: Sequence[str], top: int = CONFUSIONS) -> list[tuple[str, str, int]]:
    """The most frequent (query product, wrong first product, count), most frequent first."""
    wrong = Counter((t, f) for f, t in zip(first, targets) if f != t)
    return [(t, f, n) for (t, f), n in sorted(wrong.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


# ---------------------------------------------------------------- answering the queries


def answer_queries(searcher, vectors: np.ndarray, images: Sequence[str], road: Road, k: int) -> list[list[dict]]:
    """Each query's top-``k`` matches (products, best first) through ``searcher`` on ``road``
    (:func:`plain_answer` or :func:`served_answer`); ``vectors``: the queries' whole-photo vectors."""
    answer = plain_answer if road.regions == "none" and not road.rerank else served_answer
    return [answer(searcher, vector, image, road, k) for vector, image in zip(vectors, images)]


def plain_answer(searcher, vector: np.ndarray, image: str, road: Road, k: int) -> list[dict]:
    """The matches of the whole photo's vector, without re-rank: nothing to read from the photo again."""
    return searcher.search_vector(vector, k, road.category).matches


def served_answer(searcher, vector: np.ndarray, image: str, road: Road, k: int) -> list[dict]:
    """The matches :meth:`~vsearch.catalog.search.Searcher.search` gives: the photo read again
    with the searcher's limits into the parts it searches (:meth:`~vsearch.catalog.search.Searcher.query`),
    then :meth:`~vsearch.catalog.search.Searcher.search_query`. The whole photo alone is
    answered with its batch-embedded ``vector``; several parts are embedded together, as served."""
    query = searcher.query(image, regions=road.regions)
    if len(query.inputs) == 1:
        vectors = np.asarray(vector, np.float32)[None]
    else:
        vectors = np.asarray(searcher.embedder.embed_pixels(query.inputs), np.float32)
    return searcher.search_query(query, vectors, k, road.category, rerank=road.rerank).matches


def road_figures(
    matches: Sequence[Sequence[dict]], targets: Sequence[str], expected: Sequence[str], ks: Sequence[int] = KS
) -> tuple[dict, np.ndarray, list[str]]:
    """A road's figures from its answers (per query, the matched products best first).

    Returns:
        (``overall``, ``per_category`` and ``confusions``; each query's rank of its product,
        ``inf`` when absent; each query's first product, ``""`` for an empty answer).
    """
    ranks = target_ranks([[m["product_id"] for m in ms] for ms in matches], targets)
    first = [ms[0]["product_id"] if ms else "" for ms in matches]
    top_categories = [ms[0].get("category", "") if ms else "" for ms in matches]
    found = {
        "overall": figures(ranks, top_categories, expected, ks),
        "per_category": per_category(ranks, top_categories, expected, ks),
        "confusions": confusions(first, targets),
    }
    return found, ranks, first


def run_model(
    model: ModelRoads,
    catalog: str | os.PathLike,
    queries: Sequence[Photo],
    folder: str | os.PathLike,
    k: int,
    batch_size: int,
    log: Callable[[str], None],
) -> dict:
    """One model's catalog store and its roads' answers (plain values).

    Returns:
        ``catalog`` (products, photos, categories, skipped photos), ``in_catalog`` (the queries'
        products the store holds), ``bad`` (query photo -> why it could not be used), and
        ``answers``: road key -> {query index -> matches}, with ``seconds`` per step.
    """
    from vsearch.catalog.building import build_catalog
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import embed_images

    start = time.perf_counter()
    store, report = build_catalog(
        model.embedder,
        catalog,
        f"faiss:{os.path.join(folder, 'catalog.vsi')}",
        kind="exact",
        batch_size=batch_size,
        progress=f"{model.label}: catalog",
    )
    seconds = {"catalog": round(time.perf_counter() - start, 1)}
    try:
        start = time.perf_counter()
        done = embed_images(
            model.embedder,
            [Path(q.image) for q in queries],
            batch_size=batch_size,
            max_pixels=model.search.max_pixels,  # the searcher's limits: a photo it refuses is left out here
            max_bytes=model.search.max_bytes,
            progress=f"{model.label}: queries",
        )
        seconds["queries"] = round(time.perf_counter() - start, 1)
        searcher = Searcher(model.embedder, store, model.search)
        images = [queries[i].image for i in done.good]
        answers = {}
        for road in model.roads:
            start = time.perf_counter()
            answers[road.key] = dict(zip(done.good, answer_queries(searcher, done.vectors, images, road, k)))
            seconds[road.key] = round(time.perf_counter() - start, 1)
        products = {q.product_id for q in queries}
        info = {
            "catalog": {
                "products": report.products,
                "photos": report.photos,
                "categories": len(set(store.categories()) - {""}),
                "skipped": dict(report.skipped),
            },
            "in_catalog": {p for p in products if store.get(p) is not None},
            "bad": dict(done.bad),
            "answers": answers,
            "seconds": seconds,
            "searcher": {
                "category": searcher.config.category,
                "category_prior": searcher.category_prior,
                "rerank": {
                    "on": searcher.config.rerank,
                    "depth": searcher.rerank_config.depth,
                    "min_inliers": searcher.rerank_config.min_inliers,
                },
                "regions": searcher.config.regions,
            },
        }
    finally:
        store.close()
    log(f"  {model.label}: catalog {seconds['catalog']} s, queries {seconds['queries']} s")
    return info


def evaluate_queries(
    catalog: str | os.PathLike,
    queries: str | os.PathLike,
    models: Sequence[ModelRoads],
    batch_size: int = 32,
    log: Callable[[str], None] = print,
    ks: Sequence[int] = KS,
) -> dict:
    """Every road of every model on the query manifest against the catalog manifest.

    Args:
        catalog: A catalog manifest (or ``<category>/<photo>`` folder).
        queries: A query manifest: one labelled photo per row (``product_id`` is the answer).
        models: The models and their roads (:func:`model_roads`, :func:`baseline_roads`).
        batch_size: Photos per model call.
        log: Progress lines.
        ks: The k of R@k; the searches answer ``max(ks)`` products.
    Returns:
        A plain dict: ``catalog``, ``queries`` (counts, unreadable, not in the catalog, also
        catalog photos), ``roads`` (key -> name, choices, ``overall``, ``per_category``,
        ``confusions``) and ``per_query`` (each evaluated query's rank and first product per road).
    Raises:
        DataError: a manifest that cannot be read, two roads with one key, or no usable query photo.
    """
    keys = [road.key for model in models for road in model.roads]
    if len(set(keys)) != len(keys) or not keys:
        raise DataError(f"roads need distinct keys, got {keys}")
    photos = read_manifest(queries).photos
    catalog_images = {p.image for p in read_manifest(catalog).photos}
    log(f"{len(photos)} query photos ({printable(queries)}) against {printable(catalog)}")
    with tempfile.TemporaryDirectory(prefix="vsearch-query-eval-") as tmp:
        runs = []
        for n, model in enumerate(models):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            runs.append(run_model(model, catalog, photos, folder, max(ks), batch_size, log))
    bad: dict[str, str] = {}
    for run in runs:
        bad.update(run["bad"])
    usable = [
        i
        for i in range(len(photos))
        if all(i in run["answers"][r.key] for run, m in zip(runs, models) for r in m.roads)
    ]
    if not usable:
        raise DataError(
            f"{printable(queries)}: none of the {len(photos)} query photos could be used, e.g. "
            + "; ".join(f"{path}: {why}" for path, why in list(bad.items())[:3])
        )
    targets = [photos[i].product_id for i in usable]
    expected = [photos[i].category for i in usable]
    in_catalog = runs[0]["in_catalog"]
    absent = sorted({t for t in targets if t not in in_catalog})
    roads: dict[str, dict] = {}
    per_query: list[dict[str, Any]] = [
        {"image": photos[i].image, "product_id": t, "category": e, "rank": {}, "first": {}}
        for i, t, e in zip(usable, targets, expected)
    ]
    for run, model in zip(runs, models):
        for road in model.roads:
            found, ranks, first = road_figures([run["answers"][road.key][i] for i in usable], targets, expected, ks)
            roads[road.key] = {
                "name": road.name,
                "model": model.label,
                "category": road.category,
                "rerank": road.rerank,
                "regions": road.regions,
                **found,
                "seconds": {s: run["seconds"][s] for s in ("catalog", "queries", road.key)},
            }
            for row, rank, top in zip(per_query, ranks, first):
                row["rank"][road.key] = None if np.isinf(rank) else int(rank)
                row["first"][road.key] = top
            o = found["overall"]
            recalls = " ".join(f"R@{k} {o[f'recall@{k}']:.3f}" for k in ks)
            log(f"  {road.name}: {recalls}, top-1 category {o['category@1']:.3f}")
    return {
        "catalog": {"manifest": printable(catalog), **runs[0]["catalog"]},
        "queries": {
            "manifest": printable(queries),
            "photos": len(photos),
            "products": len({p.product_id for p in photos}),
            "evaluated": len(usable),
            "unreadable": bad,
            "not_in_catalog": sum(t not in in_catalog for t in targets),
            "not_in_catalog_products": absent,
            "also_catalog_photos": sum(photos[i].image in catalog_images for i in usable),
        },
        "searcher": runs[0]["searcher"],
        "ks": list(ks),
        "roads": roads,
        "per_query": per_query,
    }


# ---------------------------------------------------------------- the models, the run, the report


def frozen_baseline(image_size: int, weights: str, log: Callable[[str], None]) -> ModelRoads | None:
    """Frozen MobileNetV2 features (GAP) as a baseline road, or None when its weights cannot be had."""
    from vsearch.embedder import KerasEmbedder
    from vsearch.learn import models

    try:
        frozen = models.build_backbone(image_size, weights)
    except BackboneError as exc:
        log(f"  baseline skipped: {exc}")
        return None
    label = (
        "frozen ImageNet MobileNetV2 (GAP)" if weights == "imagenet" else f"frozen MobileNetV2 weights={weights} (GAP)"
    )
    return baseline_roads(label, KerasEmbedder(models.build_pooled_features(frozen, image_size), name=label))


def default_report(reports_dir: str | os.PathLike, catalog: str | os.PathLike, queries: str | os.PathLike) -> Path:
    """``reports_dir/real-<queries>-in-<catalog>.md``, named by the two manifests' file names."""
    return Path(reports_dir) / f"real-{Path(queries).stem}-in-{Path(catalog).stem}.md"


def run_query_eval(
    config: EvalConfig,
    catalog: str | os.PathLike,
    queries: str | os.PathLike,
    out: str | os.PathLike,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates ``config.model_dir`` (and, with ``config.baselines``, frozen MobileNetV2 features
    with ``config.baseline_weights``) on the query manifest against the catalog manifest;
    writes ``out`` (markdown) and the figures as JSON beside it. Returns the figures.

    Raises:
        DataError: ``out`` is not a ``.md`` path, a manifest cannot be read, the model cannot be loaded.
    """
    from vsearch.embedder import load_embedder

    out = Path(out)
    if out.suffix != ".md":
        raise DataError(f"{printable(out)}: the report is markdown; name a .md file (its JSON goes beside it)")
    for manifest in (catalog, queries):  # fail fast, before loading models
        read_manifest(manifest)
    model = load_embedder(config.model_dir, config.num_threads or None)
    models = [model_roads(f"{model.name} ({printable(config.model_dir)})", model, config.search)]
    if config.baselines:
        baseline = frozen_baseline(model.image_size, config.baseline_weights, log)
        if baseline is not None:
            models.append(baseline)
    results = evaluate_queries(catalog, queries, models, config.data.batch_size, log)
    meta = getattr(model, "metadata", {}) or {}
    results.update(
        model={"path": printable(config.model_dir), "name": model.name, "fingerprint": model.fingerprint}
        | {k: meta.get(k) for k in ("embedding_dim", "image_size", "backbone", "format", "quantization") if k in meta},
        baseline=config.baselines,
        config=cfg_mod.to_dict(config),
        command=command_line(config, catalog, queries, out),
        **provenance(),
    )
    write_json(out.with_suffix(".json"), results)
    write_atomic(out, format_markdown(results))
    log(f"wrote {printable(out)} and {printable(out.with_suffix('.json'))}")
    return results


def command_line(config: EvalConfig, catalog, queries, out) -> str:
    """The ``vsearch eval`` command that reproduces a run: its manifests, model and report, and
    a ``--set`` for each setting of its figures that is not the default (the served road's, and
    the baseline's weights), whatever preset or file they came from."""
    parts = ["vsearch eval", f"--queries {printable(queries)}", f"--catalog {printable(catalog)}"]
    parts += [f"--model {printable(config.model_dir)}", f"--out {printable(out)}"]
    if not config.baselines:
        parts.append("--no-baseline")
    settings = cfg_mod.overrides_from(config.search)
    parts += [f"--set {shlex.quote('search.' + setting)}" for setting in settings]
    if config.baselines and config.baseline_weights != EvalConfig().baseline_weights:
        parts.append(f"--set {shlex.quote('baseline_weights=' + config.baseline_weights)}")
    return " ".join(parts)


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def served_settings(searcher: dict) -> str:
    """The served road's search settings in a sentence (``results["searcher"]``)."""
    category, rerank = searcher["category"], searcher["rerank"]
    mode = f"category {category}" + (f" (prior {searcher['category_prior']})" if category == "auto" else "")
    verify = (
        f"re-rank of the first {rerank['depth']} with at least {rerank['min_inliers']} inliers"
        if rerank["on"]
        else "no re-rank"
    )
    regions = searcher["regions"]
    parts = (
        "the whole photo" if regions == "none" else f"the whole photo and its {regions}, a product scored by its best"
    )
    return (
        f"The served road answers as a server with these search settings: {mode}, {verify}, regions {regions} ({parts})"
    )


def format_markdown(results: dict) -> str:
    """The report: what was measured, the roads' figures, per category, the worst confusions, provenance."""
    c, q, roads = results["catalog"], results["queries"], results["roads"]
    ks = results["ks"]
    lines = [
        f"# Real photos: `{q['manifest']}` against `{c['manifest']}`",
        "",
        f"Queries: {q['evaluated']} labelled photos of {q['products']} products (`{q['manifest']}`). Catalog: "
        f"{c['products']} products, {c['photos']} photos, {c['categories']} categories (`{c['manifest']}`). "
        f"R@k: the query's product is among the first k products answered; top-1 category: the first "
        f"product is in the query's category. {served_settings(results['searcher'])}; the cosine roads use "
        "the whole photo, `category=any` without re-rank.",
        "",
    ]
    notes = []
    if q["not_in_catalog"]:
        absent = q["not_in_catalog_products"]
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        notes.append(
            f"Queries whose product is not in the catalog: {q['not_in_catalog']} ({shown}), misses on every road."
        )
    if q["unreadable"]:
        path, why = next(iter(q["unreadable"].items()))
        notes.append(f"Query photos that could not be read, left out: {len(q['unreadable'])} (e.g. {path}: {why}).")
    if q["also_catalog_photos"]:
        notes.append(
            f"**{q['also_catalog_photos']} query photos are also catalog photos**: those figures are not real."
        )
    if c["skipped"]:
        notes.append(f"{len(c['skipped'])} catalog photos could not be read and are not in the catalog.")
    if notes:
        lines += [*notes, ""]
    head = " | ".join(f"R@{k}" for k in ks)
    lines += [f"| road | {head} | top-1 category | queries |", "|---" * (len(ks) + 3) + "|"]
    for key, road in roads.items():
        o = road["overall"]
        name = f"**{road['name']}**" if key == "served" else road["name"]
        cells = " | ".join(_num(o[f"recall@{k}"]) for k in ks)
        lines.append(f"| {name} | {cells} | {_num(o['category@1'])} | {o['queries']} |")
    keys = list(roads)
    lines += ["", "## Per category", "", f"By the query's category; roads: {', '.join(keys)}, as above.", ""]
    lines += [
        "| category | queries | " + " | ".join(f"{k} R@1" for k in keys) + f" | {keys[0]} R@{ks[-1]} | "
        f"{keys[0]} top-1 category |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for name, first in roads[keys[0]]["per_category"].items():
        cells = " | ".join(_num(roads[k]["per_category"][name]["recall@1"]) for k in keys)
        lines.append(
            f"| {name} | {first['queries']} | {cells} | {_num(first[f'recall@{ks[-1]}'])} | {_num(first['category@1'])} |"
        )
    lines += ["", f"## Most frequent wrong first products, {roads[keys[0]]['name']}", ""]
    lines += ["| query's product | answered first | times |", "|---|---|---|"]
    lines += [f"| {t} | {f} | {n} |" for t, f, n in roads[keys[0]]["confusions"]]
    seconds: dict[str, dict] = {}
    for road in roads.values():
        seconds.setdefault(road["model"], road["seconds"])
    timing = "; ".join(f"{m}: catalog {s['catalog']} s, queries {s['queries']} s" for m, s in seconds.items())
    lines += [
        "",
        f"Model `{results['model']['path']}` (weights {results['model']['fingerprint'] or 'n/a'}). "
        f"Embedding time: {timing}.",
        f"Commit {results['commit']}, {results['date']}, machine: {results['machine']}.",
        f"Command: `{results['command']}`. The config, and each query's rank and first product per road: "
        "the JSON beside this file.",
        "",
    ]
    return "\n".join(lines)
