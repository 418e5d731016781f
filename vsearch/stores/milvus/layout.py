"""The collection's layout: its schema, the typed attribute columns, the metadata, and the rows.

Layout: a catalog is an **alias** ``NAME`` pointing at a collection ``NAME_<hex>`` with one
row per photo: ``key`` (primary key: ``"<seq>:<product id>"``, the photo's slot in its
product), ``photo_id``, ``product_id``, ``category``, ``path``, ``seq`` (``seq == 0``
counts products), ``attributes`` (JSON, no missing values), one typed column ``a<n>`` per
attribute the catalog had when it was built (what filters read; an attribute that joins
later is filtered through the JSON field, as Milvus cannot add a column), and ``vector``
(COSINE, built before ``build`` returns: FLAT for an exact catalog; else, on a Milvus server,
IVF_FLAT, whose filtered searches keep their recall, and in milvus-lite (or asked for) HNSW
with the FAISS store's graph parameters). A typed column holds a missing value in a way every Milvus takes
(2.3 and 2.4 have no nullable fields): a number as NaN, a bool as -1 (``INT8``: 1 true, 0
false), text as ``""`` (a value is kept as ``"=" + value``); filters are written so that a
missing value matches no condition, as :func:`vsearch.stores.filters.matches` has it. The
model fingerprint, dim, model dict, attribute schema and columns, the calibration and a
change token are collection properties, so a catalog and its metadata move together.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
from pymilvus import DataType, MilvusClient

from vsearch.errors import DataError
from vsearch.stores import Product
from vsearch.stores.filters import Condition, Filter, brief, milvus_literal, to_milvus
from vsearch.stores.milvus.connection import READ
from vsearch.stores.validate import group_photos

FORMAT = "vsearch-milvus/2"  # /1: photo ids as primary keys and nullable columns (Milvus 2.5+ only)
META, CALIBRATION, CHANGE = "vsearch.meta", "vsearch.calibration", "vsearch.change"
MAX_ID, MAX_PATH = 1024, 8192  # VARCHAR lengths of the id and path fields
MAX_KEY = MAX_ID + 24  # the primary key: "<seq>:<product id>"
MAX_TEXT = 65534  # the longest text attribute: its column (Milvus' largest VARCHAR) holds "=" + value
BATCH_BYTES = 16 << 20  # rows per insert call: about this many bytes of vectors
CHUNK = 500  # ids per expression
FIELDS = ["photo_id", "product_id", "category", "path", "seq", "attributes"]
HIT_FIELDS = ["photo_id", "product_id", "category", "path", "attributes"]


# ---------------------------------------------------------------- checking what comes in


def to_rows(
    photos: Sequence, vectors: np.ndarray, schema: dict[str, str], columns: dict[str, str] | None = None
) -> tuple[list[dict], dict[str, str]]:
    """One Milvus row per photo and the schema they leave, after every check (nothing written yet).

    The checks are both stores' (:func:`vsearch.stores.validate.group_photos`), so both
    refuse the same photos with the same words; Milvus adds length limits on ids, paths and
    text. ``columns``: attribute -> its typed column, filled beside the JSON field. A row's
    ``vector`` is its row of ``vectors`` (:func:`_batches` makes it a list, a batch at a time).

    Raises:
        DataError: no photos, a photo id given twice, photos of one product that disagree
            on category or attributes, an attribute of the wrong type, an id, path or text too long.
    """
    photos = [p if isinstance(p, dict) else p.to_dict() for p in photos]
    if not photos:
        raise DataError("upsert of no photos; give at least one photo and its vector")
    columns = columns or {}
    products, schema = group_photos(
        [{**p, "product_id": str(p["product_id"]), "photo_id": str(p["photo_id"])} for p in photos], schema
    )
    rows = []
    for product_id, product in products.items():
        attributes = product["attributes"]
        typed = {field: _coded(attributes.get(name), schema[name]) for name, field in columns.items()}
        for name, value in attributes.items():
            if isinstance(value, str) and _size(value, product_id, f"attribute {name!r}") > MAX_TEXT:
                raise DataError(f"product {product_id!r}: attribute {name!r} is longer than {MAX_TEXT} bytes")
        for seq, n in enumerate(product["rows"]):
            photo_id, path = str(photos[n]["photo_id"]), str(photos[n]["image"])
            for label, text, limit in (
                ("product id", product_id, MAX_ID),
                ("photo id", photo_id, MAX_ID),
                ("category", product["category"], MAX_ID),
                ("path", path, MAX_PATH),
            ):
                if _size(text, product_id, label) > limit:
                    raise DataError(f"product {product_id!r}: {label} {text[:80]!r}... is longer than {limit} bytes")
            rows.append(
                {
                    "key": _key(seq, product_id),
                    "photo_id": photo_id,
                    "product_id": product_id,
                    "category": product["category"],
                    "path": path,
                    "seq": seq,
                    "attributes": attributes,
                    **typed,
                    "vector": vectors[n],
                }
            )
    return rows, schema


def _size(text: str, product_id: str, label: str) -> int:
    """``text``'s length in UTF-8, what Milvus limits; a DataError for text that has none (a lone surrogate)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise DataError(f"product {brief(product_id)}: {label} {brief(text)} is not valid Unicode text") from None


