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

A filter's size is bounded where it is read, for every store alike: at most ``MAX_VALUES``
values (an ``in`` list's each count), ``MAX_BYTES`` of text and, for JSON, ``MAX_DEPTH``
levels of nesting; numbers are finite floats. What is past a bound is a DataError naming
the bound (and the attribute, where there is one), never a RecursionError or an
OverflowError: a JSON-path condition costs milvus-lite a ``json.loads`` per row and
value, so the bound on values is a bound on a search's cost.

Two ways out: :func:`mask` evaluates a filter over whole columns at once (:class:`Column`:
numbers as float64 with NaN for missing, text as integer codes), for an embedded store;
:func:`to_milvus` writes it as a Milvus boolean expression.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vsearch.errors import DataError

MAX_VALUES = 100  # values in one filter, an ``in`` list's each counted
MAX_BYTES = 16 * 1024  # a filter's text: the API's JSON, or the CLI's --where expressions together
MAX_DEPTH = 3  # JSON nesting: {attribute: {op: [values]}}
OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in")
ORDERED = ("lt", "lte", "gt", "gte")
BUILTIN = {"category": "text", "product_id": "text"}  # fields every product has
_SYMBOLS = {"<=": "lte", ">=": "gte", "!=": "ne", "==": "eq", "=": "eq", "<": "lt", ">": "gt"}
# Possessive quantifiers and a look-behind for `in`: one pass over the text, however long (a
# lazy value before `\s*$`, or `\s*` before `\s+in`, made a run of spaces cost quadratic time).
_WHERE = re.compile(r"\s*+([A-Za-z_][A-Za-z0-9_.-]*+)\s*+(<=|>=|!=|==|=|<|>|(?<=\s)in(?=\s))(.*)", re.S | re.I)
_JSON_SPECIAL = re.compile(r'["\\\[\]{}]')  # what opens or closes a JSON string or level
_MILVUS_OPS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict = 2, 4, 4


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


def brief(value) -> str:
    """``repr(value)`` cut short: an error message quotes what it refuses, never all of it."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        try:
            digits = str(len(str(abs(value))))
        except ValueError:  # Python writes at most this many digits
            digits = f"over {sys.get_int_max_str_digits()}"
        return f"an integer of {digits} digits"
    return _BRIEF.repr(value)


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
                number = None
            if number is not None and math.isfinite(number):
                return number
            if number is not None:
                raise _not_finite(field, value)
        else:
            return _unicode(field, text)
    elif kind == "bool" and isinstance(value, bool):
        return value
    elif kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
        raise _not_finite(field, value)
    elif kind == "text" and isinstance(value, str):
        return _unicode(field, value)
    what = {"bool": "true or false", "int": "a number", "float": "a number", "text": "text"}[kind]
    raise DataError(f"filter on {brief(field)}: {brief(value)} is not {what} (the attribute holds {kind} values)")


def _not_finite(field: str, value) -> DataError:
    return DataError(
        f"filter on {brief(field)}: {brief(value)} is not a finite number (numbers are floats, at most about 1.8e308)"
    )


def _unicode(field: str, text: str) -> str:
    """``text``, if it is Unicode a store can hold (no lone surrogate, as JSON's ``\\ud800`` gives)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise DataError(f"filter on {brief(field)}: {brief(text)} is not valid Unicode text") from None
    return text


def condition(field: str, op: str, value, schema: Mapping[str, str], from_text: bool = False) -> Condition:
    """One checked condition.

    Raises:
        DataError: ``field`` is not a known attribute, ``op`` is unknown or of no use on its
            type, or ``value`` does not fit the attribute's type.
    """
    types = field_types(schema)
    if field not in types:
        known = ", ".join(sorted(types))
        raise DataError(f"filter on {brief(field)}: the catalog has no such attribute (it has {known})")
    if op not in OPS:
        raise DataError(f"filter on {brief(field)}: unknown operator {brief(op)}; use one of {', '.join(OPS)}")
    kind = types[field]
    if op in ORDERED and kind not in ("int", "float"):
        raise DataError(f"filter on {field!r}: {op} compares numbers, and {field!r} holds {kind} values")
    if op == "in":
        values = value if isinstance(value, (list, tuple)) else None
        if not values:
            raise DataError(f"filter on {field!r}: 'in' needs a non-empty list of values, got {brief(value)}")
        if len(values) > MAX_VALUES:
            raise DataError(
                f"filter on {field!r}: 'in' lists {len(values)} values; a filter holds at most {MAX_VALUES}"
            )
        return Condition(field, op, tuple(dict.fromkeys(_typed(field, kind, v, from_text) for v in values)))
    if isinstance(value, (list, tuple, dict)):
        raise DataError(f"filter on {field!r}: {op} takes one value, got {brief(value)}")
    return Condition(field, op, _typed(field, kind, value, from_text))


def _bounded(conditions: Sequence[Condition]) -> Filter:
    """The filter of ``conditions``, if it holds at most ``MAX_VALUES`` values in all."""
    count = sum(len(c.value) if c.op == "in" else 1 for c in conditions)
    if count > MAX_VALUES:
        raise DataError(f"filter: {count} values in all; a filter holds at most {MAX_VALUES}")
    return Filter(tuple(conditions))


def _check_size(text: str, what: str) -> None:
    size = len(text.encode(errors="surrogatepass"))
    if size > MAX_BYTES:
        raise DataError(f"{what}: {size} bytes; a filter is at most {MAX_BYTES} bytes")


# ---------------------------------------------------------------- the two ways in


def parse_where(expressions: Iterable[str], schema: Mapping[str, str]) -> Filter:
    """The CLI's ``--where`` expressions (ANDed), e.g. ``price<=50``, ``brand in (acme,zeta)``.

    Raises:
        DataError: an expression that is not ATTRIBUTE OP VALUE, a condition :func:`condition`
            refuses, or a filter past ``MAX_BYTES`` or ``MAX_VALUES``.
    """
    expressions = [str(text) for text in expressions]
    _check_size("\n".join(expressions), "filter")
    conditions = []
    for text in expressions:
        found = _WHERE.fullmatch(text)
        value = found.group(3).strip() if found else ""
        if not found or not value:
            raise DataError(
                f"filter {brief(text)}: expected ATTRIBUTE OP VALUE, e.g. 'price<=50', 'brand in (acme,zeta)' "
                "or 'in_stock=true' (OP: = != < <= > >= in)"
            )
        field, symbol = found.group(1), found.group(2).lower()
        if symbol == "in":
            if not (value.startswith("(") and value.endswith(")")):
                raise DataError(f"filter {brief(text)}: 'in' takes a list in brackets, e.g. 'brand in (acme,zeta)'")
            values = [v for v in (p.strip() for p in value[1:-1].split(",")) if v]
            conditions.append(condition(field, "in", values, schema, from_text=True))
        else:
            conditions.append(condition(field, _SYMBOLS[symbol], value, schema, from_text=True))
    return _bounded(conditions)


def parse_json(value: str | Mapping | None, schema: Mapping[str, str]) -> Filter:
    """The API's ``filter``: a JSON object (or its text) of attribute -> value | list | {op: value}.

    Raises:
        DataError: text that is not a JSON object, a condition :func:`condition` refuses, or
            a filter past ``MAX_BYTES``, ``MAX_DEPTH`` or ``MAX_VALUES``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return Filter()
    if isinstance(value, str):
        value = _load_json(value)
    if not isinstance(value, Mapping):
        raise DataError(f"filter: expected a JSON object of attribute -> value, got {type(value).__name__}")
    conditions = []
    for field, spec in value.items():
        if isinstance(spec, Mapping):
            if not spec:
                raise DataError(f'filter on {brief(field)}: an empty object; give e.g. {{"lte": 50}}')
            conditions += [condition(str(field), str(op), v, schema) for op, v in spec.items()]
        elif isinstance(spec, list):
            conditions.append(condition(str(field), "in", spec, schema))
        else:
            conditions.append(condition(str(field), "eq", spec, schema))
    return _bounded(conditions)


def _load_json(text: str):
    """``json.loads(text)`` for a filter, its size and nesting checked first (json recurses per level)."""
    _check_size(text, "filter")
    if _depth(text) > MAX_DEPTH:
        raise DataError(
            f"filter: nested more than {MAX_DEPTH} deep; a filter is "
            '{"attribute": value | [values] | {"op": value | [values]}}'
        )
    try:
        return json.loads(text, parse_int=_json_int)
    except RecursionError:  # not reached past the check above; kept so no input can give a 500
        raise DataError(f"filter: nested more than {MAX_DEPTH} deep") from None
    except ValueError as exc:
        raise DataError(f"filter: not JSON ({exc})") from None


def _depth(text: str) -> int:
    """How deep JSON ``text`` nests (brackets inside strings skipped), in one pass; never less
    than ``json.loads`` would go before it stopped at an error."""
    depth = deepest = 0
    in_string, escaped = False, -1
    for found in _JSON_SPECIAL.finditer(text):
        char, at = found.group(), found.start()
        if at == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_int(text: str) -> int | float:
    """A JSON integer; one Python refuses to read (over 4300 digits) is past a float's range anyway:
    an infinite :class:`_LongInteger`, which :func:`condition` refuses with the attribute's name."""
    try:
        return int(text)
    except ValueError:
        return _LongInteger(text)


class _LongInteger(float):
    """An integer too long to read, as the infinity of its sign; its repr says how long it is."""

    digits: int

    def __new__(cls, text: str):
        made = super().__new__(cls, "-inf" if text.startswith("-") else "inf")
        made.digits = len(text.lstrip("-"))
        return made

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


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
    only) behind an ``exists`` (milvus-lite parses the JSON once per equality and row: a
    product without the attribute then costs one), and ``!=`` asks that the key ``exists``,
    so a product without the attribute matches no condition on it, as :func:`matches` has
    it; ``exists`` stands in parentheses (Milvus 2.3 reads ``exists a and b`` as ``exists (a
    and b)``). Every value is written by :func:`milvus_literal`.
    """
    if not where:
        return ""
    parts = []
    for c in where.conditions:
        name = field_name(c.field)
        json_path = name.endswith("]")
        if c.op == "in" and json_path and len(c.value) > 1:
            parts.append(f"(exists {name}) and ({' or '.join(f'{name} == {milvus_literal(v)}' for v in c.value)})")
        elif c.op == "in" and json_path:
            parts.append(f"{name} == {milvus_literal(c.value[0])}")
        elif c.op == "in":
            parts.append(f"{name} in [{', '.join(milvus_literal(v) for v in c.value)}]")
        elif c.op == "ne" and json_path:
            parts.append(f"(exists {name}) and ({name} != {milvus_literal(c.value)})")
        else:
            parts.append(f"{name} {_MILVUS_OPS[c.op]} {milvus_literal(c.value)}")
    return " and ".join(f"({p})" for p in parts)


_MILVUS_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def milvus_literal(value) -> str:
    """A literal for a Milvus expression: strings double-quoted with only the escapes Milvus
    and milvus-lite both read (backslash, quote, newline, return, tab; no ``\\u``).

    The one way a value enters an expression (milvus-lite takes no bound parameters), so no
    id or value can end its string and add terms of its own.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value))
    return '"' + "".join(_MILVUS_ESCAPES.get(ch, ch) for ch in str(value)) + '"'
