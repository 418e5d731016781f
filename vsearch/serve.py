"""The web service: an upload page and a JSON API over a :class:`~vsearch.search.Searcher`.

    vsearch serve --model saved_models/embedding --index saved_models/catalog.vsi

Routes:

* ``GET /``: the upload page (self-contained HTML, see :mod:`vsearch.page`).
* ``POST /api/search``: multipart ``file`` plus ``k`` (1..100) and ``category``
  (``any``, ``auto`` or a catalog category) as form or query fields; answers
  ``{"category": {...}, "matches": [{rank, id, score, category, image_url, ...}], "elapsed_ms"}``.
* ``GET /api/items/{id}``: an item's metadata; ``GET /api/items/{id}/image``: its photo.
* ``GET /healthz``: ``ok``, the catalog size and the model fingerprint; ``/docs`` and
  ``/openapi.json``: FastAPI's API description.

Every error is JSON ``{"error": "<message>"}``: 404 unknown item or route, 405 wrong
method, 413 upload over the size limit, 422 an unusable photo (empty, corrupt, not an
image, over the pixel limit), a bad ``k`` or an unknown category, 500 anything unexpected
(logged; the server keeps running). Item photos are found by looking the id up in the
catalog's metadata, so no path from a request ever reaches the file system, and responses
never carry the server's paths.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and they name classes imported inside create_app.
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from vsearch.errors import DataError, ImageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 16 * 1024  # multipart boundaries, part headers and the k/category fields
MAX_K = 100
DEFAULT_K = 5
PRIVATE_FIELDS = ("path",)  # item metadata that must not leave the server

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


def error_response(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


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


# ---------------------------------------------------------------- request body limit

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


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


# ---------------------------------------------------------------- the app

def create_app(searcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, title: str = "vsearch"):
    """The FastAPI app serving ``searcher``.

    Args:
        searcher: A :class:`~vsearch.search.Searcher` (model + catalog), shared by all requests;
            search runs in FastAPI's thread pool, so requests are answered concurrently.
        max_upload_bytes: Largest accepted photo (also capped by ``searcher.max_bytes``).
        title: Shown in the page header and the API docs.
    """
    from fastapi import FastAPI, File, Form, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from vsearch import __version__
    from vsearch.page import render_page

    limit = min(int(max_upload_bytes), int(searcher.max_bytes))
    if limit < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    categories = list(searcher.categories)
    app = FastAPI(title=title, version=__version__,
                  description="Visual search: upload a photo, get the matching catalog items. "
                              'Errors are JSON `{"error": "..."}`.')
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limit + FORM_OVERHEAD_BYTES)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__})")

    page = render_page({"title": title, "categories": categories, "max_upload_bytes": limit,
                        "max_k": MAX_K, "default_k": 8, "items": len(searcher.catalog)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return HTMLResponse(page)

    @app.get("/healthz", summary="Liveness, catalog size and model fingerprint")
    def healthz():
        return {"status": "ok", "items": len(searcher.catalog), "categories": categories,
                "model": {"fingerprint": searcher.catalog.fingerprint, "dim": searcher.catalog.dim,
                          "image_size": int(searcher.embedder.image_size)}}

    @app.post("/api/search", summary="Search the catalog with a photo")
    def search(file: Annotated[UploadFile, File(description="the photo: JPEG, PNG, GIF, BMP, ...")],
               k_form: Annotated[int | None, Form(alias="k", ge=1, le=MAX_K)] = None,
               category_form: Annotated[str | None, Form(alias="category")] = None,
               k_query: Annotated[int | None, Query(alias="k", ge=1, le=MAX_K)] = None,
               category_query: Annotated[str | None, Query(alias="category")] = None):
        k = k_form or k_query or DEFAULT_K
        category = (category_form or category_query or "any").strip()
        if category not in ("any", "auto", *categories):
            return error_response(422, f"unknown category {category!r}; use any, auto or one of {categories}")
        data = file.file.read(limit + 1)  # the body limit already bounds it; this is the exact cap
        if len(data) > limit:
            return error_response(413, f"upload too large: the limit is {_megabytes(limit)}")
        return _search(searcher, data, k, category, file.filename or "upload")

    @app.get("/api/items/{item_id:path}/image", summary="An item's catalog photo",
             response_class=FileResponse)
    def item_image(item_id: str):
        try:
            path = searcher.image_path(item_id)
        except KeyError:
            # Photo ids are paths, so an item may be called "<folder>/image": this route
            # matches its metadata URL too, and the item's metadata is what was asked for.
            if f"{item_id}/image" in searcher.catalog.items:
                return JSONResponse(public_item(searcher.catalog.items[f"{item_id}/image"]))
            return error_response(404, f"no item {item_id!r} in the catalog")
        if not path.is_file():
            return error_response(404, f"the photo of item {item_id!r} is missing on the server")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/items/{item_id:path}", summary="An item's metadata")
    def item(item_id: str):
        found = searcher.catalog.items.get(item_id)
        if found is None:
            return error_response(404, f"no item {item_id!r} in the catalog")
        return public_item(found)

    return app


def _search(searcher, data: bytes, k: int, category: str, filename: str):
    """Runs one search; unusable photos and bad arguments become 422 errors."""
    start = time.perf_counter()
    try:
        result = searcher.search(data, k=k, category=category, source=filename)
    except ImageError as exc:
        return error_response(422, f"{filename}: {exc.reason}")
    except DataError as exc:
        return error_response(422, str(exc))
    out = result.to_dict()
    out["matches"] = [public_item(m) for m in out["matches"]]
    out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return out


# ---------------------------------------------------------------- running it

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

        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and without it every response waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
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
    """One search with an encoded blank photo, through the same path as an upload.

    The first call traces the model's graph (about a second on 2 cores): better paid at
    start-up than by the first customer.
    """
    import numpy as np

    from vsearch.images import encode_png

    searcher.search(encode_png(np.full((300, 200, 3), 255, np.uint8)), k=1, source="<warm-up>")


def run(model: str | os.PathLike, index: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, num_threads: int | None = None,
        log_level: str = "info") -> None:
    """Loads the model and the catalog, then serves until interrupted (Ctrl-C).

    Binds loopback by default: put a reverse proxy in front before exposing it.
    """
    import uvicorn

    from vsearch.search import Searcher

    if not Path(index).is_file():  # fail before the slow model load
        raise DataError(f"{index}: no such catalog index; build one with `vsearch index build`")
    searcher = Searcher.from_paths(model, index, num_threads=num_threads)
    warm_up(searcher)
    app = create_app(searcher, max_upload_bytes=max_upload_bytes)
    print(f"vsearch: {len(searcher.catalog)} items; serving http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