def _key(seq: int, product_id: str) -> str:
    """A photo's primary key: its slot in its product (the digits before the first colon)."""
    return f"{seq}:{product_id}"


def _coded(value, kind: str):
    """An attribute's value as its typed column holds it, a missing one (None) included: a
    number as a float (NaN: missing), a bool as 1 / 0 (-1), text as ``"=" + value`` (``""``)."""
    if kind == "bool":
        return -1 if value is None else int(bool(value))
    if kind == "text":
        return "" if value is None else "=" + value
    return math.nan if value is None else float(value)


def _column_type(kind: str) -> dict:
    if kind == "bool":
        return {"datatype": DataType.INT8}
    if kind == "text":
        return {"datatype": DataType.VARCHAR, "max_length": MAX_TEXT + 1}
    return {"datatype": DataType.DOUBLE}


def _typed_condition(column: str, kind: str, condition: Condition) -> str:
    """``condition`` on a typed column (see :func:`_coded`), matching no missing value: NaN fails
    every comparison but ``!=``, which is written as ``<`` or ``>``; -1 and ``""`` are no value a
    condition names, and ``!=`` leaves them out."""
    op, value = condition.op, condition.value

    def literal(v) -> str:
        if kind == "bool":
            return str(int(bool(v)))
        return milvus_literal("=" + str(v)) if kind == "text" else milvus_literal(float(v))

    if op == "in":
        return f"{column} in [{', '.join(dict.fromkeys(literal(v) for v in value))}]"
    if op == "ne" and kind == "bool":
        return f"{column} == {literal(not value)}"
    if op == "ne" and kind == "text":
        return f'{column} != {literal(value)} and {column} != ""'
    if op == "ne":
        return f"{column} < {literal(value)} or {column} > {literal(value)}"
    return f"{column} {_COMPARE[op]} {literal(value)}"


_COMPARE = {"eq": "==", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _in(field: str, values: Sequence[str]) -> str:
    """``field in [values]``, each value a :func:`~vsearch.stores.filters.milvus_literal`: the
    store never lets pymilvus write ids into an expression (its ``get``, ``delete(ids=)`` and
    query iterator quote them unescaped, so an id could add terms of its own)."""
    return to_milvus(Filter((Condition(field, "in", tuple(values)),)))


def _storable(text: str) -> bool:
    """Whether ``text`` can be sent to Milvus at all (UTF-8: no lone surrogate, as JSON's
    ``"\\ud800"`` gives); an id that cannot is in no catalog."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- rows as the interface's values


def _hit(row: dict) -> dict:
    return {
        "product_id": row["product_id"],
        "photo_id": row["photo_id"],
        "id": row["photo_id"],
        "category": row["category"],
        "attributes": dict(row.get("attributes") or {}),
        "path": row["path"],
    }


def _product(rows: list[dict]) -> Product:
    rows = sorted(rows, key=lambda r: r["seq"])
    first = rows[0]
    return Product(
        first["product_id"],
        first["category"],
        dict(first.get("attributes") or {}),
        tuple(r["photo_id"] for r in rows),
        tuple(r["path"] for r in rows),
    )


def _batches(rows: list[dict], dim: int) -> Iterator[list[dict]]:
    """``rows`` in insert-sized batches, each row's vector a list (made here: a 1M-photo catalog's
    vectors as Python floats at once would take 9 GB)."""
    size = max(1, BATCH_BYTES // (4 * dim + 1024))
    for start in range(0, len(rows), size):
        yield [{**row, "vector": np.asarray(row["vector"], np.float32).tolist()} for row in rows[start : start + size]]


# ---------------------------------------------------------------- the schema


def _create(client: MilvusClient, collection: str, dim: int, meta: dict) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_KEY)
    schema.add_field("photo_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("category", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("attributes", DataType.JSON)
    for name, field in meta["columns"].items():
        schema.add_field(field, **_column_type(meta["schema"][name]))
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(
        collection,
        schema=schema,
        consistency_level=READ,
        properties={META: json.dumps(meta), CALIBRATION: "null", CHANGE: uuid.uuid4().hex},
    )
