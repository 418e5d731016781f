"""Hostile ids and filters against every store: faiss, a milvus-lite file, and the Milvus
server the session starts (tests/milvus_server.py).

What every store promises whatever the text: an id or a filter value is only ever data (it
reads, writes and deletes its own product, never another), a listing ends, an id a store
cannot keep is refused with a DataError that loses nothing, and a filter past its bounds is
refused before it reaches a store, with the same words for both.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

import numpy as np
import pytest
from test_stores import DIM, unit

from vsearch.catalog.manifest import Photo
from vsearch.errors import DataError
from vsearch.stores import build_store, filters

# Ids that end a quoted string (either quote), escape its end, or carry an expression of their
# own: pymilvus writes ids into `photo_id in ['...']` and its paging `photo_id > "..."` as they come.
HOSTILE_IDS = [
    "x'] or seq >= 0 or photo_id in ['y",
    'x" or product_id != "',
    'x" or photo_id != "',
    'p1" or "1" == "1',
    "a'b",
    'a"b',
    "a\\b",
    "\\",
    '\\"',
    "'",
    '"',
    'a\\"] or true or ["b',
    "ends with a backslash\\",
    "ünï'cødé\"日本",
    '$meta["x"] == 1',
    "%_* like",
    'zz" or seq >= 0 or "',  # sorts last: the final key of a page, where a listing's cursor starts
]
# Ids a store may refuse (a control character, no Unicode), as long as it refuses with a DataError.
AWKWARD_IDS = ["line\nbreak", "nul\x00", "lone \ud800 surrogate", " padded "]
HOSTILE_VALUES = ['o"neil', "it's", "back\\slash", 'x" or brand != "', '\\"', "tab\there"]


@pytest.fixture(params=["faiss", "milvus", pytest.param("server", marks=pytest.mark.slow)])
def spec(request, tmp_path):
    if request.param == "faiss":
        return f"faiss:{tmp_path}/catalog.vsi"
    pytest.importorskip("vsearch.stores.milvus")
    if request.param == "milvus":
        return f"milvus:{tmp_path}/catalog.db"
    uri = request.getfixturevalue("milvus_server")
    return f"milvus:{uri}#h_{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]}"


@pytest.fixture
def store(spec, monkeypatch):
    """Six plain products p0..p5 of two photos; listings page three rows at a time, so a
    hostile id falls at the end of a page, where the next page's cursor is written."""
    if spec.startswith("milvus"):
        monkeypatch.setattr("vsearch.stores.milvus.store.PAGE", 3)
    photos = [
        Photo(f"p{p}", f"p{p}/{n}", f"/img/p{p}_{n}.jpg", "hats" if p % 2 else "shoes", {"brand": "acme", "price": p})
        for p in range(6)
        for n in range(2)
    ]
    vectors = unit(np.random.default_rng(0).normal(size=(len(photos), DIM)))
    made = build_store(spec, photos, vectors, fingerprint="fp", model={"name": "tiny"})
    yield made
    made.close()


def finishes(call, what: str, seconds: float = 60):
    """``call()``'s answer, failing the test if it has none within ``seconds`` (a listing that
    never ends would otherwise hang the session)."""
    out: dict = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test's thread)
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{what} did not finish in {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def listing(store) -> dict:
    return {p.product_id: p for p in finishes(lambda: list(store.products()), "listing the products")}


def vector(seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(1, DIM)))


def kept(store, where) -> set[str]:
    """The products ``where`` keeps, by the store's own listing and :func:`filters.matches`."""
    return {
        p.product_id
        for p in store.products()
        if filters.matches(where, {"product_id": p.product_id, "category": p.category, "attributes": p.attributes})
    }


def found(store, where) -> set[str]:
    return {h["product_id"] for h in store.search(vector(1), 100, where=where)[0]}


def test_reads_of_hostile_ids_find_nothing_and_change_nothing(store):
    before = (store.count(), listing(store))
    for text in HOSTILE_IDS + AWKWARD_IDS + ["p0/0' or '1'=='1", "p0/0\\"]:
        assert store.photo(text) is None, text  # before the fix: "x'] or seq >= 0 ..." gave p0/0
        assert store.get(text) is None, text
        assert store.delete([text]) == 0, text
    assert (store.count(), listing(store)) == before


@pytest.mark.parametrize("product_id", ['zz" or product_id != "', 'zz" or seq >= 0 or "', "zz' or 1 == 1 or '", "zz\\"])
def test_a_listing_ends_whatever_ids_it_holds(store, product_id):
    """An id sorting last is the cursor of a listing's next page: written into the expression as
    it came, photo ``zz" or product_id != "/0`` made it ``photo_id > "zz" or product_id != "/0"``,
    which every row matches, and the listing never ended (nor the requests waiting on it)."""
    store.upsert([Photo(product_id, f"{product_id}/0", "/img/z.jpg", "hats", {"brand": "z"})], vector(7))
    assert set(listing(store)) == {f"p{p}" for p in range(6)} | {product_id}
    assert finishes(store.categories, "listing the categories") == ["hats", "shoes"] and store.count() == (7, 13)


