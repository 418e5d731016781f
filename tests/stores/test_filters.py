"""Attribute filters: the two ways in (where, JSON), checking, and the two ways out (mask, Milvus)."""

import json
import re
import time

import numpy as np
import pytest

from vsearch.errors import DataError
from vsearch.stores import filters
from vsearch.stores.filters import Condition, Filter

SCHEMA = {"price": "float", "stock": "int", "brand": "text", "in_stock": "bool"}


def test_parse_where_reads_each_operator_and_type():
    where = filters.parse_where(
        [
            "price<=50",
            "stock > 2",
            "brand in (acme, 'zeta')",
            "in_stock=TRUE",
            "category!=hats",
            "product_id==p1",
            "price<7.5",
            "price>=1e1",
        ],
        SCHEMA,
    )
    assert where.conditions == (
        Condition("price", "lte", 50.0),
        Condition("stock", "gt", 2.0),
        Condition("brand", "in", ("acme", "zeta")),
        Condition("in_stock", "eq", True),
        Condition("category", "ne", "hats"),
        Condition("product_id", "eq", "p1"),
        Condition("price", "lt", 7.5),
        Condition("price", "gte", 10.0),
    )
    assert where.describe().startswith("price<=50 and stock>2 and brand in (acme, zeta) and in_stock=true")
    assert filters.parse_where([], SCHEMA) == Filter() and not Filter() and Filter().describe() == "everything"


def test_parse_json_reads_objects_lists_and_scalars():
    where = filters.parse_json('{"price": {"lte": 50, "gt": 1}, "brand": ["acme", "zeta"], "in_stock": true}', SCHEMA)
    assert where.conditions == (
        Condition("price", "lte", 50.0),
        Condition("price", "gt", 1.0),
        Condition("brand", "in", ("acme", "zeta")),
        Condition("in_stock", "eq", True),
    )
    assert filters.parse_json(where.to_json(), SCHEMA) == where  # the API form reads back
    assert filters.parse_json(None, SCHEMA) == filters.parse_json("  ", SCHEMA) == Filter()


@pytest.mark.parametrize(
    "where, message",
    [
        (["colour=red"], "'colour': the catalog has no such attribute"),
        (["price<=cheap"], "'price': 'cheap' is not a number"),
        (["price<=nan"], "'price'"),
        (["brand<acme"], "'brand': lt compares numbers"),
        (["in_stock>true"], "'in_stock': gt compares numbers"),
        (["in_stock=yes"], "'in_stock': 'yes' is not true or false"),
        (["brand in acme"], "'in' takes a list in brackets"),
        (["brand in ()"], "'brand': 'in' needs a non-empty list"),
        (["price"], "expected ATTRIBUTE OP VALUE"),
        (["price<="], "expected ATTRIBUTE OP VALUE"),
    ],
)
def test_parse_where_errors_name_the_attribute(where, message):
    with pytest.raises(DataError, match=message):
        filters.parse_where(where, SCHEMA)


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"price": {"lte": "50"}}', "'price': '50' is not a number"),
        ({"stock": {"about": 3}}, "'stock': unknown operator 'about'"),
        ({"brand": {}}, "'brand': an empty object"),
        ({"brand": {"eq": ["a"]}}, "'brand': eq takes one value"),
        ({"in_stock": 1}, "'in_stock': 1 is not true or false"),
        ({"price": True}, "'price': True is not a number"),
        ({"nope": 1}, "'nope': the catalog has no such attribute"),
        ("[1]", "expected a JSON object"),
        ("{nope", "not JSON"),
    ],
)
def test_parse_json_errors_name_the_attribute(value, message):
    with pytest.raises(DataError, match=message):
        filters.parse_json(value, SCHEMA)


def random_products(n, rng):
    out = []
    for i in range(n):
        attributes = {}
        if rng.random() < 0.8:
            attributes["price"] = float(rng.choice([1.0, 2.5, 4.0, 10.0]))
        if rng.random() < 0.8:
            attributes["stock"] = int(rng.integers(0, 4))
        if rng.random() < 0.8:
            attributes["brand"] = str(rng.choice(["acme", "zeta", "omni"]))
        if rng.random() < 0.8:
            attributes["in_stock"] = bool(rng.random() < 0.5)
        out.append(
            {"product_id": f"p{i % 17}", "category": str(rng.choice(["hats", "shoes"])), "attributes": attributes}
        )
    return out


def random_filter(rng):
    choices = [
        ("price", ["eq", "ne", "lt", "lte", "gt", "gte", "in"], [1.0, 2.5, 4.0, 10.0, 3.0]),
        ("stock", ["eq", "ne", "lt", "gte", "in"], [0, 1, 2, 3]),
        ("brand", ["eq", "ne", "in"], ["acme", "zeta", "omni", "nobody"]),
        ("in_stock", ["eq", "ne", "in"], [True, False]),
        ("category", ["eq", "ne", "in"], ["hats", "shoes"]),
        ("product_id", ["eq", "in", "ne"], ["p1", "p2", "p16", "p99"]),
    ]
    conditions = []
    for _ in range(int(rng.integers(1, 4))):
        field, ops, values = choices[int(rng.integers(len(choices)))]
        op = str(rng.choice(ops))
        pick = [values[int(i)] for i in rng.choice(len(values), size=2, replace=False)]
        conditions.append(filters.condition(field, op, pick if op == "in" else pick[0], SCHEMA))
    return Filter(tuple(conditions))


