"""Answering a photo: a model and a catalog store -> the top-k products.

:class:`Searcher` takes a photo (bytes, a path or pixels), sends it through the road
(:meth:`Searcher.model_input`: :func:`vsearch.images.model_input` with its limits) and searches
the store (:mod:`vsearch.stores`): each product once, scored by its best photo, restricted
to what an attribute filter (:class:`vsearch.stores.filters.Filter`) keeps. Building the catalog
is :mod:`vsearch.catalog.building`'s job.

Category (``category=``): ``auto`` (the default) ranks by the cosine plus a soft category
prior: the query's nearest catalog items vote for its category (a score-weighted vote), and
each product gains ``CATEGORY_PRIOR`` times its category's share of the vote. A confident
vote lifts its category's near-ties above other categories' products (class MAP@R 0.861 ->
0.877 on the validation split) while a clearly closer product of another category keeps its
place (customer-photo R@1 unchanged; a larger weight buys more MAP@R with harder photos'
R@10: ``experiments/results/served.md``). ``score`` stays the cosine. The vote runs over
the catalog's own categories, so it also works for a shop whose categories the classifier
never saw. ``any`` is the plain cosine ranking; a category name restricts the results to it.

Re-ranking (``rerank=True``, the default of :meth:`Searcher.search`): the first
``RerankConfig.depth`` products are verified against the photo with local features
(:mod:`vsearch.catalog.rerank`) and the first that shows the same surface moves to the top.

Calibrated verdict: when the catalog carries a calibration (``vsearch calibrate``, made by
:mod:`vsearch.catalog.calibration`), every result also says what the top match means, as
``match = {"verdict": "exact" | "similar" | "none", "confidence": p}``: ``p`` is the
calibrated probability that the first match is the very product in the photo, from its
score and its gap to the next product. "exact" when ``p`` reaches the calibration's
threshold; "none" (not in the catalog) when the calibrated probability that the product
is in the catalog at all falls to its threshold; "similar" otherwise, and when the two disagree.
A search with an attribute filter carries no verdict: it was calibrated on the whole catalog.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsearch.catalog.rerank import FeatureCache, RerankConfig, rerank
from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, model_input
from vsearch.stores import DEFAULT_STORE, Store, open_store
from vsearch.stores.filters import Condition, Filter

AUTO_NEIGHBOURS = 10  # neighbours that vote for the query's category
VOTE_TEMPERATURE = 0.05  # softmax temperature over cosine scores for the vote
CATEGORY_PRIOR = 0.02  # `auto`: rank by cosine + this x the product's category's share (experiments/served.py)
# Products read, however few are shown, for the first match's gap to the next product
# (vsearch.catalog.calibration measures the gap the same way).
VERDICT_DEPTH = 2


# ---------------------------------------------------------------- the calibrated verdict


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
    """``{"verdict", "confidence"}`` for a ranked list of matches under a stored calibration."""
    top1, gap = ranked_features([m["score"] for m in matches], [m["product_id"] for m in matches])
    category = matches[0].get("category", "")
    heads = calibration["heads"]
    p_exact = float(probability(head_model(heads["exact"], category), top1, gap)[0])
    p_present = float(probability(head_model(heads["present"], category), top1, gap)[0])
    return {"verdict": str(verdicts(p_exact, p_present, calibration["thresholds"])[0]), "confidence": round(p_exact, 4)}


# ---------------------------------------------------------------- answering a photo


def category_votes(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> dict[str, float]:
    """Score-weighted vote of the neighbours' categories: category -> share of the vote (sums to 1)."""
    if not matches:
        return {}
    scores = np.array([m["score"] for m in matches], np.float64)
    weights = np.exp((scores - scores.max()) / temperature)
    votes: dict[str, float] = {}
    for match, weight in zip(matches, weights):
        votes[match.get("category", "")] = votes.get(match.get("category", ""), 0.0) + float(weight)
    return {name: vote / float(weights.sum()) for name, vote in votes.items()}


