"""The catalog index: vectors plus item metadata, behind a small interface.

``VectorIndex`` is what search needs (add, remove, search, len). :class:`FaissIndex`
implements it with FAISS: exact inner-product search (``IndexFlatIP``; cosine for unit
vectors) or an approximate HNSW graph for large catalogs. A vector database is another
implementation of the same four methods.

:class:`Catalog` pairs an index with item metadata and the fingerprint of the model that
made the vectors; ``save`` is atomic (temporary file, fsync, rename) and ``load`` refuses a
catalog made by a different model. A catalog may carry its calibration (what a search
answer means, :mod:`vsearch.calibrate`) in the header; files without one load as before.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from vsearch.artifacts import write_atomic
from vsearch.errors import DataError

FORMAT = "vsearch-catalog/2"
KINDS = ("exact", "hnsw")
# Above this many items `auto` builds an HNSW graph: exact search reads every vector per
# query (bench/search.py: 69 ms p50 at 1M 391-d vectors on 2 cores, HNSW 2.7 ms at recall@10 0.95).
AUTO_HNSW_ABOVE = 100_000


class VectorIndex(Protocol):
    dim: int

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None: ...

    def remove(self, ids: Sequence[str]) -> int: ...

    def search(self, queries: np.ndarray, k: int,
               among: Sequence[str] | None = None) -> tuple[np.ndarray, list[list[str]]]: ...

    def __len__(self) -> int: ...


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
    from the live rows (done on save, and when over a quarter of the rows are dead).

    Args:
        dim: Vector dimension.
        kind: ``exact`` (``IndexFlatIP``) or ``hnsw`` (``IndexHNSWFlat``, inner product).
        hnsw_m: Graph degree; ``ef_construction`` / ``ef_search``: HNSW beam widths
            (larger: better recall, slower).
    """

    def __init__(self, dim: int, kind: str = "exact", hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 256):
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
        ids, vectors = [self._row_ids[r] for r in keep], self.vectors[keep]
        self._row_ids, self._row_of, self._dead = [], {}, set()
        self._faiss = self._new_faiss()
        if ids:
            self.add(ids, vectors)

    def search(self, queries: np.ndarray, k: int,
               among: Sequence[str] | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k per query: (scores (Q, k'), ids), best first; k' = min(k, len).

        ``among``: only these ids (unknown ones ignored), searched exactly: a flat scan that
        skips every other row, since an HNSW walk filtered to a small subset can miss it.
        """
        import faiss

        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        if among is not None:
            rows = np.fromiter((self._row_of[i] for i in map(str, among) if i in self._row_of), np.int64)
            k = min(int(k), len(rows))
            if k < 1:
                return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
            flat = self._faiss if self.kind == "exact" else faiss.downcast_index(self._faiss.storage)
            selector = faiss.IDSelectorBatch(rows)  # kept alive by this name while FAISS reads it
            params = faiss.SearchParameters()
            params.sel = selector
            scores, found = flat.search(queries, k, params=params)
            return scores, [[self._row_ids[r] for r in row if r >= 0] for row in found]
        k = min(int(k), len(self))
        if k < 1:
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k)) if self.kind == "hnsw" else None
        selector = None  # the params hold a raw pointer: this name keeps the selector alive
        if self._dead:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64)))
            params = params or faiss.SearchParameters()
            params.sel = selector
        scores, rows = self._faiss.search(queries, k, params=params)
        ids = [[self._row_ids[r] for r in row if r >= 0] for row in rows]
        return scores[:, :k], ids

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The live state as arrays (the HNSW graph serialized, so loading skips a rebuild)."""
        import faiss

        self.compact()
        if self.kind == "hnsw":  # the serialized graph holds the vectors too
            return {"faiss": faiss.serialize_index(self._faiss)}
        return {"vectors": self.vectors}

    def params(self) -> dict:
        return {"kind": self.kind, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search}

    @classmethod
    def from_arrays(cls, ids: Sequence[str], arrays: dict[str, np.ndarray], params: dict) -> "FaissIndex":
        import faiss

        if "faiss" in arrays:
            stored = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"]))
            if stored.ntotal != len(ids):
                raise ValueError(f"stored graph has {stored.ntotal} rows for {len(ids)} items")
            index = cls(stored.d, **params)
            index._faiss = stored
            index._row_ids = [str(i) for i in ids]
            index._row_of = {item: r for r, item in enumerate(index._row_ids)}
            return index
        vectors = arrays["vectors"]
        index = cls(vectors.shape[1], **params)
        index.add(ids, vectors)
        return index


def measure_recall(index: FaissIndex, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` against exact search over the same live vectors."""
    if index.kind == "exact":
        return 1.0
    exact = FaissIndex(index.dim, "exact")
    exact.add(index.ids, index.vectors[[index._row_of[i] for i in index.ids]])
    return recall_at_k(index.search(queries, k)[1], exact.search(queries, k)[1], k)


# The header's fields and their types; a file that does not have them is not an index.
_HEADER_TYPES = {"fingerprint": str, "dim": int, "index": dict, "items": list}


def _header_problem(meta: dict) -> str:
    """What is wrong with a catalog file's header, or "" when nothing is."""
    for key, kind in _HEADER_TYPES.items():
        if key not in meta:
            return f"no {key!r} in the header"
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            return f"{key!r} is a {type(meta[key]).__name__}, expected a {kind.__name__}"
    if meta["dim"] < 1:
        return f"dimension {meta['dim']}"
    for n, item in enumerate(meta["items"]):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return f"item {n} is not an object with a text id"
    for key in ("model", "stats", "calibration"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key!r} is a {type(meta[key]).__name__}, expected an object"
    return ""


def calibration_problem(calibration: dict, fingerprint: str) -> str:
    """What makes a calibration unusable with a catalog of model ``fingerprint``, or ""."""
    if calibration.get("fingerprint") != fingerprint:
        return f"was made with model {calibration.get('fingerprint')}, the index with {fingerprint}"
    heads, thresholds = calibration.get("heads"), calibration.get("thresholds")
    if not isinstance(heads, dict) or not isinstance(thresholds, dict):
        return "has no heads or thresholds"
    for name in ("exact", "present"):
        head = heads.get(name)
        if not isinstance(head, dict) or not isinstance(head.get("global"), dict) \
                or not isinstance(head.get("categories"), dict):
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
    """A model :func:`vsearch.search.probability` can evaluate: numbers where it reads them."""
    def numbers(value, size=None) -> bool:
        return (isinstance(value, list) and bool(value) and (size is None or len(value) == size)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))

    if not isinstance(model, dict) or model.get("method") not in ("platt", "isotonic"):
        return False
    if not all(numbers(model.get(key), 2) for key in ("mean", "scale", "coef")) \
            or not numbers([model.get("intercept")]):
        return False
    return model["method"] == "platt" or (numbers(model.get("edges")) and numbers(model.get("values"))
                                          and len(model["edges"]) == len(model["values"]))


class Catalog:
    """An index with per-item metadata and the fingerprint of the model behind the vectors."""

    def __init__(self, dim: int, fingerprint: str, index: VectorIndex | None = None, kind: str = "exact",
                 model: dict | None = None):
        self.index = index if index is not None else FaissIndex(dim, kind)
        self.fingerprint = fingerprint
        self.model = dict(model or {})  # what made the vectors: path, image size, class names
        self.items: dict[str, dict] = {}
        self.stats: dict = {}
        self.calibration: dict | None = None  # see set_calibration
        self._by_category: dict[str, list[str]] | None = None  # built on first use, reset by changes

    @property
    def dim(self) -> int:
        return self.index.dim

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item_id) -> bool:
        return str(item_id) in self.items

    def add(self, items: Sequence[dict], vectors: np.ndarray) -> None:
        """Adds items (each a dict with at least ``id``) and their vectors."""
        ids = [str(item["id"]) for item in items]
        self.index.add(ids, vectors)
        self._by_category = None
        for item_id, item in zip(ids, items):
            self.items[item_id] = {**item, "id": item_id}

    def remove(self, ids: Sequence[str]) -> int:
        self._by_category = None
        for item_id in ids:
            self.items.pop(str(item_id), None)
        return self.index.remove([str(i) for i in ids])

    def set_calibration(self, calibration: dict | None) -> None:
        """Keeps a calibration (:func:`vsearch.calibrate.calibrate_catalog`) with the catalog.

        Raises:
            DataError: it was made with another model, or is not a calibration.
        """
        if calibration is not None:
            problem = calibration_problem(calibration, self.fingerprint)
            if problem:
                raise DataError(f"calibration refused: it {problem}")
        self.calibration = calibration

    def category_ids(self, category: str) -> list[str]:
        """Ids of the items whose ``category`` is ``category``."""
        if self._by_category is None:
            groups: dict[str, list[str]] = {}
            for item_id, item in self.items.items():
                groups.setdefault(item.get("category", ""), []).append(item_id)
            self._by_category = groups
        return self._by_category.get(category, [])

    def search(self, queries: np.ndarray, k: int = 5, among: Sequence[str] | None = None) -> list[list[dict]]:
        """Per query, the top-k items with a ``score`` field, best first (``among``: only these ids)."""
        scores, ids = (self.index.search(queries, k) if among is None
                       else self.index.search(queries, k, among=among))
        return [[{**self.items[i], "score": float(s)} for i, s in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(ids, scores)]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes atomically: a crash mid-write leaves the previous file readable."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return self._save(path)
        except OSError as exc:  # a folder in the way, no space, no permission: nothing was replaced
            raise DataError(f"{path}: cannot write the catalog index ({exc.strerror or exc})") from None

    def _save(self, path: Path) -> Path:
        arrays = self.index.to_arrays()
        ids = self.index.ids
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "dim": self.index.dim,
                "index": self.index.params(), "model": self.model, "stats": self.stats,
                "items": [self.items[i] for i in ids]}
        if self.calibration is not None:
            meta["calibration"] = self.calibration
        payload = np.frombuffer(json.dumps(meta).encode(), np.uint8)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a handle: np.savez would add ".npz" to a path
                np.savez(fh, meta=payload, **arrays)

        write_atomic(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None) -> "Catalog":
        """Reads a saved catalog; ``expected_fingerprint`` must match the model used to query."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such catalog index; build one with `vsearch index build`")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name != "meta"}
                meta = json.loads(data["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError, AttributeError) as exc:
            # TypeError / AttributeError: a plain .npy file (np.load returns an array, not an archive)
            raise DataError(f"{path}: not a vsearch catalog index ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DataError(f"{path}: not a vsearch catalog index (format {found!r}, expected {FORMAT!r}); "
                            "rebuild it with `vsearch index build`")
        problem = _header_problem(meta)
        if problem:
            raise DataError(f"{path}: not a vsearch catalog index ({problem}); rebuild it with `vsearch index build`")
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise DataError(f"{path}: built with model {meta['fingerprint']}, but the query model is "
                            f"{expected_fingerprint}; rebuild the index with this model")
        items = meta["items"]
        try:
            index = FaissIndex.from_arrays([it["id"] for it in items], arrays, meta["index"])
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
            raise DataError(f"{path}: damaged catalog index ({type(exc).__name__}: {exc})") from None
        if index.dim != meta["dim"]:
            raise DataError(f"{path}: damaged catalog index (vectors are {index.dim}-d, the header says {meta['dim']})")
        catalog = cls(int(meta["dim"]), meta["fingerprint"], index=index, model=meta.get("model") or {})
        catalog.items = {str(it["id"]): it for it in items}
        catalog.stats = meta.get("stats") or {}
        calibration = meta.get("calibration")
        if calibration is not None:
            problem = calibration_problem(calibration, catalog.fingerprint)
            if problem:
                raise DataError(f"{path}: its calibration {problem}; run `vsearch calibrate` again")
            catalog.calibration = calibration
        return catalog
