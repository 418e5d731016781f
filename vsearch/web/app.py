"""The web app: an upload page, a JSON search API, and an admin API over a store of products.

:func:`create_app` puts the server's state on ``app.state`` (its settings, the live searcher,
the decode budget, the metrics, the page) and includes the routers of
:mod:`vsearch.web.routes`, which take that state through :mod:`vsearch.web.deps`:

* ``GET /``: the upload page (``static/index.html``, :mod:`vsearch.web.page`), with filter
  controls built from the catalog's attributes (recomputed after every change).
* ``POST /api/search``: a photo -> products (:mod:`vsearch.web.routes.search`).
* ``PUT``, ``DELETE`` and ``GET /api/products/{product_id}``: write, remove and read a
  product; writes need the admin token (:mod:`vsearch.web.routes.products`, :mod:`vsearch.web.admin`).
* ``GET /api/items/{id}`` and ``/api/items/{id}/image``: a photo's metadata, and the photo.
* ``GET /healthz``: ``ok``, the numbers of products and photos, the model fingerprint, and
  how many catalog photos' re-rank keypoints are ready (``rerank_keypoints``).
* ``GET /metrics``: Prometheus text format (:mod:`vsearch.web.prometheus`).
* ``/openapi.json``, and its pages ``/docs`` (Swagger UI) and ``/redoc`` (unless
  ``ServerConfig.docs`` is off), whose scripts and styles are served from the
  ``fastapi-offline`` package under ``/static-offline-docs``: they work without internet, and
  their Content-Security-Policy lets them load nothing from another host
  (:mod:`vsearch.web.middleware`). Every ``GET`` route answers ``HEAD`` too.

An upload goes through three timed steps (:mod:`vsearch.web.upload`): decode (the header read
first, then the decode and resize admitted against the :mod:`vsearch.web.budget`; a ``box`` is
cut from the upright full-resolution photo, so the budget counts the whole photo), embed,
search. A product write's photos take the same decode step. Writes through this server are
seen by the next search; other writers' changes are taken in every few seconds
(:mod:`vsearch.web.live`).

Every error is JSON ``{"error": "<message>"}``: 401 a write without the right admin token
(with ``WWW-Authenticate: Bearer``), 403 a write to a server started without one, 404
unknown product, photo or route, 405 wrong method, 413 upload over the size limit (per
photo; a write also at most 32 photos), 422 an unusable photo (empty, corrupt, not an
image, over the pixel limit or the whole decode budget), a bad ``k``, box, category or
filter, or a product's bad id, category or attribute (named), 503 too many photos being
decoded at once or a store that failed on its side (a Milvus server down or busy; retry
after ``Retry-After`` seconds), 500 anything unexpected (logged; the
server keeps running). Photos are found by looking their id up in the store, so no path
from a request ever reaches the file system, and responses never carry the server's paths.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from vsearch import __version__
from vsearch.catalog.products import MAX_PHOTOS
from vsearch.catalog.search import Searcher
from vsearch.config import MAX_K, ServerConfig
from vsearch.errors import StoreError
from vsearch.web.admin import default_media_dir
from vsearch.web.budget import DecodeBudget, return_freed_memory
from vsearch.web.live import LiveSearcher
from vsearch.web.middleware import BodyLimitMiddleware, DocsPolicyMiddleware, HeadMiddleware, error_response, megabytes
from vsearch.web.page import CatalogPage
from vsearch.web.prometheus import MetricsMiddleware, ServerMetrics
from vsearch.web.routes import health, items, metrics, page, products, search
from vsearch.web.upload import BudgetedDecoder

ROUTERS = (products.router, page.router, health.router, metrics.router, search.router, items.router)
FORM_OVERHEAD_BYTES = 16 * 1024  # multipart boundaries, part headers and the k/category/box/filter fields
DOCS_STATIC_URL = "/static-offline-docs"

log = logging.getLogger(__name__)


def create_app(
    searcher: Searcher,
    config: ServerConfig | None = None,
    *,
    admin_token: str | None = None,
    media_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """The FastAPI app serving ``searcher`` with ``config``'s settings.

    Args:
        searcher: A :class:`~vsearch.catalog.search.Searcher` (model + store) shared by all
            requests; the model and the search run in FastAPI's thread pool, so requests are
            answered concurrently. It answers with ``config.search`` (:meth:`Searcher.with_config`).
        config: The server's settings (:class:`~vsearch.config.ServerConfig`); default: its
            defaults, with the searcher's own search settings.
        admin_token: The bearer token product writes need (:func:`vsearch.web.admin.admin_token`);
            None: writes are refused (403).
        media_dir: Where uploaded product photos are kept (default: ``media/`` beside a
            local store).
    """
    config = config if config is not None else ServerConfig(search=searcher.config)
    if admin_token is not None and not str(admin_token).strip():
        raise ValueError("admin_token is empty; give None to disable writes")
    budget = DecodeBudget(config.decode_budget_bytes, config.decode_max_waiting)
    # catalog photos a search decodes for its re-rank take their turn in the same budget
    served = searcher.with_config(config.search).with_budget(budget, config.decode_wait_s)
    live = LiveSearcher(served, config.reload_interval_s)
    media = media_dir if media_dir is not None else default_media_dir(live.store.spec)
    if admin_token is not None and media is None:
        raise ValueError(f"writes to {live.store.spec} need a folder for uploaded photos (media_dir)")
    server_metrics = ServerMetrics(live, budget)
    limit = config.max_upload_bytes
    catalog_page = CatalogPage(
        {"title": config.title, "max_upload_bytes": limit, "max_k": MAX_K, "default_k": config.page_k}
    )
    live.listeners.append(lambda outcome: server_metrics.reloads.labels(outcome).inc())
    live.listeners.append(lambda outcome: catalog_page.changed() if outcome == "ok" else None)
    if admin_token is not None:  # this server's writes leave photos behind when products go
        live.media_dir = media
    live.warm_rerank = config.search.rerank  # searches re-rank unless told: keypoints computed at start

    app = new_app(config, live)
    app.state.settings, app.state.live, app.state.decode_budget = config, live, budget
    app.state.metrics, app.state.catalog_page = server_metrics, catalog_page
    app.state.decoder = BudgetedDecoder(budget, server_metrics, config.decode_wait_s)
    app.state.admin_token, app.state.media_dir = admin_token, media
    add_middleware(app, limit, server_metrics)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def new_app(config: ServerConfig, live: LiveSearcher) -> FastAPI:
    """The bare FastAPI app: its title, API docs (served offline) and lifespan (``live``'s threads)."""

    @asynccontextmanager
    async def lifespan(app):
        return_freed_memory()
        live.start()
        try:
            yield
        finally:
            live.stop()

    return FastAPIOffline(
        docs_url="/docs" if config.docs else None,
        redoc_url="/redoc" if config.docs else None,
        title=config.title,
        version=__version__,
        lifespan=lifespan,
        static_url=DOCS_STATIC_URL,
        swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
        description="Visual search: upload a photo, get the matching catalog products. "
        'Errors are JSON `{"error": "..."}`.',
    )


def add_middleware(app: FastAPI, limit: int, server_metrics: ServerMetrics) -> None:
    """The body limit (one photo, or a product write's photos), HEAD, the docs' policy, the metrics."""
    write_limit = MAX_PHOTOS * (limit + FORM_OVERHEAD_BYTES)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=limit + FORM_OVERHEAD_BYTES,
        message=f"upload too large: the limit is {megabytes(limit)}",
        routes=(
            (
                "PUT",
                products.PRODUCTS_PREFIX,
                write_limit,
                f"product write too large: at most {MAX_PHOTOS} photos of {megabytes(limit)}",
            ),
        ),
    )
    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=server_metrics, routes=lambda: app.router.routes)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as the API's JSON ``{"error": "..."}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, validation_message(exc))

    @app.exception_handler(StoreError)
    async def store_error(request, exc):  # the store failed (a server down or busy), not the request
        log.warning("store failed on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__})")


def validation_message(exc) -> str:
    """FastAPI's validation errors as one line: ``k (form): Input should be ...``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = loc[-1] if loc else "request"
        if len(loc) > 1 and loc[0] in ("query", "body"):
            where += " (query)" if loc[0] == "query" else " (form)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
