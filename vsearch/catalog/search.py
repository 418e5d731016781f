"""Answering a photo: a model and a catalog store -> the top-k products.

:class:`Searcher` takes a photo (bytes, a path or pixels), sends it through the road
(:meth:`Searcher.model_input`: :func:`vsearch.images.model_input` with its limits) and searches
the store (:mod:`vsearch.stores`): each product once, scored by its best photo, restricted
to what an attribute filter (:class:`vsearch.stores.filters.Filter`) keeps. Building the catalog
is :mod:`vsearch.catalog.building`'s job.

Settings: a :class:`vsearch.config.SearchConfig` (``Searcher(embedder, store, config)``): the
defaults of a search that does not say (``k``, ``category``, ``rerank``, ``regions``), the
category prior's weight, the re-rank's settings and the photo limits.

Regions (``regions="centre"``, off by default): the whole photo and its centre are embedded
in one model call and each product is scored by its better part (:mod:`vsearch.catalog.regions`);
the answer's ``region`` is the part that gave the first product.

Category (``category=``): ``auto`` (the default) ranks by the cosine plus a soft category
prior (:mod:`vsearch.catalog.prior`: the query's nearest catalog items vote for its category);
``score`` stays the cosine. ``any`` is the plain cosine ranking; a category name restricts the
results to it.

Re-ranking (``rerank=True``, on in the default settings): the first
``RerankConfig.depth`` products are verified against the photo with local features
(:mod:`vsearch.catalog.rerank`) and the first that shows the same surface moves to the top,
with its ``inliers`` and its ``outline`` (the catalog photo's corners in the customer's photo,
as fractions of the upright photo). The catalog photos' keypoints come from the catalog
(:mod:`vsearch.catalog.keypoints`, stored when they were indexed); one without is decoded at
the re-rank's size, under the searcher's ``decode_budget`` when it has one (a server's), and
kept in memory.

Calibrated verdict: when the catalog carries a calibration (``vsearch calibrate``, made by
:mod:`vsearch.catalog.calibration`), every result also says what the top match means
(``match``: :func:`vsearch.catalog.verdict.match_verdict`). A search with an attribute filter
carries no verdict: it was calibrated on the whole catalog.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsearch.catalog.keypoints import Entry, KeypointStore, file_stamp
from vsearch.catalog.prior import AUTO_NEIGHBOURS, category_votes, in_category, prior_score
from vsearch.catalog.regions import PART, REGION_BOXES, PartFeatures, Query, best_per_product, region_inputs
from vsearch.catalog.rerank import DecodeBudget, FeatureCache, Features, RerankConfig, catalog_features, rerank
from vsearch.catalog.verdict import VERDICT_DEPTH, match_verdict
from vsearch.config import SearchConfig
from vsearch.errors import DataError, ImageError
from vsearch.images import Box, load_image, model_input, parse_box, to_pixels
from vsearch.stores import DEFAULT_STORE, Store, open_store
from vsearch.stores.filters import Filter

WARM_BATCH = 256  # catalog photos whose keypoints warm_rerank computes before storing them
log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    matches: list[dict]  # products, best first (see vsearch.stores for a hit's fields)
    category: dict  # mode, predicted, confidence, applied
    match: dict | None = None  # verdict and confidence, when the catalog is calibrated
    filter: Filter | None = None
    region: Box | None = None  # the part of the photo that gave the first match (None: the whole photo)

    def to_dict(self) -> dict:
        out = {
            "category": self.category,
            "filter": self.filter.to_json() if self.filter else {},
            "matches": [{"rank": r + 1, **m} for r, m in enumerate(self.matches)],
            "region": list(self.region) if self.region is not None else None,
        }
        if self.match is not None:
            out["match"] = self.match
        return out


class Searcher:
    """A model and a catalog store, ready to answer photos with products.

    Args:
        embedder: An :class:`~vsearch.embedder.Embedder` whose fingerprint matches the store's.
        store: The :class:`~vsearch.stores.Store` to search (``faiss:`` file or ``milvus:``).
        config: How photos are answered (:class:`~vsearch.config.SearchConfig`): the defaults of
            a search that does not say, the category prior's weight, the re-rank's settings
            and the photo limits.

    Catalog photos' re-rank keypoints are read from the catalog (``keypoints``, None for a
    store that keeps none) or computed and kept (:class:`~vsearch.catalog.rerank.FeatureCache`);
    a server sets ``decode_budget`` (:meth:`with_budget`) so that computing them takes its turn
    with the uploads.
    """

    def __init__(self, embedder, store: Store, config: SearchConfig = SearchConfig()):
        fingerprint = getattr(embedder, "fingerprint", None)
        if fingerprint is not None and fingerprint != store.fingerprint:
            raise DataError(
                f"the catalog was built with model {store.fingerprint}, the query model is "
                f"{fingerprint}; rebuild the index with this model"
            )
        if embedder.dim != store.dim:
            raise DataError(f"the model makes {embedder.dim}-d vectors, the catalog holds {store.dim}-d")
        self.embedder, self.store = embedder, store
        self.config = config
        self._features = FeatureCache(config=config.reranker)
        self.keypoints = KeypointStore.beside(store, config.reranker)
        self.decode_budget: DecodeBudget | None = None
        self.decode_wait_s = 0.0

    def with_config(self, config: SearchConfig) -> Searcher:
        """This searcher's model and store under other settings (the same searcher if they are its own).

        The catalog's re-rank keypoints computed so far are kept when they still apply (the
        same re-rank settings and pixel limit).
        """
        if config == self.config:
            return self
        other = copy.copy(self)
        other.config = config
        if (config.reranker, config.max_pixels) != (self.config.reranker, self.config.max_pixels):
            other._features = FeatureCache(config=config.reranker)
            other.keypoints = KeypointStore.beside(self.store, config.reranker)
        return other

    def with_budget(self, budget: DecodeBudget | None, wait_s: float = 0.0) -> Searcher:
        """This searcher, its catalog photos decoded under ``budget`` (a server's
        :class:`~vsearch.web.budget.DecodeBudget`): a search waits up to ``wait_s`` in all for
        them, and a photo not admitted by then is not verified in that search."""
        other = copy.copy(self)
        other.decode_budget, other.decode_wait_s = budget, float(wait_s)
        return other

    @property
    def max_pixels(self) -> int:
        return self.config.max_pixels

    @property
    def max_bytes(self) -> int:
        return self.config.max_bytes

    @property
    def rerank_config(self) -> RerankConfig:
        return self.config.reranker

    @property
    def category_prior(self) -> float:
        return self.config.category_prior

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
        config: SearchConfig = SearchConfig(),
        num_threads: int | None = None,
    ) -> Searcher:
        """Loads the embedding model (SavedModel folder or ``.tflite``, ``num_threads``: TFLite's
        inference threads) and opens a store (``faiss:PATH``, a bare path, or ``milvus:...``)."""
        from vsearch.embedder import load_embedder

        embedder = load_embedder(model, num_threads=num_threads)
        return cls(
            embedder,
            open_store(os.fspath(store), expected_fingerprint=getattr(embedder, "fingerprint", None)),
            config,
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

    def query(self, image, source: str = "<upload>", box=None, regions: str | None = None) -> Query:
        """The road for a search: a photo -> the model inputs of the parts it searches
        (:class:`~vsearch.catalog.regions.Query`): the ``box`` alone when there is one, else the
        whole photo and the regions of the set ``regions`` (left out: ``config.regions``), each
        cut from the upright photo at full resolution."""
        size = int(self.embedder.image_size)
        if box is not None:
            box = parse_box(box)
            return Query(self.model_input(image, source, box)[None], (box,), box)
        regions = self.config.regions if regions is None else regions
        if regions not in REGION_BOXES:
            raise DataError(f"regions must be one of {', '.join(REGION_BOXES)}, got {regions!r}")
        if not REGION_BOXES[regions]:
            return Query(self.model_input(image, source)[None], (None,))
        if isinstance(image, (str, os.PathLike)):
            source = os.fsdecode(image)
        pixels = to_pixels(image, source, self.max_pixels, self.max_bytes)
        return Query(region_inputs(pixels, size, REGION_BOXES[regions]), (None, *REGION_BOXES[regions]))

    def search(
        self,
        image,
        k: int | None = None,
        category: str | None = None,
        source: str = "<upload>",
        box=None,
        where: Filter | None = None,
        rerank: bool | None = None,
        regions: str | None = None,
    ) -> SearchResult:
        """The top-k products for a photo (bytes, path or pixels), or for a ``box`` of it.

        ``k``, ``category``, ``rerank`` and ``regions`` left out: this searcher's settings
        (``config``). The photo's parts (:meth:`query`) are embedded in one model call. A
        verified product's ``outline`` and the answer's ``region`` are in fractions of the
        whole upright photo.
        """
        query = self.query(image, source, box, regions)
        vectors = np.asarray(self.embedder.embed_pixels(query.inputs), np.float32)
        return self.search_query(query, vectors, k, category, where, rerank)

    def search_query(
        self,
        query: Query,
        vectors: np.ndarray,
        k: int | None = None,
        category: str | None = None,
        where: Filter | None = None,
        rerank: bool | None = None,
    ) -> SearchResult:
        """The top-k products for a photo's parts (:meth:`query`) and their (n, D) unit vectors.

        Each product is scored by its best part; with ``rerank`` (left out: ``config.rerank``)
        each short-listed product is verified against the part that scored it. The answer's
        ``region`` is the part that gave the first product (None: the whole photo, or the
        customer's box); outlines are in fractions of the whole photo.
        """
        rerank = self.config.rerank if rerank is None else rerank
        result = self._answer(vectors, k, category, where, query.inputs if rerank else None)
        return in_photo(result, query)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int | None = None,
        category: str | None = None,
        where: Filter | None = None,
        rerank_query: np.ndarray | Features | Sequence[np.ndarray | Features] | None = None,
    ) -> SearchResult:
        """The top-k products for an embedding that pass ``where`` (see the module doc for
        ``category``), with the calibrated verdict on the first when the catalog has a calibration.

        ``vector``: one (D,) vector, or (n, D) vectors of parts of one photo (each product
        scored by its best part). ``rerank_query``: the query's model input (or any RGB pixels
        of it, or its :class:`~vsearch.catalog.rerank.Features`), or one per part (each product
        verified against the part that scored it); the first ``rerank_config.depth`` products
        are then verified and the first one that shows the same surface moves to the top
        (:func:`vsearch.catalog.rerank.rerank`), with its ``outline`` in fractions of the
        pixels it was verified in.
        ``k`` and ``category`` left out: this searcher's settings (``config``).
        """
        result = self._answer(vector, k, category, where, rerank_query)
        result.matches = [{key: v for key, v in m.items() if key != PART} for m in result.matches]
        return result

    def _answer(
        self,
        vector: np.ndarray,
        k: int | None,
        category: str | None,
        where: Filter | None,
        rerank_query: np.ndarray | Features | Sequence[np.ndarray | Features] | None,
    ) -> SearchResult:
        """:meth:`search_vector`'s answer, each match with the index of the part that scored it (``PART``)."""
        vector = np.asarray(vector, np.float32).reshape(-1, self.store.dim)
        k = self.config.k if k is None else k
        category = category or self.config.category
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        calibration = self.store.calibration
        verdict = calibration is not None and not where  # calibrated on the whole catalog, not a filtered part
        depth = max(k, VERDICT_DEPTH if verdict else 1, self.rerank_config.depth if rerank_query is not None else 1)
        result, shortlist = self._ranked(vector, depth, category, where)
        if rerank_query is not None:
            result.matches = self.verify(rerank_query, result.matches, shortlist)
        if calibration is not None and verdict and result.matches:
            result.match = match_verdict(calibration, result.matches)
            if result.match["verdict"] == "none" and self._verified(result.matches[0]):
                result.match["verdict"] = "similar"  # it shows what the photo shows: not "not in the catalog"
        result.matches = result.matches[:k]
        result.filter = where or None
        return result

    def verify(
        self,
        query: np.ndarray | Features | Sequence[np.ndarray | Features],
        matches: list[dict],
        shortlist: list[dict] | None = None,
    ) -> list[dict]:
        """``matches`` with the first verified product of ``shortlist`` (default: ``matches``) on top.

        Geometric verification of the query against each short-listed product's photo nearest
        the query (one comparison per product, whatever its photo count), in the short list's
        order; examined products carry their ``inliers``, the verified one its ``outline``.
        The short list is the cosine order even when ``matches`` is ranked under the category
        prior: a product the prior pushed down can still be verified. ``query``: pixels or
        :class:`~vsearch.catalog.rerank.Features` of the photo, or of each of its parts (a
        list, or (n, S, S, 3) model inputs): a product is then verified against the part that
        scored it (its ``PART``).
        """
        deadline = time.monotonic() + self.decode_wait_s  # for the catalog photos of this search, together
        checked = rerank(
            PartFeatures(query, self.rerank_config),
            matches if shortlist is None else shortlist,
            lambda match: self._photo_features(match, deadline),
            self.rerank_config,
        )
        found = {
            m["product_id"]: {k: m[k] for k in ("inliers", "outline") if k in m} for m in checked if "inliers" in m
        }
        out = [{**m, **found[m["product_id"]]} if m["product_id"] in found else m for m in matches]
        if checked and self._verified(checked[0]):
            first = checked[0]["product_id"]
            if first not in {m["product_id"] for m in out}:  # verified beyond the ranked list (filtered by k)
                out.append(dict(checked[0]))
            out.sort(key=lambda m: m["product_id"] != first)  # stable: the rest keep their order
        return out

    def _verified(self, match: dict) -> bool:
        return match.get("inliers", 0) >= self.rerank_config.min_inliers

    def _photo_features(self, match: dict, deadline: float | None = None) -> list[Features]:
        """The keypoints of a match's photo: stored with the catalog, kept in memory, or computed
        now (decoded at the re-rank's size, under the decode budget until ``deadline``); none for
        a photo gone, unreadable or not admitted in time."""
        path = match["path"]
        stamp = file_stamp(path)
        if stamp is None:  # a catalog photo gone from disk verifies nothing
            return []
        # keyed by id, file and stamp: a photo replaced under the same id (uploads are named by content) is new
        key = f"{match['photo_id']}\0{path}\0{stamp}"
        kept = self._features.get(key)
        if kept is not None:
            return [kept]
        if self.keypoints is not None:
            stored = self.keypoints.get(match["photo_id"], path, stamp)
            if stored is not None:
                return [stored]
        found = self._computed(path, max(0.0, deadline - time.monotonic()) if deadline is not None else None)
        return [self._features.put(key, found)] if found is not None else []

    def _computed(self, path: str, wait_s: float | None = None) -> Features | None:
        """A catalog photo's keypoints computed now, under the decode budget (None: not this time)."""
        try:
            return catalog_features(
                path,
                self.rerank_config,
                max_pixels=self.max_pixels,
                max_bytes=self.max_bytes,
                budget=self.decode_budget,
                wait_s=self.decode_wait_s if wait_s is None else wait_s,
            )
        except (ImageError, OSError):  # unreadable, too large, or the budget busy
            return None

    def warm_rerank(self, stop: threading.Event | None = None) -> int:
        """Makes every catalog photo's re-rank keypoints ready ahead of searches (a server does it
        in the background at start): those the catalog lacks (indexed before keypoints were
        stored, or with other re-rank settings) are computed, kept, and stored with the catalog
        for the next start (those a search computed, too). Returns the photos ready; stops early
        when ``stop`` is set."""
        ready, computed = 0, list[tuple[str, Entry]]()
        for product in self.store.products():
            for photo_id, path in zip(product.photos, product.paths):
                if stop is not None and stop.is_set():
                    self._keep(computed)
                    return ready
                stamp = file_stamp(path)
                if stamp is None:
                    continue
                if self.keypoints is not None and self.keypoints.get(photo_id, path, stamp) is not None:
                    ready += 1
                    continue
                key = f"{photo_id}\0{path}\0{stamp}"
                found = self._features.get(key)  # kept since a search computed it
                if found is None:
                    found = self._computed(path)
                if found is not None:
                    ready += 1
                    computed.append((key, (photo_id, stamp, found)))
                if len(computed) >= WARM_BATCH:
                    self._keep(computed)
                    computed = []
        self._keep(computed)
        return ready

    def store_keypoints(self, photos: Sequence) -> int:
        """Computes and stores the re-rank keypoints of photos just written to the catalog
        (:class:`~vsearch.catalog.manifest.Photo` s; :func:`vsearch.catalog.products.put_product`
        calls it), under the decode budget. Returns the photos whose keypoints are ready; the
        others are computed by the first search that needs them."""
        computed: list[tuple[str, Entry]] = []
        for photo in photos:
            stamp = file_stamp(photo.image)
            found = self._computed(photo.image) if stamp is not None else None
            if stamp is not None and found is not None:
                computed.append((f"{photo.photo_id}\0{photo.image}\0{stamp}", (photo.photo_id, stamp, found)))
        self._keep(computed)
        return len(computed)

    def _keep(self, computed: list[tuple[str, Entry]]) -> None:
        """Keypoints computed ahead: stored with the catalog, or kept in memory where it is read-only."""
        if not computed:
            return
        if self.keypoints is not None:
            try:
                self.keypoints.add([entry for _, entry in computed])
                return
            except (OSError, DataError) as exc:
                log.warning("%s: cannot store re-rank keypoints (%s); kept in memory", self.keypoints.folder, exc)
        for key, (_, _, features) in computed:
            self._features.put(key, features)

    @property
    def rerank_ready(self) -> int:
        """Catalog photos whose re-rank keypoints are stored with the catalog or kept in memory."""
        return (len(self.keypoints) if self.keypoints is not None else 0) + len(self._features)

    def _ranked(
        self, vector: np.ndarray, k: int, category: str, where: Filter | None
    ) -> tuple[SearchResult, list[dict]]:
        """The ranked result and its short list for verification (the same products in cosine order).

        ``vector``: (n, D), the parts of one photo; a product scores its best part.
        """
        category = category or "auto"
        info: dict[str, object] = {"mode": category, "predicted": None, "confidence": None, "applied": False}
        if category == "any":
            matches = self._search(vector, k, where)
            return SearchResult(matches, info), matches
        if category == "auto":
            neighbours = self._search(vector, max(k, AUTO_NEIGHBOURS), where)
            votes = category_votes(neighbours[:AUTO_NEIGHBOURS])
            if votes:
                predicted = max(votes, key=lambda name: votes[name])
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
        """The top k by :func:`~vsearch.catalog.prior.prior_score`, exactly: ``neighbours`` (the top
        by cosine) plus, for each voted category whose products beyond them could still climb into
        the top k, its own top k."""
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
        """The top k products by their best score over the (n, D) parts, in one store call."""
        return best_per_product(self.store.search(np.asarray(vector, np.float32), k, where=where or None), k)

    def image_path(self, photo_id: str) -> Path:
        """A catalog photo's file (from the store's metadata, never from the caller)."""
        photo = self.store.photo(str(photo_id))
        if photo is None:
            raise KeyError(photo_id)
        return Path(photo["path"])


def in_photo(result: SearchResult, query: Query) -> SearchResult:
    """A result of a photo's parts (:meth:`Searcher.search_query`) told of the whole photo: its
    ``region`` (the part that gave the first match) and outlines in fractions of the whole photo."""
    first = result.matches[0].get(PART, 0) if result.matches else 0
    matches = []
    for match in result.matches:
        part = query.boxes[match.get(PART, 0)]
        match = {key: value for key, value in match.items() if key != PART}
        matches.append(outlines_in_photo([match], part)[0] if part is not None else match)
    result.matches, result.region = matches, query.region(first) if matches else None
    return result


def outlines_in_photo(matches: Sequence[dict], box: Box) -> list[dict]:
    """Matches whose ``outline`` is in fractions of a ``box`` of a photo, in fractions of the whole photo."""
    x0, y0, x1, y1 = box
    return [
        {**m, "outline": [[round(x0 + x * (x1 - x0), 4), round(y0 + y * (y1 - y0), 4)] for x, y in m["outline"]]}
        if "outline" in m
        else m
        for m in matches
    ]


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
