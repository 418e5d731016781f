"""A catalog manifest: one row per photo of a product, read into plain values.

A manifest is a CSV, JSON Lines or Parquet file with the columns ``product_id``, ``image``
and ``category``, then any attribute columns (``title``, ``price``, ``url``, ``brand``,
``colour``, ``in_stock``, ...). :func:`read_manifest` reads it in three named steps:

1. :func:`read_table`: the file's column names and its rows as raw values, each row with
   where it is (``line 7`` of a CSV or JSON Lines file, ``row 7`` of a Parquet file);
2. :func:`infer_schema`: each attribute column's type, once, from its first value
   (``bool``, ``int``, ``float`` or ``text``; an int column widens to float when a later
   value has a fraction); a later value that does not fit (a price that is not a number),
   or one no store can hold (:func:`vsearch.stores.validate.value_problem`: a whole number
   beyond 64 bits, a number too large for a float), is a :class:`~vsearch.errors.DataError`
   naming the file, the row and the column;
3. :func:`to_photos`: typed rows, each photo located: ``image`` is relative to the
   manifest's folder, or absolute, or a URL-like path (``gs://``, ``s3://``) kept as text.
   A product may list several photos; the same (product, image) twice is an error. A
   product id follows the admin API's rule (:func:`vsearch.stores.validate.check_id`), so
   every product a manifest gives can be replaced and deleted through the API.

A query manifest (:func:`read_queries`: labelled customer photos, for evaluation and
calibration) needs only ``product_id`` and ``image``.

A folder laid out ``<category>/<photo>`` is the shortcut: each photo is its own product,
with the ids of :func:`catalog_files` (a file whose id breaks the rule is skipped, and said so).

In a CSV file every cell is text: ``true``/``false`` (any case) read as bools, plain
decimal numbers as numbers (a whole number written with a leading zero, ``007``, stays
text), and an empty cell is a missing value. JSON Lines and Parquet values keep their
own types (a JSON string is text); ``null`` and NaN are missing values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsearch.artifacts import printable
from vsearch.errors import DataError
from vsearch.stores.validate import check_id, describe, out_of_range, value_problem

REQUIRED = ("product_id", "image", "category")
QUERY_COLUMNS = ("product_id", "image")  # a query manifest's (read_queries); category is optional
TYPES = ("bool", "int", "float", "text")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "false": False}
_WHAT = {"bool": "true or false", "int": "a number", "float": "a number", "text": "text"}


@dataclass(frozen=True)
class Photo:
    """One photo of one product, as the manifest gives it."""

    product_id: str
    photo_id: str  # unique in the manifest: ``<product_id>/<image as written>``, or the folder id
    image: str  # where to read it: an absolute local path, or a URL-like path as written
    category: str
    attributes: dict[str, Any] = field(default_factory=dict)  # column -> value, None when missing

    def to_dict(self) -> dict:
        return {
            "product_id": self.product_id,
            "photo_id": self.photo_id,
            "image": self.image,
            "category": self.category,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, row: dict) -> Photo:
        return cls(row["product_id"], row["photo_id"], row["image"], row["category"], dict(row["attributes"]))


@dataclass(frozen=True)
class Manifest:
    """A manifest's photos, its attribute columns' types, and files the folder shortcut left out."""

    source: str
    photos: list[Photo]
    schema: dict[str, str]  # attribute column -> one of TYPES, in file order
    skipped: dict[str, str] = field(default_factory=dict)  # folder shortcut: path -> why it is not a photo


@dataclass(frozen=True)
class Table:
    """A manifest file's columns and rows as read: (where, {column: raw value})."""

    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]]
    typed: bool  # values carry their own types (JSON Lines, Parquet); False: CSV text


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Reads a manifest file (CSV, JSON Lines, Parquet) or a ``<category>/<photo>`` folder.

    Raises:
        DataError: the file cannot be read, lacks a required column, holds a value that
            does not fit its column, or lists one photo of a product twice.
    """
    path = Path(path)
    if path.is_dir():
        return folder_manifest(path)
    table = read_table(path)
    schema = infer_schema(path, table)
    return Manifest(str(path), to_photos(path, table, schema), schema)


def read_queries(path: str | os.PathLike) -> list[tuple[str, Photo]]:
    """A query manifest: labelled customer photos, each with where it is in the file.

    Columns ``product_id`` (the product the photo shows, in the catalog or not) and ``image``
    (relative to the manifest's folder, or absolute), optionally ``category``; other columns
    are not read.

    Raises:
        DataError: the file cannot be read, lacks a column, has no rows, or names a local
            image that is not there.
    """
    path = Path(path)
    table = read_table(path, QUERY_COLUMNS)
    photos = to_photos(path, table, {})
    for (where, row), photo in zip(table.rows, photos):
        if "://" not in photo.image and not os.path.isfile(photo.image):
            raise DataError(f"{path}: {where}: image {row['image']!r} not found ({photo.image})")
    return [(where, photo) for (where, _), photo in zip(table.rows, photos)]


def _walk(root: Path, skipped: dict[str, str]) -> list[Path]:
    """Every file under ``root``, following symlinked folders once each; hidden entries left out.

    A folder reached a second time (a symlink loop, or two links to one folder) is skipped
    and listed, as is a name that is not valid UTF-8 (it could not be an id or JSON text).
    """
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            skipped[printable(folder)] = "folder already read through another link (symlink loop?)"
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder) / name
            if printable(path) != os.fsdecode(path):
                skipped[printable(path)] = "file name is not valid UTF-8; rename the file"
            elif path.is_file():
                files.append(path)
    return files


def catalog_files(root: str | os.PathLike, skipped: dict[str, str] | None = None) -> list[tuple[Path, str, str]]:
    """(path, category, id) for every file under ``root``; category = first sub-folder.

    Ids are the path relative to ``root`` without its extension (``shoes/1a2b``), so they
    are stable across rebuilds and unique within a folder tree. Symlinked folders are
    followed; files that cannot be items are listed in ``skipped`` (path -> why).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{printable(root)}: no such catalog folder")
    skipped = {} if skipped is None else skipped
    files = []
    for path in sorted(_walk(root, skipped)):
        rel = path.relative_to(root)
        category = rel.parts[0] if len(rel.parts) > 1 else ""
        item_id = rel.with_suffix("").as_posix()
        try:
            check_id(item_id, "its id")  # the API's rule: a product it can replace and delete
        except DataError as exc:
            skipped[printable(path)] = f"{exc}; rename the file"
            continue
        files.append((path, category, item_id))
    if not files:
        raise DataError(f"{printable(root)}: no files found (expected <category>/<photo> image files)")
    return files


def folder_manifest(root: Path) -> Manifest:
    """The folder shortcut: every file under ``root`` is a product of one photo."""
    skipped: dict[str, str] = {}
    photos: list[Photo] = []
    first: dict[str, Path] = {}
    for path, category, item_id in catalog_files(root, skipped):
        if item_id in first:
            raise DataError(
                f"{first[item_id]} and {path}: one id {item_id!r} for two photos (ids are the path "
                "without its extension); rename one of them"
            )
        first[item_id] = path
        photos.append(Photo(item_id, item_id, str(path.resolve()), category))
    return Manifest(str(root), photos, {}, skipped)


# ---------------------------------------------------------------- step 1: the file as read


def read_table(path: Path, required: tuple[str, ...] = REQUIRED) -> Table:
    """The columns and raw rows of a manifest file; the format is chosen by its extension."""
    fmt = FORMATS.get(path.suffix.lower())
    if not path.exists():
        raise DataError(f"{path}: no such manifest file or catalog folder")
    if fmt is None:
        raise DataError(f"{path}: not a manifest (expected a .csv, .jsonl or .parquet file, or a folder)")
    if not path.is_file():
        raise DataError(f"{path}: no such manifest file")
    table = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt](path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        what, then = (
            ("a manifest", "then any attributes")
            if required == REQUIRED
            else ("a query manifest", "and category if known")
        )
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; {what} needs "
            f"{', '.join(required)} ({then}), found {table.columns}"
        )
    if not table.rows:
        raise DataError(f"{path}: no rows; a manifest lists one photo per row")
    return table


