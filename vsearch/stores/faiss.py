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

**On disk.** ``PATH`` is an ``.npz`` snapshot (format ``vsearch-catalog/3``: a small JSON
``meta``, the rows and products as JSON, the vectors or the serialized HNSW graph), written
atomically. ``PATH.log`` starts with a header record naming the snapshot ``generation`` it
extends, then one record per upsert, delete or calibration, each ``magic | length | crc32 |
body``, appended and fsynced under the exclusive writers' lock (:func:`file_lock`). A
record cut short by a crash fails its length or checksum: readers stop before it, the next
writer truncates it. Readers open the snapshot and the log together under the shared lock.

**Compaction** (crash-safe at every step): (1) serialize the state that has applied the log
up to offset X, without the file lock; write it to ``PATH.compacting`` as generation G+1
with ``base = (G, X)``; (2) under the lock, write ``PATH.log.compacting`` = header(G+1) +
the log's records after X (others' writes meanwhile); (3) rename the snapshot in (the
commit point), (4) rename the log in. A crash before (3) leaves G and its log; between (3)
and (4), the new snapshot's ``base`` says to replay the old log from X (and the next writer
finishes step 4). A ``build`` writes a snapshot with no base: a log of another generation
is stale and ignored.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
import threading
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.artifacts import _fsync_dir, file_lock, write_atomic
from vsearch.errors import DataError
from vsearch.stores import Product, filters
from vsearch.stores.rows import FaissIndex, calibration_problem, choose_kind
from vsearch.stores.validate import TYPES, check_vectors, group_photos, photo_dict

FORMAT = "vsearch-catalog/3"
LOG_FORMAT = "vsearch-log/1"
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
_MAGIC = b"VSR1"
_HEAD = struct.Struct("<4sQI")  # magic, body length, crc32 of the body
_REMEDY = "rebuild it with `vsearch index build`"


def filtered_beam(beam: int, share: float) -> int:
    """The HNSW beam (efSearch) for a search whose filter keeps ``share`` of the rows."""
    return int(beam * (1.0 / max(share, 1e-9)) ** FILTERED_BEAM_POWER) if share < 1 else int(beam)


# ---------------------------------------------------------------- log records


def encode_record(meta: dict, vectors: np.ndarray | None = None) -> bytes:
    """One self-checking log record: magic, body length, crc32, then JSON and float32 vectors."""
    text = json.dumps(meta).encode()
    body = struct.pack("<I", len(text)) + text
    if vectors is not None:
        body += np.ascontiguousarray(vectors, "<f4").tobytes()
    return _HEAD.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def decode_records(data: bytes, start: int = 0) -> tuple[list[tuple[dict, bytes, int]], int]:
    """The whole records in ``data[start:]`` as (meta, vector bytes, end offset), and where the
    last whole one ends (a torn or damaged record and everything after it are left out)."""
    out, at = [], start
    while at + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if magic != _MAGIC or end > len(data) or length < 4:
            break
        body = data[at + _HEAD.size : end]
        if zlib.crc32(body) != crc:
            break
        (size,) = struct.unpack_from("<I", body)
        try:
            meta = json.loads(body[4 : 4 + size])
        except ValueError:
            break
        out.append((meta, body[4 + size :], end))
        at = end
    return out, at


def _header(generation: str) -> bytes:
    return encode_record({"op": "begin", "format": LOG_FORMAT, "generation": generation})


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

        flat = self._faiss if self.kind == "exact" else faiss.downcast_index(self._faiss.storage)
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
    def from_rows(cls, row_ids: list[str | None], arrays: dict[str, np.ndarray], params: dict) -> _Rows:
        import faiss

        if "faiss" in arrays:
            stored = arrays["faiss"]
            stored = (
                faiss.deserialize_index(np.ascontiguousarray(stored))
                if isinstance(stored, np.ndarray)
                else _read_index(stored)
            )
            index = cls(stored.d, **params)
            index._faiss = stored
        else:
            vectors = arrays["vectors"]
            if vectors.ndim != 2 or vectors.dtype != np.float32:
                raise ValueError(f"vectors of shape {vectors.shape} and type {vectors.dtype}")
            index = cls(vectors.shape[1], **params)
            index._faiss.add(np.ascontiguousarray(vectors))
        if index._faiss.ntotal != len(row_ids):
            raise ValueError(f"{index._faiss.ntotal} stored vectors for {len(row_ids)} rows")
        index._row_ids = list(row_ids)
        index._row_of = {item: r for r, item in enumerate(row_ids) if item is not None}
        index._dead = {r for r, item in enumerate(row_ids) if item is None}
        return index


