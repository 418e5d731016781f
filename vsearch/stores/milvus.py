"""The Milvus store: ``milvus:FILE.db`` (milvus-lite, in this process) or ``milvus:http://HOST:19530``.

One code path through ``pymilvus.MilvusClient`` for both: a ``.db`` location starts
milvus-lite inside this process (pymilvus does that for a URI ending in ``.db``); a URL
talks to a Milvus server (2.3 or later; :mod:`vsearch.stores.milvus_embedded` runs one on
this machine). ``#NAME`` after the location picks the catalog's name (default
``vsearch_catalog``), so one server can hold several catalogs.

Layout: a catalog is an **alias** ``NAME`` pointing at a collection ``NAME_<hex>`` with one
row per photo: ``key`` (primary key: ``"<seq>:<product id>"``, the photo's slot in its
product), ``photo_id``, ``product_id``, ``category``, ``path``, ``seq`` (``seq == 0``
counts products), ``attributes`` (JSON, no missing values), one typed column ``a<n>`` per
attribute the catalog had when it was built (what filters read; an attribute that joins
later is filtered through the JSON field, as Milvus cannot add a column), and ``vector``
(COSINE, built before ``build`` returns: FLAT for an exact catalog; else, on a Milvus server,
IVF_FLAT, whose filtered searches keep their recall, and in milvus-lite (or asked for) HNSW
with the FAISS store's graph parameters). A typed column holds a missing value in a way every Milvus takes
(2.3 and 2.4 have no nullable fields): a number as NaN, a bool as -1 (``INT8``: 1 true, 0
false), text as ``""`` (a value is kept as ``"=" + value``); filters are written so that a
missing value matches no condition, as :func:`vsearch.stores.filters.matches` has it. The
model fingerprint, dim, model dict, attribute schema and columns, the calibration and a
change token are collection properties, so a catalog and its metadata move together.
``build`` fills a new collection, then moves the alias and drops the old one: readers
search the old catalog or the new one, never a mix, and take in the new metadata at their
next ``refresh()`` (which refuses a catalog built with another model).

Writes: one writer at a time per catalog, threads of a process by a lock and processes of
a machine by a lock file (beside a milvus-lite file; in the temporary folder for a server).
An ``upsert`` writes a product's photos into its slots ``0..n-1`` by primary key and deletes
its slots ``n..`` (the catalog's ``slots``: the most photos a product has had), so it reads
nothing back from the server: Milvus makes a write visible to searches only at its next
time tick (200 ms), and a write that had to read the last one would wait for it. A failure
midway leaves extra photos, never a lost product, and says so (a
:class:`~vsearch.errors.StoreError`, which the API answers with 503); writing again
completes it. Writes that are not serialized (two machines on one server) are last-writer-
wins per slot. A local file is flushed after each write (milvus-lite writes its log to the
OS at once; the flush makes segments and keeps searches fast); a server is flushed after a
build only, as Milvus persists each write already and rate-limits flushes.

Reads: ``Session`` consistency, a search waits only for this process' own last write (so
a product is in the next search after its PUT), never for the server's time tick; another
process' writes show within that tick. ``delete`` counts what it removes with ``Strong``.

Versions: the server's version is read once. Milvus 2.4+ groups photos into products
itself (``group_by_field``); Milvus 2.3 ignores that option and milvus-lite's comes up
short when one product's photos crowd the top, so there the store searches photos and
groups them here, widening the search until it holds ``k`` products (or every photo the
filter keeps): the products are then exactly the best ``k`` of the photos searched.
``engine`` says which road a store takes (``vsearch index info``, ``/healthz``).

milvus-lite 3.x is a pure-Python engine: whatever the index, each search walks every row in
Python to drop superseded and deleted ones (``milvus_lite/search/executor_indexed.py``),
about 1-2 microseconds a row, and a filter on a JSON path is evaluated row by row with a
``json.loads`` each (about 100 times a typed column's cost). Hence the typed columns, the
index built at once, and a filter's count kept until the catalog changes; the per-row walk
is milvus-lite's and sets its floor (bench/results/stores.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from vsearch.artifacts import file_lock
from vsearch.errors import DataError, StoreError
from vsearch.stores import Product
from vsearch.stores.filters import BUILTIN, Condition, Filter, brief, milvus_literal, to_milvus
from vsearch.stores.rows import FaissIndex, calibration_problem, choose_kind
from vsearch.stores.validate import check_vectors, group_photos, photo_dict

DEFAULT_NAME = "vsearch_catalog"
FORMAT = "vsearch-milvus/2"  # /1: photo ids as primary keys and nullable columns (Milvus 2.5+ only)
META, CALIBRATION, CHANGE = "vsearch.meta", "vsearch.calibration", "vsearch.change"
MAX_ID, MAX_PATH = 1024, 8192  # VARCHAR lengths of the id and path fields
MAX_KEY = MAX_ID + 24  # the primary key: "<seq>:<product id>"
MAX_TEXT = 65534  # the longest text attribute: its column (Milvus' largest VARCHAR) holds "=" + value
GROUP_BY_SINCE = (2, 4)  # the first Milvus whose search groups by a field
READ = "Session"  # searches and reads: this process' own writes, without waiting for the time tick
WRITE_WAIT_S = 30  # how long a write waits for another writer before a StoreError (503)
RECENT_S = 60  # how long this process remembers its writes' photo ids (the move check's own view)
MAX_K = 16384  # Milvus' largest top-k
MAX_EF = 32768  # Milvus' largest HNSW search beam
EXACT_BELOW = 4096  # an HNSW catalog scores a filter keeping this few photos here (6 MB at 391-d)
BATCH_BYTES = 16 << 20  # rows per insert call: about this many bytes of vectors
CHUNK = 500  # ids per expression
PAGE = 1000  # rows per page of a listing
CONNECT_TIMEOUT_S = 10
SEAL_ABOVE = 20_000  # a server build of more photos is flushed into sealed, indexed segments
FIELDS = ["photo_id", "product_id", "category", "path", "seq", "attributes"]
HIT_FIELDS = ["photo_id", "product_id", "category", "path", "attributes"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
_SERVER = ("http://", "https://", "tcp://")
_local_users: dict[str, int] = {}  # milvus-lite path -> open stores in this process
_local_lock = threading.Lock()
_held_lock = threading.Lock()
_writers: dict[str, threading.Lock] = {}  # a catalog's lock file -> its lock in this process
# milvus-lite's in-process gRPC server answers pymilvus' keepalive pings of an idle channel
# (every 10 s) with "too many pings" and closes it; a channel on loopback needs none.
_LOOPBACK = {"grpc_options": {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}}
# milvus-lite's in-process server logs an error with a traceback for each RPC it does
# not implement that pymilvus tries and does without (AllocTimestamp, on creating an index).
logging.getLogger("grpc._server").addFilter(lambda r: "Method not implemented" not in r.getMessage())
# pymilvus logs every failed call with a 30-line traceback before raising; the store raises each
# as a StoreError that says what failed (_Calls), and a CLI user should see that one line only.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)


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


class _Held(logging.Handler):
    """Keeps a logger's records instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records ``name`` logs meanwhile, kept from stderr (for a DataError to quote); one
    holder at a time, so that each puts back the logger as it found it."""
    logger, held = logging.getLogger(name), _Held()
    with _held_lock:
        propagate, logger.propagate = logger.propagate, False
        logger.addHandler(held)
        try:
            yield held.records
        finally:
            logger.removeHandler(held)
            logger.propagate = propagate


def _connect(uri: str, local: str | None, spec: str) -> MilvusClient:
    try:
        # milvus-lite logs why it cannot open a file (another process holds it, ...) with a
        # traceback, then pymilvus raises "Open local milvus failed": the reason goes in the message.
        with contextlib.ExitStack() as stack:
            logged = stack.enter_context(_held_logs("milvus_lite.server_manager")) if local else []
            client = MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S, **(_LOOPBACK if local else {}))
    except Exception as exc:  # noqa: BLE001  (pymilvus raises several kinds for an unreachable server)
        reasons = [str(r.exc_info[1]) for r in logged if r.exc_info and r.exc_info[1] is not None]
        reason = reasons[-1] if reasons else str(exc)
        hint = (
            (
                "; a milvus-lite file is used by one process at a time: to share it, serve it with "
                "`milvus-lite server --data-dir FILE.db` and use milvus:http://HOST:PORT"
            )
            if local
            else "; is the server running?"
        )
        raise DataError(f"{spec}: cannot open Milvus at {uri} ({reason}){hint}") from None
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
    """Turns a Milvus error into a StoreError naming the store: what comes in is checked before
    it reaches Milvus, so a refusal there is the store's failure (a server down or restarting,
    a limit), never the client's input. ``writing``: the calls change the catalog, and the
    message says that the write may be partly done."""

    def __init__(self, spec: str, writing: bool = False):
        self.spec, self.writing = spec, writing

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, MilvusException):
            message = " ".join(str(getattr(exc, "message", exc)).split())
            after = "; the write may be partly done: write it again to complete it" if self.writing else ""
            raise StoreError(f"{self.spec}: Milvus refused: {message}{after}") from None
        return False


@contextlib.contextmanager
def _one_writer(path: Path, spec: str) -> Iterator[None]:
    """One writer of a catalog at a time: this process' threads by a lock, this machine's
    processes by a lock file (``path`` + ``.lock``). A writer that waits past ``WRITE_WAIT_S``
    gets a StoreError (nothing written: the API's 503, worth a retry)."""
    with _local_lock:
        lock = _writers.setdefault(str(path), threading.Lock())
    busy = f"{spec}: another write of this catalog still runs after {WRITE_WAIT_S} s; nothing was written, try again"
    if not lock.acquire(timeout=WRITE_WAIT_S):
        raise StoreError(busy, retry_after=5)
    try:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(path, timeout=WRITE_WAIT_S))
            except DataError:
                raise StoreError(busy, retry_after=5) from None
            yield
    finally:
        lock.release()


