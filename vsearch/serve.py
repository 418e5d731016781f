"""The web service: an upload page and a JSON API over a :class:`~vsearch.search.Searcher`.

    vsearch serve --model saved_models/embedding --index saved_models/catalog.vsi

Routes:

* ``GET /``: the upload page (self-contained HTML, see :mod:`vsearch.page`).
* ``POST /api/search``: multipart ``file`` plus ``k`` (1..100) and ``category``
  (``any``, ``auto`` or a catalog category) as form or query fields; answers
  ``{"category": {...}, "matches": [{rank, id, score, category, image_url, ...}], "elapsed_ms"}``.
* ``GET /api/items/{id}``: an item's metadata; ``GET /api/items/{id}/image``: its photo. Any
  id works once percent-encoded (``image_url`` does it): slashes, newlines and other
  control characters, ``%``, ``?``, ``#``.
* ``GET /healthz``: ``ok``, the catalog size and the model fingerprint.
* ``GET /metrics``: Prometheus text format: requests by route, method and status, request
  latency by route, the decode, embed and search steps' latency, the decode budget (bytes in
  flight, refusals), the catalog size and reloads, the model fingerprint.
* ``/openapi.json``, and its pages ``/docs`` (Swagger UI) and ``/redoc``, whose scripts and
  styles are served from the ``fastapi-offline`` package under ``/static-offline-docs``: they
  work without internet, and their Content-Security-Policy lets them load nothing from
  another host.

Every ``GET`` route answers ``HEAD`` too: the same status and headers, no body.

Memory: an upload's header is read first (format, size, mode: :func:`vsearch.images.image_header`),
and its decoding is admitted against a process-wide budget of decoded bytes in flight
(``decode_budget_bytes``, 1 GiB by default): a photo's cost is what decoding and resizing it
can take at their peak, so 16-bit and palette images count at their real size. A photo that
does not fit waits up to ``decode_wait_s``, then gets 503 with ``Retry-After``; one that
could never fit is 422; when ``decode_max_waiting`` photos already wait, the next one gets
503 at once. The rest of a request (the model, the search) holds no budget.

Reloading: given the index file (``index_path``), a background thread checks it every
``reload_interval_s`` and, when it was replaced (``vsearch index add/remove/build`` rename a
new file into place: its inode, size or modification time change), loads the new catalog
beside the old one and swaps a reference. Requests read the reference once, so those in
flight finish on the catalog they started with; a file that cannot be loaded is logged and
the current catalog kept.

Every error is JSON ``{"error": "<message>"}``: 404 unknown item or route, 405 wrong
method, 413 upload over the size limit, 422 an unusable photo (empty, corrupt, not an
image, over the pixel limit or the decode budget), a bad ``k`` or an unknown category,
503 too many photos being decoded at once (retry after ``Retry-After`` seconds), 500
anything unexpected (logged; the server keeps running). Item photos are found by looking
the id up in the catalog's metadata, so no path from a request ever reaches the file
system, and responses never carry the server's paths.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and they name classes imported inside create_app.
import asyncio
import logging
import math
import os
import socket
import threading
import time
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Callable, NamedTuple
from urllib.parse import quote

import numpy as np

from vsearch.errors import DataError, ImageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 16 * 1024  # multipart boundaries, part headers and the k/category fields
MAX_K = 100
DEFAULT_K = 5
PRIVATE_FIELDS = ("path",)  # item metadata that must not leave the server
DEFAULT_DECODE_BUDGET_BYTES = 1024 ** 3
DEFAULT_DECODE_WAIT_S = 5.0     # how long a photo may wait for the decode budget before a 503
DEFAULT_DECODE_MAX_WAITING = 32  # uploads waiting for the budget at once; more are refused at once
RETRY_AFTER_S = 1               # the Retry-After of a 503
DEFAULT_RELOAD_INTERVAL_S = 2.0  # how often the index file is checked for a replacement
DOCS_STATIC_URL = "/static-offline-docs"
# Seconds: from a small photo's decode (~1 ms) to a 40-Mpx one's (several seconds).
STAGE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")  # others are counted as "other"

log = logging.getLogger("vsearch.serve")


# ---------------------------------------------------------------- responses

def image_url(item_id: str) -> str:
    """The API address of an item's photo (the id percent-encoded, its slashes kept)."""
    return f"/api/items/{quote(str(item_id), safe='/')}/image"