def test_hostile_ids_are_written_read_listed_and_deleted_as_themselves(store):
    written: dict[str, tuple[str, ...]] = {}
    for n, product_id in enumerate(HOSTILE_IDS + AWKWARD_IDS):
        photos = (product_id, f"{product_id}/1")
        before = (store.count(), listing(store))
        try:
            store.upsert(
                [
                    Photo(product_id, photo, f"/img/{n}_{k}.jpg", "hats", {"brand": "evil"})
                    for k, photo in enumerate(photos)
                ],
                np.vstack([vector(n), vector(n + 100)]),
            )
        except DataError:  # refused: then nothing changed
            assert product_id in AWKWARD_IDS, f"{product_id!r} refused"
            assert (store.count(), listing(store)) == before, product_id
            continue
        written[product_id] = photos
    assert len(written) >= len(HOSTILE_IDS)
    listed = listing(store)  # before the fix: never returned once 'zz" or seq >= 0 or "' was written
    assert set(listed) == {f"p{p}" for p in range(6)} | set(written)
    assert store.count() == (6 + len(written), 12 + 2 * len(written))
    for product_id, photos in written.items():
        assert store.get(product_id) == listed[product_id] and listed[product_id].photos == photos, product_id
        assert store.photo(photos[1])["product_id"] == product_id, product_id
        where = filters.parse_json({"product_id": product_id}, store.schema)
        assert found(store, where) == {product_id}, product_id
    for product_id in written:  # one at a time: each delete takes its own product, no other
        left = store.count()
        assert store.delete([product_id]) == 1, product_id
        assert store.get(product_id) is None and store.count() == (left[0] - 1, left[1] - 2), product_id
    assert set(listing(store)) == {f"p{p}" for p in range(6)}


def test_hostile_filter_values_and_attributes_keep_what_matches(store):
    for n, value in enumerate(HOSTILE_VALUES):  # text columns, and "note": an attribute the build did not have
        store.upsert(
            [Photo(f"v{n}", f"v{n}/0", f"/img/v{n}.jpg", value, {"brand": value, "price": n, "note": value})],
            vector(200 + n),
        )
    try:
        store.upsert([Photo("w", "w/0", "/img/w.jpg", "hats", {'we"ird] or 1==1 or x["': "yes"})], vector(300))
    except DataError:
        pass  # a store may refuse such a name; then filters cannot name it
    wheres = [{"category": HOSTILE_VALUES[0]}, {"product_id": HOSTILE_IDS}]
    for value in HOSTILE_VALUES:
        wheres += [{"brand": value}, {"brand": {"ne": value}}, {"brand": [value, "acme"]}, {"note": value}]
        wheres += [{"note": {"ne": value}}, {"note": [value, HOSTILE_VALUES[0]]}]
    many = [f"n{i}" for i in range(filters.MAX_VALUES - 1)] + [HOSTILE_VALUES[2]]
    wheres.append({"note": many})  # as many values as a filter may hold, on the JSON path
    if 'we"ird] or 1==1 or x["' in store.schema:
        wheres.append({'we"ird] or 1==1 or x["': "yes"})
    for spec in wheres:
        where = filters.parse_json(json.dumps(spec), store.schema)
        expected = kept(store, where)
        assert found(store, where) == expected, spec
    assert found(store, filters.parse_json({"brand": 'x" or brand != "'}, store.schema)) == {"v3"}


SCHEMA = {"price": "float", "brand": "text"}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"price": %s}' % ("9" * 400), "'price': an integer of 400 digits is not a finite number"),
        ('{"price": {"gte": -%s}}' % ("9" * 5000), "'price': an integer of 5000 digits is not a finite number"),
        ('{"price": [1, 1e400]}', "'price': inf is not a finite number"),
        ('{"price": NaN}', "'price': nan is not a finite number"),
        ('{"brand": ' + "[" * 100_000 + "]" * 100_000 + "}", f"a filter is at most {filters.MAX_BYTES} bytes"),
        ('{"brand": ' + "[" * 1000 + "]" * 1000 + "}", f"nested more than {filters.MAX_DEPTH} deep"),
        ('{"brand": {"in": [["a"]]}}', f"nested more than {filters.MAX_DEPTH} deep"),
        (json.dumps({"brand": [f"v{i}" for i in range(60_000)]}), f"a filter is at most {filters.MAX_BYTES} bytes"),
        (json.dumps({"brand": list(range(filters.MAX_VALUES + 1))}), f"a filter holds at most {filters.MAX_VALUES}"),
        ('{"brand": "\\ud800"}', "'brand': '\\ud800' is not valid Unicode text"),
        (json.dumps({"x" * 10_000: 1}), "the catalog has no such attribute"),
    ],
)
def test_a_filter_past_its_bounds_is_refused_at_once_naming_the_bound(text, fragment):
    """Before any store sees it: both stores refuse it in the same words (tests/web: as a 422)."""
    start = time.perf_counter()
    with pytest.raises(DataError, match=re.escape(fragment)) as refused:
        filters.parse_json(text, SCHEMA)
    assert time.perf_counter() - start < 1 and len(str(refused.value)) < 300
