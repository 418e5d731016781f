"""The embedded store (``faiss:PATH``): a FAISS index in memory, a snapshot file plus an append-only log on disk.

**In memory.** One FAISS row per photo (:class:`vsearch.stores.rows.FaissIndex`, exact or HNSW),
one :class:`vsearch.stores.filters.Column` per field (``category``, ``product_id``, every
attribute) over the same rows, and the products. Rows are append-only: an upsert marks the
product's old rows dead and appends new ones; :meth:`FaissStore.compact` rebuilds FAISS
once over a quarter of the rows are dead.

**Searching.** A filter's rows come from :func:`vsearch.stores.filters.mask`. When at most
``EXACT_BELOW`` rows pass, their vectors are gathered and scored exactly (numpy); a
broader filter goes through FAISS with a bitmap selector, the HNSW beam widened by the
inverse of the share of rows kept. Grouped searches ask for a few photos per wanted
product and widen (double) until ``k`` distinct products are found or nothing is left.

**Changing.** Every change is one log record. The store says what a record does
(:meth:`FaissStore._change`: every check first, then a change that cannot fail), and its
:class:`vsearch.stores.journal.Journal` does the rest: the snapshot and the log on disk,
appending, following other writers, compaction (see that module's doc).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.artifacts import file_lock
from vsearch.errors import DataError
from vsearch.stores import Product, filters
from vsearch.stores.journal import (
    FORMAT,
    Journal,
    read_index,
    read_member,
    read_meta,
    reading_snapshot,
    stat,
    stat_path,
    write_snapshot,
)
from vsearch.stores.rows import FaissIndex, calibration_problem, choose_kind
from vsearch.stores.validate import check_vectors, describe, group_photos, photo_dict, value_problem

# A filter keeping at most this many rows is scored exactly over them (a gather and a dot
# product), one keeping more goes through FAISS with a bitmap selector. Measured at 200k 391-d
# rows, HNSW M=32, one thread on a loaded 2-core machine: exact 0.7 ms at 567 rows, 8 ms at 2k,
# 16 ms at 6k, 34 ms at 20k (the gather dominates); the selector road at 20k rows (10%) took
# 9 ms at recall@10 0.97 on the benchmark's catalog-like data (bench/stores.py), but at 2-6k
# rows its widened beam (1/share) costs 50-170 ms. The crossover lies between: 10k.
EXACT_BELOW = 10_000
# A selector keeping a share s of the rows leaves about s of the HNSW beam usable, so a
# filtered search widens the beam by (1 / s) ** FILTERED_BEAM_POWER. At 1M photos with a
# filter keeping 10% (bench.stores' data, one thread): power 0.5 gave recall@10 0.960 at
# p50 7.3 ms; 0.75 0.978 at 11.2 ms; 1.0 0.990 at 20.5 ms; widening by want / s, 0.938.
FILTERED_BEAM_POWER = 0.5
# Exact scoring over kept rows that are at least 1/3 of the storage scores every row in
# place rather than gathering the kept ones first (:func:`exact_scores`). Measured with
# 391-d rows on a loaded 2-core machine: at 30k rows gathering 33% / 99% took 14.7 / 40.8
# ms against 9.5 / 10.4 ms in place; at 2,100 rows 0.28 / 1.57 ms against 0.40 / 0.63 ms.
EXACT_IN_PLACE_SHARE = 3


def filtered_beam(beam: int, share: float) -> int:
    """The HNSW beam (efSearch) for a search whose filter keeps ``share`` of the rows."""
    return int(beam * (1.0 / max(share, 1e-9)) ** FILTERED_BEAM_POWER) if share < 1 else int(beam)


# ---------------------------------------------------------------- searches beside a writer


class _RWLock:
    """Many searches at once, or one change; a waiting change goes before new searches."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = self._waiting = 0
        self._writing = False

    @contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def exact_scores(storage: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The query's inner product with each of ``rows`` of ``storage``, in ``rows`` order.

    einsum, not ``@``: a one-query product through a multi-threaded BLAS pays thread
    wake-ups that cost more than the product itself on a busy machine. When the rows are a
    large share of the storage, every row is scored in place and the kept ones picked:
    gathering them first copies most of the array on every query.
    """
    if len(rows) * EXACT_IN_PLACE_SHARE >= len(storage):
        return np.einsum("ij,j->i", storage, query)[rows]
    return np.einsum("ij,j->i", storage[rows], query)


# ---------------------------------------------------------------- the rows


class _Rows(FaissIndex):
    """A FaissIndex whose rows the store addresses directly: removal only marks rows dead."""

    def remove(self, ids: Sequence[str]) -> int:  # no automatic rebuild: the store's columns follow the rows
        rows = [self._row_of.pop(i) for i in ids if i in self._row_of]
        for row in rows:
            self._row_ids[row] = None
            self._dead.add(row)
        return len(rows)

    def storage(self) -> np.ndarray:
        """All rows' vectors as a view of FAISS's own array (valid until the next add)."""
        import faiss

        flat: Any = self._faiss if self.kind == "exact" else faiss.downcast_index(self._faiss.storage)
        total = flat.ntotal
        if not total:
            return np.zeros((0, self.dim), np.float32)
        return faiss.rev_swig_ptr(flat.get_xb(), total * self.dim).reshape(total, self.dim)

    def to_arrays(self) -> dict[str, np.ndarray]:  # dead rows stay: a snapshot must not wait for an HNSW rebuild
        import faiss

        if self.kind == "hnsw":
            return {"faiss": faiss.serialize_index(self._faiss)}
        return {"vectors": np.array(self.storage())}

    @classmethod
    def from_rows(cls, row_ids: list[str | None], stored, params: dict) -> _Rows:
        """The rows of a snapshot: ``stored`` is its HNSW graph (a FAISS index) or its (n, d) float32 vectors.

        Raises:
            ValueError: rows and vectors that disagree, a graph of another kind, NaN or infinity.
        """
        import faiss

        if isinstance(stored, np.ndarray):
            index = cls(stored.shape[1], **params)
            if index.kind != "exact":
                raise ValueError(f"the header says a {index.kind} index, the file holds plain vectors")
            index._faiss.add(np.ascontiguousarray(stored))
        else:
            index = cls(stored.d, **params)
            if index.kind != "hnsw" or not isinstance(stored, faiss.IndexHNSWFlat):
                raise ValueError(f"the header says a {index.kind} index, the file holds a {type(stored).__name__}")
            if stored.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ValueError("the stored graph does not rank by inner product")
            index._faiss = stored
        if index._faiss.ntotal != len(row_ids):
            raise ValueError(f"{index._faiss.ntotal} stored vectors for {len(row_ids)} rows")
        index._row_ids = list(row_ids)
        index._row_of = {item: r for r, item in enumerate(row_ids) if item is not None}
        index._dead = {r for r, item in enumerate(row_ids) if item is None}
        if len(index._row_of) + len(index._dead) != len(row_ids):
            raise ValueError("a photo id on two rows")
        storage, step = index.storage(), 1 << 16
        if not all(np.isfinite(storage[at : at + step]).all() for at in range(0, len(storage), step)):
            raise ValueError("the stored vectors contain NaN or infinity")
        return index


class FaissStore:
    """The ``faiss:PATH`` store; made by :func:`open` or :func:`build` (see the module doc)."""

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        fingerprint: str,
        model: dict,
        kind: str = "exact",
        index: _Rows | None = None,
    ):
        self.path = Path(path)
        self.spec = f"faiss:{self.path}"
        self.dim, self.fingerprint, self.model = int(dim), fingerprint, dict(model)
        self.schema: dict[str, str] = {}
        self.calibration: dict | None = None
        self.stats: dict = {}
        self._rw = _RWLock()  # searches share it; a change of the state holds it alone
        self._reset(index if index is not None else _Rows(self.dim, kind))
        self._journal = Journal(self, self.path)  # the files, and where this state stands in them
        self.log_path = self._journal.log_path

    def _reset(self, index: _Rows) -> None:
        self._index = index
        self._columns: dict[str, filters.Column] = {
            "category": filters.Column("text"),
            "product_id": filters.Column("text"),
        }
        self._alive = np.zeros(0, bool)
        self._row_product: list[str | None] = []
        self._products: dict[str, Product] = {}
        self._cache: dict = {}

    # ------------------------------------------------------------ reading

    @property
    def kind(self) -> str:
        return self._index.kind

    def count(self) -> tuple[int, int]:
        with self._rw.read():
            return len(self._products), len(self._index)

    def categories(self) -> list[str]:
        with self._rw.read():
            return sorted({p.category for p in self._products.values()})

    def get(self, product_id: str) -> Product | None:
        with self._rw.read():
            product = self._products.get(str(product_id))
        return (
            None
            if product is None
            else Product(product.product_id, product.category, dict(product.attributes), product.photos, product.paths)
        )

    def photo(self, photo_id: str) -> dict | None:
        with self._rw.read():
            row = self._index._row_of.get(str(photo_id))
            return None if row is None else self._hit(row)

    def products(self) -> Iterator[Product]:
        with self._rw.read():
            found = list(self._products.values())
        return iter(found)

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every stored photo's id and vector, in row order (a copy: for benchmarks and checks)."""
        with self._rw.read():
            rows = np.flatnonzero(self._alive)
            return [str(self._index._row_ids[r]) for r in rows], self._index.storage()[rows]

    def _hit(self, row: int, score: float | None = None) -> dict:
        product = self._products[str(self._row_product[row])]  # a live row: never None
        photo_id = self._index._row_ids[row]
        hit: dict[str, Any] = {
            "product_id": product.product_id,
            "photo_id": photo_id,
            "id": photo_id,
            "category": product.category,
            "attributes": dict(product.attributes),
            "path": product.paths[product.photos.index(photo_id)],
        }
        if score is not None:
            hit["score"] = score
        return hit

    def search(
        self, vectors: np.ndarray, k: int, where: filters.Filter | None = None, group: bool = True
    ) -> list[list[dict]]:
        """Per query, the best ``k`` products (``group``) or photos that ``where`` keeps, best first."""
        queries = (
            np.asarray(vectors, np.float32).reshape(-1, self.dim)
            if np.size(vectors)
            else np.zeros((0, self.dim), np.float32)
        )
        if not np.all(np.isfinite(queries)):
            raise DataError("the query vectors contain NaN or infinity")
        k = int(k)
        with self._rw.read():
            if k < 1 or not len(self._index):
                return [[] for _ in queries]
            allowed = self._allowed(where)
            out = []
            for query in queries:
                rows, scores = self._best(query, k, allowed, group)
                out.append([self._hit(r, float(s)) for r, s in zip(rows, scores)])
            return out

    def _allowed(self, where) -> tuple[int, np.ndarray | None, Any]:
        """(rows kept, their row numbers when few (exact road), a FAISS selector when many or None)."""
        import faiss

        key = where or None
        try:
            cached = self._cache.get(key)
        except TypeError:  # a hand-made filter holding a list: not kept
            key, cached = object(), None
        if cached is not None:
            return cached
        size = len(self._alive)
        found: tuple[int, np.ndarray | None, Any]
        if not where and not self._index._dead:
            found = (len(self._index), None, None)
        else:
            keep = filters.mask(where, self._columns, size) & self._alive if where else self._alive
            count = int(np.count_nonzero(keep))
            if count <= EXACT_BELOW:
                found = (count, np.flatnonzero(keep), None)
            else:
                bits = np.packbits(keep, bitorder="little")
                selector: Any = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bits))
                selector.bits_owner = bits  # the selector reads this array: keep it alive with it
                found = (count, None, selector)
        if len(self._cache) >= 32:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _best(self, query: np.ndarray, k: int, allowed, group: bool) -> tuple[list[int], list[float]]:
        count, rows, selector = allowed
        if not count:
            return [], []
        per_product = len(self._index) / max(len(self._products), 1)
        want = min(count, k if not group else int(k * per_product * 1.5) + 2)
        exact = exact_scores(self._index.storage(), rows, query) if rows is not None else None
        codes = self._columns["product_id"].values
        while True:
            if exact is not None:
                top = np.argpartition(-exact, want - 1)[:want] if want < len(exact) else np.arange(len(exact))
                top = top[np.argsort(-exact[top], kind="stable")]
                found, scores = rows[top], exact[top]
            else:
                found, scores = self._faiss_search(query, want, count, selector)
            if group:
                _, first = np.unique(codes[found], return_index=True)
                first.sort()
                found, scores = found[first], scores[first]
            if len(found) >= k or want >= count:
                return found[:k].tolist(), scores[:k].tolist()
            want = min(count, want * 2)

    def _faiss_search(self, query: np.ndarray, want: int, count: int, selector) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = self._index
        if index.kind == "hnsw":
            ef = filtered_beam(max(index.ef_search, want), count / len(self._alive))
            params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        scores, rows = index._faiss.search(query[None], want, params=params)
        good = rows[0] >= 0
        return rows[0][good], scores[0][good]

    # ------------------------------------------------------------ changing

    def upsert(self, photos: Sequence, vectors: np.ndarray) -> None:
        """Gives the products named in ``photos`` exactly these photos, category and attributes."""
        photos = [photo_dict(p) for p in photos]
        if not photos:
            raise DataError("upsert of no photos; give at least one photo and its vector")
        vectors = check_vectors(vectors, len(photos), self.dim)
        meta = {"op": "upsert", "photos": photos}
        with self._journal.writing():
            self._change(meta, vectors, strict=True)  # the photos as given: the messages name what was given
            self._journal.append(meta, vectors)

    def delete(self, product_ids: Sequence[str]) -> int:
        """Removes these products and all their photos; returns how many existed."""
        ids = list(dict.fromkeys(str(p) for p in product_ids))
        with self._journal.writing():
            known = [p for p in ids if p in self._products]
            if known:
                self._journal.append({"op": "delete", "products": known})
            return len(known)

    def set_calibration(self, calibration: dict | None) -> None:
        """Keeps a calibration (checked by :func:`vsearch.stores.rows.calibration_problem`; None drops it)
        as a log record; the next snapshot holds it.

        Raises:
            DataError: it was made with another model, or is not a calibration.
        """
        problem = calibration_problem(calibration, self.fingerprint) if calibration is not None else ""
        if problem:
            raise DataError(f"calibration refused: it {problem}")
        with self._journal.writing():
            self._journal.append({"op": "calibration", "calibration": calibration})

    def _change(self, meta: Any, vectors: np.ndarray | None, strict: bool = False) -> Callable[[], None]:
        """What one log record does to the state in memory, every check done first: the change
        returned cannot fail. ``strict``: a new write, held to the rules for what comes in
        (:func:`vsearch.stores.validate.group_photos`); else a record being replayed, which need
        only be one the state can hold (an older version's records stay readable).

        Raises:
            DataError, ValueError, KeyError, TypeError, AttributeError: a record that cannot be
                applied; nothing has changed.
        """
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not a change")
        op = meta.get("op")
        if op == "upsert":
            if not isinstance(meta.get("photos"), list):
                raise ValueError("an upsert without a list of photos")
            photos = [photo_dict(p) for p in meta["photos"]]
            vectors = check_vectors(vectors, len(photos), self.dim)
            products, schema = group_photos(photos, self.schema, strict=strict)
            for photo in photos:
                row = self._index._row_of.get(photo["photo_id"])
                owner = None if row is None else self._row_product[row]
                if owner is not None and owner not in products:
                    raise DataError(
                        f"product {photo['product_id']!r}: photo id {photo['photo_id']!r} already belongs "
                        f"to product {owner!r}"
                    )

            def upsert() -> None:
                with self._rw.write():
                    self._drop(list(products))
                    self._add(photos, vectors, products, schema)

            return upsert
        if op == "delete":
            ids = meta.get("products")
            if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
                raise ValueError("a delete without a list of product ids")

            def delete() -> None:
                with self._rw.write():
                    self._drop(ids)

            return delete
        if op == "calibration":
            calibration = meta.get("calibration")
            if calibration is not None and not isinstance(calibration, dict):
                raise ValueError(f"a calibration that is a JSON {type(calibration).__name__}")

            def calibrate() -> None:
                self.calibration = calibration

            return calibrate
        raise ValueError(f"unknown log record {op!r}")

    def _drop(self, product_ids: Sequence[str]) -> None:
        for pid in product_ids:
            product = self._products.pop(pid, None)
            if product is not None:
                rows = [self._index._row_of[p] for p in product.photos]
                self._index.remove(product.photos)
                self._alive[rows] = False
                for r in rows:
                    self._row_product[r] = None
        self._cache.clear()

    def _add(self, photos: list[dict], vectors: np.ndarray, products: dict[str, dict], schema: dict) -> None:
        size = len(self._alive)
        for name, kind in schema.items():
            if name not in self._columns:  # a new attribute joins the schema: no value on earlier rows
                self._columns[name] = filters.Column("text" if kind == "text" else "float")
                self._columns[name].append([None] * size)
        self.schema = schema
        self._index.add([p["photo_id"] for p in photos], vectors)
        for name, column in self._columns.items():
            if name in ("category", "product_id"):
                column.append([p[name] for p in photos])
            else:
                column.append([p["attributes"].get(name) for p in photos])
        self._alive = np.concatenate([self._alive, np.ones(len(photos), bool)])
        self._row_product.extend(p["product_id"] for p in photos)
        for pid, product in products.items():
            own = [photos[n] for n in product["rows"]]
            attributes = {k: (float(v) if schema[k] == "float" else v) for k, v in product["attributes"].items()}
            self._products[pid] = Product(
                pid, product["category"], attributes, tuple(p["photo_id"] for p in own), tuple(p["image"] for p in own)
            )
        self._cache.clear()

    def _rebuild(self) -> None:
        """Drops dead rows from FAISS and the columns for good (an HNSW rebuild: slow at scale)."""
        keep = np.flatnonzero(self._alive)
        self._index.compact()
        self._columns = {name: column.take(keep) for name, column in self._columns.items()}
        self._alive = np.ones(len(keep), bool)
        self._row_product = [self._row_product[r] for r in keep]
        self._cache.clear()

    # ------------------------------------------------------------ the files (through the journal)

    def _snapshot(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The state as a new generation's meta and arrays (the caller holds the read lock)."""
        rows = [None if pid is None else [self._index._row_ids[r], pid] for r, pid in enumerate(self._row_product)]
        products = {pid: [p.category, p.attributes, list(p.photos), list(p.paths)] for pid, p in self._products.items()}
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "index": self._index.params(),
            "model": self.model,
            "schema": self.schema,
            "calibration": self.calibration,
            "stats": {**self.stats, "products": len(self._products), "photos": len(self._index)},
            "generation": uuid.uuid4().hex,
            "base": None,
        }
        arrays = {
            "rows": np.frombuffer(json.dumps(rows).encode(), np.uint8),
            "products": np.frombuffer(json.dumps(products).encode(), np.uint8),
            **self._index.to_arrays(),
        }
        return meta, arrays

    def _compact_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(Writers' lock) compaction's first step: the state as a snapshot, dead rows dropped first
        when over a quarter of them are dead."""
        if len(self._index._dead) > len(self._alive) // 4:
            with self._rw.write():
                self._rebuild()
        with self._rw.read():
            return self._snapshot()

    @classmethod
    def _load(
        cls, path: Path, snapshot, log, expected_fingerprint: str | None = None, locked: bool = False
    ) -> FaissStore:
        """A store from one version's open snapshot and log (the snapshot is closed, the log kept);
        ``locked``: this process holds the writers' lock."""
        try:
            try:
                meta, archive = read_meta(path, snapshot)
                if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
                    raise DataError(
                        f"{path}: built with model {meta['fingerprint']}, but the query model is "
                        f"{expected_fingerprint}; rebuild the index with this model"
                    )
                with reading_snapshot(path):
                    store = cls._from_archive(path, meta, archive)
                store._journal.snapshot_stat = stat(snapshot)
            finally:
                snapshot.close()
        except BaseException:
            if log is not None:
                log.close()
            raise
        try:
            store._journal.adopt(log, locked)
        except BaseException:
            if log is not None:
                log.close()
            raise
        return store

    @classmethod
    def _from_archive(cls, path: Path, meta: dict, archive) -> FaissStore:
        """The state a snapshot holds (``archive``: its open zip; ``meta``: its checked header).

        Raises:
            ValueError (or what reading raises): anything that does not fit together.
        """
        rows = json.loads(read_member(archive, "rows", np.uint8, 1).tobytes())
        products = json.loads(read_member(archive, "products", np.uint8, 1).tobytes())
        if not isinstance(rows, list):
            raise ValueError("its rows are not a list")
        photo_ids: list[str | None] = []
        for row in rows:  # None (a dead row) or [photo id, product id]
            if row is not None and not (type(row) is list and len(row) == 2 and type(row[0]) is type(row[1]) is str):
                raise ValueError(f"a row is {describe(row)}, not [photo id, product id]")
            photo_ids.append(None if row is None else row[0])
        if not isinstance(products, dict):
            raise ValueError("its products are not a JSON object")
        stored = (
            read_index(archive)  # the graph: streamed, not copied
            if meta["index"].get("kind") == "hnsw"
            else read_member(archive, "vectors", np.float32, 2)
        )
        index = _Rows.from_rows(photo_ids, stored, meta["index"])
        if index.dim != meta["dim"]:
            raise ValueError(f"vectors are {index.dim}-d, the header says {meta['dim']}")
        store = cls(path, meta["dim"], meta["fingerprint"], meta.get("model") or {}, index=index)
        store._from_snapshot(meta, rows, products)
        return store

    def _from_snapshot(self, meta: dict, rows: list, products: dict) -> None:
        self.schema, self.stats = dict(meta["schema"]), meta.get("stats") or {}
        calibration = meta.get("calibration")
        if calibration is not None and calibration_problem(calibration, self.fingerprint):
            raise DataError(
                f"{self.path}: its calibration {calibration_problem(calibration, self.fingerprint)}; "
                "run `vsearch calibrate` again"
            )
        self.calibration = calibration
        self._journal.generation, self._journal.base = meta["generation"], meta.get("base")
        self._row_product = [None if r is None else r[1] for r in rows]
        self._alive = np.array([r is not None for r in rows], bool)
        for pid, (category, attributes, photos, paths) in products.items():
            if not (
                isinstance(category, str)
                and isinstance(attributes, dict)
                and isinstance(photos, list)
                and isinstance(paths, list)
                and len(photos) == len(paths)
            ):
                raise ValueError(f"product {pid!r} is damaged")
            for name, value in attributes.items():
                problem = "" if type(value) in _PLAIN else value_problem(value, strict=False)
                if problem:
                    raise ValueError(f"product {pid!r}: attribute {name!r}: {problem}")
            self._products[pid] = Product(pid, category, dict(attributes), tuple(photos), tuple(paths))
        for pid, product in self._products.items():  # each photo on a live row of its product, and no other row
            for photo in product.photos:
                row = self._index._row_of.get(photo)
                if row is None or self._row_product[row] != pid:
                    raise ValueError(f"product {pid!r}: photo {photo!r} has no row of its own")
        if sum(len(p.photos) for p in self._products.values()) != len(self._index):
            raise ValueError(f"{len(self._index)} live rows for the products' photos")
        for name, kind in self.schema.items():
            self._columns[name] = filters.Column("text" if kind == "text" else "float")
        live = [None if pid is None else self._products[pid] for pid in self._row_product]
        for name, column in self._columns.items():
            if name in ("category", "product_id"):
                column.append([None if p is None else getattr(p, name) for p in live])
            else:
                column.append([None if p is None else p.attributes.get(name) for p in live])

    def _take(self, other: FaissStore) -> None:
        """Becomes ``other`` (a full reload), in one step for searches."""
        old = self._journal.log
        with self._rw.write():
            for name in _STATE:
                setattr(self, name, getattr(other, name))
            self._journal.take(other._journal)
        if old is not None and old is not self._journal.log:
            old.close()

    def refresh(self) -> bool:
        """Takes in other processes' writes (a ``stat`` when nothing changed); True if anything did."""
        return self._journal.refresh()

    def log_bytes(self) -> int:
        """How much of the log this state has read past its header."""
        return self._journal.log_bytes()

    def should_compact(self) -> bool:
        """Whether the log has grown past a quarter of the snapshot (and 1 MiB), or over a quarter
        of the rows (and 1000) are dead: the server's background thread then calls :meth:`compact`."""
        dead = len(self._index._dead)
        snapshot = self._journal.snapshot_stat
        return self.log_bytes() > max(1 << 20, snapshot[1] // 4 if snapshot else 0) or dead > max(
            1000, len(self._alive) // 4
        )

    def compact(self) -> bool:
        """Rewrites the snapshot from the current state and starts an empty log (see
        :mod:`vsearch.stores.journal`); False when another process rebuilt or compacted the catalog meanwhile."""
        return self._journal.compact()

    def close(self) -> None:
        self._journal.close()


_PLAIN = (str, bool, type(None))  # attribute values a stored product may hold, whatever they are
_STATE = (  # what a full reload replaces (the journal's own part: Journal.take)
    "dim",
    "fingerprint",
    "model",
    "schema",
    "calibration",
    "stats",
    "_index",
    "_columns",
    "_alive",
    "_row_product",
    "_products",
    "_cache",
)


# ---------------------------------------------------------------- the module's two entries


def open(where: str | os.PathLike, expected_fingerprint: str | None = None) -> FaissStore:  # noqa: A001
    """The store at ``where``: its snapshot, then its log replayed.

    Raises:
        DataError: no catalog there, a damaged or foreign file, or one made with another model.
    """
    path = Path(where)
    if not path.is_file():  # before the lock: a mistyped path leaves no lock file behind
        raise DataError(f"{path}: no such catalog index; build one with `vsearch index build`")
    snapshot, log = FaissStore(path, 1, "", {})._journal.open_files(locked=False)
    return FaissStore._load(path, snapshot, log, expected_fingerprint)


def build(
    where: str | os.PathLike,
    photos: Sequence,
    vectors: np.ndarray,
    *,
    fingerprint: str,
    model: dict,
    kind: str = "auto",
) -> FaissStore:
    """A new store at ``where`` holding ``photos``; replaces what was there, with an empty log.

    Raises:
        DataError: photos that disagree or do not fit (see :func:`vsearch.stores.validate.group_photos`), bad vectors.
    """
    photos = [photo_dict(p) for p in photos]
    vectors = np.asarray(vectors, np.float32)
    vectors = check_vectors(vectors, len(photos), vectors.shape[-1] if vectors.ndim == 2 else None)
    try:
        kind = choose_kind(kind, len(photos))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    store = FaissStore(where, vectors.shape[1], fingerprint, model, kind)
    products, schema = group_photos(photos, {})
    if photos:
        store._add(photos, vectors, products, schema)
    meta, arrays = store._snapshot()
    store._journal.generation = meta["generation"]
    with file_lock(store.path):
        write_snapshot(store.path, meta, arrays)
        store._journal.snapshot_stat = stat_path(store.path)
        store._journal.start_log()
    return store
