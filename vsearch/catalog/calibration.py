"""What a search answer means: "this is the item", "similar items", "not in our catalog".

A raw cosine score is not a probability, and no fixed score cut-off fits every catalog,
model and category. This stage learns what the scores mean from the catalog itself:

1. **Photos** (:func:`customer_photos`): simulated customer photos of catalog items
   (:func:`vsearch.augment.customer_photo`, seeded per photo).
2. **Samples** (:func:`query_samples`): each photo is searched twice, once as is (its
   product is in the catalog) and once with its product left out (the top results over
   the whole catalog with that product dropped: the same photo, now of something the
   shop does not sell). Each search gives two features, the top-1 score and its gap to
   the next product (:func:`vsearch.catalog.verdict.ranked_features`), and two outcomes: the top-1
   is the exact product, and the product is in the catalog at all.
3. **Heads** (:func:`fit_head`): two calibrated probabilities, ``exact`` (the top-1 is
   the product) and ``present`` (the product is in the catalog), each per category of the
   top match, with a global model for categories with too few samples. A model is a
   logistic regression on the standardised features (Platt scaling) or an isotonic
   (pool-adjacent-violators) step function of the same linear score.
4. **Choice and thresholds** (:func:`fit_calibration`): both methods are fitted on the
   photos of one seed and compared by expected calibration error on photos of another;
   on those held-out photos the thresholds are set: "exact" where ``exact`` answers
   reach the target precision, "none" where ``present`` wrongly says "none" to at most
   5% of the photos of products in the catalog. Both hold at 90% confidence (a Wilson
   bound), so that they hold on new photos too, not just on these.
5. **Check** (:func:`verdict_metrics`): precision and coverage of the verdicts on photos
   of a third seed, kept with the calibration: the precision "none" is stated at.

In-catalog and left-out searches are equally many, so precisions and probabilities are
those of a stream of customer photos half of which show a product the shop sells.

These photos are our generator's, made from the catalog photos themselves: the calibration
says so (``fitted_on``, shown by ``vsearch index info``, ``/healthz`` and every verdict).
A shop with labelled photos of its own fits on those instead
(:mod:`vsearch.catalog.real_calibration`, ``vsearch calibrate --queries``).

    vsearch calibrate --model saved_models/embedding --store saved_models/catalog.vsi
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vsearch.artifacts import provenance
from vsearch.catalog.verdict import (
    SYNTHETIC_FIT,
    VERDICT_DEPTH,
    calibration_summary,
    head_model,
    probability,
    ranked_features,
    verdicts,
)
from vsearch.errors import DataError, ImageError
from vsearch.stores.filters import Condition, Filter

DEFAULT_TARGET = 0.95
DEFAULT_WRONG_NONE = 0.05  # the most in-catalog photos "none" may be said to
CONFIDENCE_Z = 1.2816  # one-sided 90% normal quantile, for the thresholds' Wilson bounds
DEFAULT_PHOTOS = 1000  # customer photos per seed (fit, choice and thresholds, check)
DEFAULT_SEED = 0
PHOTO_CHUNK = 128  # photos made and embedded at a time: full-size photos take memory
METHODS = ("platt", "isotonic")
MIN_CATEGORY_SAMPLES = 150  # a category with fewer uses the global model,
MIN_CATEGORY_OUTCOMES = 15  # as does one with fewer of either outcome
ECE_BINS = 10
# What issue 21 asks of the verdicts, on photos not used to fit the calibration.
TARGETS = {
    "exact_precision": (">=", 0.95),
    "exact_coverage": (">=", 0.80),
    "none_on_left_out": (">=", 0.90),
    "none_on_in_catalog": ("<=", 0.05),
}


# ---------------------------------------------------------------- 1. photos


def customer_photos(
    items: Sequence[dict], count: int, seed: int, start: int = 0, load: Callable[[str], np.ndarray] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Simulated customer photos ``start .. start + count - 1`` of catalog items, and the id each one shows.

    Items are taken in a seeded order, all of them before any twice; photo ``j`` is drawn
    from the generator seeded ``(seed, j)``. An item whose photo cannot be read is skipped.
    """
    from vsearch.augment import customer_photo
    from vsearch.images import load_image

    load = load or load_image
    order = np.random.default_rng(seed).permutation(len(items))
    photos, ids = [], []
    for j in range(start, start + count) if len(items) else ():
        item = items[order[j % len(items)]]
        try:
            pixels = load(item["path"])
        except (ImageError, OSError, KeyError):
            continue
        photos.append(customer_photo(pixels, np.random.default_rng([seed, j])))
        ids.append(item["id"])
    return photos, ids