def _text_of(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from None


def _columns(path: Path, names: Iterable) -> list[str]:
    columns = [str(n).strip() for n in names]
    if any(not c for c in columns):
        raise DataError(f"{path}: a column has no name ({columns})")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: column(s) {repeated} appear more than once")
    return columns


def _read_csv(path: Path) -> Table:
    reader = csv.reader(io.StringIO(_text_of(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; a manifest starts with a header row")
        columns = _columns(path, header)
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            where = f"line {reader.line_num}"
            if len(cells) != len(columns):
                raise DataError(f"{path}: {where}: {len(cells)} fields, the header has {len(columns)}")
            rows.append((where, dict(zip(columns, (c.strip() for c in cells)))))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not a readable CSV ({exc})") from None
    return Table(columns, rows, typed=False)


def _read_jsonl(path: Path) -> Table:
    columns: dict[str, None] = {}
    rows = []
    for number, line in enumerate(_text_of(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}: line {number}: not JSON ({exc})") from None
        except RecursionError:
            raise DataError(f"{path}: line {number}: JSON nested too deeply to read") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        columns.update(dict.fromkeys(_columns(path, row)))
        rows.append((f"line {number}", {str(k).strip(): v for k, v in row.items()}))
    return Table(list(columns), rows, typed=True)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'vsearch[beam]'") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several kinds for a damaged file)
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    columns = _columns(path, table.column_names)
    return Table(columns, [(f"row {n}", row) for n, row in enumerate(table.to_pylist(), start=1)], typed=True)


# ---------------------------------------------------------------- step 2: one type per column


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def value_type(value, typed: bool) -> str:
    """The type a present value suggests: bool, int, float or text (CSV text is parsed)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "text"
    if isinstance(value, str):
        if typed:
            return "text"
        if value.lower() in _BOOLS:
            return "bool"
        if _INT.fullmatch(value):
            return "int"
        if _FLOAT.fullmatch(value):
            return "float"
        return "text"
    return type(value).__name__  # a list, an object, a date: no attribute type


def _value_problem(value, found: str) -> str:
    """Why a present value (of type ``found``) cannot be stored, or "": what the stores refuse
    (:func:`vsearch.stores.validate.value_problem`), CSV text read as the number it is."""
    if isinstance(value, str) and found == "int":
        digits = len(value.lstrip("+-"))
        if digits > 20:  # int() of 4,300 digits raises; 21 are out of range anyway
            return out_of_range(f"{describe(value)} ({digits} digits)")
        value = int(value)
    elif isinstance(value, str) and found == "float":
        number = float(value)
        if not math.isfinite(number):
            return f"{describe(value)} is too large for a number"
        value = number
    return value_problem(value)


def _fits(kind: str, column: str) -> bool:
    return kind == column or column == "text" and kind in TYPES or column == "float" and kind == "int"


def _problem(path: Path, where: str, column: str, value, kind: str, first: str | None = None) -> DataError:
    since = f" (its type comes from its first value, {first})" if first else ""
    return DataError(
        f"{path}: {where}: column {column!r}: {describe(value)} is not {_WHAT.get(kind, kind)}; "
        f"the column holds {kind} values{since}"
    )


def infer_schema(path: Path, table: Table) -> dict[str, str]:
    """Each attribute column's type, from its first present value; a later misfit is an error."""
    schema: dict[str, str] = {}
    for column in (c for c in table.columns if c not in REQUIRED):
        kind, first = None, None
        for where, row in table.rows:
            value = row.get(column)
            if _missing(value):
                continue
            found = value_type(value, table.typed)
            if found not in TYPES:
                raise DataError(
                    f"{path}: {where}: column {column!r}: a {found} value ({describe(value)}); attributes "
                    "are true/false, numbers or text"
                )
            problem = _value_problem(value, found)
            if problem:
                raise DataError(f"{path}: {where}: column {column!r}: {problem}")
            if kind is None:
                kind, first = found, where
            elif kind == "int" and found == "float":
                kind = "float"
            elif not _fits(found, kind):
                raise _problem(path, where, column, value, kind, first)
        schema[column] = kind or "text"
    return schema


# ---------------------------------------------------------------- step 3: typed, located photos


def convert(value, kind: str, typed: bool):
    """A present value as its column's type (checked by :func:`infer_schema`)."""
    if kind == "text":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "bool":
        return value if isinstance(value, bool) else _BOOLS[value.lower()]
    if kind == "int":
        return int(value)
    return float(value)


def _required_text(path: Path, where: str, column: str, value, optional: bool = False) -> str:
    if _missing(value) and optional:
        return ""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(
        f"{path}: {where}: column {column!r}: expected text"
        f"{'' if optional else ' (it may not be empty)'}, got {describe(value)}"
    )


def locate(image: str, folder: Path) -> str:
    """Where to read a manifest's image: URL-like paths as written, local ones absolute."""
    if "://" in image:
        return image
    return os.path.abspath(folder / Path(image).expanduser())


def to_photos(path: Path, table: Table, schema: dict[str, str]) -> list[Photo]:
    """The table's rows as photos with typed attributes; the same (product, image) twice is an error."""
    folder = path.resolve().parent
    photos: list[Photo] = []
    seen: dict[tuple[str, str], str] = {}
    ids: dict[str, str] = {}
    for where, row in table.rows:
        product = _required_text(path, where, "product_id", row.get("product_id"))
        try:
            check_id(product, "column 'product_id'")  # the API's rule: a product it can replace and delete
        except DataError as exc:
            raise DataError(f"{path}: {where}: {exc}") from None
        written = _required_text(path, where, "image", row.get("image"))
        category = _required_text(path, where, "category", row.get("category"), optional=True)
        image = locate(written, folder)
        if (product, image) in seen:
            raise DataError(
                f"{path}: {where}: product {product!r} lists image {written!r} again (first at {seen[product, image]})"
            )
        seen[product, image] = where
        photo_id = f"{product}/{written if '://' in written else Path(written).as_posix()}"
        if photo_id in ids:
            raise DataError(
                f"{path}: {where}: photo id {photo_id!r} is also the id of {ids[photo_id]}; "
                "change the product id or the image path of one of them"
            )
        ids[photo_id] = where
        attributes = {
            c: None if _missing(row.get(c)) else convert(row[c], kind, table.typed) for c, kind in schema.items()
        }
        photos.append(Photo(product, photo_id, image, category, attributes))
    return photos
