"""Calibration on a shop's own labelled photos: the verdict fitted, and its precision stated, on real photos.

:mod:`vsearch.catalog.calibration` fits the verdict on photos it makes from the catalog's own
photos; what its "exact" is worth on a customer's phone photo (another angle and light, a
shelf or a hand around the product) it cannot say. Given a query manifest of real photos,
each with the product it shows (:func:`vsearch.catalog.manifest.read_queries`), this stage
fits the verdict on them and states its precision on photos the fit never saw:

1. **Searches** (:func:`served_samples`): each photo answered as ``POST /api/search`` answers
   it (a :class:`~vsearch.catalog.search.Searcher` with the search settings the server serves
   with, ``vsearch calibrate --preset/--set``: by default the photo road, the category prior,
   the re-rank of the short list; kept as the calibration's ``road``), and the answer read as the verdict
   reads it: top-1 score, gap to the next product, the top match's category, whether the
   re-rank verified it. The "not in the catalog" side is real photos too: the manifest's
   photos of products the catalog lacks when it has any; otherwise every photo is searched
   again with its own product left out (a ``product_id`` filter: the answer a catalog
   without that product gives; leave-products-out), so the stream is half in-catalog.
2. **Fit** (:func:`fit_on_photos`): both heads, P(the first match is the product) and P(the
   product is in the catalog), by Platt scaling of the top-1 score and the gap on every
   search (a few hundred labelled photos are too few for isotonic steps, and for choosing a
   threshold by scanning their precision: the luckiest cut wins, measured); "exact" where
   P(exact) reaches the target precision, so that every "exact" answer is itself that likely
   right; "none" where at most ``wrong_none`` of the in-catalog searches would be told "none"
   (at 90% confidence).
3. **Held-out figures** (:func:`cross_validate`): the products dealt into ``folds`` (5,
   seeded); each fold's searches get their verdicts from a calibration fitted as in 2 on the
   other folds' products only. Pooled, they are the figures of photos of products the fit
   never saw (:func:`~vsearch.catalog.calibration.verdict_figures`): "exact" precision with
   its number of answers and 90% lower bound, coverage, "none" on photos of products not in
   the catalog.

The kept calibration is step 2 on every product, with step 3's figures as its ``heldout``:
the precision this way of fitting gives on photos of new products, the honest estimate for
the kept one. Folds are by product, not by photo: photos of one product are alike, and a
product seen in the fit would flatter the figures.

    vsearch calibrate --queries my_labelled_photos.csv --model M --store S
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from vsearch.artifacts import printable, provenance
from vsearch.catalog.calibration import (
    DEFAULT_SEED,
    DEFAULT_TARGET,
    DEFAULT_WRONG_NONE,
    Samples,
    fit_head,
    head_probabilities,
    new_calibration,
    sample_verdicts,
    threshold_for_rate,
    verdict_figures,
    verdict_metrics,
)
from vsearch.catalog.manifest import Photo, read_queries
from vsearch.catalog.search import Searcher
from vsearch.catalog.verdict import VERDICT_DEPTH, fitted_on, ranked_features
from vsearch.config import SearchConfig
from vsearch.errors import DataError, ImageError
from vsearch.stores.filters import Condition, Filter

DEFAULT_FOLDS = 5
MIN_PRODUCTS = 3  # two folds' worth of products to fit on (two halves) and one to hold out


# ---------------------------------------------------------------- 1. searches


def check_queries(queries: Sequence[tuple[str, Photo]], store, source: str) -> None:
    """Refuses a query set the verdict cannot be fitted on, before any photo is searched.

    Raises:
        DataError: fewer than :data:`MIN_PRODUCTS` products, none in the catalog, or query
            photos that are the catalog's own photos (not customer photos).
    """
    products = {photo.product_id for _, photo in queries}
    if len(products) < MIN_PRODUCTS:
        raise DataError(
            f"{source}: photos of {len(products)} product(s); calibrating needs photos of at least "
            f"{MIN_PRODUCTS} products (it fits on some and measures on others)"
        )
    if not any(store.get(product) is not None for product in products):
        raise DataError(f"{source}: none of its {len(products)} products is in the catalog {store.spec}")
    catalog_paths = {os.path.abspath(path) for product in store.products() for path in product.paths}
    same = [(where, photo.image) for where, photo in queries if os.path.abspath(photo.image) in catalog_paths]
    if same:
        raise DataError(
            f"{source}: {len(same)} query photo(s) are catalog photos (e.g. {same[0][0]}: {same[0][1]}); "
            "calibrate on customer photos the catalog does not hold"
        )


def verdict_depth(config: SearchConfig) -> int:
    """How many products a served search ranks before its verdict (its answer before the cut to ``k``)."""
    return max(config.k, VERDICT_DEPTH, config.reranker.depth if config.rerank else 1)


def served_features(searcher: Searcher, image, truth: str, where: Filter | None = None) -> tuple | None:
    """(top-1 score, gap, top match's category, top-1 is ``truth``, top-1 verified) of one served
    search of a photo, read from its ranked products as the verdict reads them; None for an empty answer."""
    matches = searcher.search(image, verdict_depth(searcher.config), where=where).matches
    if not matches:
        return None
    top1, gap = ranked_features([m["score"] for m in matches], [m["product_id"] for m in matches])
    first = matches[0]
    verified = first.get("inliers", 0) >= searcher.rerank_config.min_inliers
    return top1, gap, first.get("category", ""), first["product_id"] == truth, verified


def served_samples(
    searcher: Searcher,
    queries: Sequence[tuple[str, Photo]],
    leave_out: bool,
    source: str = "the query manifest",
) -> Samples:
    """Each query photo searched through ``searcher`` (see the module doc), with ``product``.

    Each search is :meth:`~vsearch.catalog.search.Searcher.search` of the photo's file with the
    searcher's settings, whatever road they take; only ``k`` is the verdict's depth.

    Args:
        searcher: The served road over the catalog.
        queries: (where in the manifest, photo) pairs.
        leave_out: Also search each photo of an in-catalog product with its product left out.
        source: The manifest, for the error.
    Raises:
        DataError: a query photo that cannot be read (all are counted, the first named by its line).
    """
    rows: list[tuple] = []
    bad: list[str] = []
    for where, photo in queries:
        inside = searcher.store.get(photo.product_id) is not None
        searches: list[tuple[bool, Filter | None]] = [(inside, None)]
        if inside and leave_out:
            searches.append((False, Filter((Condition("product_id", "ne", photo.product_id),))))
        try:
            for present, without in searches:
                found = served_features(searcher, photo.image, photo.product_id, without)
                if found is not None:
                    rows.append((*found, present, photo.product_id))
        except (ImageError, OSError) as exc:
            bad.append(f"{where}: {photo.image}: {exc}")
    if bad:
        raise DataError(f"{source}: {len(bad)} query photo(s) cannot be read, e.g. {bad[0]}; fix or remove them")
    if not rows:
        raise DataError(f"{source}: no query photo could be searched")
    column = list(zip(*rows))
    return Samples(
        np.array(column[0], np.float64),
        np.array(column[1], np.float64),
        np.array(column[2], dtype=object),
        np.array(column[3], bool),
        np.array(column[5], bool),
        verified=np.array(column[4], bool),
        product=np.array(column[6], dtype=object),
    )


# ---------------------------------------------------------------- 2. fit, 3. held-out figures


def deal_products(samples: Samples, parts: int, seed: int) -> np.ndarray:
    """Each sample's part, 0 .. ``parts`` - 1, by its product: the products in the catalog, then
    those not in it, dealt in turn in a seeded order, so that every part has its share of both."""
    assert samples.product is not None
    inside = sorted(set(samples.product[samples.present]))
    outside = sorted(set(samples.product) - set(inside))
    rng = np.random.default_rng(seed)
    order = [inside[i] for i in rng.permutation(len(inside))] + [outside[i] for i in rng.permutation(len(outside))]
    part = {product: n % parts for n, product in enumerate(order)}
    return np.array([part[product] for product in samples.product], int)


def fit_on_photos(
    samples: Samples, fingerprint: str, target: float = DEFAULT_TARGET, wrong_none: float = DEFAULT_WRONG_NONE
) -> dict:
    """A calibration of the searches ``samples``: both heads by Platt scaling (one model per
    category with enough searches, as :func:`~vsearch.catalog.calibration.fit_head` fits them);
    "exact" where P(exact) >= ``target``; "none" where at most ``wrong_none`` of the in-catalog
    searches would be told "none", at 90% confidence.

    Raises:
        ValueError: ``target`` not between 0 and 1.
        DataError: no searches.
    """
    if not 0 < target < 1:
        raise ValueError(f"the target precision must be between 0 and 1, got {target}")
    heads = {outcome: fit_head(samples, outcome, "platt") for outcome in ("exact", "present")}
    in_catalog = head_probabilities(heads["present"], samples)[samples.present]
    thresholds = {"exact": float(target), "none": threshold_for_rate(in_catalog, wrong_none)}
    return new_calibration(fingerprint, heads, thresholds, target, wrong_none)


def cross_validate(
    samples: Samples,
    fingerprint: str,
    folds: int = DEFAULT_FOLDS,
    target: float = DEFAULT_TARGET,
    wrong_none: float = DEFAULT_WRONG_NONE,
    seed: int = DEFAULT_SEED,
) -> dict:
    """The verdict figures of every search, each fold's from a calibration fitted without its products
    (:func:`fit_on_photos`).

    ``folds`` is capped at the number of products; the figures also say how many folds.
    """
    assert samples.product is not None
    folds = min(folds, len(set(samples.product)))
    fold = deal_products(samples, folds, seed)
    said = np.empty(len(samples), dtype=object)
    p_exact, p_present = np.empty(len(samples)), np.empty(len(samples))
    for f in range(folds):
        held = fold == f
        calibration = fit_on_photos(samples.take(~held), fingerprint, target, wrong_none)
        said[held], p_exact[held], p_present[held] = sample_verdicts(calibration, samples.take(held))
    return {"folds": folds, **verdict_figures(samples, said.astype(str), p_exact, p_present)}


# ---------------------------------------------------------------- the stage


def calibrate_on_queries(
    store,
    embedder,
    queries: str | os.PathLike,
    target: float = DEFAULT_TARGET,
    wrong_none: float = DEFAULT_WRONG_NONE,
    seed: int = DEFAULT_SEED,
    folds: int = DEFAULT_FOLDS,
    config: SearchConfig = SearchConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Calibrates the served answers of ``store`` on the labelled photos of a query manifest;
    returns the calibration (keep it with ``store.set_calibration``), its held-out figures from
    ``folds`` folds by product. The photos are searched with ``config`` (the settings the server
    serves with), kept as the calibration's ``road``.

    The catalog's current calibration, if any, is measured on the same searches too (logged):
    what the one being replaced was worth on these photos.

    Raises:
        DataError: the manifest cannot be used (:func:`~vsearch.catalog.manifest.read_queries`,
            :func:`check_queries`), a photo cannot be read, or the embedder is not the catalog's model.
    """
    source = printable(queries)
    rows = read_queries(queries)
    check_queries(rows, store, source)
    if embedder.fingerprint != store.fingerprint:
        raise DataError(
            f"the catalog was built with model {store.fingerprint}, the calibration model is "
            f"{embedder.fingerprint}; calibrate with the catalog's model"
        )
    products = {photo.product_id for _, photo in rows}
    absent = {product for product in products if store.get(product) is None}
    searcher = Searcher(embedder, store, config)
    log(
        f"{len(rows)} labelled photos of {len(products)} products ({source}), searched as served (category "
        f"{config.category}, re-rank {'on' if config.rerank else 'off'}, regions {config.regions}); not in the catalog: "
        + (f"{len(absent)} of its products" if absent else "each photo again with its product left out")
    )
    samples = served_samples(searcher, rows, leave_out=not absent, source=source)
    heldout = cross_validate(samples, store.fingerprint, folds, target, wrong_none, seed)
    previous = store.calibration
    if previous and previous.get("fingerprint") == store.fingerprint:
        was = verdict_metrics(previous, samples)
        log(
            f"the catalog's calibration until now ({fitted_on(previous)['description']}), on these photos: "
            f"exact precision {_num(was['exact_precision'])} ({was['num_exact']} answers) at coverage "
            f"{_num(was['exact_coverage'])}; none on photos not in the catalog {_num(was['none_on_left_out'])}, "
            f"on in-catalog ones {_num(was['none_on_in_catalog'])}"
        )
    calibration = fit_on_photos(samples, store.fingerprint, target, wrong_none)
    absent_photos = sum(photo.product_id in absent for _, photo in rows)
    calibration.update(
        fitted_on={
            "kind": "real",
            "description": f"real photos: {len(rows)} queries of {len(products)} products"
            + (f" ({absent_photos} photos of {len(absent)} products not in the catalog)" if absent else ""),
            "manifest": source,
            "queries": len(rows),
            "products": len(products),
            "not_in_catalog": "photos of products not in the catalog"
            if absent
            else "photos with their product left out",
        },
        heldout={"photos": f"real photos, {heldout['folds']} folds by product", **heldout},
        road={
            "category": config.category,
            "category_prior": config.category_prior,
            "rerank": config.rerank,
            "rerank_depth": config.reranker.depth,
            "min_inliers": config.reranker.min_inliers,
            "regions": config.regions,
        },
        seed=seed,
        num_items=store.count()[1],
        date=provenance()["date"],
    )
    return calibration


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