# ---------------------------------------------------------------- 2. samples


@dataclass
class Samples:
    """Searches of customer photos: features, the top match's category and the outcomes."""

    top1: np.ndarray  # (n,) top-1 score
    gap: np.ndarray  # (n,) top-1 score minus the next product's
    category: np.ndarray  # (n,) category of the top-1 match
    exact: np.ndarray  # (n,) bool: the top-1 is the photo's product
    present: np.ndarray  # (n,) bool: the photo's product is in the searched catalog
    # (n,) bool: the re-rank verified the top-1 (the served road then never says "none"); None: not re-ranked
    verified: np.ndarray | None = None
    product: np.ndarray | None = None  # (n,) the photo's product, where searches are split by product

    def __len__(self) -> int:
        return len(self.top1)

    def take(self, rows) -> Samples:
        """The samples at ``rows`` (indices or a mask)."""
        return Samples(
            self.top1[rows],
            self.gap[rows],
            self.category[rows],
            self.exact[rows],
            self.present[rows],
            verified=None if self.verified is None else self.verified[rows],
            product=None if self.product is None else self.product[rows],
        )


def _features(hits: Sequence[dict], truth: str):
    """(top1, gap, category, exact) of one ranked list of products, read as the searcher reads it."""
    top1, gap = ranked_features([h["score"] for h in hits], [h["product_id"] for h in hits])
    return top1, gap, hits[0].get("category", ""), hits[0]["product_id"] == truth


def query_samples(store, vectors: np.ndarray, true_products: Sequence[str]) -> Samples:
    """Each query searched with its product in the catalog and with it left out.

    Args:
        store: A :class:`vsearch.stores.Store` holding every ``true_products`` product.
        vectors: (n, dim) embeddings of customer photos.
        true_products: The product each photo shows.
    Returns:
        :class:`Samples`, the n in-catalog searches first, then the left-out ones (a query
        whose catalog holds no other product has none).
    """
    vectors = np.asarray(vectors, np.float32).reshape(len(true_products), -1)
    inside = [
        _features(hits, truth) for hits, truth in zip(store.search(vectors, VERDICT_DEPTH), true_products) if hits
    ]
    left_out = []
    for vector, truth in zip(vectors, true_products):
        others = store.search(vector[None], VERDICT_DEPTH, where=Filter((Condition("product_id", "ne", truth),)))[0]
        if others:
            left_out.append(_features(others, truth))
    rows = inside + left_out
    return Samples(
        np.array([r[0] for r in rows], np.float64),
        np.array([r[1] for r in rows], np.float64),
        np.array([r[2] for r in rows], dtype=object),
        np.array([r[3] for r in rows], bool),
        np.arange(len(rows)) < len(inside),
    )


def store_photos(store) -> list[dict]:
    """Every catalog photo as ``{"id": its product, "path", "category"}``, in photo-id order."""
    photos = [
        (photo_id, {"id": p.product_id, "path": path, "category": p.category})
        for p in store.products()
        for photo_id, path in zip(p.photos, p.paths)
    ]
    return [photo for _, photo in sorted(photos, key=lambda pair: pair[0])]


def catalog_samples(store, embedder, count: int, seed: int, batch_size: int = 32) -> Samples:
    """``count`` customer photos of the catalog's own products (seed ``seed``), embedded and searched both ways."""
    from vsearch.embedder import embed_images

    items = store_photos(store)
    vectors, true_products = [np.zeros((0, store.dim), np.float32)], []
    for start in range(0, count, PHOTO_CHUNK):
        photos, ids = customer_photos(items, min(PHOTO_CHUNK, count - start), seed, start)
        done = embed_images(embedder, photos, batch_size=batch_size)
        vectors.append(done.vectors)
        true_products += [ids[i] for i in done.good]
    return query_samples(store, np.concatenate(vectors), true_products)


