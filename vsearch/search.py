"""Answering a photo: a model and a catalog index -> the top-k catalog items.

:class:`Searcher` takes a photo (bytes, a path or pixels), sends it through the road
(:meth:`Searcher.model_input`: :func:`vsearch.images.model_input` with its limits) and searches
the catalog. Building the catalog is :mod:`vsearch.catalog`'s job.

Category filter (``category=``): ``any`` searches everything; a category name restricts
the results to it; ``auto`` predicts the query's category from its nearest catalog items
(a score-weighted vote) and, when the vote is confident, ranks that category's items first.
The vote runs over the catalog's own categories, so it also works for a shop whose
categories the classifier never saw.

Calibrated verdict: when the catalog carries a calibration (``vsearch calibrate``, made by
:mod:`vsearch.calibrate`), every result also says what the top match means, as
``match = {"verdict": "exact" | "similar" | "none", "confidence": p}``: ``p`` is the
calibrated probability that the first match is the very product in the photo, from its
score and its gap to the next product. "exact" when ``p`` reaches the calibration's
threshold; "none" (not in the catalog) when the calibrated probability that the product
is in the catalog at all falls to its threshold; "similar" otherwise, and when the two disagree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, model_input, to_pixels
from vsearch.index import Catalog

AUTO_NEIGHBOURS = 10      # neighbours that vote for the query's category
AUTO_CONFIDENCE = 0.6     # vote share above which `auto` ranks the predicted category first
VOTE_TEMPERATURE = 0.05   # softmax temperature over cosine scores for the vote
# Category search (Searcher._in_category): a category up to this share of the catalog is
# scanned exactly over its own items, a larger one found by widening an ordinary search. The
# shares are where the two cost the same (bench/category.py, 200k items: an exact index's
# scan costs the selector check of every row, its widening a full scan per round; HNSW's
# widening is a few cheap graph walks). Other index kinds filter by ids themselves.
SCAN_CATEGORY_SHARE = {"exact": 1 / 4, "hnsw": 1 / 32}
# Results read, however few are shown, to find the first match's gap to the next product
# (a product may have several photos); vsearch.calibrate measures the gap over as many.
VERDICT_DEPTH = 10


# ---------------------------------------------------------------- the calibrated verdict

def product_of(item: dict) -> str:
    """The product a catalog photo shows: its ``product_id``; without one the photo is its own product."""
    return str(item.get("product_id") or item["id"])


def ranked_features(scores: Sequence[float], products: Sequence[str]) -> tuple[float, float]:
    """(top-1 score, gap to the best-scored other product) of a ranked list, best first.

    With no other product in the list the gap is taken to its last score (a lower bound).
    """
    top = float(scores[0])
    for score, product in zip(scores[1:], products[1:]):
        if product != products[0]:
            return top, top - float(score)
    return top, top - float(scores[-1])


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
    """``{"verdict", "confidence"}`` for a ranked list of matches under a stored calibration."""
    top1, gap = ranked_features([m["score"] for m in matches], [product_of(m) for m in matches])
    category = matches[0].get("category", "")
    heads = calibration["heads"]
    p_exact = float(probability(head_model(heads["exact"], category), top1, gap)[0])
    p_present = float(probability(head_model(heads["present"], category), top1, gap)[0])
    return {"verdict": str(verdicts(p_exact, p_present, calibration["thresholds"])[0]),
            "confidence": round(p_exact, 4)}


# ---------------------------------------------------------------- answering a photo

def predict_category(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> tuple[str, float]:
    """Score-weighted vote of the neighbours' categories: (category, share of the vote)."""
    if not matches:
        return "", 0.0
    scores = np.array([m["score"] for m in matches], np.float64)
    weights = np.exp((scores - scores.max()) / temperature)
    votes: dict[str, float] = {}
    for match, weight in zip(matches, weights):
        votes[match.get("category", "")] = votes.get(match.get("category", ""), 0.0) + weight
    best = max(votes, key=votes.get)
    return best, float(votes[best] / weights.sum())


@dataclass
class SearchResult:
    matches: list[dict]
    category: dict  # mode, predicted, confidence, applied
    match: dict | None = None  # verdict and confidence, when the catalog is calibrated

    def to_dict(self) -> dict:
        out = {"category": self.category,
               "matches": [{"rank": r + 1, **m} for r, m in enumerate(self.matches)]}
        if self.match is not None:
            out["match"] = self.match
        return out


