"""``POST /api/search``: a photo -> the catalog's products.

Multipart ``file`` plus the fields of :class:`SearchFields`, each as a form field or a query
field: ``k`` (1..100), ``category`` (``auto``: a soft prior for the voted category; ``any``;
or a catalog category), ``box`` (``x0,y0,x1,y1``: search only that part of the photo, as
fractions 0..1 of the upright photo), ``rerank`` (true / false), ``regions`` (``none``, or
``centre``: the photo's centre searched beside it, :mod:`vsearch.catalog.regions`; not with
a box) and ``filter`` (JSON over the catalog's attributes, e.g. ``{"price": {"lte": 50},
"brand": ["acme"], "in_stock": true}``, see :func:`vsearch.stores.filters.parse_json`). A
field left out is the server's setting (``ServerConfig.search``: ``k`` 5, ``category`` auto,
``rerank`` on, ``regions`` none).

Answers ``{"category": {...}, "filter": {...}, "matches": [{rank, product_id, id, score,
category, attributes, image_url, inliers, outline}], "box", "region", "elapsed_ms"}``
(``region``: the part of the photo that gave the first product, ``[x0, y0, x1, y1]`` as
fractions of the upright photo like ``box``, null for the whole photo; ``inliers``: on
the re-rank's short list; ``outline``: on the product it verified, the four corners of its
catalog photo in the uploaded photo, ``[[x, y], ...]`` top left, top right, bottom right,
bottom left, as fractions of the upright photo, like ``box``): products, each once with the
photo that matched best (``id``), and ``"match"`` (the verdict on the first) when the catalog
is calibrated and no filter is applied (:class:`~vsearch.catalog.search.SearchResult`). The
upload's steps (decode under the budget, embed, search) are :mod:`vsearch.web.upload`'s.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from vsearch.catalog.products import public_item
from vsearch.config import MAX_K, REGION_SETS
from vsearch.errors import DataError, ImageError
from vsearch.images import Box, parse_box
from vsearch.stores.filters import Filter, parse_json
from vsearch.web.deps import CurrentSearcher, Decoder, Metrics, UploadLimit
from vsearch.web.middleware import error_response, megabytes
from vsearch.web.upload import embed_and_search, query_upload

K_HELP = f"products in the answer, 1..{MAX_K} (default: the server's search.k, 5 unless told)"
CATEGORY_HELP = "auto (a soft prior for the category the nearest products vote for), any, or a catalog category"
BOX_HELP = "search only this part of the photo: x0,y0,x1,y1 as fractions 0..1 of the upright photo"
RERANK_HELP = (
    "verify the short list with local features and put the first product showing the same surface "
    "first (true / false; default: the server's --rerank / --no-rerank, on unless told)"
)
REGIONS_HELP = (
    "parts of the photo searched beside it, in the same model call: none, or centre (its centre 80%); "
    "not with a box (default: the server's search.regions)"
)
FILTER_HELP = 'JSON over the attributes, e.g. {"price": {"lte": 50}, "brand": ["acme", "zeta"], "in_stock": true}'

router = APIRouter()


class SearchFields(BaseModel):
    """A search's fields as a request sends them, each a form field or a query field (the form's wins)."""

    k: int | None = Field(None, ge=1, le=MAX_K, description=K_HELP)
    category: str | None = Field(None, description=CATEGORY_HELP)
    box: str | None = Field(None, description=BOX_HELP)
    filter: str | None = Field(None, description=FILTER_HELP)
    rerank: bool | None = Field(None, description=RERANK_HELP)
    regions: str | None = Field(None, description=REGIONS_HELP)


@dataclass(frozen=True)
class SearchParams:
    """A search's parameters, checked against the catalog, the server's settings filling the gaps."""

    k: int
    category: str
    box: Box | None
    where: Filter
    rerank: bool
    regions: str


async def search_params(
    form: Annotated[SearchFields, Form()], query: Annotated[SearchFields, Query()], searcher: CurrentSearcher
) -> SearchParams:
    """The request's :class:`SearchFields` -> :class:`SearchParams`; a bad category, box, regions or filter is a 422."""
    settings = searcher.config
    category = (form.category or query.category or settings.category).strip()
    if category not in ("any", "auto", *searcher.categories):
        raise HTTPException(422, f"unknown category {category!r}; use any, auto or one of {list(searcher.categories)}")
    box_text = form.box or query.box
    try:
        box = parse_box(box_text) if box_text else None
        where = parse_json(form.filter if form.filter is not None else query.filter, searcher.schema)
    except (ImageError, DataError) as exc:  # "box: ... is not a box inside the photo ...", "filter on 'price': ..."
        raise HTTPException(422, str(exc)) from None
    rerank = form.rerank if form.rerank is not None else query.rerank
    regions = (form.regions or query.regions or settings.regions).strip()
    if regions not in REGION_SETS:
        raise HTTPException(422, f"regions must be one of {', '.join(REGION_SETS)}, got {regions!r}")
    return SearchParams(
        k=form.k or query.k or settings.k,
        category=category,
        box=box,
        where=where,
        rerank=settings.rerank if rerank is None else rerank,
        regions=regions,
    )


@router.post("/api/search", summary="Search the catalog with a photo")
async def search(
    file: Annotated[UploadFile, File(description="the photo: JPEG, PNG, GIF, BMP, ...")],
    params: Annotated[SearchParams, Depends(search_params)],
    searcher: CurrentSearcher,  # the one search_params checked against (one per request)
    decoder: Decoder,
    metrics: Metrics,
    limit: UploadLimit,
) -> Response:
    data = await file.read(limit + 1)  # the body limit already bounds it; this is the exact cap
    if len(data) > limit:
        return error_response(413, f"upload too large: the limit is {megabytes(limit)}")
    name = file.filename or "upload"
    start = time.perf_counter()
    steps = partial(
        embed_and_search,
        metrics,
        searcher,
        k=params.k,
        category=params.category,
        where=params.where,
        rerank=params.rerank,
    )
    try:
        decode = partial(query_upload, regions=params.regions)
        result = await decoder(searcher, data, name, params.box, then=steps, decode=decode)
        if result is None:
            return decoder.busy()
    except ImageError as exc:
        return error_response(422, f"{name}: {exc.reason}")
    except DataError as exc:
        return error_response(422, str(exc))
    out = result.to_dict()  # outlines and region in fractions of the whole photo
    out["matches"] = [public_item(m) for m in out["matches"]]
    out["box"] = list(params.box) if params.box is not None else None
    out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return JSONResponse(out)  # plain JSON types already: no second walk through jsonable_encoder