# ---------------------------------------------------------------- 3. heads


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def fit_platt(x: np.ndarray, y: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Logistic regression of ``y`` on ``x`` by Newton's method, with Platt's targets.

    Platt (1999) fits to ``(n+ + 1) / (n+ + 2)`` for a positive and ``1 / (n- + 2)`` for a
    negative instead of 1 and 0, so the fit is finite on separable data too.

    Returns:
        (coefficients (d,), intercept).
    """
    x, y = np.asarray(x, np.float64).reshape(len(y), -1), np.asarray(y, bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    design = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(design.shape[1])

    def loss(w):
        z = design @ w
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    current = loss(w)
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, design.T @ (p - target))
        scale = 1.0
        while scale > 1e-6 and loss(w - scale * step) > current:  # a step that overshoots is halved
            scale /= 2
        w = w - scale * step
        previous, current = current, loss(w)
        if previous - current < 1e-12 * max(1.0, abs(current)):
            break
    return w[:-1], float(w[-1])


def fit_isotonic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing step function of ``z`` closest to ``y`` (pool adjacent violators).

    Returns:
        (edges, values): step i starts at ``edges[i]`` (its lowest ``z``) with value
        ``values[i]``; equal neighbouring steps are merged.
    """
    z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
    levels, first = np.unique(z, return_inverse=True)
    sums, weights = np.bincount(first, y, len(levels)), np.bincount(first, minlength=len(levels)).astype(float)
    blocks: list[list[float]] = []  # [sum, weight, lowest z]
    for total, weight, level in zip(sums, weights, levels):
        blocks.append([total, weight, level])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, weight, _ = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += weight
    return np.array([b[2] for b in blocks]), np.array([b[0] / b[1] for b in blocks])


def fit_model(top1: np.ndarray, gap: np.ndarray, y: np.ndarray, method: str) -> dict:
    """One calibration model (see :func:`vsearch.catalog.verdict.probability`) of outcome ``y``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = np.column_stack([top1, gap]).astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    coef, intercept = fit_platt((x - mean) / scale, y)
    model = {
        "method": method,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept,
        "samples": int(len(y)),
        "positives": int(np.sum(y)),
    }
    if method == "isotonic":
        edges, values = fit_isotonic(((x - mean) / scale) @ coef + intercept, y)
        model.update(edges=edges.tolist(), values=values.tolist())
    return model


def fit_head(
    samples: Samples,
    outcome: str,
    method: str,
    min_samples: int = MIN_CATEGORY_SAMPLES,
    min_outcomes: int = MIN_CATEGORY_OUTCOMES,
) -> dict:
    """A global model of ``outcome`` (``exact`` or ``present``) and one per category with enough samples."""
    y = getattr(samples, outcome)
    if len(y) == 0:
        raise DataError("no calibration samples: no customer photo of the catalog could be searched")
    head = {"global": fit_model(samples.top1, samples.gap, y, method), "categories": {}}
    for category in sorted(set(samples.category)):
        mask = samples.category == category
        if mask.sum() >= min_samples and min(y[mask].sum(), (~y[mask]).sum()) >= min_outcomes:
            head["categories"][category] = fit_model(samples.top1[mask], samples.gap[mask], y[mask], method)
    return head


def head_probabilities(head: dict, samples: Samples) -> np.ndarray:
    """A head's probability for every sample, each by its top match's category's model."""
    out = np.empty(len(samples))
    for category in set(samples.category):
        mask = samples.category == category
        out[mask] = probability(head_model(head, category), samples.top1[mask], samples.gap[mask])
    return out


# ---------------------------------------------------------------- 4. choice and thresholds


def reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    """The reliability curve: per equal-width probability bin, mean probability and outcome rate.

    Empty bins have None for both.
    """
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    confidence = np.bincount(which, p, bins)
    frequency = np.bincount(which, y, bins)
    return {
        "edges": np.linspace(0, 1, bins + 1).round(6).tolist(),
        "count": count.tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(confidence, count)],
        "frequency": [float(f / n) if n else None for f, n in zip(frequency, count)],
    }


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of samples) x |outcome rate - mean probability|."""
    curve = reliability(p, y, bins)
    total = sum(curve["count"])
    if not total:
        return float("nan")
    return float(
        sum(n / total * abs(f - c) for n, f, c in zip(curve["count"], curve["frequency"], curve["confidence"]) if n)
    )


def wilson_interval(k: np.ndarray | int, n: np.ndarray | int, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score bounds of a rate of ``k`` in ``n`` at normal quantile ``z`` (0: the rate itself)."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    rate = k / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _cuts(values: np.ndarray) -> np.ndarray:
    """In a sorted array, the last position of each run of equal values: a cut may not split a run."""
    return np.r_[values[1:] != values[:-1], True]


def threshold_for_precision(score: np.ndarray, y: np.ndarray, target: float, z: float = CONFIDENCE_Z) -> float | None:
    """The lowest t for which the samples with ``score >= t`` are right ``target`` of the time.

    Lowest: the most answers at that precision; "right" by the Wilson lower bound at ``z``.
    None when no threshold reaches it.
    """
    score, y = np.asarray(score, np.float64), np.asarray(y, bool)
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    lower, _ = wilson_interval(np.cumsum(y[order]), np.arange(1, len(ranked) + 1), z)
    ok = np.flatnonzero((lower >= target) & _cuts(ranked))
    return float(ranked[ok[-1]]) if len(ok) else None


def threshold_for_rate(score: np.ndarray, max_rate: float, z: float = CONFIDENCE_Z) -> float | None:
    """The highest t for which at most ``max_rate`` of ``score`` is ``<= t`` (by the Wilson upper bound).

    None when even the lowest score alone is too many.
    """
    ranked = np.sort(np.asarray(score, np.float64))
    _, upper = wilson_interval(np.arange(1, len(ranked) + 1), len(ranked), z)
    ok = np.flatnonzero((upper <= max_rate) & _cuts(ranked))
    return float(ranked[ok[-1]]) if len(ok) else None


def choose_method(fit: Samples, check: Samples, outcome: str) -> tuple[str, dict]:
    """The method whose model, fitted on ``fit``, has the lower ECE on ``check``; and both ECEs."""
    y = getattr(check, outcome)
    eces = {m: expected_calibration_error(head_probabilities(fit_head(fit, outcome, m), check), y) for m in METHODS}
    return min(METHODS, key=lambda m: (eces[m], m != "platt")), eces


def fit_calibration(
    fit: Samples,
    check: Samples,
    fingerprint: str,
    target: float = DEFAULT_TARGET,
    wrong_none: float = DEFAULT_WRONG_NONE,
) -> dict:
    """Both heads fitted on ``fit``; methods chosen and thresholds set on ``check``.

    "exact": the lowest ``exact`` probability at which the answers on ``check`` are right
    ``target`` of the time; "none": the highest ``present`` probability at which at most
    ``wrong_none`` of the in-catalog searches of ``check`` would be told "none". Both at
    90% confidence (:func:`threshold_for_precision`, :func:`threshold_for_rate`).
    """
    if not 0 < target < 1:
        raise ValueError(f"the target precision must be between 0 and 1, got {target}")
    if not len(fit) or not len(check):
        raise DataError("no calibration samples: no customer photo of the catalog could be searched")
    heads, selection = {}, {}
    for outcome in ("exact", "present"):
        method, selection[outcome] = choose_method(fit, check, outcome)
        heads[outcome] = fit_head(fit, outcome, method)
    thresholds = {
        "exact": threshold_for_precision(head_probabilities(heads["exact"], check), check.exact, target),
        "none": threshold_for_rate(head_probabilities(heads["present"], check)[check.present], wrong_none),
    }
    return new_calibration(fingerprint, heads, thresholds, target, wrong_none, selection_ece=selection)


def new_calibration(fingerprint: str, heads: dict, thresholds: dict, target: float, wrong_none: float, **more) -> dict:
    """The calibration a store keeps (read by :func:`vsearch.catalog.verdict.match_verdict`), from
    its fitted ``heads`` (``exact`` and ``present``, :func:`fit_head`) and ``thresholds``; each
    head's method is its global model's. ``more``: further keys, after these.
    """
    return {
        "version": 1,
        "fingerprint": fingerprint,
        "features": ["top1", "gap"],
        "target_precision": target,
        "wrong_none": wrong_none,
        "heads": heads,
        "thresholds": thresholds,
        "method": {name: head["global"]["method"] for name, head in heads.items()},
        **more,
    }


# ---------------------------------------------------------------- 5. check


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def sample_verdicts(calibration: dict, samples: Samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample's verdict, as :meth:`vsearch.catalog.search.Searcher.search_vector` gives it
    (from the two heads and the thresholds, and never "none" for a verified top-1), and the
    two heads' probabilities: (verdicts, P(exact), P(in catalog))."""
    p_exact = head_probabilities(calibration["heads"]["exact"], samples)
    p_present = head_probabilities(calibration["heads"]["present"], samples)
    said = verdicts(p_exact, p_present, calibration["thresholds"])
    if samples.verified is not None:
        said = np.where((said == "none") & samples.verified, "similar", said)
    return said, p_exact, p_present


