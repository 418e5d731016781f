"""The web app: an upload page and a JSON API over a :class:`~vsearch.search.Searcher`.

Routes:

* ``GET /``: the upload page (self-contained HTML, see :mod:`vsearch.page`).
* ``POST /api/search``: multipart ``file`` plus ``k`` (1..100), ``category`` (``any``,
  ``auto`` or a catalog category) and ``box`` (``x0,y0,x1,y1``: search only that part of
  the photo, as fractions 0..1 of the upright photo), as form or query fields; answers
  ``{"category": {...}, "matches": [{rank, id, score, category, image_url, ...}], "box",
  "elapsed_ms"}``, and ``"match"`` (the verdict on the first match) when the catalog is
  calibrated (:class:`~vsearch.search.SearchResult`).
* ``GET /api/items/{id}``: an item's metadata; ``GET /api/items/{id}/image``: its photo. Any
  id works once percent-encoded (``image_url`` does it): slashes, newlines and other
  control characters, ``%``, ``?``, ``#``.
* ``GET /healthz``: ``ok``, the catalog size and the model fingerprint.
* ``GET /metrics``: Prometheus text format (:mod:`vsearch.server_metrics`).
* ``/openapi.json``, and its pages ``/docs`` (Swagger UI) and ``/redoc``, whose scripts and
  styles are served from the ``fastapi-offline`` package under ``/static-offline-docs``: they
  work without internet, and their Content-Security-Policy lets them load nothing from
  another host (:mod:`vsearch.middleware`). Every ``GET`` route answers ``HEAD`` too.

An upload goes through three timed steps: decode (the photo's header read first, then the
decode and resize admitted against the :mod:`vsearch.budget`; a ``box`` is cut from the
upright full-resolution photo, so the budget counts the whole photo), embed, search. The
catalog is reloaded when its index file is replaced (:mod:`vsearch.live`).

Every error is JSON ``{"error": "<message>"}``: 404 unknown item or route, 405 wrong
method, 413 upload over the size limit, 422 an unusable photo (empty, corrupt, not an
image, over the pixel limit or the whole decode budget), a bad ``k``, box or category, 503
too many photos being decoded at once (retry after ``Retry-After`` seconds), 500 anything
unexpected (logged; the server keeps running). Item photos are found by looking the id up
in the catalog's metadata, so no path from a request ever reaches the file system, and
responses never carry the server's paths.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and they name classes imported inside create_app.
import logging
import math
import os
import time
import weakref
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import quote

import numpy as np

from vsearch.budget import (DEFAULT_DECODE_BUDGET_BYTES, DEFAULT_DECODE_MAX_WAITING, DEFAULT_DECODE_WAIT_S,
                            DecodeBudget, return_freed_memory)
from vsearch.errors import DataError, ImageError
from vsearch.live import DEFAULT_RELOAD_INTERVAL_S, LiveSearcher
from vsearch.middleware import BodyLimitMiddleware, DocsPolicyMiddleware, HeadMiddleware, error_response
from vsearch.server_metrics import MetricsMiddleware, ServerMetrics, timed

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 16 * 1024  # multipart boundaries, part headers and the k/category/box fields
MAX_K = 100
DEFAULT_K = 5
PRIVATE_FIELDS = ("path",)  # item metadata that must not leave the server
RETRY_AFTER_S = 1           # the Retry-After of a 503
DOCS_STATIC_URL = "/static-offline-docs"
BOX_HELP = "search only this part of the photo: x0,y0,x1,y1 as fractions 0..1 of the upright photo"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- responses

def image_url(item_id: str) -> str:
    """The API address of an item's photo (the id percent-encoded, its slashes kept)."""
    return f"/api/items/{quote(str(item_id), safe='/')}/image"


def public_item(item: dict) -> dict:
    """An item or match as the API shows it: no server paths, plus its ``image_url``."""
    out = {k: v for k, v in item.items() if k not in PRIVATE_FIELDS}
    out["image_url"] = image_url(item["id"])
    return out


def megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


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


# ---------------------------------------------------------------- the steps of one upload

def decode_upload(searcher, data: bytes, source: str, box=None) -> np.ndarray:
    """Step 1, under the decode budget: encoded bytes -> the model's (S, S, 3) float32 input.

    The searcher's own step (:meth:`vsearch.search.Searcher.model_input`); ``box`` is cut
    from the upright full-resolution photo before resizing.
    """
    return searcher.model_input(data, source, box)


def embed_and_search(metrics: ServerMetrics, searcher, pixels: np.ndarray, k: int, category: str):
    """Steps 2 and 3, each timed: the model call on the decoded input, then the catalog search."""
    vector = timed(metrics.stage_seconds.labels("embed"), searcher.embedder.embed_pixels, pixels[None])[0]
    return timed(metrics.stage_seconds.labels("search"), searcher.search_vector, vector, k, category)


