"""The admin API: writing products over HTTP, behind a bearer token.

Routes (:func:`admin_router`, included by :func:`vsearch.web.app.create_app`):

* ``PUT /api/products/{product_id}``: multipart ``files`` (1 to 32 photos), ``attributes``
  (a JSON object of name -> value) and ``category`` (optional; a PUT replaces the whole
  product, so an omitted one is ``""``). Answers the stored product (as ``GET`` does),
  once the store has persisted it; the next search sees it.
* ``DELETE /api/products/{product_id}``: ``{"deleted": id}``, or 404 for an unknown product.
* ``GET /api/products/{product_id}``: public; ``product_id``, ``category``, ``attributes``,
  ``photos`` (``id``, ``image_url``).

Writes take ``Authorization: Bearer <token>``, compared in constant time. The token
(:func:`admin_token`) comes from ``--admin-token-file`` (stripped; an empty or unreadable
file is an error) or else ``VSEARCH_ADMIN_TOKEN``; without one every write is 403. A
missing or wrong token is 401 with ``WWW-Authenticate: Bearer``, checked before a byte
of the body is read.

A write takes the road of :mod:`vsearch.catalog.products`; its photos go through the server's
decode budget one at a time (503 when it stays busy) and its upload limit (413 for a photo
over it, or for more than 32 photos). A bad id, category, attribute (JSON, reserved name,
wrong type) or photo is 422 naming it, and nothing is written. Concurrent writes are
serialized by the store.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
import hmac
import json
import os
from pathlib import Path

import numpy as np

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
from vsearch.web.middleware import error_response, megabytes

TOKEN_ENV = "VSEARCH_ADMIN_TOKEN"
DISABLED = f"writes are disabled: start the server with {TOKEN_ENV} or --admin-token-file"
PRODUCTS_PREFIX = "/api/products/"
PUT_FIELDS = ("files", "attributes", "category")
MAX_FORM_FIELDS = 8  # attributes, category and a few to spare for a helpful error


class PhotoTooLarge(Exception):
    """A photo of a write over the upload limit (a 413)."""


def admin_token(token_file: str | os.PathLike | None) -> str | None:
    """The admin token: ``token_file``'s content (stripped) if given, else ``$VSEARCH_ADMIN_TOKEN``.

    Returns None when neither is set (writes disabled).

    Raises:
        DataError: the file cannot be read, or holds only white space.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{token_file}: cannot read the admin token ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        if not token:
            raise DataError(f"{token_file}: the admin token file is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def default_media_dir(spec: str) -> Path | None:
    """Where uploaded photos are kept by default: ``media/`` beside a local store; None for a remote one."""
    from vsearch.stores import parse_spec

    _, where = parse_spec(spec)
    return None if "://" in where else Path(where).resolve().parent / "media"


def refusal(token: str | None, authorization: str | None):
    """The error response for a write with this ``Authorization`` header, or None if it may proceed."""
    if token is None:
        return error_response(403, DISABLED)
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return error_response(
            401,
            "this write needs an admin token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        return error_response(401, "wrong admin token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return None


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
    if not isinstance(value, dict):
        raise DataError(f"attributes: expected a JSON object of name -> value, got {type(value).__name__}")
    return value


def admin_router(live, decode, *, token: str | None, media_dir, photo_limit: int, on_write):
    """The product routes over ``live.current``'s store.

    Args:
        live: The :class:`~vsearch.web.live.LiveSearcher` requests use.
        decode: ``await decode(searcher, data, name, box)``: a photo's model input under the
            decode budget, or None when the budget stayed busy; ``decode.busy()``: the 503.
        token: The admin token (None: writes disabled).
        media_dir: Where uploaded photos are kept.
        photo_limit: The largest photo accepted, in bytes.
        on_write: Called after every write that changed the catalog.
    """
    from fastapi import APIRouter, Request
    from fastapi.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    router = APIRouter()
    put_doc = {
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
                            "attributes": {
                                "type": "string",
                                "description": 'JSON, e.g. {"price": 20, "brand": "acme"}',
                            },
                            "category": {"type": "string"},
                        },
                    }
                }
            }
        }
    }

    async def read_photos(form) -> list[Upload]:
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
            data = await f.read(photo_limit + 1)
            if len(data) > photo_limit:
                raise PhotoTooLarge(f"{name}: photo too large: the limit is {megabytes(photo_limit)}")
            uploads.append(Upload(name, data))
        return uploads

    @router.put(
        PRODUCTS_PREFIX + "{product_id:item_id}",
        summary="Create or replace a product (admin token)",
        openapi_extra=put_doc,
    )
    async def put(product_id: str, request: Request):
        denied = refusal(token, request.headers.get("authorization"))
        if denied is not None:
            return denied
        current = live.current  # one store for the whole write
        try:
            form = await request.form(max_files=MAX_PHOTOS, max_fields=MAX_FORM_FIELDS)
        except HTTPException as exc:  # too many photos or fields, or not a readable form
            status = 413 if "files" in str(exc.detail).lower() else 422
            return error_response(status, f"{exc.detail} (a product write takes at most {MAX_PHOTOS} photos)")
        try:
            attributes = parse_attributes(form.get("attributes"))
            category = form.get("category")
            checked = check_product(product_id, category if category is not None else "", attributes, current.schema)
            uploads = await read_photos(form)
            pixels = []
            for upload in uploads:  # one at a time: a write never holds more than one photo's budget
                decoded = await decode(current, upload.data, upload.name, None)
                if decoded is None:
                    return decode.busy()
                pixels.append(decoded)
            stored = await run_in_threadpool(
                put_product,
                current,
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
        on_write()
        return public_product(stored)

    @router.delete(PRODUCTS_PREFIX + "{product_id:item_id}", summary="Remove a product (admin token)")
    async def delete(product_id: str, request: Request):
        denied = refusal(token, request.headers.get("authorization"))
        if denied is not None:
            return denied
        try:
            removed = await run_in_threadpool(delete_product, live.current.store, product_id)
        except DataError as exc:
            return error_response(422, str(exc))
        if not removed:
            return error_response(404, f"no product {product_id!r} in the catalog")
        on_write()
        return {"deleted": product_id}

    @router.get(PRODUCTS_PREFIX + "{product_id:item_id}", summary="A product: category, attributes, photos")
    def get(product_id: str):
        product = live.current.store.get(product_id)
        if product is None:
            return error_response(404, f"no product {product_id!r} in the catalog")
        return public_product(product)

    return router