def public_item(item: dict) -> dict:
    """An item or match as the API shows it: no server paths, plus its ``image_url``."""
    out = {k: v for k, v in item.items() if k not in PRIVATE_FIELDS}
    out["image_url"] = image_url(item["id"])
    return out


def error_response(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc) -> str:
    """FastAPI's validation errors as one line: ``k (form): Input should be ...``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = loc[-1] if loc else "request"
        if len(loc) > 1 and loc[0] in ("query", "body"):
            where += " (query)" if loc[0] == "query" else " (form)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


# ---------------------------------------------------------------- item ids in URLs

def _register_item_id_convertor() -> None:
    """``{item_id:item_id}``: like ``path`` (slashes included), and newlines too.

    Starlette's ``path`` convertor is ``.*``, which stops at a newline, so an id with one
    (a file name can have it) was a 404.
    """
    from starlette.convertors import CONVERTOR_TYPES, PathConvertor, register_url_convertor

    class ItemIdConvertor(PathConvertor):
        regex = r"[\s\S]*"

    if "item_id" not in CONVERTOR_TYPES:
        register_url_convertor("item_id", ItemIdConvertor())


# ---------------------------------------------------------------- middleware

class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_body_bytes`` with 413, before or while reading.

    A declared ``Content-Length`` over the limit is refused without reading a byte; a body
    that grows past the limit (a lying or missing length, chunked uploads) is cut off at the
    first chunk over it, so an upload never costs more than the limit in memory or spool.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await self._refuse(scope, receive, send)
        received, over, started = 0, False, False

        async def limited_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # FastAPI may turn the interrupted read into its own error: ours wins
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        limit = self.max_body_bytes - FORM_OVERHEAD_BYTES
        response = error_response(413, f"upload too large: the limit is {_megabytes(max(limit, 0))}")
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HeadMiddleware:
    """``HEAD`` runs the ``GET`` route and sends its status and headers without the body.

    FastAPI routes answer only the methods they name, so ``HEAD`` (uptime checks) was 405.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class DocsPolicyMiddleware:
    """The API docs pages may load nothing from another host (a Content-Security-Policy).

    Their scripts and styles are served here; the policy also keeps what the bundles would
    fetch by themselves (ReDoc's footer logo) from leaving the machine.
    """

    PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
    POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
              "base-uri 'none'; frame-ancestors 'none'")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.PAGES:
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", self.POLICY.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_policy)


