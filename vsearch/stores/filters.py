"""Attribute filters: ``price<=50``, ``brand in (acme,zeta)``, ``in_stock=true``.

A :class:`Filter` is an AND of :class:`Condition` s, each on ``category``, ``product_id`` or
one attribute of the catalog's schema (attribute -> ``bool`` / ``int`` / ``float`` /
``text``, as :mod:`vsearch.catalog.manifest` infers it). Two ways in, one checked value:

* :func:`parse_where`: the CLI's ``--where`` expressions (``price<=50``, ``brand in
  (acme,zeta)``, ``in_stock=true``, ``colour!=red``);
* :func:`parse_json`: the API's ``filter`` field, ``{"price": {"lte": 50}, "brand": ["acme",
  "zeta"], "in_stock": true}`` (a list is ``in``, a scalar is ``eq``).

An unknown attribute, an operator its type has no use for (``<`` on text or bools) or a
value of the wrong type is a :class:`~vsearch.errors.DataError` naming the attribute. A
product without a value for an attribute matches no condition on it.

Two ways out: :func:`mask` evaluates a filter over whole columns at once (:class:`Column`:
numbers as float64 with NaN for missing, text as integer codes), for an embedded store;
:func:`to_milvus` writes it as a Milvus boolean expression.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vsearch.errors import DataError

OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in")
ORDERED = ("lt", "lte", "gt", "gte")
BUILTIN = {"category": "text", "product_id": "text"}  # fields every product has
_SYMBOLS = {"<=": "lte", ">=": "gte", "!=": "ne", "==": "eq", "=": "eq", "<": "lt", ">": "gt"}
_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(<=|>=|!=|==|=|<|>|\s+in\s+)\s*(.*?)\s*$", re.S | re.I)
_MILVUS_OPS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # one of OPS
    value: Any  # bool, float or str; a tuple of them for "in"

    def describe(self) -> str:
        if self.op == "in":
            return f"{self.field} in ({', '.join(map(_show, self.value))})"
        symbol = {"eq": "=", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[self.op]
        return f"{self.field}{symbol}{_show(self.value)}"


@dataclass(frozen=True)
class Filter:
    """An AND of conditions; the empty filter keeps everything."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def describe(self) -> str:
        return " and ".join(c.describe() for c in self.conditions) or "everything"

    def fields(self) -> set[str]:
        return {c.field for c in self.conditions}

    def to_json(self) -> dict:
        """The API form of this filter (what :func:`parse_json` reads back)."""
        out: dict[str, dict] = {}
        for c in self.conditions:
            out.setdefault(c.field, {})[c.op] = list(c.value) if c.op == "in" else c.value
        return out

    def and_(self, other: Filter | None) -> Filter:
        return Filter(self.conditions + (other.conditions if other else ()))


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def field_types(schema: Mapping[str, str]) -> dict[str, str]:
    """Every field a filter may name: the built-in ones and the schema's attributes."""
    return {**BUILTIN, **dict(schema)}


# ---------------------------------------------------------------- checking one value


