"""The catalog index: vectors plus item metadata, behind a small interface.

``VectorIndex`` is what search needs (add, remove, search). :class:`ExactIndex` is exact
inner-product search in numpy, right for catalogs up to a few hundred thousand items; an
approximate index or a vector database is another implementation of the same methods.

:class:`Catalog` pairs an index with item metadata and the fingerprint of the model that
made the vectors; ``save`` is atomic (temporary file, fsync, rename) and ``load`` refuses a
catalog made by a different model.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from vsearch.errors import DataError

FORMAT = "vsearch-catalog/1"


class VectorIndex(Protocol):
    dim: int

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None: ...

    def remove(self, ids: Sequence[str]) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]: ...

    def __len__(self) -> int: ...


class ExactIndex:
    """Exact maximum inner product search (cosine for unit vectors)."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"ExactIndex: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.vectors = np.zeros((0, self.dim), np.float32)
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim) if len(ids) else np.zeros((0, self.dim))
        if len(ids) != len(vectors):
            raise ValueError(f"ExactIndex.add: {len(ids)} ids for {len(vectors)} vectors")
        clash = set(ids) & set(self.ids)
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"ExactIndex.add: duplicate ids {sorted(clash)[:5] or 'within the batch'}")
        self.vectors = np.concatenate([self.vectors, vectors.astype(np.float32)])
        self.ids.extend(ids)

    def remove(self, ids: Sequence[str]) -> int:
        drop = set(ids)
        keep = [i for i, item in enumerate(self.ids) if item not in drop]
        removed = len(self.ids) - len(keep)
        self.vectors = self.vectors[keep]
        self.ids = [self.ids[i] for i in keep]
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k per query: (scores (Q, k'), ids), best first; k' = min(k, len)."""
        from vsearch.metrics import ranked_neighbours

        queries = np.asarray(queries, np.float32).reshape(-1, self.dim)
        if not len(self):
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        idx, scores = ranked_neighbours(queries, self.vectors, k)
        return scores, [[self.ids[j] for j in row] for row in idx]


class Catalog:
    """An index with per-item metadata and the fingerprint of the model behind the vectors."""

    def __init__(self, dim: int, fingerprint: str, index: VectorIndex | None = None):
        self.index = index or ExactIndex(dim)
        self.fingerprint = fingerprint
        self.items: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add(self, items: Sequence[dict], vectors: np.ndarray) -> None:
        """Adds items (each a dict with at least ``id``) and their vectors."""
        ids = [str(item["id"]) for item in items]
        self.index.add(ids, vectors)
        for item_id, item in zip(ids, items):
            self.items[item_id] = {**item, "id": item_id}

    def remove(self, ids: Sequence[str]) -> int:
        for item_id in ids:
            self.items.pop(str(item_id), None)
        return self.index.remove([str(i) for i in ids])

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Per query, the top-k items with a ``score`` field, best first."""
        scores, ids = self.index.search(queries, k)
        return [[{**self.items[i], "score": float(s)} for i, s in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(ids, scores)]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes atomically: a crash mid-write leaves the previous file readable."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "dim": self.index.dim,
                "items": [self.items[i] for i in self.index.ids]}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, vectors=self.index.vectors, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None) -> "Catalog":
        """Reads a saved catalog; ``expected_fingerprint`` must match the model used to query."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such catalog index; build one with `vsearch index build`")
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors = data["vectors"]
                meta = json.loads(data["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a vsearch catalog index ({exc})") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{path}: unknown index format {meta.get('format')!r}")
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise DataError(f"{path}: built with model {meta['fingerprint']}, but the query model is "
                            f"{expected_fingerprint}; rebuild the index with this model")
        catalog = cls(int(meta["dim"]), meta["fingerprint"])
        catalog.add(meta["items"], vectors)
        return catalog