class MetricsMiddleware:
    """Counts every request by route template, method and status, and times it."""

    def __init__(self, app, metrics: "ServerMetrics", routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts
        start = time.perf_counter()

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_label(self.routes(), scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)


def _route_label(routes, scope) -> str:
    """The template of the route a request matches (bounded label values), or ``unmatched``."""
    from starlette.routing import Match

    probe = {**scope, "method": "GET" if scope["method"] == "HEAD" else scope["method"]}
    for route in routes:
        match, _ = route.matches(probe)
        if match != Match.NONE:
            return getattr(route, "path_format", None) or getattr(route, "path", "unmatched")
    return "unmatched"


# ---------------------------------------------------------------- the decode budget

class DecodeBudget:
    """Bytes of decoded images in flight across all requests, at most ``capacity``.

    Thread-safe. Waiting happens on the event loop (a future woken by :meth:`release`), so
    a waiting request holds no worker thread; at most ``max_waiting`` requests wait at once
    (each holds its upload), the others are refused at once.
    """

    class _Waiter:
        __slots__ = ("loop", "future")

        def __init__(self, loop):
            self.loop, self.future = loop, None

    def __init__(self, capacity: int, max_waiting: int = DEFAULT_DECODE_MAX_WAITING):
        if capacity < 1:
            raise ValueError(f"decode budget must be >= 1 byte, got {capacity}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.capacity, self.max_waiting = int(capacity), int(max_waiting)
        self._in_flight = 0
        self._waiters: list[DecodeBudget._Waiter] = []
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self._in_flight + n > self.capacity:
                return False
            self._in_flight += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            if n > self._in_flight:
                raise RuntimeError("decode budget released more than it held")
            self._in_flight -= n
            wake = [w for w in self._waiters if w.future is not None]
        for waiter in wake:
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    async def acquire(self, n: int, wait_s: float) -> bool:
        """Takes ``n`` bytes, waiting up to ``wait_s`` for them; False if they did not fit by then."""
        if n > self.capacity:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiter = None
        try:
            while True:
                with self._lock:
                    if self._in_flight + n <= self.capacity:
                        self._in_flight += n
                        return True
                    if waiter is None:
                        if len(self._waiters) >= self.max_waiting:
                            return False
                        waiter = self._Waiter(loop)
                        self._waiters.append(waiter)
                    waiter.future = loop.create_future()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(waiter.future, remaining)
                except TimeoutError:
                    deadline = loop.time()  # one last look at the budget, then give up
        finally:
            if waiter is not None:
                with self._lock:
                    self._waiters.remove(waiter)


def _wake(future) -> None:
    if not future.done():
        future.set_result(None)


def return_freed_memory() -> None:
    """Makes glibc give large freed blocks back to the system at once (a no-op elsewhere).

    glibc serves allocations above a threshold with their own mappings, unmapped on free,
    but raises that threshold (up to 32 MB) each time such a block is freed; from then on
    a decode's 1-32 MB buffers come from per-thread heaps, which keep the pages after the
    request. Under concurrent large uploads the process then grows well past the decode
    budget. A fixed 1 MiB threshold keeps what the budget admits the memory actually used.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also turns off the raising


# ---------------------------------------------------------------- the catalog, reloaded

class FileSignature(NamedTuple):
    device: int
    inode: int
    size: int
    mtime_ns: int


def file_signature(path: str | os.PathLike) -> FileSignature | None:
    """What changes when a file is replaced or rewritten; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSignature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def reload_searcher(searcher, path: str | os.PathLike):
    """A searcher like ``searcher`` (same model and limits) over the catalog saved at ``path``."""
    from vsearch.index import Catalog

    fingerprint = getattr(searcher.embedder, "fingerprint", None) or searcher.catalog.fingerprint
    catalog = Catalog.load(path, expected_fingerprint=fingerprint)
    return type(searcher)(searcher.embedder, catalog, max_pixels=searcher.max_pixels,
                          max_bytes=searcher.max_bytes)


class LiveSearcher:
    """The searcher requests use; swapped for a new one when its index file is replaced.

    Args:
        searcher: The searcher serving now.
        path: Its index file, watched for replacements (None: never reloaded).
        interval_s: How often the file is checked (0: never).
        signature: The file's :func:`file_signature` when ``searcher``'s catalog was read
            (default: now).
        load: ``load(current_searcher, path) -> Searcher`` (default :func:`reload_searcher`).

    ``listeners`` are called with ``"ok"`` after each swap and ``"failed"`` after each file
    that could not be loaded.
    """

    def __init__(self, searcher, path: str | os.PathLike | None = None,
                 interval_s: float = DEFAULT_RELOAD_INTERVAL_S, signature: FileSignature | None = None,
                 load: Callable | None = None):
        self.current = searcher
        self.path = Path(path) if path is not None else None
        self.interval_s = float(interval_s)
        self.signature = signature if signature is not None else (
            file_signature(self.path) if self.path is not None else None)
        self.load = load or reload_searcher
        self.loaded_at = time.time()
        self.listeners: list[Callable[[str], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_signature: FileSignature | None = None

    def check(self) -> bool:
        """Reloads if the file was replaced since the last load; True if it swapped."""
        if self.path is None:
            return False
        before = file_signature(self.path)
        if before is None or before == self.signature or before == self._failed_signature:
            return False
        try:
            fresh = self.load(self.current, self.path)
        except Exception as exc:  # noqa: BLE001  (a bad file must not stop the server)
            self._failed_signature = before
            self._tell("failed")
            log.error("%s changed but cannot be loaded; still serving the previous catalog (%s)", self.path, exc)
            return False
        # If the file was replaced again while loading, `before` no longer matches it and the
        # next check loads the newer one.
        self.current, self.signature, self.loaded_at = fresh, before, time.time()
        self._tell("ok")
        log.info("%s reloaded: %d items", self.path, len(fresh.catalog))
        return True

    def _tell(self, outcome: str) -> None:
        for listener in self.listeners:
            listener(outcome)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001  (keep watching whatever happened)
                log.exception("checking %s for a new catalog failed", self.path)

    def start(self) -> None:
        if self.path is None or self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="vsearch-catalog-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


# ---------------------------------------------------------------- metrics

class ServerMetrics:
    """The app's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, live: LiveSearcher, budget: DecodeBudget):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("vsearch_http_requests", "HTTP requests by route template, method and status",
                                ("route", "method", "status"), registry=registry)
        self.request_seconds = Histogram("vsearch_http_request_duration_seconds", "HTTP request latency by route",
                                         ("route",), buckets=STAGE_BUCKETS, registry=registry)
        self.stage_seconds = Histogram("vsearch_search_step_seconds",
                                       "Latency of the steps of a search: decode, embed, search",
                                       ("step",), buckets=STAGE_BUCKETS, registry=registry)
        Gauge("vsearch_decode_budget_bytes", "Decoded bytes allowed in flight across requests",
              registry=registry).set(budget.capacity)
        Gauge("vsearch_decode_in_flight_bytes", "Decoded bytes in flight now",
              registry=registry).set_function(lambda: budget.in_flight)
        Gauge("vsearch_decode_waiting_requests", "Photos waiting for the decode budget now",
              registry=registry).set_function(lambda: budget.waiting)
        self.refusals = Counter("vsearch_decode_refusals", "Photos refused by the decode budget: busy (503) "
                                "or too_large (422, over the whole budget)", ("reason",), registry=registry)
        self.decode_wait_seconds = Histogram("vsearch_decode_wait_seconds", "Time waited for the decode budget",
                                             buckets=STAGE_BUCKETS, registry=registry)
        Gauge("vsearch_catalog_items", "Items in the catalog being served",
              registry=registry).set_function(lambda: len(live.current.catalog))
        self.reloads = Counter("vsearch_catalog_reloads", "Index file reloads by outcome", ("outcome",),
                               registry=registry)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)  # present from the start, at 0
        for reason in ("busy", "too_large"):
            self.refusals.labels(reason)
        Gauge("vsearch_catalog_loaded_timestamp_seconds", "When the catalog being served was loaded",
              registry=registry).set_function(lambda: live.loaded_at)
        searcher = live.current
        Info("vsearch_model", "The embedding model", registry=registry).info({
            "fingerprint": str(searcher.catalog.fingerprint), "dim": str(searcher.catalog.dim),
            "image_size": str(int(searcher.embedder.image_size))})

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---------------------------------------------------------------- the road of one upload

def decode_upload(searcher, data: bytes, source: str) -> np.ndarray:
    """Step 1: encoded bytes -> the model's (S, S, 3) float32 input (:func:`vsearch.images.model_input`)."""
    from vsearch.images import model_input

    return model_input(data, int(searcher.embedder.image_size), source, max_pixels=searcher.max_pixels,
                       max_bytes=searcher.max_bytes)


def embed_input(searcher, model_input: np.ndarray) -> np.ndarray:
    """Step 2: one model input -> its vector."""
    return np.asarray(searcher.embedder.embed_pixels(model_input[None]), dtype=np.float32)[0]


def answer(searcher, data: bytes, k: int = DEFAULT_K, category: str = "any", source: str = "<upload>"):
    """The three steps in a row, without the budget: what :func:`warm_up` runs."""
    return searcher.search_vector(embed_input(searcher, decode_upload(searcher, data, source)), k, category)


def _timed(histogram, func, *args):
    start = time.perf_counter()
    try:
        return func(*args)
    finally:
        histogram.observe(time.perf_counter() - start)


# ---------------------------------------------------------------- the app

def create_app(searcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, title: str = "vsearch", *,
               decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES, decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
               decode_max_waiting: int = DEFAULT_DECODE_MAX_WAITING,
               index_path: str | os.PathLike | None = None,
               reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S):
    """The FastAPI app serving ``searcher``.

    Args:
        searcher: A :class:`~vsearch.search.Searcher` (model + catalog) shared by all requests,
            or a :class:`LiveSearcher` around one; the model and the search run in FastAPI's
            thread pool, so requests are answered concurrently.
        max_upload_bytes: Largest accepted photo (also capped by ``searcher.max_bytes``).
        title: Shown in the page header and the API docs.
        decode_budget_bytes: Decoded bytes in flight across requests (see the module doc).
        decode_wait_s: How long a photo waits for the budget before a 503.
        decode_max_waiting: How many photos may wait at once; more get a 503 at once.
        index_path: The searcher's index file: watched and reloaded when replaced (a
            :class:`LiveSearcher` brings its own).
        reload_interval_s: How often ``index_path`` is checked (0: never).
    """
    from fastapi import File, Form, Query, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from vsearch import __version__
    from vsearch.images import image_header
    from vsearch.page import render_page

    live = searcher if isinstance(searcher, LiveSearcher) else LiveSearcher(searcher, index_path, reload_interval_s)
    limit = min(int(max_upload_bytes), int(live.current.max_bytes))
    if limit < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if not (math.isfinite(decode_wait_s) and decode_wait_s >= 0):
        raise ValueError(f"decode_wait_s must be a finite number >= 0, got {decode_wait_s}")
    budget = DecodeBudget(decode_budget_bytes, decode_max_waiting)
    metrics = ServerMetrics(live, budget)
    live.listeners.append(lambda outcome: metrics.reloads.labels(outcome).inc())

    @asynccontextmanager
    async def lifespan(app):
        return_freed_memory()
        live.start()
        try:
            yield
        finally:
            live.stop()

    _register_item_id_convertor()
    app = FastAPIOffline(title=title, version=__version__, lifespan=lifespan, static_url=DOCS_STATIC_URL,
                         swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
                         description="Visual search: upload a photo, get the matching catalog items. "
                                     'Errors are JSON `{"error": "..."}`.')
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limit + FORM_OVERHEAD_BYTES)
    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    app.state.live, app.state.decode_budget, app.state.metrics = live, budget, metrics

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__})")

    pages = weakref.WeakKeyDictionary()  # searcher -> its page (its categories, its size)

    def page_of(current) -> str:
        if current not in pages:
            pages[current] = render_page({
                "title": title, "categories": list(current.categories), "max_upload_bytes": limit,
                "max_k": MAX_K, "default_k": 8, "items": len(current.catalog)})
        return pages[current]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return HTMLResponse(page_of(live.current))

    @app.get("/healthz", summary="Liveness, catalog size and model fingerprint")
    def healthz():
        current = live.current
        return {"status": "ok", "items": len(current.catalog), "categories": list(current.categories),
                "model": {"fingerprint": current.catalog.fingerprint, "dim": current.catalog.dim,
                          "image_size": int(current.embedder.image_size)}}

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/search", summary="Search the catalog with a photo")
    async def search(file: Annotated[UploadFile, File(description="the photo: JPEG, PNG, GIF, BMP, ...")],
                     k_form: Annotated[int | None, Form(alias="k", ge=1, le=MAX_K)] = None,
                     category_form: Annotated[str | None, Form(alias="category")] = None,
                     k_query: Annotated[int | None, Query(alias="k", ge=1, le=MAX_K)] = None,
                     category_query: Annotated[str | None, Query(alias="category")] = None):
        current = live.current  # this request's catalog, even if a new one is swapped in meanwhile
        k = k_form or k_query or DEFAULT_K
        category = (category_form or category_query or "any").strip()
        if category not in ("any", "auto", *current.categories):
            return error_response(422, f"unknown category {category!r}; use any, auto or one of "
                                       f"{list(current.categories)}")
        data = await file.read(limit + 1)  # the body limit already bounds it; this is the exact cap
        if len(data) > limit:
            return error_response(413, f"upload too large: the limit is {_megabytes(limit)}")
        name = file.filename or "upload"
        start = time.perf_counter()
        try:
            header = await run_in_threadpool(image_header, data, name)
            if header.pixels > current.max_pixels:
                raise ImageError(name, f"{header.width}x{header.height} pixels is over the "
                                       f"{current.max_pixels}-pixel limit")
            cost = header.decoded_bytes
            if cost > budget.capacity:
                metrics.refusals.labels("too_large").inc()
                raise ImageError(name, f"{header.width}x{header.height} {header.format} ({header.mode}) needs "
                                       f"{_megabytes(cost)} to decode, over this server's decode budget of "
                                       f"{_megabytes(budget.capacity)}")
            waited = time.perf_counter()
            admitted = await budget.acquire(cost, decode_wait_s)
            metrics.decode_wait_seconds.observe(time.perf_counter() - waited)
            if not admitted:
                metrics.refusals.labels("busy").inc()
                return error_response(503, f"busy: {_megabytes(budget.in_flight)} of photos are being decoded "
                                           f"(budget {_megabytes(budget.capacity)}), {budget.waiting} waiting; "
                                           f"retry in {RETRY_AFTER_S} s",
                                      headers={"Retry-After": str(RETRY_AFTER_S)})
            try:
                pixels = await run_in_threadpool(
                    _timed, metrics.stage_seconds.labels("decode"), decode_upload, current, data, name)
            finally:
                budget.release(cost)  # the thread has finished: run_in_threadpool waits for it
            data = None  # the upload is not needed for the rest of the request
            result = await run_in_threadpool(_embed_and_search, metrics, current, pixels, k, category)
        except ImageError as exc:
            return error_response(422, f"{name}: {exc.reason}")
        except DataError as exc:
            return error_response(422, str(exc))
        out = result.to_dict()
        out["matches"] = [public_item(m) for m in out["matches"]]
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return out

    @app.get("/api/items/{item_id:item_id}/image", summary="An item's catalog photo",
             response_class=FileResponse)
    def item_image(item_id: str):
        current = live.current
        try:
            path = current.image_path(item_id)
        except KeyError:
            # Photo ids are paths, so an item may be called "<folder>/image": this route
            # matches its metadata URL too, and the item's metadata is what was asked for.
            if f"{item_id}/image" in current.catalog.items:
                return JSONResponse(public_item(current.catalog.items[f"{item_id}/image"]))
            return error_response(404, f"no item {item_id!r} in the catalog")
        if not path.is_file():
            return error_response(404, f"the photo of item {item_id!r} is missing on the server")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/items/{item_id:item_id}", summary="An item's metadata")
    def item(item_id: str):
        found = live.current.catalog.items.get(item_id)
        if found is None:
            return error_response(404, f"no item {item_id!r} in the catalog")
        return public_item(found)

    return app


def _embed_and_search(metrics: ServerMetrics, searcher, pixels: np.ndarray, k: int, category: str):
    vector = _timed(metrics.stage_seconds.labels("embed"), embed_input, searcher, pixels)
    return _timed(metrics.stage_seconds.labels("search"), searcher.search_vector, vector, k, category)


# ---------------------------------------------------------------- running it

def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn; a clear DataError if the address cannot be had.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY only on sockets that say they
    are TCP, and without it every response waits ~40 ms for the client's delayed ACK.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise DataError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


class BackgroundServer:
    """uvicorn serving an app from a daemon thread on a loopback port (for tests and tools).

    Binds the socket itself (port 0: a free one), so there is no race for the port::

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host, self.port, self.log_level = app, host, int(port), log_level
        self._server = self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        import uvicorn

        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level=self.log_level, access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def warm_up(searcher) -> None:
    """One search with an encoded blank photo, through the same steps as an upload.

    The first call traces the model's graph (about a second on 2 cores): better paid at
    start-up than by the first customer.
    """
    from vsearch.images import encode_png

    answer(searcher, encode_png(np.full((300, 200, 3), 255, np.uint8)), k=1, source="<warm-up>")


def run(model: str | os.PathLike, index: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, num_threads: int | None = None,
        log_level: str = "info", decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES,
        reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S) -> None:
    """Loads the model and the catalog, then serves until interrupted (Ctrl-C).

    Binds loopback by default: put a reverse proxy in front before exposing it. The address
    is taken before the slow model load, so a port in use fails at once.
    """
    import uvicorn

    from vsearch.search import Searcher

    if not Path(index).is_file():  # fail before the slow model load
        raise DataError(f"{index}: no such catalog index; build one with `vsearch index build`")
    sock = listen(host, port)
    signature = file_signature(index)  # before reading it: a replacement during start-up is seen
    searcher = Searcher.from_paths(model, index, num_threads=num_threads)
    warm_up(searcher)
    live = LiveSearcher(searcher, index, reload_interval_s, signature=signature)
    app = create_app(live, max_upload_bytes=max_upload_bytes, decode_budget_bytes=decode_budget_bytes)
    reload_note = f"reloaded when replaced (checked every {reload_interval_s:g} s)" if reload_interval_s > 0 \
        else "not reloaded"
    print(f"vsearch: {len(searcher.catalog)} items, {index} {reload_note}; serving http://{host}:{port}/ "
          f"(API docs at /docs, metrics at /metrics)")
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down gracefully, then re-raises Ctrl-C
        print("vsearch: stopped")