def verdict_metrics(calibration: dict, samples: Samples) -> dict:
    """How the verdicts fare on samples the calibration was not fitted on (:func:`verdict_figures`)."""
    return verdict_figures(samples, *sample_verdicts(calibration, samples))


def verdict_figures(samples: Samples, said: np.ndarray, p_exact: np.ndarray, p_present: np.ndarray) -> dict:
    """The figures of verdicts ``said`` (with the probabilities they came from) on ``samples``.

    ``exact_precision``: share of "exact" answers whose top-1 is the product (in-catalog
    and left-out searches together), of ``num_exact`` answers, and ``exact_precision_low``
    its lower bound at 90% confidence (Wilson); ``exact_coverage``: share of in-catalog searches
    answered "exact"; ``false_exact_on_left_out``: share of left-out searches answered
    "exact"; ``none_on_left_out`` / ``none_on_in_catalog``: share answered "none";
    ``none_precision``: share of "none" answers to left-out searches;
    ``top1_correct``: share of in-catalog searches whose top-1 is the product (R@1);
    ``ece_exact`` / ``ece_present``: expected calibration error of the two heads.
    """
    inside, outside = samples.present, ~samples.present
    exact, none = said == "exact", said == "none"
    answers, right = int(exact.sum()), int(samples.exact[exact].sum())
    out = {
        "exact_precision": right / answers if answers else None,
        # what so many answers can vouch for: the precision's lower bound at 90% confidence
        "exact_precision_low": float(wilson_interval(right, answers, CONFIDENCE_Z)[0]) if answers else None,
        "num_exact": answers,
        "exact_coverage": _share(exact[inside]),
        "false_exact_on_left_out": _share(exact[outside]),
        "none_on_left_out": _share(none[outside]),
        "none_on_in_catalog": _share(none[inside]),
        "none_precision": float(outside[none].mean()) if none.any() else None,
        "top1_correct": _share(samples.exact[inside]),
        "ece_exact": expected_calibration_error(p_exact, samples.exact),
        "ece_present": expected_calibration_error(p_present, samples.present),
        "num_in_catalog": int(inside.sum()),
        "num_left_out": int(outside.sum()),
    }
    return {**out, "targets_met": {name: _meets(out[name], op, bound) for name, (op, bound) in TARGETS.items()}}


