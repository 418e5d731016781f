"""The catalog's products over HTTP: the admin writes, and a product's public read.

* ``PUT /api/products/{product_id}``: multipart ``files`` (1 to 32 photos), ``attributes``
  (a JSON object of name -> value) and ``category`` (optional; a PUT replaces the whole
  product, so an omitted one is ``""``). Answers the product as this write stored it (as
  ``GET`` shows it), once the store has persisted it, whatever another writer did to it
  since; the next search sees it.
* ``DELETE /api/products/{product_id}``: ``{"deleted": id}``, or 404 for an unknown product.
* ``GET /api/products/{product_id}``: public; ``product_id``, ``category``, ``attributes``,
  ``photos`` (``id``, ``image_url``).

Writes need the admin token (:func:`vsearch.web.admin.require_admin`). A write takes the road
of :mod:`vsearch.catalog.products`; its photos go through the server's decode budget one at a
time (503 when it stays busy) and its upload limit (413 for a photo over it, or for more than
32 photos). A bad id, category, attribute (JSON, reserved name, wrong type) or photo is 422
naming it, and nothing is written. Concurrent writes are serialized by the store; a store
that fails on its side (a Milvus server down, another write holding the catalog too long)
is 503 with ``Retry-After``, and the message says whether the write may be partly done
(writing it again completes it).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
import json

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vsearch.catalog.products import (
    MAX_PHOTOS,
    Upload,
    check_count,
    check_product,
    delete_product,
    public_product,
    put_product,
)
from vsearch.errors import DataError, ImageError
from vsearch.web.admin import require_admin
from vsearch.web.deps import CurrentSearcher, Decoder, MediaDir, Page, UploadLimit
from vsearch.web.middleware import error_response, megabytes

PRODUCTS_PREFIX = "/api/products/"
PUT_FIELDS = ("files", "attributes", "category")
MAX_FORM_FIELDS = 8  # attributes, category and a few to spare for a helpful error
PUT_DOC = {  # the PUT reads its form itself (to bound it); this is its form for the API docs
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"the product's photos, 1 to {MAX_PHOTOS}",
                        },
                        "attributes": {"type": "string", "description": 'JSON, e.g. {"price": 20, "brand": "acme"}'},
                        "category": {"type": "string"},
                    },
                }
            }
        }
    }
}

router = APIRouter()


class PhotoTooLarge(Exception):
    """A photo of a write over the upload limit (a 413)."""


def parse_attributes(text) -> dict | None:
    """The ``attributes`` form field: a JSON object (None when absent)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise DataError("attributes: expected a form field of JSON text, got a file")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DataError(f"attributes: not JSON ({exc})") from None
    except RecursionError:
        raise DataError("attributes: JSON nested too deeply; attributes are name -> single value") from None
    if not isinstance(value, dict):
        raise DataError(f"attributes: expected a JSON object of name -> value, got {type(value).__name__}")
    return value


async def read_photos(form, limit: int) -> list[Upload]:
    """The write's photos, each at most ``limit`` bytes; an unknown field or a text ``files`` is a DataError."""
    unknown = sorted(set(form.keys()) - set(PUT_FIELDS))
    if unknown:
        raise DataError(f"unknown form field(s) {unknown}; a product write takes {', '.join(PUT_FIELDS)}")
    files = form.getlist("files")
    if any(not isinstance(f, UploadFile) for f in files):
        raise DataError("files: expected photo files, got a text field")
    check_count(len(files))
    uploads = []
    for f in files:
        name = f.filename or "upload"
        data = await f.read(limit + 1)
        if len(data) > limit:
            raise PhotoTooLarge(f"{name}: photo too large: the limit is {megabytes(limit)}")
        uploads.append(Upload(name, data))
    return uploads


@router.put(
    PRODUCTS_PREFIX + "{product_id:item_id}",
    summary="Create or replace a product (admin token)",
    openapi_extra=PUT_DOC,
    dependencies=[Depends(require_admin)],
)
async def put(
    product_id: str,
    request: Request,
    searcher: CurrentSearcher,  # one store for the whole write
    decode: Decoder,
    limit: UploadLimit,
    media_dir: MediaDir,
    page: Page,
):
    try:
        form = await request.form(max_files=MAX_PHOTOS, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # too many photos or fields, or not a readable form
        status = 413 if "files" in str(exc.detail).lower() else 422
        return error_response(status, f"{exc.detail} (a product write takes at most {MAX_PHOTOS} photos)")
    try:
        attributes = parse_attributes(form.get("attributes"))
        category = form.get("category")
        checked = check_product(product_id, category if category is not None else "", attributes, searcher.schema)
        uploads = await read_photos(form, limit)
        pixels = []
        for upload in uploads:  # one at a time: a write never holds more than one photo's budget
            decoded = await decode(searcher, upload.data, upload.name, None)
            if decoded is None:
                return decode.busy()
            pixels.append(decoded)
        stored = await run_in_threadpool(
            put_product,
            searcher,
            checked.product_id,
            uploads,
            category=checked.category,
            attributes=checked.attributes,
            media_dir=media_dir,
            pixels=np.stack(pixels),
        )
    except PhotoTooLarge as exc:
        return error_response(413, str(exc))
    except ImageError as exc:
        return error_response(422, f"{exc.source}: {exc.reason}; nothing was written")
    except DataError as exc:
        return error_response(422, str(exc))
    finally:
        await form.close()
    page.changed()
    return public_product(stored)


@router.delete(
    PRODUCTS_PREFIX + "{product_id:item_id}",
    summary="Remove a product (admin token)",
    dependencies=[Depends(require_admin)],
)
async def delete(product_id: str, searcher: CurrentSearcher, page: Page):
    try:
        removed = await run_in_threadpool(delete_product, searcher.store, product_id)
    except DataError as exc:
        return error_response(422, str(exc))
    if not removed:
        return error_response(404, f"no product {product_id!r} in the catalog")
    page.changed()
    return {"deleted": product_id}


@router.get(PRODUCTS_PREFIX + "{product_id:item_id}", summary="A product: category, attributes, photos")
def get(product_id: str, searcher: CurrentSearcher):
    product = searcher.store.get(product_id)
    if product is None:
        return error_response(404, f"no product {product_id!r} in the catalog")
    return public_product(product)