# ---------------------------------------------------------------- the app

def create_app(searcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, title: str = "vsearch", *,
               decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES, decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
               decode_max_waiting: int = DEFAULT_DECODE_MAX_WAITING,
               index_path: str | os.PathLike | None = None,
               reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S):
    """The FastAPI app serving ``searcher``.

    Args:
        searcher: A :class:`~vsearch.search.Searcher` (model + catalog) shared by all requests,
            or a :class:`~vsearch.live.LiveSearcher` around one; the model and the search run
            in FastAPI's thread pool, so requests are answered concurrently.
        max_upload_bytes: Largest accepted photo (also capped by ``searcher.max_bytes``).
        title: Shown in the page header and the API docs.
        decode_budget_bytes: Decoded bytes in flight across requests (:mod:`vsearch.budget`).
        decode_wait_s: How long a photo waits for the budget before a 503.
        decode_max_waiting: How many photos may wait at once; more get a 503 at once.
        index_path: The searcher's index file: watched and reloaded when replaced (a
            :class:`~vsearch.live.LiveSearcher` brings its own).
        reload_interval_s: How often ``index_path`` is checked (0: never).
    """
    from fastapi import File, Form, Query, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from vsearch import __version__
    from vsearch.images import image_header, parse_box
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
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limit + FORM_OVERHEAD_BYTES,
                       message=f"upload too large: the limit is {megabytes(limit)}")
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

    async def decode_within_budget(current, data: bytes, name: str, box):
        """Step 1 once the budget admits the photo's decoded cost; None if it stayed busy."""
        header = await run_in_threadpool(image_header, data, name)
        if header.pixels > current.max_pixels:
            raise ImageError(name, f"{header.width}x{header.height} pixels is over the "
                                   f"{current.max_pixels}-pixel limit")
        cost = header.decoded_bytes  # the whole photo, box or not: the box is cut after decoding
        if cost > budget.capacity:
            metrics.refusals.labels("too_large").inc()
            raise ImageError(name, f"{header.width}x{header.height} {header.format} ({header.mode}) needs "
                                   f"{megabytes(cost)} to decode, over this server's decode budget of "
                                   f"{megabytes(budget.capacity)}")
        waited = time.perf_counter()
        admitted = await budget.acquire(cost, decode_wait_s)
        metrics.decode_wait_seconds.observe(time.perf_counter() - waited)
        if not admitted:
            metrics.refusals.labels("busy").inc()
            return None
        try:
            return await run_in_threadpool(timed, metrics.stage_seconds.labels("decode"),
                                           decode_upload, current, data, name, box)
        finally:
            budget.release(cost)  # the thread has finished: run_in_threadpool waits for it

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
                     box_form: Annotated[str | None, Form(alias="box", description=BOX_HELP)] = None,
                     k_query: Annotated[int | None, Query(alias="k", ge=1, le=MAX_K)] = None,
                     category_query: Annotated[str | None, Query(alias="category")] = None,
                     box_query: Annotated[str | None, Query(alias="box", description=BOX_HELP)] = None):
        current = live.current  # this request's catalog, even if a new one is swapped in meanwhile
        k = k_form or k_query or DEFAULT_K
        category = (category_form or category_query or "any").strip()
        if category not in ("any", "auto", *current.categories):
            return error_response(422, f"unknown category {category!r}; use any, auto or one of "
                                       f"{list(current.categories)}")
        box_text = box_form or box_query
        try:
            box = parse_box(box_text) if box_text else None
        except ImageError as exc:  # "box: ... is not a box inside the photo ..."
            return error_response(422, str(exc))
        data = await file.read(limit + 1)  # the body limit already bounds it; this is the exact cap
        if len(data) > limit:
            return error_response(413, f"upload too large: the limit is {megabytes(limit)}")
        name = file.filename or "upload"
        start = time.perf_counter()
        try:
            pixels = await decode_within_budget(current, data, name, box)
            if pixels is None:
                return error_response(503, f"busy: {megabytes(budget.in_flight)} of photos are being decoded "
                                           f"(budget {megabytes(budget.capacity)}), {budget.waiting} waiting; "
                                           f"retry in {RETRY_AFTER_S} s",
                                      headers={"Retry-After": str(RETRY_AFTER_S)})
            data = None  # the upload is not needed for the rest of the request
            result = await run_in_threadpool(embed_and_search, metrics, current, pixels, k, category)
        except ImageError as exc:
            return error_response(422, f"{name}: {exc.reason}")
        except DataError as exc:
            return error_response(422, str(exc))
        out = result.to_dict()
        out["matches"] = [public_item(m) for m in out["matches"]]
        out["box"] = list(box) if box is not None else None
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