def _meets(value: float | None, op: str, bound: float) -> bool:
    """Whether a measured figure meets its target (a figure that could not be measured does not)."""
    return value is not None and (value >= bound if op == ">=" else value <= bound)


def reliability_curves(calibration: dict, samples: Samples, bins: int = ECE_BINS) -> dict:
    """The reliability curves of both heads on ``samples`` (for :func:`vsearch.learn.plots.reliability_diagram`)."""
    return {
        "top-1 is the exact item": reliability(
            head_probabilities(calibration["heads"]["exact"], samples), samples.exact, bins
        ),
        "item is in the catalog": reliability(
            head_probabilities(calibration["heads"]["present"], samples), samples.present, bins
        ),
    }


# ---------------------------------------------------------------- the stage


def calibrate_catalog(
    store,
    embedder,
    target: float = DEFAULT_TARGET,
    photos: int = DEFAULT_PHOTOS,
    seed: int = DEFAULT_SEED,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
    wrong_none: float = DEFAULT_WRONG_NONE,
) -> dict:
    """Calibrates the answers of ``store`` searched with ``embedder``; returns the calibration
    (keep it with ``store.set_calibration``).

    Photos of seed ``seed`` fit the heads, of ``seed + 1`` choose the method and set the
    thresholds, of ``seed + 2`` check the verdicts (``heldout`` in the result).

    Raises:
        DataError: the embedder is not the catalog's model, or no photo could be searched.
    """
    if photos < 1:
        raise DataError(f"the number of calibration photos must be >= 1, got {photos}")
    if embedder.fingerprint != store.fingerprint:
        raise DataError(
            f"the catalog was built with model {store.fingerprint}, the calibration model is "
            f"{embedder.fingerprint}; calibrate with the catalog's model"
        )
    samples = {}
    for role, offset in (("fit", 0), ("check", 1), ("heldout", 2)):
        log(f"calibration photos, {role} (seed {seed + offset}): {photos} customer photos of catalog items")
        samples[role] = catalog_samples(store, embedder, photos, seed + offset, batch_size)
    calibration = fit_calibration(samples["fit"], samples["check"], store.fingerprint, target, wrong_none)
    calibration.update(
        fitted_on={"kind": "synthetic", "description": SYNTHETIC_FIT, "photos": photos},
        heldout={
            "photos": f"synthetic photos of seed {seed + 2}",
            **verdict_metrics(calibration, samples["heldout"]),
        },
        photos=photos,
        seeds={"fit": seed, "check": seed + 1, "heldout": seed + 2},
        num_items=store.count()[1],
        date=provenance()["date"],
    )
    return calibration


