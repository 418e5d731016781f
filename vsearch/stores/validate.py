"""What an upsert must satisfy, whatever the backend: one set of checks, one set of words.

Both stores (:mod:`vsearch.stores.faiss`, :mod:`vsearch.stores.milvus`) run what they are
given through these before writing anything, so they refuse the same photos with the same
message: :func:`check_vectors` (one finite vector per photo, of the catalog's dimension)
and :func:`group_photos` (a product's photos agree on category and attributes; each
attribute value fits the catalog's schema, which a new attribute joins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vsearch.errors import DataError
from vsearch.stores import RESERVED

TYPES = ("bool", "int", "float", "text")  # what an attribute holds (a store's schema maps names to these)
_WHAT = {"bool": "true or false", "int": "a number", "float": "a number", "text": "text"}


def value_kind(value) -> str | None:
    """An attribute value's type (None for a missing value); anything else is not an attribute."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float) and math.isfinite(value):
        return "float"
    if isinstance(value, str):
        return "text"
    return "?"


def photo_dict(photo) -> dict:
    """A photo (:class:`vsearch.catalog.manifest.Photo` or its dict) as the plain dict the checks and the log take."""
    row = photo if isinstance(photo, dict) else photo.to_dict()
    return {
        "product_id": str(row["product_id"]),
        "photo_id": str(row["photo_id"]),
        "image": str(row.get("image", "")),
        "category": str(row.get("category") or ""),
        "attributes": dict(row.get("attributes") or {}),
    }


def check_vectors(vectors, rows: int, dim: int | None) -> np.ndarray:
    """``vectors`` as a contiguous float32 (rows, dim) array (``dim`` None: any).

    Raises:
        DataError: another shape, dimension 0, NaN or infinity.
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != rows or (dim is not None and vectors.shape[1] != dim):
        raise DataError(f"expected {rows} vectors of dimension {dim or 'd'}, got an array of shape {vectors.shape}")
    if vectors.shape[1] < 1:
        raise DataError("vectors of dimension 0")
    if not np.all(np.isfinite(vectors)):
        raise DataError("the vectors contain NaN or infinity; the model's output is broken")
    return np.ascontiguousarray(vectors)


def group_photos(photos: Sequence[dict], schema: dict[str, str]) -> tuple[dict[str, dict], dict[str, str]]:
    """Photos by product (``{product_id: {category, attributes, rows}}``) and the schema after them.

    Raises:
        DataError: a product's photos disagree on category or an attribute, an attribute
            value does not fit its type (or is not bool, number or text), a reserved name,
            or one photo id twice.
    """
    schema = dict(schema)
    products: dict[str, dict] = {}
    seen: set[str] = set()
    for n, photo in enumerate(photos):
        pid, attrs = photo["product_id"], {k: v for k, v in photo["attributes"].items() if v is not None}
        if photo["photo_id"] in seen:
            raise DataError(f"product {pid!r}: photo {photo['photo_id']!r} is given twice")
        seen.add(photo["photo_id"])
        first = products.get(pid)
        if first is None:
            products[pid] = {"category": photo["category"], "attributes": attrs, "rows": [n]}
            continue
        if first["category"] != photo["category"]:
            raise DataError(
                f"product {pid!r}: its photos disagree on the category ({first['category']!r} vs "
                f"{photo['category']!r}); a product's photos share one category and attributes"
            )
        for name in sorted(first["attributes"].keys() | attrs.keys()):
            if first["attributes"].get(name) != attrs.get(name):
                raise DataError(
                    f"product {pid!r}: its photos disagree on attribute {name!r} "
                    f"({first['attributes'].get(name)!r} vs {attrs.get(name)!r}); a product's photos "
                    "share one category and attributes"
                )
        first["rows"].append(n)
    for pid, product in products.items():
        for name, value in product["attributes"].items():
            kind, held = value_kind(value), schema.get(name)
            if name in RESERVED or not name:
                raise DataError(f"product {pid!r}: attribute {name!r} is a reserved name; rename the column")
            if kind == "?":
                raise DataError(f"product {pid!r}: attribute {name!r}: {value!r} is not true/false, a number or text")
            if held is None or held == kind or (held == "float" and kind == "int"):
                schema.setdefault(name, kind)
            elif held == "int" and kind == "float":
                schema[name] = "float"  # as in a manifest: an int column widens when a value has a fraction
            else:
                raise DataError(
                    f"product {pid!r}: attribute {name!r}: {value!r} is not {_WHAT[held]}; the catalog's "
                    f"{name!r} holds {held} values"
                )
    return products, schema