def predict_category(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> tuple[str, float]:
    """The vote's winner: (category, share of the vote); ("", 0.0) without neighbours."""
    votes = category_votes(matches, temperature)
    if not votes:
        return "", 0.0
    best = max(votes, key=votes.get)
    return best, votes[best]


def prior_score(match: dict, votes: dict[str, float], weight: float) -> float:
    """A product's rank score under the category prior: cosine + weight x its category's share."""
    return float(match["score"]) + weight * votes.get(match.get("category", ""), 0.0)


@dataclass
class SearchResult:
    matches: list[dict]  # products, best first (see vsearch.stores for a hit's fields)
    category: dict  # mode, predicted, confidence, applied
    match: dict | None = None  # verdict and confidence, when the catalog is calibrated
    filter: Filter | None = None

    def to_dict(self) -> dict:
        out = {
            "category": self.category,
            "filter": self.filter.to_json() if self.filter else {},
            "matches": [{"rank": r + 1, **m} for r, m in enumerate(self.matches)],
        }
        if self.match is not None:
            out["match"] = self.match
        return out


class Searcher:
    """A model and a catalog store, ready to answer photos with products.

    Args:
        embedder: An :class:`~vsearch.embedder.Embedder` whose fingerprint matches the store's.
        store: The :class:`~vsearch.stores.Store` to search (``faiss:`` file or ``milvus:``).
        max_pixels / max_bytes: Limits for query photos (decompression bombs, huge uploads).
        rerank: How a search with ``rerank=True`` verifies its short list
            (:class:`~vsearch.catalog.rerank.RerankConfig`; catalog photos' keypoints are kept once computed).
        category_prior: The weight of the category vote in ``category="auto"`` rankings.
    """

    def __init__(
        self,
        embedder,
        store: Store,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rerank: RerankConfig = RerankConfig(),
        category_prior: float = CATEGORY_PRIOR,
    ):
        fingerprint = getattr(embedder, "fingerprint", None)
        if fingerprint is not None and fingerprint != store.fingerprint:
            raise DataError(
                f"the catalog was built with model {store.fingerprint}, the query model is "
                f"{fingerprint}; rebuild the index with this model"
            )
        if embedder.dim != store.dim:
            raise DataError(f"the model makes {embedder.dim}-d vectors, the catalog holds {store.dim}-d")
        self.embedder, self.store = embedder, store
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.rerank_config = rerank
        if not category_prior >= 0:
            raise ValueError(f"category_prior must be >= 0, got {category_prior}")
        self.category_prior = float(category_prior)
        self._features = FeatureCache(self._load_photo, rerank)

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.store.categories()) - {""})

    @property
    def schema(self) -> dict[str, str]:
        return dict(self.store.schema)

    @classmethod
    def from_paths(
        cls,
        model: str | os.PathLike,
        store: str | os.PathLike = DEFAULT_STORE,
        num_threads: int | None = None,
        **kwargs,
    ) -> Searcher:
        """Loads the embedding model (SavedModel folder or ``.tflite``) and opens a store
        (``faiss:PATH``, a bare path, or ``milvus:...``)."""
        from vsearch.embedder import load_embedder

        embedder = load_embedder(model, num_threads=num_threads)
        return cls(
            embedder,
            open_store(os.fspath(store), expected_fingerprint=getattr(embedder, "fingerprint", None)),
            **kwargs,
        )

    def model_input(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """The road with this searcher's limits: a photo (or a ``box`` of it) -> (S, S, 3) float32 model input."""
        if isinstance(image, (str, os.PathLike)):
            source = os.fsdecode(image)
        return model_input(
            image, int(self.embedder.image_size), source, max_pixels=self.max_pixels, max_bytes=self.max_bytes, box=box
        )

    def embed(self, image, source: str = "<upload>", box=None) -> np.ndarray:
        """One photo (or a part of it) -> its unit vector, through the road."""
        return self._vector(self.model_input(image, source, box))

    def _vector(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.embedder.embed_pixels(pixels[None]), np.float32)[0]

    def search(
        self,
        image,
        k: int = 5,
        category: str = "auto",
        source: str = "<upload>",
        box=None,
        where: Filter | None = None,
        rerank: bool = True,
    ) -> SearchResult:
        """The top-k products for a photo (bytes, path or pixels), or for a ``box`` of it."""
        pixels = self.model_input(image, source, box)
        return self.search_vector(self._vector(pixels), k, category, where, rerank_query=pixels if rerank else None)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 5,
        category: str = "auto",
        where: Filter | None = None,
        rerank_query: np.ndarray | None = None,
    ) -> SearchResult:
        """The top-k products for an embedding that pass ``where`` (see the module doc for
        ``category``), with the calibrated verdict on the first when the catalog has a calibration.

        ``rerank_query``: the query's model input (or any RGB pixels of it); the first
        ``rerank_config.depth`` products are then verified against it and the first one that
        shows the same surface moves to the top (:func:`vsearch.catalog.rerank.rerank`).
        """
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        calibration = self.store.calibration
        verdict = calibration is not None and not where  # calibrated on the whole catalog, not a filtered part
        depth = max(k, VERDICT_DEPTH if verdict else 1, self.rerank_config.depth if rerank_query is not None else 1)
        result, shortlist = self._ranked(vector, depth, category, where)
        if rerank_query is not None:
            result.matches = self.verify(rerank_query, result.matches, shortlist)
        if verdict and result.matches:
            result.match = match_verdict(calibration, result.matches)
            if result.match["verdict"] == "none" and self._verified(result.matches[0]):
                result.match["verdict"] = "similar"  # it shows what the photo shows: not "not in the catalog"
        result.matches = result.matches[:k]
        result.filter = where or None
        return result

    def verify(self, query: np.ndarray, matches: list[dict], shortlist: list[dict] | None = None) -> list[dict]:
        """``matches`` with the first verified product of ``shortlist`` (default: ``matches``) on top.

        Geometric verification of the query against each short-listed product's photo nearest
        the query (one comparison per product, whatever its photo count), in the short list's
        order; examined products carry their ``inliers``. The short list is the cosine order
        even when ``matches`` is ranked under the category prior: a product the prior pushed
        down can still be verified.
        """
        checked = rerank(
            np.clip(query, 0, 255).astype(np.uint8),
            matches if shortlist is None else shortlist,
            self._photo_features,
            self.rerank_config,
        )
        counts = {m["product_id"]: m["inliers"] for m in checked if "inliers" in m}
        out = [{**m, "inliers": counts[m["product_id"]]} if m["product_id"] in counts else m for m in matches]
        if checked and self._verified(checked[0]):
            first = checked[0]["product_id"]
            if first not in {m["product_id"] for m in out}:  # verified beyond the ranked list (filtered by k)
                out.append(dict(checked[0]))
            out.sort(key=lambda m: m["product_id"] != first)  # stable: the rest keep their order
        return out

    def _verified(self, match: dict) -> bool:
        return match.get("inliers", 0) >= self.rerank_config.min_inliers

    def _photo_features(self, match: dict) -> list:
        try:  # keyed by id and file: a photo replaced under the same id (uploads are named by content) is new
            return [self._features({"id": f"{match['photo_id']}\0{match['path']}", "path": match["path"]})]
        except (ImageError, OSError):  # a catalog photo gone or unreadable verifies nothing
            return []

    def warm_rerank(self, stop: threading.Event | None = None) -> int:
        """Computes the re-rank keypoints of catalog photos ahead of searches, as many as the
        cache keeps (a server does it in the background at start): a search then compares
        instead of decoding its short list's photos. Returns the photos done; stops early when
        ``stop`` is set."""
        done = 0
        for product in self.store.products():
            for photo_id, path in zip(product.photos, product.paths):
                if done >= self._features.size or (stop is not None and stop.is_set()):
                    return done
                self._photo_features({"photo_id": photo_id, "path": path})
                done += 1
        return done

    @property
    def rerank_ready(self) -> int:
        """Catalog photos whose re-rank keypoints are kept."""
        return len(self._features)

    def _load_photo(self, photo: dict) -> np.ndarray:
        return load_image(photo["path"], max_pixels=self.max_pixels)

    def _ranked(
        self, vector: np.ndarray, k: int, category: str, where: Filter | None
    ) -> tuple[SearchResult, list[dict]]:
        """The ranked result and its short list for verification (the same products in cosine order)."""
        category = category or "auto"
        info = {"mode": category, "predicted": None, "confidence": None, "applied": False}
        if category == "any":
            matches = self._search(vector, k, where)
            return SearchResult(matches, info), matches
        if category == "auto":
            neighbours = self._search(vector, max(k, AUTO_NEIGHBOURS), where)
            votes = category_votes(neighbours[:AUTO_NEIGHBOURS])
            if votes:
                predicted = max(votes, key=votes.get)
                info.update(predicted=predicted, confidence=round(votes[predicted], 4), applied=True)
            return SearchResult(self._with_prior(vector, k, neighbours, votes, where), info), neighbours
        if category not in self.categories:
            raise DataError(f"unknown category {category!r}; the catalog has {self.categories}")
        info.update(predicted=category, applied=True)
        matches = self._search(vector, k, in_category(category, where))
        return SearchResult(matches, info), matches

    def _with_prior(
        self, vector: np.ndarray, k: int, neighbours: list[dict], votes: dict[str, float], where: Filter | None
    ) -> list[dict]:
        """The top k by :func:`prior_score`, exactly: ``neighbours`` (the top by cosine) plus, for each
        voted category whose products beyond them could still climb into the top k, its own top k."""
        found = {m["product_id"]: m for m in neighbours}
        if len(neighbours) >= max(k, AUTO_NEIGHBOURS):  # else the list already holds every product that passes
            floor = float(neighbours[-1]["score"])  # no product outside the list scores higher
            for name, share in sorted(votes.items(), key=lambda kv: -kv[1]):
                ranked = sorted((prior_score(m, votes, self.category_prior) for m in found.values()), reverse=True)
                if not name or (len(ranked) >= k and floor + self.category_prior * share <= ranked[k - 1]):
                    continue  # uncategorised, or none of its unseen products can pass the k-th
                for match in self._search(vector, k, in_category(name, where)):
                    found.setdefault(match["product_id"], match)
        return sorted(found.values(), key=lambda m: -prior_score(m, votes, self.category_prior))[:k]

    def _search(self, vector: np.ndarray, k: int, where: Filter | None) -> list[dict]:
        return self.store.search(np.asarray(vector, np.float32)[None], k, where=where or None)[0]

    def image_path(self, photo_id: str) -> Path:
        """A catalog photo's file (from the store's metadata, never from the caller)."""
        photo = self.store.photo(str(photo_id))
        if photo is None:
            raise KeyError(photo_id)
        return Path(photo["path"])


def in_category(category: str, where: Filter | None = None) -> Filter:
    """``where`` and ``category == category``."""
    return Filter((Condition("category", "eq", category),)).and_(where)


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
