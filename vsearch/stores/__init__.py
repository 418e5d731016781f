"""Where the catalog's vectors live: one small interface, one module per backend.

A store holds **products**: each has an id, a category, typed attributes (``price``,
``brand``, ``in_stock``, ...) and one or more photos, each photo one vector. Every backend
answers the same calls (the behavioural suite in ``tests/stores/test_stores.py`` runs against
each):

* ``upsert(photos, vectors)``: ``photos`` are :class:`vsearch.catalog.manifest.Photo` s, one per row
  of ``vectors``; the products they name get exactly these photos and the category and
  attributes they carry (earlier photos dropped; a product's photos must agree on them, a
  disagreement or an attribute of the wrong type is a DataError naming it; a new attribute
  joins the schema). Persisted before it returns; all or nothing.
* ``delete(product_ids) -> int``: products removed (unknown ids are ignored).
* ``get(product_id) -> Product | None``; ``photo(photo_id) -> dict | None`` (a hit-shaped dict
  without ``score``: where its file is, its product, category, attributes);
  ``products()``: every product, in no set order (for calibration, facets, listings).
* ``search(vectors, k, where=None, group=True)``: per query vector, the best ``k`` products
  (each once, scored by its best photo) or, with ``group=False``, the best ``k`` photos,
  restricted to what ``where`` (:class:`vsearch.stores.filters.Filter`) keeps. A hit is a dict:
  ``product_id``, ``photo_id``, ``id`` (= ``photo_id``), ``score``, ``category``,
  ``attributes``, ``path``. A filter that keeps few photos is searched exactly over them.
* ``count() -> (products, photos)``, ``categories()``, ``schema`` (attribute -> ``bool`` /
  ``int`` / ``float`` / ``text``), ``fingerprint``, ``dim``, ``model``, ``calibration`` /
  ``set_calibration(c)``, ``refresh() -> bool`` (take in other writers' changes),
  ``close()``.

Writes are serialized by the store (threads and processes of a machine); a failure on the
store's side (a server down or busy) is a :class:`vsearch.errors.StoreError`, input it refuses
a DataError. :func:`engine` says what answers a store's calls.

Backends: ``faiss:PATH`` (:mod:`vsearch.stores.faiss`, the embedded default: a snapshot file
plus an append-only log) and ``milvus:FILE.db`` / ``milvus:http://host:19530``
(:mod:`vsearch.stores.milvus`, through ``pymilvus.MilvusClient``; ``pip install
'vsearch[milvus]'``; :mod:`vsearch.stores.milvus_embedded` runs a Milvus server here).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from vsearch.errors import DataError

DEFAULT_STORE = "faiss:saved_models/catalog.vsi"
BACKENDS = ("faiss", "milvus")
# Fields every hit and product carry; attributes may not take these names.
RESERVED = ("product_id", "photo_id", "id", "score", "category", "attributes", "path", "rank", "image_url")


@dataclass(frozen=True)
class Product:
    """A product as stored: its photos (ids and where their files are) and attributes."""

    product_id: str
    category: str
    attributes: dict[str, Any] = field(default_factory=dict)
    photos: tuple[str, ...] = ()  # photo ids
    paths: tuple[str, ...] = ()  # where each photo's file is (server side; never sent to clients)

    def to_dict(self) -> dict:
        return {
            "product_id": self.product_id,
            "category": self.category,
            "attributes": dict(self.attributes),
            "photos": list(self.photos),
        }


class Store(Protocol):
    spec: str
    dim: int
    fingerprint: str
    model: dict
    schema: dict[str, str]
    calibration: dict | None

    def count(self) -> tuple[int, int]: ...

    def categories(self) -> list[str]: ...

    def upsert(self, photos: Sequence, vectors: np.ndarray) -> None: ...

    def delete(self, product_ids: Sequence[str]) -> int: ...

    def get(self, product_id: str) -> Product | None: ...

    def photo(self, photo_id: str) -> dict | None: ...

    def products(self) -> Iterator[Product]: ...

    def search(self, vectors: np.ndarray, k: int, where=None, group: bool = True) -> list[list[dict]]: ...

    def set_calibration(self, calibration: dict | None) -> None: ...

    def refresh(self) -> bool: ...

    def close(self) -> None: ...


def parse_spec(spec: str) -> tuple[str, str]:
    """``"faiss:PATH"`` -> ``("faiss", "PATH")``; a bare path means ``faiss:``.

    Raises:
        DataError: an unknown backend or an empty location.
    """
    spec = str(spec).strip()
    backend, sep, where = spec.partition(":")
    if not sep or backend not in BACKENDS:
        if sep and backend.isalpha() and len(backend) > 1:  # "postgres:..." (a Windows drive letter is one letter)
            raise DataError(f"unknown store {backend!r} in {spec!r}; use faiss:PATH or milvus:FILE.db|http://HOST:PORT")
        backend, where = "faiss", spec
    if not where:
        raise DataError(f"store {spec!r} names no location; e.g. {DEFAULT_STORE}")
    return backend, where


def _backend(name: str) -> ModuleType:
    if name == "faiss":
        return importlib.import_module("vsearch.stores.faiss")
    try:
        return importlib.import_module("vsearch.stores.milvus")
    except ImportError as exc:
        raise DataError(
            f"the milvus store needs pymilvus and milvus-lite: pip install 'vsearch[milvus]' ({exc})"
        ) from None


def engine(store: Store) -> dict[str, Any]:
    """What answers a store's calls, for ``vsearch index info`` and ``/healthz``: its backend and,
    for a Milvus server, the server's version and the roads taken (``group_by``: ``milvus`` or
    ``vsearch``, ``consistency``)."""
    found = getattr(store, "engine", None)
    return dict(found) if isinstance(found, dict) else {"backend": parse_spec(store.spec)[0]}


def open_store(spec: str, expected_fingerprint: str | None = None) -> Store:
    """The store at ``spec``; ``expected_fingerprint``: the query model's, a mismatch is refused.

    Raises:
        DataError: no store there, a damaged one, or one made with another model.
    """
    backend, where = parse_spec(spec)
    return _backend(backend).open(where, expected_fingerprint=expected_fingerprint)


def build_store(
    spec: str, photos: Sequence, vectors: np.ndarray, *, fingerprint: str, model: dict | None = None, kind: str = "auto"
) -> Store:
    """A new store at ``spec`` holding ``photos`` (:class:`vsearch.catalog.manifest.Photo`) and their vectors.

    Replaces what was there, at once (readers see the old catalog or the new one): the
    bulk road of ``vsearch index build``, not a sequence of upserts.
    ``kind`` (faiss): ``auto``, ``exact`` or ``hnsw``.
    """
    backend, where = parse_spec(spec)
    vectors = np.asarray(vectors, np.float32)
    return _backend(backend).build(where, photos, vectors, fingerprint=fingerprint, model=dict(model or {}), kind=kind)
