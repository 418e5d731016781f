"""The calibrated verdict: what the top match of a search means, under a catalog's calibration.

:mod:`vsearch.catalog.calibration` (and :mod:`vsearch.catalog.real_calibration`, on labelled
photos) fits a calibration; this module applies it. When the catalog carries one (``vsearch
calibrate``), every result of :class:`vsearch.catalog.search.Searcher` also says what the top
match means, as ``match = {"verdict": "exact" | "similar" | "none", "confidence": p,
"fitted_on": "real" | "synthetic"}`` (:func:`match_verdict`): ``p`` is the calibrated
probability that the first match is the very product in the photo, from its score and its gap
to the next product (:func:`ranked_features`); ``fitted_on`` says what the calibration was
fitted on (the shop's labelled photos, or photos made from the catalog).
"exact" when ``p`` reaches the calibration's threshold; "none" (not in the catalog) when the
calibrated probability that the product is in the catalog at all falls to its threshold;
"similar" otherwise, and when the two disagree (:func:`verdicts`).
A search with an attribute filter carries no verdict: it was calibrated on the whole catalog.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vsearch.config import SearchConfig

# Products read, however few are shown, for the first match's gap to the next product
# (vsearch.catalog.calibration measures the gap the same way).
VERDICT_DEPTH = 2
# What a calibration without labelled real photos was fitted on, said wherever it is shown.
SYNTHETIC_FIT = "synthetic photos from the catalog: no labelled real photos given"
# The settings of a road whose scores a calibration is bound to (a real calibration's ``road``).
ROAD_SETTINGS = ("category", "rerank", "regions")


def ranked_features(scores: Sequence[float], products: Sequence[str]) -> tuple[float, float]:
    """(first match's score, its gap to the best-scored other product) of a ranked list.

    The list's order may differ from the scores' (a category prior, a re-rank): the gap is to
    the highest other score wherever it sits. With no other product in the list the gap is
    taken to its last score (a lower bound).
    """
    top = float(scores[0])
    others = [float(score) for score, product in zip(scores[1:], products[1:]) if product != products[0]]
    return top, top - (max(others) if others else float(scores[-1]))


def probability(model: dict, top1, gap) -> np.ndarray:
    """A fitted calibration model's probability for (top-1 score, gap) pairs.

    ``model``: standardisation (``mean``, ``scale``), a linear score (``coef``,
    ``intercept``), then either Platt's sigmoid of it or an isotonic step function of it
    (``edges``: each step's lowest score, ``values``: its probability).
    """
    x = np.column_stack([np.atleast_1d(np.asarray(top1, np.float64)), np.atleast_1d(np.asarray(gap, np.float64))])
    z = ((x - np.asarray(model["mean"])) / np.asarray(model["scale"])) @ np.asarray(model["coef"]) + model["intercept"]
    if model["method"] == "isotonic":
        values = np.asarray(model["values"], np.float64)
        step = np.searchsorted(np.asarray(model["edges"], np.float64), z, side="right") - 1
        return values[np.clip(step, 0, len(values) - 1)]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def head_model(head: dict, category: str) -> dict:
    """A head's model for a category of the top match: its own if fitted, else the global one."""
    return head["categories"].get(category) or head["global"]


def verdicts(p_exact, p_present, thresholds: dict) -> np.ndarray:
    """The verdict per query, "exact", "similar" or "none", from the two calibrated probabilities.

    ``thresholds["exact"]``: ``p_exact`` at or above it says "exact"; ``thresholds["none"]``:
    ``p_present`` at or below it says "none"; either may be None (never said). A query that
    both would claim is "similar".
    """
    p_exact, p_present = np.atleast_1d(p_exact), np.atleast_1d(p_present)
    exact = p_exact >= thresholds["exact"] if thresholds.get("exact") is not None else np.zeros(len(p_exact), bool)
    none = p_present <= thresholds["none"] if thresholds.get("none") is not None else np.zeros(len(p_present), bool)
    return np.where(exact & ~none, "exact", np.where(none & ~exact, "none", "similar"))


def match_verdict(calibration: dict, matches: Sequence[dict]) -> dict:
    """``{"verdict", "confidence", "fitted_on"}`` for a ranked list of matches under a stored calibration."""
    top1, gap = ranked_features([m["score"] for m in matches], [m["product_id"] for m in matches])
    category = matches[0].get("category", "")
    heads = calibration["heads"]
    p_exact = float(probability(head_model(heads["exact"], category), top1, gap)[0])
    p_present = float(probability(head_model(heads["present"], category), top1, gap)[0])
    return {
        "verdict": str(verdicts(p_exact, p_present, calibration["thresholds"])[0]),
        "confidence": round(p_exact, 4),
        # "real": fitted on the shop's labelled photos; "synthetic": on photos made from the catalog
        "fitted_on": fitted_on(calibration)["kind"],
    }


def fitted_on(calibration: dict) -> dict:
    """What a calibration was fitted on: ``kind`` ("real" or "synthetic") and ``description``
    (a calibration stored before this was said is synthetic)."""
    return calibration.get("fitted_on") or {"kind": "synthetic", "description": SYNTHETIC_FIT}


def road_differences(calibration: dict, config: SearchConfig) -> dict[str, tuple]:
    """Where the searches a calibration was fitted on (its ``road``: one fitted on labelled photos,
    :mod:`vsearch.catalog.real_calibration`) differ from those of ``config``: setting -> (fitted
    on, ``config``'s), for :data:`ROAD_SETTINGS`. Its verdicts read scores of that road; another
    road's scores (the best of several parts, a re-ranked first) are not what it was fitted on.
    A calibration without a road (synthetic) has none; one without ``regions`` searched whole photos.
    """
    road = calibration.get("road")
    if not road:
        return {}
    fitted = {"regions": "none", **road}
    return {
        key: (fitted.get(key), getattr(config, key)) for key in ROAD_SETTINGS if fitted.get(key) != getattr(config, key)
    }


def calibration_summary(calibration: dict) -> dict:
    """What a calibration was fitted on (with the searches' settings, ``road``, where known) and
    what its "exact" verdict is worth on photos it was not fitted on, with the sample sizes (``/healthz``)."""
    found, h = fitted_on(calibration), calibration.get("heldout") or {}
    seeds = calibration.get("seeds") or {}
    return {
        "fitted_on": found["kind"],
        "description": found["description"],
        "road": calibration.get("road"),
        "target_precision": calibration.get("target_precision"),
        "heldout": {
            "photos": h.get("photos")
            or (f"synthetic photos of seed {seeds['heldout']}" if "heldout" in seeds else None),
            **{
                key: h.get(key)
                for key in ("exact_precision", "exact_precision_low", "num_exact", "exact_coverage", "num_in_catalog")
            },
            "num_not_in_catalog": h.get("num_left_out"),
        },
        "date": calibration.get("date"),
    }
