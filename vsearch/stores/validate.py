"""What an upsert must satisfy, whatever the backend: one set of checks, one set of words.

Both stores (:mod:`vsearch.stores.faiss`, :mod:`vsearch.stores.milvus`) run what they are
given through these before writing anything, so they refuse the same photos with the same
message: :func:`check_vectors` (one finite vector per photo, of the catalog's dimension)
and :func:`group_photos` (a product's photos agree on category and attributes; each
attribute value fits the catalog's schema, which a new attribute joins). The rules for what
comes in are the catalog's, whichever road it takes: :func:`value_problem` for an attribute
value (one both stores can hold: a whole number in 64 bits, a finite number, true/false or
Unicode text), on every road (the admin API, a manifest, a store's own ``upsert``);
:func:`check_id` for a product id, where ids come from outside (the admin API, a manifest,
a catalog folder).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence

import numpy as np

from vsearch.errors import DataError
from vsearch.stores import RESERVED

TYPES = ("bool", "int", "float", "text")  # what an attribute holds (a store's schema maps names to these)
_WHAT = {"bool": "true or false", "int": "a number", "float": "a number", "text": "text"}
MAX_ID_CHARS = 256  # a product id's length, at most
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # a whole-number attribute: what Milvus (and SQL) hold in 64 bits
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 3


def describe(value) -> str:
    """A value for a one-line message: short, whatever its size or nesting (a 400-digit number, a deep list)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1  # str() of a 5000-digit number raises
        return f"a {'negative ' if value < 0 else ''}whole number of about {digits} digits"
    try:
        return _SHORT.repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def check_id(value, what: str = "product id", allow_empty: bool = False) -> str:
    """A product id (or a category): text, at most 256 printable characters, no space at either end.

    The one rule for ids, wherever they come from (the admin API, a manifest, a catalog
    folder): an id a manifest gives can be replaced and deleted through the API.

    Raises:
        DataError: naming ``what`` and what is wrong.
    """
    if not isinstance(value, str):
        raise DataError(f"{what}: expected text, got {type(value).__name__}")
    if not value:
        if allow_empty:
            return value
        raise DataError(f"{what}: may not be empty")
    if len(value) > MAX_ID_CHARS:
        raise DataError(f"{what}: {describe(value)} is {len(value)} characters, over the limit of {MAX_ID_CHARS}")
    if not value.isprintable():
        raise DataError(f"{what}: {describe(value)} holds a control or other unprintable character")
    if value != value.strip():
        raise DataError(f"{what}: {describe(value)} starts or ends with a space")
    return value


def _unicode(text) -> bool:
    """Whether ``text`` (a str) can be written as UTF-8: no lone surrogate (JSON's "\\ud800" reads as one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def out_of_range(what: str) -> str:
    return f"{what} is out of range: a whole number is kept in 64 bits ({INT_MIN} to {INT_MAX})"


def value_problem(value, strict: bool = True) -> str:
    """Why an attribute value cannot be stored, or "" (None is a missing value).

    ``strict`` (what comes in): true/false, a whole number from -2**63 to 2**63 - 1, a finite
    number, or Unicode text. Else (a value already stored): one the store can hold, a number a
    float can represent.
    """
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return ""
        if strict:
            return out_of_range(describe(value))
        try:
            float(value)
        except OverflowError:
            return f"{describe(value)} is too large for a number"
        return ""
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"{value!r} is not a finite number"
    if isinstance(value, str):
        return (
            ""
            if not strict or _unicode(value)
            else f"{describe(value)} is not Unicode text (it holds a lone surrogate)"
        )
    return f"a {type(value).__name__} value ({describe(value)}); attributes are true/false, numbers or text"


def value_kind(value) -> str | None:
    """An attribute value's type (None for a missing value); anything else is not an attribute."""
    if value is None:
        return None
    if value_problem(value, strict=False):
        return "?"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"


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


def group_photos(
    photos: Sequence[dict], schema: dict[str, str], strict: bool = True
) -> tuple[dict[str, dict], dict[str, str]]:
    """Photos by product (``{product_id: {category, attributes, rows}}``) and the schema after them.

    ``strict`` (a write): the rules for what comes in (:func:`value_problem`; ids and the
    category Unicode text); False (a stored change replayed): only what a store needs to hold it.

    Raises:
        DataError: a product's photos disagree on category or an attribute, an attribute
            value does not fit its type (or cannot be stored), a reserved name, or one photo
            id twice.
    """
    schema = dict(schema)
    products: dict[str, dict] = {}
    seen: set[str] = set()
    for n, photo in enumerate(photos):
        pid, attrs = photo["product_id"], {k: v for k, v in photo["attributes"].items() if v is not None}
        for what in ("product_id", "photo_id", "category") if strict else ():
            if not _unicode(photo[what]):  # the stores keep text as UTF-8 (Milvus could not encode it)
                raise DataError(
                    f"product {pid!r}: {what.replace('_', ' ')} {describe(photo[what])} is not Unicode text "
                    "(it holds a lone surrogate)"
                )
        if photo["photo_id"] in seen:
            raise DataError(f"product {describe(pid)}: photo {describe(photo['photo_id'])} is given twice")
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
        for name in sorted(first["attributes"].keys() | attrs.keys(), key=str):
            if first["attributes"].get(name) != attrs.get(name):
                raise DataError(
                    f"product {pid!r}: its photos disagree on attribute {describe(name)} "
                    f"({describe(first['attributes'].get(name))} vs {describe(attrs.get(name))}); a product's "
                    "photos share one category and attributes"
                )
        first["rows"].append(n)
    for pid, product in products.items():
        for name, value in product["attributes"].items():
            if not isinstance(name, str) or name in RESERVED or not name:
                raise DataError(
                    f"product {pid!r}: attribute {describe(name)} is "
                    f"{'a reserved name' if isinstance(name, str) else 'not named by text'}; rename the column"
                )
            problem = value_problem(value, strict)
            if problem:
                raise DataError(f"product {pid!r}: attribute {name!r}: {problem}")
            kind, held = value_kind(value) or "?", schema.get(name)
            if held is None or held == kind or (held == "float" and kind == "int"):
                schema.setdefault(name, kind)
            elif held == "int" and kind == "float":
                schema[name] = "float"  # as in a manifest: an int column widens when a value has a fraction
            else:
                raise DataError(
                    f"product {pid!r}: attribute {name!r}: {describe(value)} is not {_WHAT[held]}; the catalog's "
                    f"{name!r} holds {held} values"
                )
    return products, schema