def test_mask_agrees_with_matches_on_random_data():
    rng = np.random.default_rng(0)
    products = random_products(300, rng)
    columns = {field: filters.Column(kind) for field, kind in filters.field_types(SCHEMA).items()}
    for field, column in columns.items():
        column.append([p.get(field) if field in filters.BUILTIN else p["attributes"].get(field) for p in products])
    for _ in range(300):
        where = random_filter(rng)
        expected = np.array([filters.matches(where, p) for p in products])
        assert np.array_equal(filters.mask(where, columns, len(products)), expected), where.describe()
    assert filters.mask(None, columns, 3).tolist() == [True] * 3
    nowhere = Filter((Condition("colour", "eq", "red"),))
    assert not filters.mask(nowhere, columns, 5).any()  # no column: nothing has a value


def test_column_set_and_take():
    column = filters.Column("text")
    column.append(["a", None, "b"])
    column.append(["a"] * 2000)  # grows past its first allocation
    column.set(np.array([1]), ["c"])
    assert column.values[:4].tolist() == [0, 2, 1, 0] and column.size == 2003
    taken = column.take(np.array([3, 1]))
    assert taken.values.tolist() == [0, 2] and taken.vocabulary == column.vocabulary


def test_to_milvus_writes_boolean_expressions():
    where = filters.parse_where(['brand in (acme, "quo\\"te")', "price<=50", "in_stock=false", "stock!=2"], SCHEMA)
    assert filters.to_milvus(where) == (
        '(brand in ["acme", "quo\\\\\\"te"]) and (price <= 50.0) and (in_stock == false) and (stock != 2.0)'
    )
    assert filters.to_milvus(None) == "" and filters.to_milvus(Filter()) == ""


# ---------------------------------------------------------------- bounds (#34): one clear refusal, at once


@pytest.mark.parametrize(
    "where, message",
    [
        (["price" + " " * 15_000 + "x"], "expected ATTRIBUTE OP VALUE"),
        (["price<=1" + " " * 15_000 + "x"], "'price': '1"),
        (["brand in" + " " * 7_000 + "(a)" + " " * 7_000 + "x"], "'in' takes a list in brackets"),
        (["price<=" + "9" * 400], "'price': '99999"),
        (["price>-1e999"], "'price': '-1e999' is not a finite number"),
        (["brand=x" * 3_000], f"a filter is at most {filters.MAX_BYTES} bytes"),
        ([f"brand in ({','.join(map(str, range(filters.MAX_VALUES + 1)))})"], "'brand': 'in' lists 101 values"),
        (["price>1"] * (filters.MAX_VALUES + 1), f"{filters.MAX_VALUES + 1} values in all; a filter holds at most"),
    ],
)
def test_parse_where_refuses_what_is_past_its_bounds_at_once(where, message):
    """A run of spaces cost the old pattern quadratic time (10 s at 15,000); numbers must be finite."""
    start = time.perf_counter()
    with pytest.raises(DataError, match=re.escape(message)):
        filters.parse_where(where, SCHEMA)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"price": %s}' % ("9" * 400), "'price': an integer of 400 digits is not a finite number"),
        ({"stock": {"gt": 10**400}}, "'stock': an integer of 401 digits is not a finite number"),
        ({"stock": {"gt": 10**5000}}, "'stock': an integer of over 4300 digits"),
        ('{"stock": %s}' % ("1" * 5000), "'stock': an integer of 5000 digits"),
        ('{"price": -1e400}', "'price': -inf is not a finite number"),
        ('{"brand": ' + "[" * 100_000 + "]" * 100_000 + "}", f"a filter is at most {filters.MAX_BYTES} bytes"),
        ('{"brand": {"in": [[1]]}}', f"nested more than {filters.MAX_DEPTH} deep"),
        ({"brand": [f"b{i}" for i in range(filters.MAX_VALUES + 1)]}, "'brand': 'in' lists 101 values"),
        ({"brand": [f"a{i}" for i in range(60)], "stock": {"in": list(range(41))}}, "101 values in all"),
        ({"brand": [[[["deep"]]]]}, "'brand': [[[...]]] is not text"),
        ('{"brand": "\\udc00"}', "'brand': '\\udc00' is not valid Unicode text"),
    ],
)
def test_parse_json_refuses_what_is_past_its_bounds_at_once(value, message):
    """A 400-digit number was an OverflowError, 100,000 brackets a RecursionError: both 500s."""
    start = time.perf_counter()
    with pytest.raises(DataError, match=re.escape(message)) as refused:
        filters.parse_json(value, SCHEMA)
    assert time.perf_counter() - start < 1 and len(str(refused.value)) < 300


def test_brackets_and_quotes_inside_json_strings_are_not_nesting():
    text = json.dumps({"brand": ["[[[[{{", 'a"]]}}\\'], "in_stock": True})
    assert filters.parse_json(text, SCHEMA).conditions == (
        Condition("brand", "in", ("[[[[{{", 'a"]]}}\\')),
        Condition("in_stock", "eq", True),
    )
    at_the_bound = [f"b{i}" for i in range(filters.MAX_VALUES - 1)]
    assert len(filters.parse_json({"brand": at_the_bound, "stock": 1}, SCHEMA).conditions) == 2


def test_milvus_literals_end_where_they_should():
    """Every value is one literal: a quote or backslash in it cannot end it early."""
    for text in ['x" or 1 == 1 or "', "\\", '\\"', "a'b", "tab\t\nline"]:
        literal = filters.milvus_literal(text)
        assert literal[0] == literal[-1] == '"' and json.loads(literal) == text
