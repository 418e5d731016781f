"""What a route takes from the app, through ``Depends``: the state :func:`vsearch.web.app.create_app`
puts on ``app.state`` once, as ``Annotated`` aliases::

    @router.get("/healthz")
    def healthz(searcher: CurrentSearcher): ...

The getters are ``async`` so that FastAPI calls them on the event loop, not in a worker
thread. A request reads the searcher once (FastAPI keeps a dependency's value for the
request), so every step of it uses the same one.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at runtime.
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from vsearch.catalog.search import Searcher
from vsearch.web.page import CatalogPage
from vsearch.web.prometheus import ServerMetrics
from vsearch.web.upload import BudgetedDecoder


async def get_searcher(request: Request) -> Searcher:
    """The searcher this request uses (the live one's, :class:`vsearch.web.live.LiveSearcher`)."""
    return request.app.state.live.current


async def get_decoder(request: Request) -> BudgetedDecoder:
    return request.app.state.decoder


async def get_metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


async def get_catalog_page(request: Request) -> CatalogPage:
    return request.app.state.catalog_page


async def get_upload_limit(request: Request) -> int:
    """The largest photo accepted, in bytes (the app's ``ServerConfig.max_upload_bytes``)."""
    return request.app.state.settings.max_upload_bytes


async def get_media_dir(request: Request) -> Path | None:
    return request.app.state.media_dir


CurrentSearcher = Annotated[Searcher, Depends(get_searcher)]
Decoder = Annotated[BudgetedDecoder, Depends(get_decoder)]
Metrics = Annotated[ServerMetrics, Depends(get_metrics)]
Page = Annotated[CatalogPage, Depends(get_catalog_page)]
UploadLimit = Annotated[int, Depends(get_upload_limit)]
MediaDir = Annotated[Path | None, Depends(get_media_dir)]
