"""The Milvus store: ``milvus:FILE.db`` (milvus-lite, in this process) or ``milvus:http://HOST:19530``.

One code path through ``pymilvus.MilvusClient`` for both: a ``.db`` location starts
milvus-lite inside this process (pymilvus does that for a URI ending in ``.db``); a URL
talks to a Milvus server. ``#NAME`` after the location picks the catalog's name (default
``vsearch_catalog``), so one server can hold several catalogs.

Layout: a catalog is an **alias** ``NAME`` pointing at a collection ``NAME_<hex>`` with one
row per photo: ``photo_id`` (primary key), ``product_id``, ``category``, ``path``, ``seq``
(the photo's place in its product; ``seq == 0`` counts products), ``attributes`` (JSON, no
missing values), one typed nullable column ``a<n>`` per attribute the catalog had when it
was built (``DOUBLE`` for numbers, ``BOOL``, ``VARCHAR``: what filters read; an attribute
that joins later is filtered through the JSON field, as Milvus cannot add a column), and
``vector`` (COSINE; HNSW with the FAISS store's graph parameters, or FLAT for an exact
catalog, built before ``build`` returns). The model fingerprint, dim, model dict, attribute
schema and columns, the calibration and a change token are collection properties, so a
catalog and its metadata move together. ``build`` fills a new
collection, then moves the alias and drops the old one: readers search the old catalog or
the new one, never a mix, and take in the new metadata at their next ``refresh()`` (which
refuses a catalog built with another model).

Writes are not transactions (Milvus has none): ``upsert`` writes the new photos by primary
key, then deletes the product's stale ones, so a failure midway leaves extra photos, never
a lost product, and running it again completes it. One writer at a time. A local file is
flushed after each write (milvus-lite writes its log to the OS at once; the flush makes
segments and keeps searches fast); a server is flushed after a build only, as Milvus
persists each write already and rate-limits flushes.

milvus-lite 3.x is a pure-Python engine: whatever the index, each search walks every row in
Python to drop superseded and deleted ones (``milvus_lite/search/executor_indexed.py``),
about 1-2 microseconds a row, and a filter on a JSON path is evaluated row by row with a
``json.loads`` each (about 100 times a typed column's cost). Hence the typed columns, the
index built at once, and a filter's count kept until the catalog changes; the per-row walk
is milvus-lite's and sets its floor (bench/results/stores.md).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from vsearch.errors import DataError
from vsearch.stores import Product
from vsearch.stores.filters import BUILTIN, Condition, Filter, to_milvus
from vsearch.stores.rows import FaissIndex, calibration_problem, choose_kind
from vsearch.stores.validate import check_vectors, group_photos, photo_dict

DEFAULT_NAME = "vsearch_catalog"
FORMAT = "vsearch-milvus/1"
META, CALIBRATION, CHANGE = "vsearch.meta", "vsearch.calibration", "vsearch.change"
MAX_ID, MAX_PATH = 1024, 8192  # VARCHAR lengths of the id and path fields
MAX_TEXT = 65535  # VARCHAR length of a text attribute's column (Milvus' largest)
MAX_K = 16384  # Milvus' largest top-k
MAX_EF = 32768  # Milvus' largest HNSW search beam
EXACT_BELOW = 4096  # an HNSW catalog scores a filter keeping this few photos here (6 MB at 391-d)
BATCH_BYTES = 16 << 20  # rows per insert call: about this many bytes of vectors
CHUNK = 500  # ids per expression
CONNECT_TIMEOUT_S = 10
FIELDS = ["photo_id", "product_id", "category", "path", "seq", "attributes"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
_SERVER = ("http://", "https://", "tcp://")
_local_users: dict[str, int] = {}  # milvus-lite path -> open stores in this process
_local_lock = threading.Lock()
# milvus-lite sends no snapshot time with a query iterator's first page; pymilvus then warns
# on every listing that it uses its own clock, which with Strong consistency reads the same.
logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(lambda r: "mvccTs" not in r.getMessage())
# ... and milvus-lite's in-process server logs an error with a traceback for each RPC it does
# not implement that pymilvus tries and does without (AllocTimestamp, on creating an index).
logging.getLogger("grpc._server").addFilter(lambda r: "Method not implemented" not in r.getMessage())


# ---------------------------------------------------------------- where, and the connection


def locate(where: str) -> tuple[str, str, str | None]:
    """``"FILE.db#name"`` | ``"http://host:19530#name"`` -> (uri, catalog name, local path or None)."""
    location, _, name = str(where).strip().partition("#")
    name = name or DEFAULT_NAME
    if not _NAME.fullmatch(name):
        raise DataError(
            f"milvus store {where!r}: catalog name {name!r} must be letters, digits and _ (not starting with a digit)"
        )
    if location.lower().startswith(_SERVER):
        return location, name, None
    if location.endswith(".db"):
        path = str(Path(location).expanduser().resolve())
        return path, name, path
    raise DataError(f"milvus store {where!r}: give FILE.db (milvus-lite) or http://HOST:PORT (a Milvus server)")


def _connect(uri: str, local: str | None, spec: str) -> MilvusClient:
    try:
        client = MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001  (pymilvus raises several kinds for an unreachable server)
        hint = (
            (
                "; a milvus-lite file is used by one process at a time: to share it, serve it with "
                "`milvus-lite server --data-dir FILE.db` and use milvus:http://HOST:PORT"
            )
            if local
            else "; is the server running?"
        )
        raise DataError(f"{spec}: cannot open Milvus at {uri} ({exc}){hint}") from None
    if local:
        with _local_lock:
            _local_users[local] = _local_users.get(local, 0) + 1
    return client


def _release(client: MilvusClient, local: str | None) -> None:
    client.close()
    with _local_lock:
        if not local or not _local_users.get(local):
            return
        _local_users[local] -= 1
        if _local_users[local]:
            return
        del _local_users[local]
    try:  # the last store on the file: stop its server, so another process may open the file
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(local)


class _Calls:
    """Turns a Milvus error into a DataError naming the store."""

    def __init__(self, spec: str):
        self.spec = spec

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, MilvusException):
            raise DataError(f"{self.spec}: Milvus refused: {getattr(exc, 'message', exc)}") from None
        return False


# ---------------------------------------------------------------- checking what comes in


def to_rows(
    photos: Sequence, vectors: np.ndarray, schema: dict[str, str], columns: dict[str, str] | None = None
) -> tuple[list[dict], dict[str, str]]:
    """One Milvus row per photo and the schema they leave, after every check (nothing written yet).

    The checks are both stores' (:func:`vsearch.stores.validate.group_photos`), so both
    refuse the same photos with the same words; Milvus adds length limits on ids, paths and
    text. ``columns``: attribute -> its typed column, filled beside the JSON field. A row's
    ``vector`` is its row of ``vectors`` (:func:`_batches` makes it a list, a batch at a time).

    Raises:
        DataError: no photos, a photo id given twice, photos of one product that disagree
            on category or attributes, an attribute of the wrong type, an id, path or text too long.
    """
    photos = [p if isinstance(p, dict) else p.to_dict() for p in photos]
    if not photos:
        raise DataError("upsert of no photos; give at least one photo and its vector")
    columns = columns or {}
    products, schema = group_photos(
        [{**p, "product_id": str(p["product_id"]), "photo_id": str(p["photo_id"])} for p in photos], schema
    )
    rows = []
    for product_id, product in products.items():
        attributes = product["attributes"]
        typed = {field: _typed(attributes.get(name), schema.get(name)) for name, field in columns.items()}
        for name, value in attributes.items():
            if isinstance(value, str) and len(value.encode()) > MAX_TEXT:
                raise DataError(f"product {product_id!r}: attribute {name!r} is longer than {MAX_TEXT} bytes")
        for seq, n in enumerate(product["rows"]):
            photo_id, path = str(photos[n]["photo_id"]), str(photos[n]["image"])
            for label, text, limit in (
                ("product id", product_id, MAX_ID),
                ("photo id", photo_id, MAX_ID),
                ("category", product["category"], MAX_ID),
                ("path", path, MAX_PATH),
            ):
                if len(text.encode()) > limit:
                    raise DataError(f"product {product_id!r}: {label} {text[:80]!r}... is longer than {limit} bytes")
            rows.append(
                {
                    "photo_id": photo_id,
                    "product_id": product_id,
                    "category": product["category"],
                    "path": path,
                    "seq": seq,
                    "attributes": attributes,
                    **typed,
                    "vector": vectors[n],
                }
            )
    return rows, schema


def _typed(value, kind: str | None):
    """An attribute's value as its column holds it (numbers as float: an int column may widen)."""
    return float(value) if value is not None and kind in ("int", "float") else value