class Searcher:
    """A model and a catalog index, ready to answer photos.

    Args:
        embedder: An :class:`~vsearch.embedder.Embedder` whose fingerprint matches the catalog.
        catalog: The :class:`~vsearch.index.Catalog` to search.
        max_pixels / max_bytes: Limits for query photos (decompression bombs, huge uploads).
    """

    def __init__(self, embedder, catalog: Catalog, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        fingerprint = getattr(embedder, "fingerprint", None)
        if fingerprint is not None and fingerprint != catalog.fingerprint:
            raise DataError(f"the catalog was built with model {catalog.fingerprint}, the query model is "
                            f"{fingerprint}; rebuild the index with this model")
        if embedder.dim != catalog.dim:
            raise DataError(f"the model makes {embedder.dim}-d vectors, the catalog holds {catalog.dim}-d")
        self.embedder, self.catalog = embedder, catalog
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.categories = sorted({it.get("category", "") for it in catalog.items.values()} - {""})

    @classmethod
    def from_paths(cls, model: str | os.PathLike, index: str | os.PathLike, num_threads: int | None = None,
                   **kwargs) -> "Searcher":
        """Loads the embedding model (SavedModel folder or ``.tflite``) and a saved catalog."""
        from vsearch.embedder import load_embedder

        embedder = load_embedder(model, num_threads=num_threads)
        catalog = Catalog.load(index, expected_fingerprint=getattr(embedder, "fingerprint", None))
        return cls(embedder, catalog, **kwargs)

    def pixels(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """bytes, a path, or an (H, W, 3) array -> upright RGB uint8 pixels (strict checks).

        ``box``: only that part of the photo (``x0,y0,x1,y1`` fractions, see
        :func:`vsearch.images.parse_box`), cut at full resolution.
        """
        if isinstance(image, (str, os.PathLike)):
            source = os.fsdecode(image)
        return to_pixels(image, source, self.max_pixels, self.max_bytes, box=box)

    def model_input(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """The road with this searcher's limits: a photo (or a ``box`` of it) -> (S, S, 3) float32 model input."""
        if isinstance(image, (str, os.PathLike)):
            source = os.fsdecode(image)
        return model_input(image, int(self.embedder.image_size), source, max_pixels=self.max_pixels,
                           max_bytes=self.max_bytes, box=box)

    def embed(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """One photo (or a part of it) -> its unit vector, through the road."""
        return np.asarray(self.embedder.embed_pixels(self.model_input(image, source, box)[None]), np.float32)[0]

    def search(self, image, k: int = 5, category: str = "any", source: str = "<upload>", box=None) -> SearchResult:
        """The top-k catalog items for a photo (bytes, path or pixels), or for a ``box`` of it."""
        return self.search_vector(self.embed(image, source, box), k, category)

    def search_vector(self, vector: np.ndarray, k: int = 5, category: str = "any") -> SearchResult:
        """The top-k catalog items for an embedding (see the module doc for ``category``),
        with the calibrated verdict on the first of them when the catalog has a calibration."""
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        calibration = self.catalog.calibration
        if calibration is None:
            return self._ranked(vector, k, category)
        result = self._ranked(vector, max(k, VERDICT_DEPTH), category)
        if result.matches:
            result.match = match_verdict(calibration, result.matches)
        result.matches = result.matches[:k]
        return result

    def _ranked(self, vector: np.ndarray, k: int, category: str) -> SearchResult:
        category = category or "any"
        info = {"mode": category, "predicted": None, "confidence": None, "applied": False}
        if category == "any":
            return SearchResult(self.catalog.search(vector[None], k)[0], info)
        if category == "auto":
            neighbours = self.catalog.search(vector[None], max(k, AUTO_NEIGHBOURS))[0]
            predicted, share = predict_category(neighbours[:AUTO_NEIGHBOURS])
            info.update(predicted=predicted, confidence=round(share, 4))
            if share < AUTO_CONFIDENCE:
                return SearchResult(neighbours[:k], info)
            info["applied"] = True
            category_items = self._in_category(vector, predicted, k)
            seen = {m["id"] for m in category_items}
            return SearchResult((category_items + [m for m in neighbours if m["id"] not in seen])[:k], info)
        if category not in self.categories:
            raise DataError(f"unknown category {category!r}; the catalog has {self.categories}")
        info.update(predicted=category, applied=True)
        return SearchResult(self._in_category(vector, category, k), info)

    def _in_category(self, vector: np.ndarray, category: str, k: int) -> list[dict]:
        """Top-k within one category: scanned exactly if small, else a widened search.

        A category up to :data:`SCAN_CATEGORY_SHARE` of the catalog is searched over its own
        items only; a larger one by an ordinary search, 4x deeper each round until k of its
        items come back (few rounds, since they are common).
        """
        ids = self.catalog.category_ids(category)
        share = SCAN_CATEGORY_SHARE.get(getattr(self.catalog.index, "kind", ""), 1.0)
        if len(ids) <= share * len(self.catalog):
            return self.catalog.search(vector[None], k, among=ids)[0]
        depth = max(4 * k, 64)
        while True:
            found = self.catalog.search(vector[None], depth)[0]
            hits = [m for m in found if m.get("category") == category]
            if len(hits) >= k or depth >= len(self.catalog):
                return hits[:k]
            depth *= 4

    def image_path(self, item_id: str) -> Path:
        """The catalog photo of an item (from the index's metadata, never from the caller)."""
        item = self.catalog.items.get(str(item_id))
        if item is None:
            raise KeyError(item_id)
        return Path(item["path"])


def thumbnails(matches: Sequence[dict], size: int = 160, load: Callable[[str], np.ndarray] | None = None):
    """Small RGB arrays of the matched catalog photos (grey where a file went missing)."""
    from PIL import Image

    out = []
    for match in matches:
        try:
            pixels = (load or load_image)(match["path"])
            img = Image.fromarray(pixels)
            img.thumbnail((size, size))
            out.append(np.asarray(img))
        except (ImageError, OSError):
            out.append(np.full((size, size, 3), 200, np.uint8))
    return out
