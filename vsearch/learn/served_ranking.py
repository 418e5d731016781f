"""Metrics of the served ranking: queries answered by a :class:`~vsearch.catalog.search.Searcher` over a store.

:mod:`vsearch.learn.evaluate` ranks raw embeddings; what a customer gets is the ``Searcher``'s
answer: the category prior of ``category=auto`` and the re-rank of the short list on top of
the cosine. These helpers put photos whose vectors are already computed into a FAISS store
(one product per photo) and read the ranking back through
:meth:`~vsearch.catalog.search.Searcher.search_vector`, the re-rank fed the query's model input as
the server feeds it. ``vsearch eval`` and ``experiments/served.py`` use them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from vsearch.learn import metrics


class GivenVectors:
    """An embedder stand-in for vectors computed beforehand: what the Searcher checks, no model."""

    def __init__(self, embedder):
        self.fingerprint, self.dim = embedder.fingerprint, int(embedder.dim)
        self.image_size = int(embedder.image_size)

    def embed_pixels(self, pixels):
        raise RuntimeError("vectors are given: search with Searcher.search_vector")


def photo_store(
    path: str | os.PathLike,
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    names: Sequence[str],
    vectors: np.ndarray,
    fingerprint: str,
):
    """An exact FAISS store at ``path`` with one product per photo (product id = its row)."""
    from vsearch.catalog.manifest import Photo
    from vsearch.stores import build_store

    photos = [Photo(str(i), str(i), str(p), names[int(c)]) for i, (p, c) in enumerate(zip(paths, labels))]
    return build_store(
        f"faiss:{os.fspath(path)}", photos, np.asarray(vectors, np.float32), fingerprint=fingerprint, kind="exact"
    )


def target_ranks(
    searcher,
    vectors: np.ndarray,
    photos: Sequence[np.ndarray],
    targets: Sequence[int] | np.ndarray,
    category: str = "auto",
    rerank: bool = True,
    k: int = 10,
) -> np.ndarray:
    """0-based rank of each query's target product (a row of :func:`photo_store`) in the top ``k``; ``k`` if beyond."""
    out = []
    for vector, photo, target in zip(vectors, photos, targets):
        query = searcher.model_input(photo) if rerank else None
        ids = [m["product_id"] for m in searcher.search_vector(vector, k, category, rerank_query=query).matches]
        out.append(ids.index(str(int(target))) if str(int(target)) in ids else k)
    return np.asarray(out)


def full_rankings(
    searcher, vectors: np.ndarray, photos: Sequence[np.ndarray], n: int, category: str = "auto", rerank: bool = True
) -> np.ndarray:
    """(Q, n) rows of a :func:`photo_store` of ``n`` photos, in the served order, per query."""
    rows = []
    for vector, photo in zip(vectors, photos):
        query = searcher.model_input(photo) if rerank else None
        rows.append(
            [int(m["product_id"]) for m in searcher.search_vector(vector, n, category, rerank_query=query).matches]
        )
    return np.asarray(rows)


def class_ranking(
    searcher,
    vectors: np.ndarray,
    photos: Sequence[np.ndarray],
    query_labels: np.ndarray,
    catalog_labels: np.ndarray,
    category: str = "auto",
    rerank: bool = True,
) -> dict:
    """Class-retrieval metrics (:func:`vsearch.learn.metrics.retrieval_metrics`) of the served ranking of
    the whole catalog (a :func:`photo_store` of ``catalog_labels``)."""
    catalog_labels = np.asarray(catalog_labels)
    order = full_rankings(searcher, vectors, photos, len(catalog_labels), category, rerank)
    return metrics.retrieval_metrics(query_labels, catalog_labels[order], catalog_labels)


def served_metrics(
    embedder,
    catalog,
    val,
    cat: np.ndarray,
    qry: np.ndarray,
    cust: np.ndarray,
    photos: Sequence[np.ndarray],
    targets: np.ndarray,
    folder: str | os.PathLike,
    category: str = "auto",
    rerank: bool = True,
) -> dict:
    """``vsearch eval``'s figures for the served ranking: class retrieval of the validation
    originals (``qry``) in a store of the catalog (``cat``), and R@1 / R@10 of the customer
    photos (``cust``; ``targets`` index ``val``) in a store of catalog + validation originals."""
    from vsearch.catalog.search import Searcher
    from vsearch.images import load_image

    names, n = list(catalog.class_names), len(catalog.paths)
    stand_in = GivenVectors(embedder)
    train = photo_store(
        os.path.join(folder, "catalog.vsi"), catalog.paths, catalog.labels, names, cat, embedder.fingerprint
    )
    both = photo_store(
        os.path.join(folder, "catalog+validation.vsi"),
        list(catalog.paths) + list(val.paths),
        np.concatenate([catalog.labels, val.labels]),
        names,
        np.concatenate([cat, qry]),
        embedder.fingerprint,
    )
    try:
        overall = class_ranking(
            Searcher(stand_in, train),
            qry,
            [load_image(p) for p in val.paths],
            val.labels,
            np.asarray(catalog.labels),
            category,
            rerank,
        )
        ranks = target_ranks(Searcher(stand_in, both), cust, photos, np.asarray(targets) + n, category, rerank)
    finally:
        train.close()
        both.close()
    return {
        "overall": overall,
        "customer_photo": {**metrics.instance_recall(ranks, (1, 10)), "num_queries": int(len(targets))},
    }