def _typed(field: str, kind: str, value, from_text: bool):
    """``value`` as the field's type (float for numbers), or a DataError naming the field."""
    if from_text and isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        if kind == "bool":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        elif kind in ("int", "float"):
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        else:
            return text
    elif kind == "bool" and isinstance(value, bool):
        return value
    elif (
        kind in ("int", "float")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    elif kind == "text" and isinstance(value, str):
        return value
    what = {"bool": "true or false", "int": "a number", "float": "a number", "text": "text"}[kind]
    raise DataError(f"filter on {field!r}: {value!r} is not {what} (the attribute holds {kind} values)")


def condition(field: str, op: str, value, schema: Mapping[str, str], from_text: bool = False) -> Condition:
    """One checked condition.

    Raises:
        DataError: ``field`` is not a known attribute, ``op`` is unknown or of no use on its
            type, or ``value`` does not fit the attribute's type.
    """
    types = field_types(schema)
    if field not in types:
        known = ", ".join(sorted(types))
        raise DataError(f"filter on {field!r}: the catalog has no such attribute (it has {known})")
    if op not in OPS:
        raise DataError(f"filter on {field!r}: unknown operator {op!r}; use one of {', '.join(OPS)}")
    kind = types[field]
    if op in ORDERED and kind not in ("int", "float"):
        raise DataError(f"filter on {field!r}: {op} compares numbers, and {field!r} holds {kind} values")
    if op == "in":
        values = value if isinstance(value, (list, tuple)) else None
        if not values:
            raise DataError(f"filter on {field!r}: 'in' needs a non-empty list of values, got {value!r}")
        return Condition(field, op, tuple(dict.fromkeys(_typed(field, kind, v, from_text) for v in values)))
    if isinstance(value, (list, tuple, dict)):
        raise DataError(f"filter on {field!r}: {op} takes one value, got {value!r}")
    return Condition(field, op, _typed(field, kind, value, from_text))


# ---------------------------------------------------------------- the two ways in


def parse_where(expressions: Iterable[str], schema: Mapping[str, str]) -> Filter:
    """The CLI's ``--where`` expressions (ANDed), e.g. ``price<=50``, ``brand in (acme,zeta)``."""
    conditions = []
    for text in expressions:
        found = _WHERE.match(str(text))
        if not found or not found.group(3):
            raise DataError(
                f"filter {text!r}: expected ATTRIBUTE OP VALUE, e.g. 'price<=50', 'brand in (acme,zeta)' "
                "or 'in_stock=true' (OP: = != < <= > >= in)"
            )
        field, symbol, value = found.group(1), found.group(2).strip().lower(), found.group(3)
        if symbol == "in":
            if not (value.startswith("(") and value.endswith(")")):
                raise DataError(f"filter {text!r}: 'in' takes a list in brackets, e.g. 'brand in (acme,zeta)'")
            values = [v for v in (p.strip() for p in value[1:-1].split(",")) if v]
            conditions.append(condition(field, "in", values, schema, from_text=True))
        else:
            conditions.append(condition(field, _SYMBOLS[symbol], value, schema, from_text=True))
    return Filter(tuple(conditions))


def parse_json(value: str | Mapping | None, schema: Mapping[str, str]) -> Filter:
    """The API's ``filter``: a JSON object (or its text) of attribute -> value | list | {op: value}."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Filter()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DataError(f"filter: not JSON ({exc})") from None
    if not isinstance(value, Mapping):
        raise DataError(f"filter: expected a JSON object of attribute -> value, got {type(value).__name__}")
    conditions = []
    for field, spec in value.items():
        if isinstance(spec, Mapping):
            if not spec:
                raise DataError(f'filter on {field!r}: an empty object; give e.g. {{"lte": 50}}')
            conditions += [condition(str(field), str(op), v, schema) for op, v in spec.items()]
        elif isinstance(spec, list):
            conditions.append(condition(str(field), "in", spec, schema))
        else:
            conditions.append(condition(str(field), "eq", spec, schema))
    return Filter(tuple(conditions))


# ---------------------------------------------------------------- evaluating


def matches(where: Filter | None, product: Mapping[str, Any]) -> bool:
    """Whether one product (``category``, ``product_id``, ``attributes``) passes ``where``."""
    if not where:
        return True
    for c in where.conditions:
        value = product.get(c.field) if c.field in BUILTIN else (product.get("attributes") or {}).get(c.field)
        if value is None or not _holds(c, float(value) if isinstance(value, (int, float)) else value):
            return False
    return True


def _holds(c: Condition, value) -> bool:
    if c.op == "in":
        return value in c.value
    if c.op == "eq":
        return value == c.value
    if c.op == "ne":
        return value != c.value
    return {"lt": value < c.value, "lte": value <= c.value, "gt": value > c.value, "gte": value >= c.value}[c.op]


class Column:
    """One field's values over a store's rows, for :func:`mask`: numbers and bools as float64
    (NaN: missing), text as int32 codes into ``vocabulary`` (-1: missing). Rows are appended
    in amortised constant time and overwritten in place (``set``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.vocabulary: dict[str, int] = {}
        self._data = np.empty(0, np.int32 if kind == "text" else np.float64)
        self.size = 0

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.size]

    def encode(self, values: Sequence) -> np.ndarray:
        if self.kind == "text":
            return np.array(
                [-1 if v is None else self.vocabulary.setdefault(str(v), len(self.vocabulary)) for v in values],
                np.int32,
            )
        return np.array([math.nan if v is None else float(v) for v in values], np.float64)

    def append(self, values: Sequence) -> None:
        encoded = self.encode(values)
        need = self.size + len(encoded)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data), 1024), self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : need] = encoded
        self.size = need

    def set(self, rows: np.ndarray, values: Sequence) -> None:
        self._data[np.asarray(rows, np.int64)] = self.encode(values)

    def take(self, rows: np.ndarray) -> Column:
        out = Column(self.kind)
        out.vocabulary = dict(self.vocabulary)
        out._data = self.values[np.asarray(rows, np.int64)].copy()
        out.size = len(out._data)
        return out