def _column_type(kind: str) -> dict:
    if kind == "bool":
        return {"datatype": DataType.BOOL}
    if kind == "text":
        return {"datatype": DataType.VARCHAR, "max_length": MAX_TEXT}
    return {"datatype": DataType.DOUBLE}


def _in(field: str, values: Sequence[str]) -> str:
    return to_milvus(Filter((Condition(field, "in", tuple(values)),)))


# ---------------------------------------------------------------- the store


class MilvusStore:
    """A catalog in Milvus; see the module docstring for its layout."""

    def __init__(
        self, spec: str, client: MilvusClient, name: str, local: str | None, expected_fingerprint: str | None = None
    ):
        self.spec, self.client, self.name, self.local = spec, client, name, local
        self.expected_fingerprint = expected_fingerprint
        self.collection = ""
        self.change = ""
        self.calibration: dict | None = None
        self.columns: dict[str, str] = {}  # attribute -> its typed column
        self._categories: list[str] | None = None
        self._kept: dict[str, int] = {}  # filter expression -> photos it keeps, at self.change
        self._read_meta()

    # ---- metadata, kept in the collection's properties

    def _describe(self) -> dict:
        with _Calls(self.spec):
            if not self.client.has_collection(self.name):
                raise DataError(
                    f"{self.spec}: no vsearch catalog named {self.name!r} there; build one with "
                    f"`vsearch index build ... --store {self.spec}`"
                )
            return self.client.describe_collection(self.name)

    def _read_meta(self) -> None:
        described = self._describe()
        properties = described.get("properties") or {}
        try:
            meta = json.loads(properties[META])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            fingerprint, dim, model, schema = meta["fingerprint"], int(meta["dim"]), meta["model"], meta["schema"]
            kind, columns, ef_search = meta["kind"], dict(meta.get("columns") or {}), int(meta.get("ef_search", 64))
            calibration = json.loads(properties.get(CALIBRATION) or "null")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{self.spec}: collection {self.name!r} is not a vsearch catalog ({exc}); "
                "rebuild it with `vsearch index build`"
            ) from None
        expected = self.expected_fingerprint
        if expected is not None and fingerprint != expected:
            raise DataError(
                f"{self.spec}: built with model {fingerprint}, but the query model is {expected}; "
                "rebuild the index with this model"
            )
        self.fingerprint, self.dim, self.model, self.schema = fingerprint, dim, dict(model), dict(schema)
        self.kind, self.columns, self._ef_search = kind, columns, ef_search
        self.calibration, self.collection = calibration, described["collection_name"]
        self.change = properties.get(CHANGE, "")
        self._categories = None
        self._kept = {}

    def _write_meta(self, schema: dict[str, str] | None = None) -> None:
        properties = {CHANGE: uuid.uuid4().hex}
        if schema is not None:
            properties[META] = json.dumps(
                {
                    "format": FORMAT,
                    "fingerprint": self.fingerprint,
                    "dim": self.dim,
                    "model": self.model,
                    "schema": schema,
                    "kind": self.kind,
                    "columns": self.columns,
                    "ef_search": self._ef_search,
                }
            )
        with _Calls(self.spec):
            self.client.alter_collection_properties(self.collection, properties=properties)
        self.change = properties[CHANGE]
        self._categories = None
        self._kept = {}

    def refresh(self) -> bool:
        """Takes in other writers' changes (a rebuild, new metadata); whether there were any.

        Cheap: one call. The rows need no refresh (every search asks the live catalog).
        """
        described = self._describe()
        if (described["collection_name"], (described.get("properties") or {}).get(CHANGE, "")) == (
            self.collection,
            self.change,
        ):
            return False
        self._read_meta()
        return True

    def set_calibration(self, calibration: dict | None) -> None:
        if calibration is not None:
            problem = calibration_problem(calibration, self.fingerprint)
            if problem:
                raise DataError(f"calibration refused: it {problem}")
        with _Calls(self.spec):
            self.client.alter_collection_properties(self.collection, properties={CALIBRATION: json.dumps(calibration)})
        self.calibration = calibration

    # ---- reading

    def _count(self, expression: str) -> int:
        with _Calls(self.spec):
            rows = self.client.query(self.name, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _kept_by(self, expression: str) -> int:
        """Photos ``expression`` keeps, counted once per catalog change (a count costs milvus-lite a
        query that reads every row; a stale count only sets the beam: :meth:`_exact` checks itself)."""
        if expression not in self._kept:
            if len(self._kept) >= 64:
                self._kept.clear()
            self._kept[expression] = self._count(expression)
        return self._kept[expression]

    def _field(self, name: str) -> str:
        """Where a filter field lives: a column for the built-in ones and the typed attributes, else
        a key of ``attributes``."""
        if name in BUILTIN:
            return name
        return self.columns.get(name) or f"attributes[{json.dumps(name, ensure_ascii=False)}]"

    def count(self) -> tuple[int, int]:
        return self._count("seq == 0"), self._count("")

    def categories(self) -> list[str]:
        if self._categories is None:
            self._categories = sorted({row["category"] for row in self._rows("seq == 0", ["category"])})
        return list(self._categories)

    def _rows(self, expression: str, fields: list[str]) -> Iterator[dict]:
        with _Calls(self.spec):
            rows = self.client.query_iterator(self.name, batch_size=1000, filter=expression, output_fields=fields)
            try:
                while batch := rows.next():
                    yield from batch
            finally:
                rows.close()

    def get(self, product_id: str) -> Product | None:
        with _Calls(self.spec):
            rows = self.client.query(self.name, filter=_in("product_id", [str(product_id)]), output_fields=FIELDS)
        return _product(rows) if rows else None

    def photo(self, photo_id: str) -> dict | None:
        with _Calls(self.spec):
            rows = self.client.get(self.name, ids=[str(photo_id)], output_fields=FIELDS)
        return _hit(rows[0]) if rows else None

    def products(self) -> Iterator[Product]:
        by_product: dict[str, list[dict]] = {}
        for row in self._rows("", FIELDS):
            by_product.setdefault(row["product_id"], []).append(row)
        for rows in by_product.values():
            yield _product(rows)

    def search(self, vectors: np.ndarray, k: int, where: Filter | None = None, group: bool = True) -> list[list[dict]]:
        """Per query, the best ``k`` products (``group``: Milvus' group-by on ``product_id``) or photos.

        An HNSW catalog searches a filter that keeps at most ``EXACT_BELOW`` photos exactly
        over them (their vectors scored here), and one that keeps more with the beam
        widened by the inverse of the share kept: a graph walk that must skip most nodes
        misses answers (milvus-lite gave a wrong top 3 for 10 of 20 queries with a filter
        keeping 12 of 1,800 photos).
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        vectors = check_vectors(vectors, len(vectors), self.dim)
        if int(k) < 1:
            raise DataError(f"{self.spec}: search: k must be at least 1, got {k}")
        k = min(int(k), MAX_K)
        expression = to_milvus(where, self._field)
        ef = max(self._ef_search, k)
        if self.kind == "hnsw" and expression:
            kept = self._kept_by(expression)
            if kept <= EXACT_BELOW:
                exact = self._exact(vectors, k, expression, group)
                if exact is not None:
                    return exact
                kept = self._kept[expression] = self._count(expression)  # it grew since it was counted
            ef = min(MAX_EF, max(ef, math.ceil(2 * ef * self._kept_by("") / max(kept, 1))))
        options = {"group_by_field": "product_id", "group_size": 1} if group else {}
        with _Calls(self.spec):
            results = self.client.search(
                self.name,
                data=vectors.tolist(),
                limit=k,
                filter=expression,
                output_fields=["product_id", "category", "path", "attributes"],
                search_params={"metric_type": "COSINE", "params": {"ef": ef} if self.kind == "hnsw" else {}},
                **options,
            )
        return [
            [
                {
                    **_hit({**hit["entity"], "photo_id": hit.get("photo_id", hit.get("id"))}),
                    "score": float(hit["distance"]),
                }
                for hit in hits
            ]
            for hits in results
        ]

    def _exact(self, vectors: np.ndarray, k: int, expression: str, group: bool) -> list[list[dict]] | None:
        """Every photo ``expression`` keeps, scored against each query (cosine, as the index);
        None when it keeps more than ``EXACT_BELOW`` photos."""
        with _Calls(self.spec):
            rows = self.client.query(
                self.name, filter=expression, output_fields=FIELDS + ["vector"], limit=EXACT_BELOW + 1
            )
        if len(rows) > EXACT_BELOW:
            return None
        if not rows:
            return [[] for _ in vectors]
        stored = np.asarray([row["vector"] for row in rows], np.float32)
        stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
        queries = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        answers = []
        for scores in queries @ stored.T:
            hits, seen = [], set()
            for n in np.argsort(-scores, kind="stable"):
                if group and rows[n]["product_id"] in seen:
                    continue
                seen.add(rows[n]["product_id"])
                hits.append({**_hit(rows[n]), "score": float(scores[n])})
                if len(hits) == k:
                    break
            answers.append(hits)
        return answers

    # ---- writing

    def upsert(self, photos: Sequence, vectors: np.ndarray) -> None:
        photos = list(photos)
        vectors = check_vectors(vectors, len(photos), self.dim)
        self._read_meta()  # the schema as the last writer left it
        rows, schema = to_rows(photos, vectors, self.schema, self.columns)
        products = list(dict.fromkeys(row["product_id"] for row in rows))
        new = {row["photo_id"] for row in rows}
        self._refuse_moves(rows)
        stale = [
            row["photo_id"] for row in self._select("product_id", products, ["photo_id"]) if row["photo_id"] not in new
        ]
        if schema != self.schema:
            self._write_meta(schema)  # before the rows: a reader may filter on what it finds
            self.schema = schema
        with _Calls(self.spec):
            for batch in _batches(rows, self.dim):
                self.client.upsert(self.name, batch)
            for start in range(0, len(stale), CHUNK):
                self.client.delete(self.name, ids=stale[start : start + CHUNK])
        self._written()

    def _refuse_moves(self, rows: list[dict]) -> None:
        """A photo id may pass only between products this upsert replaces (else it leaves one short)."""
        wanted = {row["photo_id"]: row["product_id"] for row in rows}
        replaced = set(wanted.values())
        ids, found = list(wanted), []
        with _Calls(self.spec):
            for start in range(0, len(ids), CHUNK):  # by primary key: no filter over every row
                found += self.client.get(
                    self.name, ids=ids[start : start + CHUNK], output_fields=["photo_id", "product_id"]
                )
        for row in found:
            if row["product_id"] not in replaced:
                raise DataError(
                    f"product {wanted[row['photo_id']]!r}: photo id {row['photo_id']!r} already belongs "
                    f"to product {row['product_id']!r}"
                )

    def _select(self, field: str, values: Sequence[str], fields: list[str]) -> list[dict]:
        out = []
        with _Calls(self.spec):
            for start in range(0, len(values), CHUNK):
                out += self.client.query(
                    self.name, filter=_in(field, values[start : start + CHUNK]), output_fields=fields
                )
        return out

    def delete(self, product_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(str(p) for p in product_ids))
        removed = 0
        with _Calls(self.spec):
            for start in range(0, len(ids), CHUNK):
                expression = _in("product_id", ids[start : start + CHUNK])
                found = self._count(f"{expression} and (seq == 0)")
                if found:
                    self.client.delete(self.name, filter=expression)
                    removed += found
        if removed:
            self._written()
        return removed

    def _written(self) -> None:
        if self.local:
            with _Calls(self.spec):
                self.client.flush(self.name)
        self._write_meta()

    def close(self) -> None:
        if self.client is not None:
            _release(self.client, self.local)
            self.client = None


# ---------------------------------------------------------------- rows as the interface's values


def _hit(row: dict) -> dict:
    return {
        "product_id": row["product_id"],
        "photo_id": row["photo_id"],
        "id": row["photo_id"],
        "category": row["category"],
        "attributes": dict(row.get("attributes") or {}),
        "path": row["path"],
    }


def _product(rows: list[dict]) -> Product:
    rows = sorted(rows, key=lambda r: r["seq"])
    first = rows[0]
    return Product(
        first["product_id"],
        first["category"],
        dict(first.get("attributes") or {}),
        tuple(r["photo_id"] for r in rows),
        tuple(r["path"] for r in rows),
    )


def _batches(rows: list[dict], dim: int) -> Iterator[list[dict]]:
    """``rows`` in insert-sized batches, each row's vector a list (made here: a 1M-photo catalog's
    vectors as Python floats at once would take 9 GB)."""
    size = max(1, BATCH_BYTES // (4 * dim + 1024))
    for start in range(0, len(rows), size):
        yield [{**row, "vector": np.asarray(row["vector"], np.float32).tolist()} for row in rows[start : start + size]]


# ---------------------------------------------------------------- open and build


def open(where: str, expected_fingerprint: str | None = None) -> MilvusStore:  # noqa: A001  (the backend API)
    """The catalog at ``where`` (``FILE.db`` or ``http://HOST:PORT``, then ``#NAME``).

    Raises:
        DataError: no catalog there, an unreachable server, or one built with another model.
    """
    uri, name, local = locate(where)
    spec = f"milvus:{where}"
    if local and not Path(local).exists():
        raise DataError(f"{spec}: no such milvus-lite store; build one with `vsearch index build ... --store {spec}`")
    client = _connect(uri, local, spec)
    try:
        with _Calls(spec):
            if client.has_collection(name):
                client.load_collection(name)  # after a restart collections come up released
        return MilvusStore(spec, client, name, local, expected_fingerprint)
    except BaseException:
        _release(client, local)
        raise


def build(
    where: str, photos: Sequence, vectors: np.ndarray, *, fingerprint: str, model: dict, kind: str = "auto"
) -> MilvusStore:
    """A new catalog at ``where`` holding ``photos``; replaces the one there at once (see the module doc)."""
    uri, name, local = locate(where)
    spec = f"milvus:{where}"
    photos = list(photos)
    vectors = check_vectors(vectors, len(photos), None)
    dim = int(vectors.shape[1])
    schema = group_photos([photo_dict(p) for p in photos], {})[1] if photos else {}
    columns = {name: f"a{n}" for n, name in enumerate(sorted(schema))}
    rows, schema = to_rows(photos, vectors, schema, columns) if photos else ([], {})
    try:
        kind = choose_kind(kind, len(rows))
    except ValueError as exc:
        raise DataError(f"{spec}: {exc}") from None
    graph = FaissIndex(1).params()  # the FAISS store's HNSW parameters: the same graph, comparable figures
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "dim": dim,
        "model": dict(model),
        "schema": schema,
        "kind": kind,
        "columns": columns,
        "ef_search": graph["ef_search"],
    }
    if local:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
    client = _connect(uri, local, spec)
    try:
        with _Calls(spec):
            old = _alias_target(client, name, spec)
            collection = f"{name}_{uuid.uuid4().hex[:12]}"
            _create(client, collection, dim, meta)
            try:
                for batch in _batches(rows, dim):
                    client.insert(collection, batch)
                client.flush(collection)  # without it searches scan unsealed rows (~1.5 s seen)
                _index(client, collection, kind, graph)
                if old is None:
                    client.create_alias(collection, name)
                else:
                    client.alter_alias(collection, name)
            except BaseException:
                client.drop_collection(collection)
                raise
            if old is not None:
                client.drop_collection(old)
        return MilvusStore(spec, client, name, local)
    except BaseException:
        _release(client, local)
        raise


def _alias_target(client: MilvusClient, name: str, spec: str) -> str | None:
    """The collection the catalog's alias points at; None for a new catalog."""
    if not client.has_collection(name):
        return None
    described = client.describe_collection(name)
    if described["collection_name"] == name:
        raise DataError(
            f"{spec}: a collection named {name!r} that vsearch did not make is there; pick another "
            f"name with milvus:...#NAME"
        )
    return described["collection_name"]


def _create(client: MilvusClient, collection: str, dim: int, meta: dict) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("photo_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
    schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("category", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("attributes", DataType.JSON)
    for name, field in meta["columns"].items():
        schema.add_field(field, nullable=True, **_column_type(meta["schema"][name]))
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(
        collection,
        schema=schema,
        consistency_level="Strong",
        properties={META: json.dumps(meta), CALIBRATION: "null", CHANGE: uuid.uuid4().hex},
    )


def _index(client: MilvusClient, collection: str, kind: str, graph: dict) -> None:
    """The vector index over the loaded rows, built before this returns: created with the
    collection, milvus-lite builds it in a background thread after each flush and searches
    every row by brute force until it is done (minutes at 100k photos)."""
    index = client.prepare_index_params()
    if kind == "hnsw":
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": graph["hnsw_m"], "efConstruction": graph["ef_construction"]},
        )
    else:
        index.add_index("vector", index_type="FLAT", metric_type="COSINE")
    client.create_index(collection, index)
    client.load_collection(collection)
