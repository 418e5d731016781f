"""Connecting to Milvus, the server's version and roads, and the writer locks.

One code path through ``pymilvus.MilvusClient`` for both: a ``.db`` location starts
milvus-lite inside this process (pymilvus does that for a URI ending in ``.db``); a URL
talks to a Milvus server (2.3 or later; :mod:`vsearch.stores.milvus_embedded` runs one on
this machine). ``#NAME`` after the location picks the catalog's name (default
``vsearch_catalog``), so one server can hold several catalogs.

Writes: one writer at a time per catalog, threads of a process by a lock and processes of
a machine by a lock file (beside a milvus-lite file; in the temporary folder for a server).

Reads: ``Session`` consistency, a search waits only for this process' own last write (so
a product is in the next search after its PUT), never for the server's time tick; another
process' writes show within that tick.

Versions: the server's version is read once; :func:`server_roads` says what that server does
itself (grouping photos into products from 2.4 on: :mod:`vsearch.stores.milvus.searching`).
``engine`` says which road a store takes (``vsearch index info``, ``/healthz``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from pymilvus import MilvusClient, MilvusException

from vsearch.artifacts import file_lock
from vsearch.errors import DataError, StoreError

DEFAULT_NAME = "vsearch_catalog"
GROUP_BY_SINCE = (2, 4)  # the first Milvus whose search groups by a field
READ = "Session"  # searches and reads: this process' own writes, without waiting for the time tick
WRITE_WAIT_S = 30  # how long a write waits for another writer before a StoreError (503)
CONNECT_TIMEOUT_S = 10
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