def server_roads(version: str) -> dict[str, str]:
    """What a server of ``version`` (``get_server_version()``) does itself: ``group_by`` is
    ``"milvus"`` from 2.4 on, else ``"vsearch"`` (Milvus 2.3 ignores the option; milvus-lite,
    ``"milvus_lite-3.2.2"``, returns fewer products than asked when one's photos crowd the top)."""
    found = re.match(r"v?(\d+)\.(\d+)", version.strip())
    modern = found is not None and (int(found[1]), int(found[2])) >= GROUP_BY_SINCE
    return {"server": version, "group_by": "milvus" if modern else "vsearch", "consistency": READ}


def lock_file(uri: str, name: str, local: str | None) -> Path:
    """Where a catalog's writers take turns (:func:`vsearch.artifacts.file_lock` adds ``.lock``):
    beside a milvus-lite file (one lock for the file: milvus-lite's own metadata writes race),
    else in the temporary folder, one per server address and catalog."""
    if local:
        return Path(local)
    digest = hashlib.sha1(f"{uri.rstrip('/').lower()}#{name}".encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / "vsearch-locks" / f"milvus-{digest}"


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
        typed = {field: _coded(attributes.get(name), schema[name]) for name, field in columns.items()}
        for name, value in attributes.items():
            if isinstance(value, str) and _size(value, product_id, f"attribute {name!r}") > MAX_TEXT:
                raise DataError(f"product {product_id!r}: attribute {name!r} is longer than {MAX_TEXT} bytes")
        for seq, n in enumerate(product["rows"]):
            photo_id, path = str(photos[n]["photo_id"]), str(photos[n]["image"])
            for label, text, limit in (
                ("product id", product_id, MAX_ID),
                ("photo id", photo_id, MAX_ID),
                ("category", product["category"], MAX_ID),
                ("path", path, MAX_PATH),
            ):
                if _size(text, product_id, label) > limit:
                    raise DataError(f"product {product_id!r}: {label} {text[:80]!r}... is longer than {limit} bytes")
            rows.append(
                {
                    "key": _key(seq, product_id),
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


def _size(text: str, product_id: str, label: str) -> int:
    """``text``'s length in UTF-8, what Milvus limits; a DataError for text that has none (a lone surrogate)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise DataError(f"product {brief(product_id)}: {label} {brief(text)} is not valid Unicode text") from None


def _key(seq: int, product_id: str) -> str:
    """A photo's primary key: its slot in its product (the digits before the first colon)."""
    return f"{seq}:{product_id}"


def _coded(value, kind: str):
    """An attribute's value as its typed column holds it, a missing one (None) included: a
    number as a float (NaN: missing), a bool as 1 / 0 (-1), text as ``"=" + value`` (``""``)."""
    if kind == "bool":
        return -1 if value is None else int(bool(value))
    if kind == "text":
        return "" if value is None else "=" + value
    return math.nan if value is None else float(value)


def _column_type(kind: str) -> dict:
    if kind == "bool":
        return {"datatype": DataType.INT8}
    if kind == "text":
        return {"datatype": DataType.VARCHAR, "max_length": MAX_TEXT + 1}
    return {"datatype": DataType.DOUBLE}


def _typed_condition(column: str, kind: str, condition: Condition) -> str:
    """``condition`` on a typed column (see :func:`_coded`), matching no missing value: NaN fails
    every comparison but ``!=``, which is written as ``<`` or ``>``; -1 and ``""`` are no value a
    condition names, and ``!=`` leaves them out."""
    op, value = condition.op, condition.value

    def literal(v) -> str:
        if kind == "bool":
            return str(int(bool(v)))
        return milvus_literal("=" + str(v)) if kind == "text" else milvus_literal(float(v))

    if op == "in":
        return f"{column} in [{', '.join(dict.fromkeys(literal(v) for v in value))}]"
    if op == "ne" and kind == "bool":
        return f"{column} == {literal(not value)}"
    if op == "ne" and kind == "text":
        return f'{column} != {literal(value)} and {column} != ""'
    if op == "ne":
        return f"{column} < {literal(value)} or {column} > {literal(value)}"
    return f"{column} {_COMPARE[op]} {literal(value)}"


_COMPARE = {"eq": "==", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _in(field: str, values: Sequence[str]) -> str:
    """``field in [values]``, each value a :func:`~vsearch.stores.filters.milvus_literal`: the
    store never lets pymilvus write ids into an expression (its ``get``, ``delete(ids=)`` and
    query iterator quote them unescaped, so an id could add terms of its own)."""
    return to_milvus(Filter((Condition(field, "in", tuple(values)),)))


def _storable(text: str) -> bool:
    """Whether ``text`` can be sent to Milvus at all (UTF-8: no lone surrogate, as JSON's
    ``"\\ud800"`` gives); an id that cannot is in no catalog."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- the store


class MilvusStore:
    """A catalog in Milvus; see the module docstring for its layout."""

    def __init__(
        self,
        spec: str,
        client: MilvusClient,
        name: str,
        local: str | None,
        expected_fingerprint: str | None = None,
        uri: str = "",
    ):
        self.spec, self.client, self.name, self.local = spec, client, name, local
        self.expected_fingerprint = expected_fingerprint
        self.collection = ""
        self.change = ""
        self.calibration: dict | None = None
        self.columns: dict[str, str] = {}  # attribute -> its typed column
        self.slots = 1  # the most photos a product has had: an upsert deletes its slots past its own
        self.ivf: dict = {}  # an IVF catalog's nlist and nprobe (unfiltered)
        self._categories: list[str] | None = None
        self._kept: dict[str, int] = {}  # filter expression -> photos it keeps, at self.change
        # product -> (when this process wrote it, its photo ids then; None: deleted)
        self._recent: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._lock_file = lock_file(uri or spec, name, local)
        with _Calls(spec):
            self.engine = {"backend": "milvus", **server_roads(str(client.get_server_version()))}
        self.lite = self.engine["server"].startswith("milvus_lite")  # in this process or its own server
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
            slots = int(meta["slots"])
            ivf = dict(meta.get("ivf") or {})
            calibration = json.loads(properties.get(CALIBRATION) or "null")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            earlier = (
                "an earlier vsearch's catalog"
                if str(exc).startswith("format 'vsearch-milvus/")
                else "not a vsearch catalog"
            )
            raise DataError(
                f"{self.spec}: collection {self.name!r} is {earlier} ({exc}); rebuild it with `vsearch index build`"
            ) from None
        expected = self.expected_fingerprint
        if expected is not None and fingerprint != expected:
            raise DataError(
                f"{self.spec}: built with model {fingerprint}, but the query model is {expected}; "
                "rebuild the index with this model"
            )
        self.fingerprint, self.dim, self.model, self.schema = fingerprint, dim, dict(model), dict(schema)
        self.kind, self.columns, self._ef_search, self.slots, self.ivf = kind, columns, ef_search, slots, ivf
        self.calibration, self.collection = calibration, described["collection_name"]
        self.change = properties.get(CHANGE, "")
        self._categories = None
        self._kept = {}

    def _meta(self, schema: dict[str, str], slots: int) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "model": self.model,
            "schema": schema,
            "kind": self.kind,
            "columns": self.columns,
            "ef_search": self._ef_search,
            "slots": slots,
            "ivf": self.ivf,
        }

    def _write_meta(self, schema: dict[str, str] | None = None, slots: int | None = None) -> None:
        properties = {CHANGE: uuid.uuid4().hex}
        if schema is not None or slots is not None:
            schema = self.schema if schema is None else schema
            slots = self.slots if slots is None else slots
            properties[META] = json.dumps(self._meta(schema, slots))
        with _Calls(self.spec, writing=True):
            self.client.alter_collection_properties(self.collection, properties=properties)
        self.change = properties[CHANGE]
        self._categories = None
        self._kept = {}

    def _writing(self) -> contextlib.AbstractContextManager:
        return _one_writer(self._lock_file, self.spec)

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
        with self._writing(), _Calls(self.spec, writing=True):
            self.client.alter_collection_properties(self.collection, properties={CALIBRATION: json.dumps(calibration)})
        self.calibration = calibration

    # ---- reading

    def _read(self, method: str, *args, **kwargs):
        """``self.client.<method>(...)``; a collection the server has not loaded again yet (it
        reloads them after a restart, in its own time) is loaded here and the call made once more."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as exc:
            if "not loaded" not in str(getattr(exc, "message", exc)):
                raise
        self.client.load_collection(self.name)
        return getattr(self.client, method)(*args, **kwargs)

    def _count(self, expression: str, consistency: str = READ) -> int:
        with _Calls(self.spec):
            rows = self._read(
                "query", self.name, filter=expression, output_fields=["count(*)"], consistency_level=consistency
            )
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
        return self.columns.get(name) or f"attributes[{milvus_literal(name)}]"

    def _expression(self, where: Filter | None) -> str:
        """``where`` as a Milvus expression: typed columns by :func:`_typed_condition`, the rest
        (built-in fields, attributes in the JSON field) by :func:`~vsearch.stores.filters.to_milvus`,
        but for ``in`` on the JSON field of a server: there as ``in`` (Milvus 2.3 fails on a
        filter's 100 values as ORed equalities; milvus-lite takes ``in`` on fields only)."""
        if not where:
            return ""
        parts = []
        for condition in where.conditions:
            column = None if condition.field in BUILTIN else self.columns.get(condition.field)
            if column is not None:
                parts.append(f"({_typed_condition(column, self.schema[condition.field], condition)})")
            elif condition.op == "in" and condition.field not in BUILTIN and not self.lite:
                values = ", ".join(dict.fromkeys(milvus_literal(v) for v in condition.value))
                parts.append(f"({self._field(condition.field)} in [{values}])")
            else:
                parts.append(to_milvus(Filter((condition,)), self._field))
        return " and ".join(parts)

    def count(self) -> tuple[int, int]:
        return self._count("seq == 0"), self._count("")

    def categories(self) -> list[str]:
        if self._categories is None:
            self._categories = sorted({row["category"] for row in self._rows("seq == 0", ["category"])})
        return list(self._categories)

    def _rows(self, expression: str, fields: list[str]) -> Iterator[dict]:
        """Every row ``expression`` keeps, a page at a time in primary-key order, each page after
        the last one's final key (as pymilvus' query iterator pages, but with the key escaped: the
        iterator quotes it as it is, and photo ``x" or product_id != "/0`` made every page the first).

        pymilvus sends a paged query without this process' Session timestamp, so a Session count
        goes first: it waits for this process' last write, and the pages see the server past it.
        """
        self._count(expression)
        after: str | None = None
        while True:
            terms = [f"key > {milvus_literal(after)}" if after is not None else "", expression]
            with _Calls(self.spec):
                page = self._read(
                    "query",
                    self.name,
                    filter=" and ".join(f"({t})" for t in terms if t),
                    output_fields=list(dict.fromkeys(["key", *fields])),
                    limit=PAGE,
                    iterator="True",  # rows in primary-key order, which the cursor needs
                    reduce_stop_for_best="True",
                    consistency_level=READ,
                )
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1]["key"]
            if after is not None and last <= after:  # a server that ignores the order: stop, never loop
                raise StoreError(f"{self.spec}: listing the catalog did not advance past row {after!r}")
            after = last

    def get(self, product_id: str) -> Product | None:
        if not _storable(str(product_id)):
            return None
        rows = self._select("product_id", [str(product_id)], FIELDS)
        return _product(rows) if rows else None

    def photo(self, photo_id: str) -> dict | None:
        if not _storable(str(photo_id)):
            return None
        rows = self._select("photo_id", [str(photo_id)], FIELDS)
        return _hit(rows[0]) if rows else None

    def products(self) -> Iterator[Product]:
        by_product: dict[str, list[dict]] = {}
        for row in self._rows("", FIELDS):
            by_product.setdefault(row["product_id"], []).append(row)
        for rows in by_product.values():
            yield _product(rows)

    def search(self, vectors: np.ndarray, k: int, where: Filter | None = None, group: bool = True) -> list[list[dict]]:
        """Per query, the best ``k`` products (each once, by its best photo) or, ``group=False``, photos.

        Products: Milvus' group-by (2.4+) or, where a server has none, :meth:`_grouped`. An
        approximate catalog searches a filter that keeps at most ``EXACT_BELOW`` photos exactly
        over them (their vectors scored here), and one that keeps more with its search widened
        by the inverse of the share kept: HNSW's beam (a graph walk that must skip most nodes
        misses answers: milvus-lite gave a wrong top 3 for 10 of 20 queries with a filter
        keeping 12 of 1,800 photos), IVF's lists probed, up to 4 times (at a filter keeping 10%
        of 100k photos Milvus 2.3 found 0.93 of the products with HNSW, whatever the beam, and
        0.99-1.0 with IVF probing 3-12% of its lists).
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        vectors = check_vectors(vectors, len(vectors), self.dim)
        if int(k) < 1:
            raise DataError(f"{self.spec}: search: k must be at least 1, got {k}")
        k = min(int(k), MAX_K)
        expression = self._expression(where)
        widen = 1.0  # the inverse of the share of photos a filter keeps
        if self.kind != "exact" and expression:
            kept = self._kept_by(expression)
            if kept <= EXACT_BELOW:
                exact = self._exact(vectors, k, expression, group)
                if exact is not None:
                    return exact
                kept = self._kept[expression] = self._count(expression)  # it grew since it was counted
            widen = self._kept_by("") / max(kept, 1)
        if self.kind == "hnsw":
            ef = max(self._ef_search, k)
            params = {"ef": min(MAX_EF, max(ef, math.ceil(2 * ef * widen))) if widen > 1 else ef}
        elif self.kind == "ivf":
            nlist, nprobe = self.ivf["nlist"], self.ivf["nprobe"]
            params = {"nprobe": min(nlist, math.ceil(nprobe * min(widen, 4.0)))}
        else:
            params = {}
        if group and self.engine["group_by"] == "vsearch":
            return self._grouped(vectors, k, expression, params)
        options = {"group_by_field": "product_id", "group_size": 1} if group else {}
        return self._search(vectors, k, expression, params, **options)

    def _search(self, vectors: np.ndarray, limit: int, expression: str, params: dict, **options) -> list[list[dict]]:
        with _Calls(self.spec):
            results = self._read(
                "search",
                self.name,
                data=vectors.tolist(),
                limit=limit,
                filter=expression,
                output_fields=HIT_FIELDS,
                search_params={  # HNSW's beam holds at least the photos asked for
                    "metric_type": "COSINE",
                    "params": {**params, "ef": max(params["ef"], limit)} if "ef" in params else params,
                },
                consistency_level=READ,
                **options,
            )
        return [[{**_hit(hit["entity"]), "score": float(hit["distance"])} for hit in hits] for hits in results]

    def _grouped(self, vectors: np.ndarray, k: int, expression: str, params: dict) -> list[list[dict]]:
        """The best ``k`` products per query from a photo search grouped here (a server without group-by).

        Searches ``k`` times twice the photos a product has on average, then, for a query
        whose photos name fewer than ``k`` products while more photos remain, four times as
        many, up to Milvus' top-k limit: once the photos found name ``k`` products, those are
        the best ``k`` of them (a product not found has no photo above the last one found).
        """
        products = max(1, self._kept_by("seq == 0"))
        limit = min(MAX_K, max(k, 2 * k * math.ceil(self._kept_by("") / products)))
        answers: list[list[dict]] = [[] for _ in vectors]
        todo = list(range(len(vectors)))
        while todo:
            found = self._search(vectors[todo], limit, expression, params)
            again = []
            for n, hits in zip(todo, found):
                answers[n] = _best_per_product(hits, k)
                if len(answers[n]) < k and len(hits) >= limit and limit < MAX_K:
                    again.append(n)
            todo, limit = again, min(MAX_K, 4 * limit)
        return answers

    def _exact(self, vectors: np.ndarray, k: int, expression: str, group: bool) -> list[list[dict]] | None:
        """Every photo ``expression`` keeps, scored against each query (cosine, as the index);
        None when it keeps more than ``EXACT_BELOW`` photos."""
        with _Calls(self.spec):
            rows = self._read(
                "query",
                self.name,
                filter=expression,
                output_fields=FIELDS + ["vector"],
                limit=EXACT_BELOW + 1,
                consistency_level=READ,
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
        """Writes the products' photos into their slots, then deletes their slots past them (see
        the module doc); nothing is read back, so a write does not wait for the last one."""
        photos = list(photos)
        vectors = check_vectors(vectors, len(photos), self.dim)
        with self._writing():
            self._read_meta()  # the schema and slots as the last writer left them
            rows, schema = to_rows(photos, vectors, self.schema, self.columns)
            sizes: dict[str, int] = {}
            for row in rows:
                sizes[row["product_id"]] = sizes.get(row["product_id"], 0) + 1
            self._refuse_moves(rows)
            slots = max(self.slots, *sizes.values())
            if schema != self.schema or slots != self.slots:
                self._write_meta(schema, slots)  # before the rows: a reader may filter on what it finds
                self.schema, self.slots = schema, slots
            stale = [_key(seq, product) for product, size in sizes.items() for seq in range(size, slots)]
            with _Calls(self.spec, writing=True):
                for batch in _batches(rows, self.dim):
                    self.client.upsert(self.name, batch)
                for start in range(0, len(stale), CHUNK):
                    self.client.delete(self.name, filter=_in("key", stale[start : start + CHUNK]))
                if stale:  # Milvus 2.3 answers a delete without its timestamp: a Session read waits
                    # for the last write whose timestamp it knows, so one row is written again last.
                    self.client.upsert(self.name, next(_batches(rows[-1:], self.dim)))
            self._remember({product: [] for product in sizes}, rows)
            self._written()

    def _refuse_moves(self, rows: list[dict]) -> None:
        """A photo id may pass only between products this upsert replaces (it would be kept twice).

        Reads with ``Eventually`` (no wait for the time tick) and corrects that view with this
        process' own writes of the last ``RECENT_S`` seconds; another process' write of the
        last moment may be missed.
        """
        wanted = {row["photo_id"]: row["product_id"] for row in rows}
        replaced = set(wanted.values())
        now = time.monotonic()
        self._recent = {p: seen for p, seen in self._recent.items() if now - seen[0] < RECENT_S}
        owners = [
            (row["photo_id"], row["product_id"])
            for row in self._select("photo_id", list(wanted), ["photo_id", "product_id"], "Eventually")
            if row["product_id"] not in self._recent or row["photo_id"] in (self._recent[row["product_id"]][1] or ())
        ]
        owners += [
            (photo, product) for product, (_, ids) in self._recent.items() for photo in ids or () if photo in wanted
        ]
        for photo, product in owners:
            if product not in replaced:
                raise DataError(f"product {wanted[photo]!r}: photo id {photo!r} already belongs to product {product!r}")

    def _remember(self, products: dict[str, list], rows: list[dict]) -> None:
        """This process' view of what it wrote: each product's photo ids (none: deleted)."""
        for row in rows:
            products[row["product_id"]].append(row["photo_id"])
        now = time.monotonic()
        for product, photo_ids in products.items():
            self._recent[product] = (now, frozenset(photo_ids) if photo_ids else None)

    def _select(self, field: str, values: Sequence[str], fields: list[str], consistency: str = READ) -> list[dict]:
        out = []
        with _Calls(self.spec):
            for start in range(0, len(values), CHUNK):
                out += self._read(
                    "query",
                    self.name,
                    filter=_in(field, values[start : start + CHUNK]),
                    output_fields=fields,
                    consistency_level=consistency,
                )
        return out

    def delete(self, product_ids: Sequence[str]) -> int:
        """Removes the products (every slot), counting those that were there with ``Strong``
        consistency (another process' write of the last moment counts too), and reads them
        ``Strong`` again after: Milvus 2.3 answers a delete without its timestamp, so a
        Session read could not wait for it, and a Strong read moves the server's view past it."""
        ids = [i for i in dict.fromkeys(str(p) for p in product_ids) if _storable(i)]
        removed: list[str] = []
        with self._writing():
            self._read_meta()  # the slots as the last writer left them
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                expression = f"({_in('product_id', chunk)}) and (seq == 0)"
                found = [row["product_id"] for row in self._select_where(expression, "Strong")]
                keys = [_key(seq, product) for product in found for seq in range(self.slots)]
                with _Calls(self.spec, writing=True):
                    for at in range(0, len(keys), CHUNK):
                        self.client.delete(self.name, filter=_in("key", keys[at : at + CHUNK]))
                if found and self._select_where(_in("product_id", found), "Strong"):
                    raise StoreError(f"{self.spec}: Milvus kept products {found[:3]} after deleting them; try again")
                removed += found
            if removed:
                self._remember({product: [] for product in removed}, [])
                self._written()
        return len(removed)

    def _select_where(self, expression: str, consistency: str) -> list[dict]:
        with _Calls(self.spec):
            return self._read(
                "query", self.name, filter=expression, output_fields=["product_id"], consistency_level=consistency
            )

    def _written(self) -> None:
        if self.local:
            with _Calls(self.spec, writing=True):
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


def _best_per_product(hits: list[dict], k: int) -> list[dict]:
    """The first ``k`` hits of different products (``hits`` best first)."""
    out, seen = [], set()
    for hit in hits:
        if hit["product_id"] not in seen:
            seen.add(hit["product_id"])
            out.append(hit)
            if len(out) == k:
                break
    return out


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
        return MilvusStore(spec, client, name, local, expected_fingerprint, uri=uri)
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
        chosen = "ivf" if kind == "ivf" else choose_kind(kind, len(rows))
    except ValueError as exc:
        raise DataError(f"{spec}: {exc}") from None
    graph = FaissIndex(1).params()  # the FAISS store's HNSW parameters: the same graph, comparable figures
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["product_id"]] = sizes.get(row["product_id"], 0) + 1
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "dim": dim,
        "model": dict(model),
        "schema": schema,
        "kind": chosen,
        "columns": columns,
        "ef_search": graph["ef_search"],
        "slots": max(sizes.values(), default=1),
        "ivf": {},
    }
    if local:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
    client = _connect(uri, local, spec)
    try:
        with _Calls(spec):
            lite = str(client.get_server_version()).startswith("milvus_lite")
            if kind == "auto" and chosen == "hnsw" and not lite:
                meta["kind"] = "ivf"

            old = _alias_target(client, name, spec)
            collection = f"{name}_{uuid.uuid4().hex[:12]}"
            _create(client, collection, dim, meta)
            try:
                if local or len(rows) > SEAL_ABOVE:
                    for batch in _batches(rows, dim):
                        client.insert(collection, batch)
                    client.flush(collection)  # seals the rows into segments that get the index
                    if meta["kind"] == "ivf":
                        meta["ivf"] = ivf_params(_largest_segment(client, collection, len(rows)))
                        client.alter_collection_properties(collection, properties={META: json.dumps(meta)})
                    _index(client, collection, meta, lite)
                else:  # a few rows, searched as they are: indexed and loaded empty (a flush takes seconds)
                    if meta["kind"] == "ivf":
                        meta["ivf"] = ivf_params(len(rows))
                        client.alter_collection_properties(collection, properties={META: json.dumps(meta)})
                    _index(client, collection, meta, lite)
                    for batch in _batches(rows, dim):
                        client.insert(collection, batch)
                # Read Strong once: the rows went in under the collection's own name, so this process'
                # Session reads of the alias know no write to wait for; this read moves the server past them.
                stored = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
                if int(stored[0]["count(*)"]) != len(rows):
                    raise StoreError(f"{spec}: the new catalog holds {stored[0]['count(*)']} of {len(rows)} photos")
                with _one_writer(lock_file(uri, name, local), spec):  # no write runs across the swap
                    old = _alias_target(client, name, spec)
                    if old is None:
                        client.create_alias(collection, name)
                    else:
                        client.alter_alias(collection, name)
            except BaseException:
                client.drop_collection(collection)
                raise
            if old is not None:
                client.drop_collection(old)
        return MilvusStore(spec, client, name, local, uri=uri)
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
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_KEY)
    schema.add_field("photo_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("category", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("attributes", DataType.JSON)
    for name, field in meta["columns"].items():
        schema.add_field(field, **_column_type(meta["schema"][name]))
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(
        collection,
        schema=schema,
        consistency_level=READ,
        properties={META: json.dumps(meta), CALIBRATION: "null", CHANGE: uuid.uuid4().hex},
    )


def ivf_params(segment_rows: int) -> dict[str, int]:
    """An IVF catalog's lists (about 4 sqrt of a segment's rows: Milvus indexes each segment on
    its own, and seals one at about 50k photos of 391-d) and the lists a search probes
    unfiltered (1/32 of them)."""
    nlist = max(16, min(4096, int(4 * math.sqrt(max(segment_rows, 1)))))
    return {"nlist": nlist, "nprobe": max(8, math.ceil(nlist / 32))}


def _largest_segment(client: MilvusClient, collection: str, rows: int) -> int:
    """The most rows a sealed segment of ``collection`` holds (``rows`` where the server cannot say)."""
    try:
        sizes = [int(s.num_rows) for s in client.list_persistent_segments(collection)]
    except (MilvusException, AttributeError):
        return rows
    return max(sizes, default=rows) or rows


def _index(client: MilvusClient, collection: str, meta: dict, lite: bool) -> None:
    """The vector index over the loaded rows, built before this returns: created with the
    collection, milvus-lite builds it in a background thread after each flush and searches
    every row by brute force until it is done (minutes at 100k photos).

    ``kind``: ``hnsw`` (the FAISS store's graph parameters), ``ivf`` (IVF_FLAT, what ``auto``
    picks above the exact size on a Milvus server: filtered searches keep their recall) or
    ``exact`` (FLAT). On a server, ``photo_id`` and ``product_id`` get a scalar index (Trie):
    a write's photo check and a product's read look ids up rather than scan every row (an
    upsert took 80 ms at 1M photos without).
    """
    index = client.prepare_index_params()
    graph = FaissIndex(1).params()
    if meta["kind"] == "hnsw":
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": graph["hnsw_m"], "efConstruction": graph["ef_construction"]},
        )
    elif meta["kind"] == "ivf":
        index.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": meta["ivf"]["nlist"]})
    else:
        index.add_index("vector", index_type="FLAT", metric_type="COSINE")
    if not lite:
        for field in ("photo_id", "product_id"):
            index.add_index(field, index_type="Trie", index_name=f"{field}_trie")
    client.create_index(collection, index)
    client.load_collection(collection)
