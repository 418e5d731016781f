"""The web app: an upload page, a JSON search API, and an admin API over a store of products.

Routes:

* ``GET /``: the upload page (self-contained HTML, see :mod:`vsearch.web.page`), with filter
  controls built from the catalog's attributes (recomputed after every change).
* ``POST /api/search``: multipart ``file`` plus ``k`` (1..100), ``category`` (``auto``,
  the default: a soft prior for the voted category; ``any``; or a catalog category),
  ``box`` (``x0,y0,x1,y1``: search only that part of the photo, as fractions 0..1 of the
  upright photo), ``rerank`` (true / false) and ``filter`` (JSON over the catalog's
  attributes, e.g. ``{"price": {"lte": 50}, "brand": ["acme"], "in_stock": true}``, see
  :func:`vsearch.stores.filters.parse_json`), as form or query fields; answers ``{"category":
  {...}, "filter": {...}, "matches": [{rank, product_id, id, score, category, attributes,
  image_url, inliers}], "box", "elapsed_ms"}`` (``inliers``: on the re-rank's short list):
  products, each once with the photo that matched best (``id``), and ``"match"`` (the
  verdict on the first) when the catalog is calibrated and no filter is applied
  (:class:`~vsearch.catalog.search.SearchResult`).
* ``PUT``, ``DELETE`` and ``GET /api/products/{product_id}``: write, remove and read a
  product; writes need the admin token (:mod:`vsearch.web.admin`).
* ``GET /api/items/{id}``: a photo's metadata (its product, category, attributes);
  ``GET /api/items/{id}/image``: the photo. Any id works once percent-encoded (``image_url``
  does it): slashes, newlines and other control characters, ``%``, ``?``, ``#``.
* ``GET /healthz``: ``ok``, the numbers of products and photos, the model fingerprint, and
  how many catalog photos' re-rank keypoints are ready (``rerank_keypoints``).
* ``GET /metrics``: Prometheus text format (:mod:`vsearch.web.prometheus`).
* ``/openapi.json``, and its pages ``/docs`` (Swagger UI) and ``/redoc``, whose scripts and
  styles are served from the ``fastapi-offline`` package under ``/static-offline-docs``: they
  work without internet, and their Content-Security-Policy lets them load nothing from
  another host (:mod:`vsearch.web.middleware`). Every ``GET`` route answers ``HEAD`` too.

An upload goes through three timed steps (:mod:`vsearch.web.upload`): decode (the header read
first, then the decode and resize admitted against the :mod:`vsearch.web.budget`; a ``box`` is cut from the
upright full-resolution photo, so the budget counts the whole photo), embed, search. A
product write's photos take the same decode step. Writes through this server are seen by
the next search; other writers' changes are taken in every few seconds (:mod:`vsearch.web.live`).

Every error is JSON ``{"error": "<message>"}``: 401 a write without the right admin token
(with ``WWW-Authenticate: Bearer``), 403 a write to a server started without one, 404
unknown product, photo or route, 405 wrong method, 413 upload over the size limit (per
photo; a write also at most 32 photos), 422 an unusable photo (empty, corrupt, not an
image, over the pixel limit or the whole decode budget), a bad ``k``, box, category or
filter, or a product's bad id, category or attribute (named), 503 too many photos being
decoded at once (retry after ``Retry-After`` seconds), 500 anything unexpected (logged; the
server keeps running). Photos are found by looking their id up in the store, so no path
from a request ever reaches the file system, and responses never carry the server's paths.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and they name classes imported inside create_app.
import logging
import math
import os
import threading
import time
import weakref
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated

from vsearch.catalog.products import MAX_PHOTOS, public_item
from vsearch.errors import DataError, ImageError
from vsearch.stores.filters import parse_json
from vsearch.web.admin import PRODUCTS_PREFIX, admin_router, default_media_dir
from vsearch.web.budget import (
    DEFAULT_DECODE_BUDGET_BYTES,
    DEFAULT_DECODE_MAX_WAITING,
    DEFAULT_DECODE_WAIT_S,
    DecodeBudget,
    return_freed_memory,
)
from vsearch.web.live import DEFAULT_RELOAD_INTERVAL_S, LiveSearcher
from vsearch.web.middleware import BodyLimitMiddleware, DocsPolicyMiddleware, HeadMiddleware, error_response, megabytes
from vsearch.web.prometheus import MetricsMiddleware, ServerMetrics
from vsearch.web.upload import BudgetedDecoder, embed_and_search

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 16 * 1024  # multipart boundaries, part headers and the k/category/box/filter fields
MAX_K = 100
DEFAULT_K = 5
DOCS_STATIC_URL = "/static-offline-docs"
BOX_HELP = "search only this part of the photo: x0,y0,x1,y1 as fractions 0..1 of the upright photo"
RERANK_HELP = (
    "verify the short list with local features and put the first product showing the same surface "
    "first (true / false; default: the server's --rerank / --no-rerank, on unless told)"
)
FILTER_HELP = 'JSON over the attributes, e.g. {"price": {"lte": 50}, "brand": ["acme", "zeta"], "in_stock": true}'

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- responses


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


class CatalogPage:
    """The page of the catalog being served, rebuilt once per change of it.

    Its filter controls (:func:`vsearch.web.page.filter_facets`) read every product, so they are
    kept until a write through this server or a refresh that took in other writers' changes
    (:meth:`changed`).
    """

    def __init__(self, config: dict):
        self.config = dict(config)
        self.version = 0
        self._pages = weakref.WeakKeyDictionary()  # searcher -> (version, page)
        self._lock = threading.Lock()

    def changed(self, *_) -> None:
        with self._lock:
            self.version += 1

    def html(self, searcher) -> str:
        from vsearch.web.page import filter_facets, render_page

        version = self.version
        cached = self._pages.get(searcher)
        if cached is not None and cached[0] == version:
            return cached[1]
        store = searcher.store
        products = list(store.products())
        page = render_page(
            {
                **self.config,
                "categories": list(searcher.categories),
                "items": len(products),
                "attributes": filter_facets(products, store.schema),
            }
        )
        self._pages[searcher] = (version, page)
        return page


# ---------------------------------------------------------------- the app


def create_app(
    searcher,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    title: str = "vsearch",
    *,
    decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES,
    decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
    decode_max_waiting: int = DEFAULT_DECODE_MAX_WAITING,
    reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
    admin_token: str | None = None,
    media_dir: str | os.PathLike | None = None,
    rerank: bool = True,
):
    """The FastAPI app serving ``searcher``.

    Args:
        searcher: A :class:`~vsearch.catalog.search.Searcher` (model + store) shared by all requests,
            or a :class:`~vsearch.web.live.LiveSearcher` around one; the model and the search run
            in FastAPI's thread pool, so requests are answered concurrently.
        max_upload_bytes: Largest accepted photo (also capped by ``searcher.max_bytes``).
        title: Shown in the page header and the API docs.
        decode_budget_bytes: Decoded bytes in flight across requests (:mod:`vsearch.web.budget`).
        decode_wait_s: How long a photo waits for the budget before a 503.
        decode_max_waiting: How many photos may wait at once; more get a 503 at once.
        reload_interval_s: How often the store takes in other writers' changes (0: never;
            a :class:`~vsearch.web.live.LiveSearcher` brings its own).
        admin_token: The bearer token product writes need (:func:`vsearch.web.admin.admin_token`);
            None: writes are refused (403).
        media_dir: Where uploaded product photos are kept (default: ``media/`` beside a
            local store).
    """
    from fastapi import File, Form, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from vsearch import __version__
    from vsearch.images import parse_box

    live = searcher if isinstance(searcher, LiveSearcher) else LiveSearcher(searcher, reload_interval_s)
    limit = min(int(max_upload_bytes), int(live.current.max_bytes))
    if limit < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if not (math.isfinite(decode_wait_s) and decode_wait_s >= 0):
        raise ValueError(f"decode_wait_s must be a finite number >= 0, got {decode_wait_s}")
    if admin_token is not None and not str(admin_token).strip():
        raise ValueError("admin_token is empty; give None to disable writes")
    media_dir = media_dir if media_dir is not None else default_media_dir(live.current.store.spec)
    if admin_token is not None and media_dir is None:
        raise ValueError(f"writes to {live.current.store.spec} need a folder for uploaded photos (media_dir)")
    budget = DecodeBudget(decode_budget_bytes, decode_max_waiting)
    metrics = ServerMetrics(live, budget)
    decoder = BudgetedDecoder(budget, metrics, decode_wait_s)
    catalog_page = CatalogPage({"title": title, "max_upload_bytes": limit, "max_k": MAX_K, "default_k": 8})
    live.listeners.append(lambda outcome: metrics.reloads.labels(outcome).inc())
    live.listeners.append(lambda outcome: outcome == "ok" and catalog_page.changed())

    @asynccontextmanager
    async def lifespan(app):
        return_freed_memory()
        live.start()
        try:
            yield
        finally:
            live.stop()

    _register_item_id_convertor()
    app = FastAPIOffline(
        title=title,
        version=__version__,
        lifespan=lifespan,
        static_url=DOCS_STATIC_URL,
        swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
        description="Visual search: upload a photo, get the matching catalog products. "
        'Errors are JSON `{"error": "..."}`.',
    )
    write_limit = MAX_PHOTOS * (limit + FORM_OVERHEAD_BYTES)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=limit + FORM_OVERHEAD_BYTES,
        message=f"upload too large: the limit is {megabytes(limit)}",
        routes=[
            (
                "PUT",
                PRODUCTS_PREFIX,
                write_limit,
                f"product write too large: at most {MAX_PHOTOS} photos of {megabytes(limit)}",
            )
        ],
    )
    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    app.state.live, app.state.decode_budget, app.state.metrics = live, budget, metrics
    app.state.media_dir = media_dir
    if admin_token is not None:  # this server's writes leave photos behind when products go
        live.media_dir = media_dir
    live.warm_rerank = rerank  # searches re-rank unless told: their catalog keypoints are computed at start

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

    app.include_router(
        admin_router(
            live, decoder, token=admin_token, media_dir=media_dir, photo_limit=limit, on_write=catalog_page.changed
        )
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return HTMLResponse(catalog_page.html(live.current))

    @app.get("/healthz", summary="Liveness, catalog size and model fingerprint")
    def healthz():
        current = live.current
        products, photos = current.store.count()
        return {
            "status": "ok",
            "products": products,
            "photos": photos,
            "categories": list(current.categories),
            "model": {
                "fingerprint": current.store.fingerprint,
                "dim": current.store.dim,
                "image_size": int(current.embedder.image_size),
            },
            "rerank_keypoints": current.rerank_ready,
        }

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/search", summary="Search the catalog with a photo")
    async def search(
        file: Annotated[UploadFile, File(description="the photo: JPEG, PNG, GIF, BMP, ...")],
        k_form: Annotated[int | None, Form(alias="k", ge=1, le=MAX_K)] = None,
        category_form: Annotated[str | None, Form(alias="category")] = None,
        box_form: Annotated[str | None, Form(alias="box", description=BOX_HELP)] = None,
        filter_form: Annotated[str | None, Form(alias="filter", description=FILTER_HELP)] = None,
        k_query: Annotated[int | None, Query(alias="k", ge=1, le=MAX_K)] = None,
        category_query: Annotated[str | None, Query(alias="category")] = None,
        box_query: Annotated[str | None, Query(alias="box", description=BOX_HELP)] = None,
        filter_query: Annotated[str | None, Query(alias="filter", description=FILTER_HELP)] = None,
        rerank_form: Annotated[bool | None, Form(alias="rerank", description=RERANK_HELP)] = None,
        rerank_query: Annotated[bool | None, Query(alias="rerank", description=RERANK_HELP)] = None,
    ):
        current = live.current  # this request's searcher, even if another is swapped in meanwhile
        k = k_form or k_query or DEFAULT_K
        rerank_choice = rerank_form if rerank_form is not None else rerank_query
        category = (category_form or category_query or "auto").strip()
        if category not in ("any", "auto", *current.categories):
            return error_response(
                422, f"unknown category {category!r}; use any, auto or one of {list(current.categories)}"
            )
        box_text = box_form or box_query
        try:
            box = parse_box(box_text) if box_text else None
            where = parse_json(filter_form if filter_form is not None else filter_query, current.schema)
        except (ImageError, DataError) as exc:  # "box: ... is not a box inside the photo ...", "filter on 'price': ..."
            return error_response(422, str(exc))
        data = await file.read(limit + 1)  # the body limit already bounds it; this is the exact cap
        if len(data) > limit:
            return error_response(413, f"upload too large: the limit is {megabytes(limit)}")
        name = file.filename or "upload"
        start = time.perf_counter()
        try:
            result = await decoder(
                current,
                data,
                name,
                box,
                then=partial(
                    embed_and_search,
                    metrics,
                    current,
                    k=k,
                    category=category,
                    where=where,
                    rerank=rerank if rerank_choice is None else rerank_choice,
                ),
            )
            if result is None:
                return decoder.busy()
        except ImageError as exc:
            return error_response(422, f"{name}: {exc.reason}")
        except DataError as exc:
            return error_response(422, str(exc))
        out = result.to_dict()
        out["matches"] = [public_item(m) for m in out["matches"]]
        out["box"] = list(box) if box is not None else None
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return JSONResponse(out)  # plain JSON types already: no second walk through jsonable_encoder

    @app.get("/api/items/{item_id:item_id}/image", summary="A catalog photo", response_class=FileResponse)
    def item_image(item_id: str):
        current = live.current
        try:
            path = current.image_path(item_id)
        except KeyError:
            # Photo ids are paths, so a photo may be called "<folder>/image": this route
            # matches its metadata URL too, and the photo's metadata is what was asked for.
            found = current.store.photo(f"{item_id}/image")
            if found is not None:
                return JSONResponse(public_item(found))
            return error_response(404, f"no photo {item_id!r} in the catalog")
        if not path.is_file():
            return error_response(404, f"the file of photo {item_id!r} is missing on the server")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/items/{item_id:item_id}", summary="A catalog photo's metadata: its product, category, attributes")
    def item(item_id: str):
        found = live.current.store.photo(item_id)
        return public_item(found) if found is not None else error_response(404, f"no photo {item_id!r} in the catalog")

    return app
