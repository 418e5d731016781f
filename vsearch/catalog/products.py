"""Writing one product: the one road the admin API (and the CLI) take into a store.

:func:`put_product` reads as its steps:

1. :func:`check_product`: the product id (non-empty, at most 256 characters, printable,
   no space at either end: :func:`vsearch.stores.validate.check_id`, the rule manifests
   follow too), its category, and its attributes against the store's ``schema`` (``bool``,
   ``int``, ``float``, ``text`` as :mod:`vsearch.catalog.manifest` types them; a new attribute
   joins the schema; a reserved name, a value of the wrong type or one no store can hold
   (:func:`vsearch.stores.validate.value_problem`: a 400-digit number, NaN, a list) is a
   :class:`~vsearch.errors.DataError` naming the attribute), all before anything is written;
2. :func:`decode_photos`: each photo through the searcher's road
   (:meth:`vsearch.catalog.search.Searcher.model_input`); an unusable one is an
   :class:`~vsearch.errors.ImageError` and nothing is written (the server decodes them
   itself, under its decode budget, and passes the pixels in);
3. one batch through the model (``searcher.embedder.embed_pixels``);
4. :func:`keep_photo`: uploaded bytes saved as a content-addressed media file
   (``<media_dir>/<sha256[:2]>/<sha256>.<ext>``, through
   :func:`vsearch.artifacts.write_atomic`); a photo that is already a local file is used
   in place;
5. ``store.upsert``: the product gets exactly these photos, category and attributes,
   persisted before it returns; then the photos' re-rank keypoints are stored beside it
   (:meth:`vsearch.catalog.search.Searcher.store_keypoints`; a failure there is logged, as
   searches compute what is missing). The write is then acknowledged: the answer is the
   product as written, never an error, whatever another writer did to it meanwhile.

A photo's id is ``<product_id>/<sha256[:16]>`` of its bytes: the same photo keeps its id
from one write to the next, and the same photo twice in one write is kept once.

Media no product uses any more (a product deleted, its photos replaced) is removed by
:func:`collect_media` (``vsearch index compact --media DIR``). It never removes a file whose
content a stored photo still names: steps 4 and 5 run under a shared lock on the media
folder, the collection under its exclusive lock after taking in every writer's changes, so
a photo kept but not yet upserted is never taken for garbage; a file is also spared until it
is ``min_age_s`` old (a reused file is touched when a write keeps it again).

The public form of what is stored (:func:`public_product`, :func:`public_item`) never
carries a server path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from vsearch.catalog.manifest import Photo, value_type
from vsearch.errors import DataError
from vsearch.stores import RESERVED, Product
from vsearch.stores.validate import INT_MAX, INT_MIN, check_id, describe, value_problem
from vsearch.stores.validate import MAX_ID_CHARS as MAX_ID_CHARS  # the API's limit (tests and docs name it here)

MAX_PHOTOS = 32  # photos in one write
PRIVATE_FIELDS = ("path",)  # what the store knows of a photo that must not leave the server
# A new attribute's name: what a --where expression can name (vsearch.stores.filters).
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MEDIA_FILE = re.compile(r"(?P<digest>[0-9a-f]{64})\.[a-z0-9]{1,8}")  # <sha256>.<ext>: what keep_photo writes
MEDIA_MIN_AGE_S = 600.0  # collect_media spares a file written or reused this recently
log = logging.getLogger(__name__)
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}


@dataclass(frozen=True)
class Upload:
    """One photo of a write: its bytes, and the local file it came from (None: an upload)."""

    name: str
    data: bytes
    path: str | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike, max_bytes: int) -> Upload:
        """A local photo, used in place (read here to hash and decode it)."""
        from vsearch.images import read_bytes

        path = os.path.abspath(os.fspath(path))
        return cls(path, read_bytes(path, max_bytes), path)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class ProductInput:
    """A checked product id, category and attributes, ready to be written."""

    product_id: str
    category: str
    attributes: dict[str, Any]


# ---------------------------------------------------------------- step 1: checking


def check_text(value, what: str, allow_empty: bool = False) -> str:
    """A product id or a category: text, at most 256 printable characters, no space at either end
    (:func:`vsearch.stores.validate.check_id`: the one rule, which manifests follow too)."""
    return check_id(value, what, allow_empty)


def check_value(name: str, value, kind: str | None):
    """One attribute value as its type (``kind``: the schema's, None for a new attribute).

    None is a missing value. An int attribute takes a whole number, a float one any number.
    """
    if value is None:
        return None
    problem = value_problem(value)  # what no store can hold: a list, NaN, a 400-digit number
    if problem:
        raise DataError(f"attribute {name!r}: {problem}")
    found = value_type(value, typed=True)  # JSON values keep their own types: "12" is text
    if kind is None or found == kind:
        return value
    if kind == "float" and found == "int":
        return float(value)
    if kind == "int" and found == "float" and float(value).is_integer():
        whole = int(value)
        if value_problem(whole):  # 1e300 is whole, but no int attribute holds it
            raise DataError(
                f"attribute {name!r}: {value!r} is out of range; the catalog's {name!r} holds whole numbers "
                f"from {INT_MIN} to {INT_MAX}"
            )
        return whole
    what = {"bool": "true or false", "int": "a whole number", "float": "a number", "text": "text"}[kind]
    raise DataError(f"attribute {name!r}: {describe(value)} is not {what}; the catalog's {name!r} holds {kind} values")


def check_attributes(attributes, schema: Mapping[str, str]) -> dict[str, Any]:
    """``attributes`` typed against ``schema``; a new name must be one a filter can name."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise DataError(f"attributes: expected a JSON object of name -> value, got {type(attributes).__name__}")
    out = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not name:
            raise DataError(f"attributes: a name must be non-empty text, got {describe(name)}")
        if name in RESERVED:
            raise DataError(
                f"attribute {name!r}: a reserved name (every product has it); reserved: {', '.join(RESERVED)}"
            )
        if name not in schema and not ATTRIBUTE_NAME.fullmatch(name):
            raise DataError(
                f"attribute {name!r}: a new attribute's name is a letter or _, then up to 63 letters, digits, _ . or -"
            )
        out[name] = check_value(name, value, schema.get(name))
    return out


def check_product(product_id, category, attributes, schema: Mapping[str, str]) -> ProductInput:
    """Step 1: the product id, category and attributes checked.

    Raises:
        DataError: naming the field or the attribute that does not fit.
    """
    return ProductInput(
        check_text(product_id, "product id"),
        check_text(category if category is not None else "", "category", allow_empty=True),
        check_attributes(attributes, schema),
    )


# ---------------------------------------------------------------- steps 2 to 5


def unique_uploads(uploads: Sequence[Upload]) -> list[int]:
    """Indices of the first of each distinct photo (by content) among ``uploads``."""
    seen: set[str] = set()
    keep = []
    for i, upload in enumerate(uploads):
        if upload.digest not in seen:
            seen.add(upload.digest)
            keep.append(i)
    return keep


def check_count(n: int) -> None:
    if n < 1:
        raise DataError("a product needs at least one photo")
    if n > MAX_PHOTOS:
        raise DataError(f"{n} photos: a product takes at most {MAX_PHOTOS} in one write")


def decode_photos(searcher, uploads: Sequence[Upload]) -> np.ndarray:
    """Step 2: every photo -> the model's (N, S, S, 3) input; the first unusable one raises ImageError."""
    return np.stack([searcher.model_input(u.data, u.name) for u in uploads])


def photo_id(product_id: str, digest: str) -> str:
    return f"{product_id}/{digest[:16]}"


def media_path(media_dir: str | os.PathLike, digest: str, extension: str) -> Path:
    return Path(media_dir) / digest[:2] / f"{digest}.{extension}"


def keep_photo(upload: Upload, media_dir: str | os.PathLike | None) -> str:
    """Step 4: where the stored photo is read from: the local file, or its bytes saved as media."""
    if upload.path is not None:
        return upload.path
    if media_dir is None:
        raise DataError("this server keeps no uploaded photos: start it with a media folder (--media DIR)")
    from vsearch.artifacts import write_atomic
    from vsearch.images import image_header

    header = image_header(upload.data, upload.name)
    path = media_path(media_dir, upload.digest, EXTENSIONS.get(header.format, header.format.lower()[:8] or "img"))
    if path.is_file() and path.stat().st_size == len(upload.data):  # the same bytes: already there
        os.utime(path)  # kept again now: young for collect_media
    else:
        write_atomic(path, upload.data)
    return os.path.abspath(path)


def media_lock(media_dir: str | os.PathLike | None, uploads: Sequence[Upload] = (), shared: bool = True):
    """The media folder's lock: shared by writes that keep uploads, exclusive for :func:`collect_media`."""
    if media_dir is None or (shared and all(u.path is not None for u in uploads)):
        return nullcontext()
    from vsearch.artifacts import file_lock

    return file_lock(Path(media_dir), shared=shared)


def collect_media(store, media_dir: str | os.PathLike, min_age_s: float = MEDIA_MIN_AGE_S) -> list[Path]:
    """Removes the media files no stored photo uses; returns them.

    A file is removed only if it is named as :func:`keep_photo` names files
    (``<sha256[:2]>/<sha256>.<ext>``), no stored photo's file has its content hash in its
    name (wherever that file is), and it was last written or reused at least ``min_age_s``
    seconds ago. The store is brought up to date (``store.refresh()``) under the folder's
    exclusive lock, which every write keeping an upload holds (shared) from keeping it to
    upserting it (see the module doc). The folder is one catalog's: photos of another
    catalog kept there would be collected.
    """
    media_dir = Path(media_dir)
    if not media_dir.is_dir():
        return []
    removed = []
    with media_lock(media_dir, shared=False):
        store.refresh()
        used = {
            match["digest"]
            for product in store.products()
            for path in product.paths
            if (match := MEDIA_FILE.fullmatch(os.path.basename(path)))
        }
        oldest = time.time() - min_age_s
        for folder in sorted(media_dir.iterdir()):
            if not (folder.is_dir() and re.fullmatch(r"[0-9a-f]{2}", folder.name)):
                continue
            for path in sorted(folder.iterdir()):
                match = MEDIA_FILE.fullmatch(path.name)
                if not match or not match["digest"].startswith(folder.name) or match["digest"] in used:
                    continue
                try:
                    if not path.is_file() or path.is_symlink() or path.stat().st_mtime > oldest:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
    return removed


def put_product(
    searcher,
    product_id: str,
    uploads: Sequence[Upload],
    *,
    category: str | None = "",
    attributes: Mapping[str, Any] | None = None,
    media_dir: str | os.PathLike | None = None,
    pixels: np.ndarray | None = None,
):
    """Creates or replaces a product of ``searcher.store`` with these photos, category and attributes.

    Args:
        searcher: A :class:`~vsearch.catalog.search.Searcher` (its road, model and store).
        uploads: The product's photos (at least one, at most :data:`MAX_PHOTOS`).
        media_dir: Where uploaded bytes are kept (local files are used in place).
        pixels: The photos already decoded, one per upload (the server decodes under its budget).
    Returns:
        The :class:`~vsearch.stores.Product` this write stored (as ``store.get`` reads it, unless
        another writer has replaced or deleted it since).
    Raises:
        DataError: a bad id, category or attribute (named), or no photo; nothing is written.
        ImageError: an unusable photo; nothing is written.
    """
    product = check_product(product_id, category, attributes, searcher.store.schema)
    check_count(len(uploads))
    if pixels is not None and len(pixels) != len(uploads):
        raise ValueError(f"{len(pixels)} decoded photos for {len(uploads)} uploads")
    keep = unique_uploads(uploads)
    uploads = [uploads[i] for i in keep]
    pixels = decode_photos(searcher, uploads) if pixels is None else np.asarray(pixels)[keep]
    vectors = np.asarray(searcher.embedder.embed_pixels(pixels), np.float32)
    with media_lock(media_dir, uploads):  # kept and upserted before collect_media may look
        photos = [
            Photo(
                product.product_id,
                photo_id(product.product_id, u.digest),
                keep_photo(u, media_dir),
                product.category,
                dict(product.attributes),
            )
            for u in uploads
        ]
        searcher.store.upsert(photos, vectors)
    # Acknowledged from here on: the answer is what this write stored, not read back (another
    # writer may have replaced or deleted the product since, and a read that fails would turn a
    # stored write into an error).
    written = Product(
        product.product_id,
        product.category,
        dict(product.attributes),
        tuple(p.photo_id for p in photos),
        tuple(p.image for p in photos),
    )
    try:
        searcher.store_keypoints(photos)  # the re-rank's, now rather than in a customer's search
    except Exception as exc:  # noqa: BLE001  (a search computes what is missing; the write stands)
        log.warning("product %r: re-rank keypoints not stored (%s)", product.product_id, exc)
    return written


def delete_product(store, product_id: str) -> bool:
    """Removes a product; False if unknown. Its media files stay until :func:`collect_media`
    (another product may share them)."""
    return store.delete([check_text(product_id, "product id")]) > 0


# ---------------------------------------------------------------- the public form


def image_url(photo_id: str) -> str:
    """The API address of a catalog photo (its id percent-encoded, its slashes kept)."""
    return f"/api/items/{quote(str(photo_id), safe='/')}/image"


def public_item(item: dict) -> dict:
    """A photo or a match as the API shows it: no server paths, plus its ``image_url``."""
    out = {k: v for k, v in item.items() if k not in PRIVATE_FIELDS}
    out["image_url"] = image_url(item["id"])
    return out


def public_product(product) -> dict:
    """A stored :class:`~vsearch.stores.Product` as the API shows it: its photos by id and URL."""
    return {
        "product_id": product.product_id,
        "category": product.category,
        "attributes": dict(product.attributes),
        "photos": [{"id": p, "image_url": image_url(p)} for p in product.photos],
    }