def _read_index(data):
    """The HNSW index a snapshot holds (its ``faiss`` member), streamed from the file into FAISS.

    Reading the member into numpy and then deserializing it held three copies of the graph
    and its vectors at once (1.9 GB each at 1M 391-d photos); streaming holds one.
    """
    import faiss

    with data.zip.open("faiss.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        if dtype != np.uint8 or len(shape) != 1:
            raise ValueError(f"the stored index is a {dtype} array of shape {shape}, not bytes")
        return faiss.read_index(faiss.PyCallbackIOReader(member.read))


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
        self.log_path = self.path.with_name(self.path.name + ".log")
        self.dim, self.fingerprint, self.model = int(dim), fingerprint, dict(model)
        self.schema: dict[str, str] = {}
        self.calibration: dict | None = None
        self.stats: dict = {}
        self._rw = _RWLock()  # searches share it; a change of the state holds it alone
        self._sync = threading.RLock()  # one thread at a time reads the log or writes it
        self._reset(index if index is not None else _Rows(self.dim, kind))
        self._generation = ""  # the snapshot's generation, and (G, X) when it compacted log G at X
        self._base: dict | None = None
        self._snapshot_stat: tuple = ()  # (inode, size, mtime) of the snapshot read
        self._log = None  # the log being read (an open handle), its generation, how far
        self._log_gen = ""
        self._offset = 0
        self._stale_log = -1  # inode of a log left by an earlier build (ignored)

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
            return [self._index._row_ids[r] for r in rows], self._index.storage()[rows]

    def _hit(self, row: int, score: float | None = None) -> dict:
        product = self._products[self._row_product[row]]
        photo_id = self._index._row_ids[row]
        hit = {
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
        if not where and not self._index._dead:
            found = (len(self._index), None, None)
        else:
            keep = filters.mask(where, self._columns, size) & self._alive if where else self._alive
            count = int(np.count_nonzero(keep))
            if count <= EXACT_BELOW:
                found = (count, np.flatnonzero(keep), None)
            else:
                bits = np.packbits(keep, bitorder="little")
                selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bits))
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
            params = faiss.SearchParametersHNSW(efSearch=ef)
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
        with self._writing():
            self._check_upsert(photos)
            self._append({"op": "upsert", "photos": photos}, vectors)

    def delete(self, product_ids: Sequence[str]) -> int:
        """Removes these products and all their photos; returns how many existed."""
        ids = list(dict.fromkeys(str(p) for p in product_ids))
        with self._writing():
            known = [p for p in ids if p in self._products]
            if known:
                self._append({"op": "delete", "products": known})
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
        with self._writing():
            self._append({"op": "calibration", "calibration": calibration})

    def _check_upsert(self, photos: list[dict]) -> None:
        products, _ = group_photos(photos, self.schema)
        for photo in photos:
            row = self._index._row_of.get(photo["photo_id"])
            owner = None if row is None else self._row_product[row]
            if owner is not None and owner not in products:
                raise DataError(
                    f"product {photo['product_id']!r}: photo id {photo['photo_id']!r} already belongs "
                    f"to product {owner!r}"
                )

    def _append(self, meta: dict, vectors: np.ndarray | None = None) -> None:
        """(Writers' lock) one record, on disk (fsynced) and then in memory."""
        record = encode_record(meta, vectors)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._apply(meta, vectors)
        self._offset += len(record)

    def _apply(self, meta: dict, vectors: np.ndarray | None) -> None:
        """One log record's change, to the state in memory."""
        op = meta.get("op")
        if op == "upsert":
            photos = meta["photos"]
            vectors = check_vectors(vectors, len(photos), self.dim)
            products, schema = group_photos(photos, self.schema)
            with self._rw.write():
                self._drop(list(products))
                self._add(photos, vectors, products, schema)
        elif op == "delete":
            with self._rw.write():
                self._drop(meta["products"])
        elif op == "calibration":
            self.calibration = meta.get("calibration")
        else:
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

    # ------------------------------------------------------------ the files

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

    @classmethod
    def _read(cls, path: Path, snapshot, log, expected_fingerprint: str | None = None) -> FaissStore:
        """A store from one version's open snapshot and log (the snapshot is closed, the log kept)."""
        try:
            meta, data = _read_meta(path, snapshot)
            if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
                raise DataError(
                    f"{path}: built with model {meta['fingerprint']}, but the query model is "
                    f"{expected_fingerprint}; rebuild the index with this model"
                )
            try:
                arrays = {
                    name: (data if name == "faiss" else data[name])  # the graph: streamed, not copied
                    for name in data.files
                    if name not in ("meta", "rows", "products")
                }
                rows = json.loads(data["rows"].tobytes())
                products = json.loads(data["products"].tobytes())
                index = _Rows.from_rows([None if r is None else str(r[0]) for r in rows], arrays, meta["index"])
                if index.dim != meta["dim"]:
                    raise ValueError(f"vectors are {index.dim}-d, the header says {meta['dim']}")
                store = cls(path, meta["dim"], meta["fingerprint"], meta.get("model") or {}, index=index)
                store._from_snapshot(meta, rows, products)
            except DataError:
                raise
            except (
                OSError,
                ValueError,
                KeyError,
                RuntimeError,
                TypeError,
                AttributeError,
                IndexError,
                zipfile.BadZipFile,
            ) as exc:
                raise DataError(f"{path}: damaged catalog index ({type(exc).__name__}: {exc})") from None
            store._snapshot_stat = _stat(snapshot)
        except BaseException:
            if log is not None:
                log.close()
            raise
        finally:
            snapshot.close()
        try:
            store._adopt_log(log)
        except BaseException:
            log.close()
            raise
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
        self._generation, self._base = meta["generation"], meta.get("base")
        self._row_product = [None if r is None else str(r[1]) for r in rows]
        self._alive = np.array([r is not None for r in rows], bool)
        for pid, (category, attributes, photos, paths) in products.items():
            self._products[pid] = Product(pid, category, dict(attributes), tuple(photos), tuple(paths))
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
        old = self._log
        with self._rw.write():
            for name in _STATE:
                setattr(self, name, getattr(other, name))
        if old is not None and old is not self._log:
            old.close()

    def _open_files(self, locked: bool):
        """(snapshot, log or None) handles of one version: opened under the shared lock."""
        with _nothing() if locked else file_lock(self.path, shared=True):
            if not self.path.is_file():
                raise DataError(f"{self.path}: no such catalog index; build one with `vsearch index build`")
            snapshot = builtins.open(self.path, "rb")
            try:
                log = builtins.open(self.log_path, "rb")
            except FileNotFoundError:
                log = None
        return snapshot, log

    def _adopt_log(self, log) -> None:
        """Takes the log that goes with the snapshot just read: from its header, or (a compaction
        that did not get to replace the log) the old log from the snapshot's base offset."""
        self._log = None
        if log is None:
            return
        generation, start = _log_header(self.log_path, log)
        if generation != self._generation and not (self._base and generation == self._base.get("generation")):
            self._stale_log = os.fstat(log.fileno()).st_ino  # a log of an earlier build: ignored, then replaced
            log.close()
            return
        self._log, self._log_gen = log, generation
        self._offset = start if generation == self._generation else int(self._base["offset"])
        self._read_log(locked=False)

    def _read_log(self, locked: bool, until: int | None = None) -> bool:
        """Applies the log's whole records from this state's offset (to ``until``); True if any.
        Under the writers' lock a torn tail is a crashed writer's: it is cut off."""
        if self._log is None:
            return False
        self._log.seek(self._offset)
        data = self._log.read() if until is None else self._log.read(max(until - self._offset, 0))
        records, end = decode_records(data)
        start = self._offset
        for meta, blob, stop in records:
            try:
                self._apply(meta, np.frombuffer(blob, "<f4").reshape(-1, self.dim) if blob else None)
            except (ValueError, KeyError, TypeError, DataError) as exc:
                raise DataError(f"{self.log_path}: damaged record at byte {self._offset} ({exc}); {_REMEDY}") from None
            self._offset = start + stop
        if locked and until is None and end < len(data):
            os.truncate(self.log_path, self._offset)
        return bool(records)

    def _catch_up(self, locked: bool) -> bool:
        """Takes in what other processes wrote since this state last read; True if anything did."""
        if _stat_path(self.path) != self._snapshot_stat:
            return self._follow(locked)
        log = _stat_path(self.log_path)
        if self._log is None:
            return bool(log) and log[0] != self._stale_log and self._follow(locked)
        if not log or log[0] != os.fstat(self._log.fileno()).st_ino:
            return self._follow(locked)
        return log[1] != self._offset and self._read_log(locked)

    def _follow(self, locked: bool) -> bool:
        """The snapshot or the log was replaced: follow a compaction of this state, else reload."""
        snapshot, log = self._open_files(locked)
        if _stat(snapshot) == self._snapshot_stat:
            snapshot.close()
            return self._follow_log(log, locked)
        meta, _ = _read_meta(self.path, snapshot)
        base = meta.get("base") or {}
        if (
            self._log is not None
            and self._log_gen == self._generation == base.get("generation")
            and meta["fingerprint"] == self.fingerprint
            and meta["dim"] == self.dim
        ):
            before = self._offset
            self._read_log(locked=False, until=int(base["offset"]))
            if self._offset >= base["offset"]:  # this state holds everything the new snapshot holds
                self._generation, self._base = meta["generation"], base
                self._snapshot_stat = _stat(snapshot)
                snapshot.close()
                moved = self._offset > before
                return self._follow_log(log, locked) or moved
        snapshot.seek(0)
        self._take(FaissStore._read(self.path, snapshot, log))
        return True

    def _follow_log(self, log, locked: bool) -> bool:
        """The log at the path (``log``) against the one this state reads."""
        if log is None:
            return False
        if self._log is not None and os.fstat(log.fileno()).st_ino == os.fstat(self._log.fileno()).st_ino:
            log.close()
            return self._read_log(locked)
        generation, start = _log_header(self.log_path, log)
        if generation == self._generation and (self._log is None or self._log_gen != self._generation):
            if self._log is not None:  # a compaction's new log: the old one's records from its base, moved up
                self._offset = start + self._offset - int(self._base["offset"])
                self._log.close()
            else:
                self._offset = start
            self._log, self._log_gen = log, generation
            return self._read_log(locked)
        if self._log is None and generation != self._generation:
            self._stale_log = os.fstat(log.fileno()).st_ino
            log.close()
            return False
        log.close()  # not a change this state can follow (the files were edited by hand): read everything
        snapshot, log = self._open_files(locked)
        self._take(FaissStore._read(self.path, snapshot, log))
        return True

    @contextmanager
    def _writing(self):
        """This thread as the only writer of the catalog, caught up, with a log of its generation."""
        with self._sync, file_lock(self.path):
            self._catch_up(locked=True)
            if self._log is None or self._log_gen != self._generation:
                self._start_log()
            yield

    def _start_log(self) -> None:
        """(Writers' lock) a log for this generation: an unfinished compaction's records after its
        base carried over (its last step, done now), or a stale log replaced by an empty one."""
        tail = b""
        if self._log is not None and self._base and self._log_gen == self._base.get("generation"):
            self._log.seek(int(self._base["offset"]))
            tail = self._log.read(self._offset - int(self._base["offset"]))
        header = _header(self._generation)
        write_atomic(self.log_path, header + tail)
        if self._log is not None:
            self._log.close()
        self._log, self._log_gen = builtins.open(self.log_path, "rb"), self._generation
        self._offset = len(header) + len(tail)

    def refresh(self) -> bool:
        """Takes in other processes' writes (a ``stat`` when nothing changed); True if anything did."""
        with self._sync:
            return self._catch_up(locked=False)

    def log_bytes(self) -> int:
        """How much of the log this state has read past its header."""
        return max(self._offset - len(_header(self._generation)), 0) if self._log is not None else 0

    def should_compact(self) -> bool:
        """Whether the log has grown past a quarter of the snapshot (and 1 MiB), or over a quarter
        of the rows (and 1000) are dead: the server's background thread then calls :meth:`compact`."""
        dead = len(self._index._dead)
        return self.log_bytes() > max(1 << 20, self._snapshot_stat[1] // 4 if self._snapshot_stat else 0) or dead > max(
            1000, len(self._alive) // 4
        )

    def compact(self) -> bool:
        """Rewrites the snapshot from the current state and starts an empty log (see the module
        doc); False when another process rebuilt or compacted the catalog meanwhile."""
        with file_lock(self.path.with_name(self.path.name + ".compaction")):
            meta, arrays, old, offset = self._compact_prepare()
            staged = self.path.with_name(self.path.name + ".compacting")
            _write_snapshot(staged, meta, arrays)  # the slow part, without the writers' lock
            del arrays
            return self._compact_commit(staged, meta, old, offset)

    def _compact_prepare(self) -> tuple[dict, dict, str, int]:
        """Step 1: the state at log offset X as a snapshot of the next generation, based on (G, X)."""
        with self._writing():
            if len(self._index._dead) > len(self._alive) // 4:
                with self._rw.write():
                    self._rebuild()
            with self._rw.read():
                meta, arrays = self._snapshot()
            meta["base"] = {"generation": self._generation, "offset": self._offset}
            return meta, arrays, self._generation, self._offset

    def _compact_commit(self, staged: Path, meta: dict, old: str, offset: int) -> bool:
        """Steps 2-4 under the writers' lock: the new log, then the snapshot renamed in, then the log."""
        with self._writing():
            if self._generation != old:  # rebuilt or compacted by another process meanwhile
                staged.unlink(missing_ok=True)
                return False
            self._log.seek(offset)
            tail = self._log.read(self._offset - offset)
            header = _header(meta["generation"])
            staged_log = self.log_path.with_name(self.log_path.name + ".compacting")
            write_atomic(staged_log, header + tail)
            os.replace(staged, self.path)  # the commit point
            _fsync_dir(self.path.parent)
            os.replace(staged_log, self.log_path)
            _fsync_dir(self.path.parent)
            self._log.close()
            self._log, self._log_gen = builtins.open(self.log_path, "rb"), meta["generation"]
            self._generation, self._base = meta["generation"], meta["base"]
            self._offset = len(header) + len(tail)
            self._snapshot_stat = _stat_path(self.path)
            return True

    def close(self) -> None:
        with self._sync:
            if self._log is not None:
                self._log.close()
                self._log = None