def format_calibration(calibration: dict) -> str:
    """A few lines for a person: what it was fitted on, methods, thresholds and the held-out figures."""
    t, h = calibration["thresholds"], calibration.get("heldout") or {}
    summary = calibration_summary(calibration)

    def num(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"calibration for target precision {calibration['target_precision']:.2f}, fitted on "
        f"{summary['description']}: exact {calibration['method']['exact']}, present "
        f"{calibration['method']['present']}; categories with their own model: "
        f"{sorted(calibration['heads']['exact']['categories']) or 'none'}",
        f"  'exact' when P(exact) >= {num(t['exact'])}"
        + (" (never: the target is out of reach)" if t["exact"] is None else "")
        + f"; 'none' when P(in catalog) <= {num(t['none'])}"
        + (
            " (never: it would be wrong too often)"
            if t["none"] is None
            else f" (wrong on at most {calibration.get('wrong_none', DEFAULT_WRONG_NONE):.0%} of in-catalog photos)"
        ),
    ]
    road = calibration.get("road")
    if road:  # fitted on served searches: their settings are part of what it means
        lines.append(
            f"  searches: category {road.get('category')}, re-rank {'on' if road.get('rerank') else 'off'}, "
            f"regions {road.get('regions', 'none')}"
        )
    if h:
        low = h.get("exact_precision_low")
        lines.append(
            f"  held-out {summary['heldout']['photos']} ({h['num_in_catalog']} in the catalog, "
            f"{h['num_left_out']} not): exact precision {num(h['exact_precision'])}"
            + (f" ({h['num_exact']} answers, >= {low:.3f} at 90% confidence)" if low is not None else "")
            + f" at coverage {num(h['exact_coverage'])} (top-1 right {num(h['top1_correct'])}); false exact on "
            f"photos not in the catalog {num(h['false_exact_on_left_out'])}; none on them "
            f"{num(h['none_on_left_out'])}, on in-catalog {num(h['none_on_in_catalog'])} (precision "
            f"{num(h['none_precision'])}); ECE exact {num(h['ece_exact'], 4)}, present {num(h['ece_present'], 4)}"
        )
    return "\n".join(lines)