def mask(where: Filter | None, columns: Mapping[str, Column], size: int) -> np.ndarray:
    """Rows (of ``size``) that pass ``where``; a field with no column has no values (matches nothing)."""
    keep = np.ones(size, bool)
    for c in where.conditions if where else ():
        column = columns.get(c.field)
        if column is None:
            return np.zeros(size, bool)
        values = column.values[:size]
        if column.kind == "text":
            codes = [column.vocabulary[v] for v in (c.value if c.op == "in" else (c.value,)) if v in column.vocabulary]
            hit = _isin(values, codes) if c.op in ("in", "eq") else (values >= 0) & ~_isin(values, codes)
        else:
            target = [float(v) for v in c.value] if c.op == "in" else float(c.value)
            hit = _compare(values, c.op, target)
        keep &= hit
    return keep


def _compare(values: np.ndarray, op: str, target) -> np.ndarray:
    """Rows of a number column that pass ``op`` against ``target`` (NaN, a missing value, passes none)."""
    if op == "in":
        return _isin(values, target)
    if op == "ne":
        return (values != target) & ~np.isnan(values)
    return {"eq": np.equal, "lt": np.less, "lte": np.less_equal, "gt": np.greater, "gte": np.greater_equal}[op](
        values, target
    )


def _isin(values: np.ndarray, targets: Sequence) -> np.ndarray:
    """``np.isin`` for a few targets as comparisons: several times faster on a million rows."""
    if len(targets) > 8:
        return np.isin(values, targets)
    hit = np.zeros(len(values), bool)
    for target in targets:
        hit |= values == target
    return hit


def to_milvus(where: Filter | None, field_name=lambda f: f) -> str:
    """``where`` as a Milvus boolean expression ("" for no filter); ``field_name`` maps a
    filter field to the collection's (e.g. ``attributes["price"]`` for an attribute kept in
    a JSON field).

    On a JSON path, ``in`` is written as ORed equalities (milvus-lite takes ``in`` on fields
    only) and ``!=`` asks that the key ``exists``, so a product without the attribute
    matches no condition on it, as :func:`matches` has it.
    """
    if not where:
        return ""
    parts = []
    for c in where.conditions:
        name = field_name(c.field)
        json_path = name.endswith("]")
        if c.op == "in" and json_path:
            parts.append(" or ".join(f"{name} == {_milvus_value(v)}" for v in c.value))
        elif c.op == "in":
            parts.append(f"{name} in [{', '.join(_milvus_value(v) for v in c.value)}]")
        elif c.op == "ne" and json_path:
            parts.append(f"exists {name} and {name} != {_milvus_value(c.value)}")
        else:
            parts.append(f"{name} {_MILVUS_OPS[c.op]} {_milvus_value(c.value)}")
    return " and ".join(f"({p})" for p in parts)


_MILVUS_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _milvus_value(value) -> str:
    """A literal for a Milvus expression: strings double-quoted with only the escapes Milvus
    and milvus-lite both read (backslash, quote, newline, return, tab; no ``\\u``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value))
    return '"' + "".join(_MILVUS_ESCAPES.get(ch, ch) for ch in str(value)) + '"'