_STATE = (
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
    "_generation",
    "_base",
    "_log",
    "_log_gen",
    "_offset",
    "_snapshot_stat",
    "_stale_log",
)


def _write_snapshot(path: Path, meta: dict, arrays: dict) -> None:
    payload = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def write(tmp: Path) -> None:
        with builtins.open(tmp, "wb") as fh:  # a handle: np.savez would add ".npz" to a path
            np.savez(fh, meta=payload, **arrays)

    try:
        write_atomic(path, write)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the catalog ({exc.strerror or exc})") from None


def _read_meta(path: Path, handle) -> tuple[dict, Any]:
    """A snapshot's header, checked, and the archive to read its arrays from."""
    try:
        data = np.load(handle, allow_pickle=False)
        meta = json.loads(data["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a vsearch catalog index ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: not a vsearch catalog index (format {found!r}, expected {FORMAT!r}); {_REMEDY}")
    problem = _meta_problem(meta)
    if problem:
        raise DataError(f"{path}: not a vsearch catalog index ({problem}); {_REMEDY}")
    return meta, data


def _log_header(path: Path, handle) -> tuple[str, int]:
    """(generation, where the records start) of an open log."""
    handle.seek(0)
    first = handle.read(1 << 16)
    records, end = decode_records(first)
    head = records[0][0] if records else {}
    if (
        not isinstance(head, dict)
        or head.get("op") != "begin"
        or head.get("format") != LOG_FORMAT
        or not isinstance(head.get("generation"), str)
    ):
        raise DataError(
            f"{path}: not a vsearch catalog log (its header is damaged); remove it to drop the "
            f"changes since the last snapshot, or {_REMEDY}"
        )
    return head["generation"], records[0][2]


@contextmanager
def _nothing():
    yield


def _stat(handle) -> tuple:
    st = os.fstat(handle.fileno())
    return st.st_ino, st.st_size, st.st_mtime_ns


def _stat_path(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


# The snapshot header's fields: (type, required); a file without them is not a catalog.
_META = {
    "fingerprint": (str, True),
    "dim": (int, True),
    "index": (dict, True),
    "schema": (dict, True),
    "generation": (str, True),
    "model": (dict, False),
    "stats": (dict, False),
    "calibration": (dict, False),
    "base": (dict, False),
}


def _meta_problem(meta: dict) -> str:
    """What is wrong with a snapshot's header, or "" when nothing is."""
    for key, (kind, required) in _META.items():
        value = meta.get(key)
        if value is None:
            if required:
                return f"no {key!r} in the header"
        elif not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is a {type(value).__name__}, expected a {kind.__name__}"
    if meta["dim"] < 1:
        return f"dimension {meta['dim']}"
    if any(kind not in TYPES for kind in meta["schema"].values()):
        return "an attribute type that is not bool, int, float or text"
    return ""


# ---------------------------------------------------------------- the module's two entries


def open(where: str | os.PathLike, expected_fingerprint: str | None = None) -> FaissStore:  # noqa: A001
    """The store at ``where``: its snapshot, then its log replayed.

    Raises:
        DataError: no catalog there, a damaged or foreign file, or one made with another model.
    """
    path = Path(where)
    if not path.is_file():  # before the lock: a mistyped path leaves no lock file behind
        raise DataError(f"{path}: no such catalog index; build one with `vsearch index build`")
    snapshot, log = FaissStore(path, 1, "", {})._open_files(locked=False)
    return FaissStore._read(path, snapshot, log, expected_fingerprint)


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
    store._generation = meta["generation"]
    with file_lock(store.path):
        _write_snapshot(store.path, meta, arrays)
        store._snapshot_stat = _stat_path(store.path)
        store._start_log()
    return store
