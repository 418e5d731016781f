"""FAISS search over unit vectors, and what choosing and checking an index needs.

:class:`FaissIndex` is the rows under the embedded store (:mod:`vsearch.stores.faiss`):
exact inner-product search (``IndexFlatIP``; cosine for unit vectors) or an approximate
HNSW graph for large catalogs, addressed by string ids. :func:`choose_kind` picks between
them by size, :func:`measure_recall` says what the approximation costs, and
:func:`calibration_problem` checks a calibration (:mod:`vsearch.catalog.calibration`) before any
store keeps it. The files a catalog lives in are the stores' (:mod:`vsearch.stores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KINDS = ("exact", "hnsw")
# Above this many photos `auto` builds an HNSW graph: exact search reads every vector per
# query. bench.stores (391-d, 3 photos a product, k=10 products, one thread, quiet 2-core
# machine), exact against HNSW unfiltered p50: 2.9 / 0.40 ms at 20k photos (recall@10 1.000),
# 11.9 / 0.66 ms at 100k (recall 0.999); the graph costs 17 s of build at 100k against 2.5 s.
AUTO_HNSW_ABOVE = 20_000


def choose_kind(kind: str, size: int) -> str:
    """Resolves ``auto`` to ``exact`` or ``hnsw`` by catalog size; validates the name."""
    if kind == "auto":
        return "hnsw" if size > AUTO_HNSW_ABOVE else "exact"
    if kind not in KINDS:
        raise ValueError(f"index kind must be auto, {' or '.join(KINDS)}; got {kind!r}")
    return kind


def recall_at_k(approx_ids: Sequence[Sequence], exact_ids: Sequence[Sequence], k: int) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    if not len(exact_ids):
        return float("nan")
    hits = [len(set(a[:k]) & set(e[:k])) / max(min(k, len(e)), 1) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits))


class FaissIndex:
    """Inner-product search over unit vectors with FAISS, addressed by string ids.

    Rows are append-only inside FAISS; ``remove`` marks rows dead and searches skip them
    with an ID selector, so neither kind needs a rebuild per change. ``compact`` rebuilds
    from the live rows (done by ``remove`` once over a quarter of the rows are dead).

    Args:
        dim: Vector dimension.
        kind: ``exact`` (``IndexFlatIP``) or ``hnsw`` (``IndexHNSWFlat``, inner product).
        hnsw_m: Graph degree; ``ef_construction`` / ``ef_search``: HNSW beam widths
            (larger: better recall, slower).
    """

    def __init__(
        self, dim: int, kind: str = "exact", hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 256
    ):
        if dim < 1:
            raise ValueError(f"FaissIndex: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.kind = choose_kind(kind, 0) if kind != "auto" else "exact"
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self._row_ids: list[str | None] = []
        self._row_of: dict[str, int] = {}
        self._dead: set[int] = set()
        self._faiss = self._new_faiss()

    def _new_faiss(self):
        import faiss

        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def vectors(self) -> np.ndarray:
        """All stored rows, removed ones included until :meth:`compact` (a copy: FAISS holds the only one)."""
        total = self._faiss.ntotal
        return self._faiss.reconstruct_n(0, total) if total else np.zeros((0, self.dim), np.float32)

    @property
    def ids(self) -> list[str]:
        """Live ids in row order."""
        return [i for i in self._row_ids if i is not None]

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        ids = [str(i) for i in ids]
        vectors = np.ascontiguousarray(np.asarray(vectors, np.float32).reshape(-1, self.dim))
        if len(ids) != len(vectors):
            raise ValueError(f"FaissIndex.add: {len(ids)} ids for {len(vectors)} vectors")
        clash = sorted(set(ids) & self._row_of.keys())
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"FaissIndex.add: duplicate ids {clash[:5] or 'within the batch'}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("FaissIndex.add: vectors contain NaN or infinity")
        start = len(self._row_ids)
        self._faiss.add(vectors)
        self._row_ids.extend(ids)
        self._row_of.update({item: start + n for n, item in enumerate(ids)})

    def remove(self, ids: Sequence[str]) -> int:
        rows = [self._row_of.pop(str(i)) for i in ids if str(i) in self._row_of]
        for row in rows:
            self._row_ids[row] = None
            self._dead.add(row)
        if len(self._dead) > len(self._row_ids) // 4:
            self.compact()
        return len(rows)

    def compact(self) -> None:
        """Rebuilds FAISS from the live rows (drops removed vectors for good)."""
        if not self._dead:
            return
        keep = [r for r, item in enumerate(self._row_ids) if item is not None]
        ids, vectors = [str(self._row_ids[r]) for r in keep], self.vectors[keep]
        self._row_ids, self._row_of, self._dead = [], {}, set()
        self._faiss = self._new_faiss()
        if ids:
            self.add(ids, vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k per query: (scores (Q, k'), ids), best first; k' = min(k, len)."""
        import faiss

        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        k = min(int(k), len(self))
        if k < 1:
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        params = (
            faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))  # type: ignore[attr-defined]
            if self.kind == "hnsw"
            else None
        )
        selector = None  # the params hold a raw pointer: this name keeps the selector alive
        if self._dead:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64)))
            params = params or faiss.SearchParameters()
            params.sel = selector
        scores, rows = self._faiss.search(queries, k, params=params)
        ids = [[self._row_ids[r] for r in row if r >= 0] for row in rows]
        return scores[:, :k], ids

    def params(self) -> dict:
        return {
            "kind": self.kind,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }


def measure_recall(index: FaissIndex, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` against exact search over the same live vectors."""
    if index.kind == "exact":
        return 1.0
    exact = FaissIndex(index.dim, "exact")
    exact.add(index.ids, index.vectors[[index._row_of[i] for i in index.ids]])
    return recall_at_k(index.search(queries, k)[1], exact.search(queries, k)[1], k)


def calibration_problem(calibration: dict, fingerprint: str) -> str:
    """What makes a calibration unusable with a catalog of model ``fingerprint``, or ""."""
    if calibration.get("fingerprint") != fingerprint:
        return f"was made with model {calibration.get('fingerprint')}, the index with {fingerprint}"
    heads, thresholds = calibration.get("heads"), calibration.get("thresholds")
    if not isinstance(heads, dict) or not isinstance(thresholds, dict):
        return "has no heads or thresholds"
    for name in ("exact", "present"):
        head = heads.get(name)
        if (
            not isinstance(head, dict)
            or not isinstance(head.get("global"), dict)
            or not isinstance(head.get("categories"), dict)
        ):
            return f"has no {name!r} head"
        for model in (head["global"], *head["categories"].values()):
            if not _calibration_model_ok(model):
                return f"has a damaged {name!r} model"
    for name in ("exact", "none"):
        value = thresholds.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"has a {name!r} threshold that is not a number"
    return ""


def _calibration_model_ok(model) -> bool:
    """A model :func:`vsearch.catalog.verdict.probability` can evaluate: numbers where it reads them."""

    def numbers(value, size=None) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and (size is None or len(value) == size)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )

    if not isinstance(model, dict) or model.get("method") not in ("platt", "isotonic"):
        return False
    if not all(numbers(model.get(key), 2) for key in ("mean", "scale", "coef")) or not numbers(
        [model.get("intercept")]
    ):
        return False
    return model["method"] == "platt" or (
        numbers(model.get("edges")) and numbers(model.get("values")) and len(model["edges"]) == len(model["values"])
    )
