"""Answering a photo: a model and a catalog index -> the top-k catalog items.

:class:`Searcher` takes a photo (bytes, a path or pixels), sends it through the road
(:func:`vsearch.images.to_pixels`, then :func:`vsearch.embedder.embed_one`) and searches
the catalog. Building the catalog is :mod:`vsearch.catalog`'s job.

Category filter (``category=``): ``any`` searches everything; a category name restricts
the results to it; ``auto`` predicts the query's category from its nearest catalog items
(a score-weighted vote) and, when the vote is confident, ranks that category's items first.
The vote runs over the catalog's own categories, so it also works for a shop whose
categories the classifier never saw.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vsearch.embedder import embed_one
from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, to_pixels
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

    def to_dict(self) -> dict:
        return {"category": self.category,
                "matches": [{"rank": r + 1, **m} for r, m in enumerate(self.matches)]}


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

    def embed(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """One photo (or a part of it) -> its unit vector, through the road."""
        return embed_one(self.embedder, self.pixels(image, source, box), source)

    def search(self, image, k: int = 5, category: str = "any", source: str = "<upload>", box=None) -> SearchResult:
        """The top-k catalog items for a photo (bytes, path or pixels), or for a ``box`` of it."""
        return self.search_vector(self.embed(image, source, box), k, category)

    def search_vector(self, vector: np.ndarray, k: int = 5, category: str = "any") -> SearchResult:
        """The top-k catalog items for an embedding (see the module doc for ``category``)."""
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
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
