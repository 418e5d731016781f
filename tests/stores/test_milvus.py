"""The Milvus store's own behaviours: filters as expressions, group-by, metadata kept with the
collection, the fingerprint refusal, and the networked road (the session's Milvus server,
tests/milvus_server.py). The shared behaviours are tests/stores/test_stores.py's (there on a
milvus-lite file and on the server too).

One milvus-lite file per module and one server per session: each test builds its own catalog
under its own ``#name`` there.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import test_stores as shared  # tests/stores/test_stores.py: what every store promises, run here on a server too

from vsearch.catalog.manifest import Photo
from vsearch.errors import DataError, StoreError
from vsearch.stores.filters import Condition, Filter, matches, parse_where, to_milvus

DIM = 8
FINGERPRINT = "fp-a"


def catalog(products: int = 12, seed: int = 0) -> tuple[list[Photo], np.ndarray]:
    """Products p0.. of 1-3 photos: three categories, a price, a brand, a bool, a colour on some."""
    photos = []
    for p in range(products):
        attributes = {"price": 5 * p, "brand": ["acme", "zeta", 'o"neil é'][p % 3], "in_stock": p % 2 == 0}
        if p % 4:
            attributes["colour"] = "red" if p % 3 else "blue"
        for j in range(1 + p % 3):
            photos.append(
                Photo(f"p{p}", f"p{p}/{j}", f"/img/p{p}_{j}.jpg", ["shoes", "bags", "hats"][p % 3], attributes)
            )
    vectors = np.random.default_rng(seed).normal(size=(len(photos), DIM)).astype(np.float32)
    return photos, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def calibration(fingerprint: str) -> dict:
    platt = {"method": "platt", "mean": [0.5, 0.1], "scale": [0.2, 0.1], "coef": [3.0, 1.0], "intercept": -1.0}
    head = {"global": platt, "categories": {"shoes": platt}}
    return {
        "fingerprint": fingerprint,
        "heads": {"exact": head, "present": head},
        "thresholds": {"exact": 0.9, "none": None},
    }


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """A milvus-lite file shared by this module's tests (its server starts once per open)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return str(tmp_path_factory.mktemp("milvus") / "catalog.db")


@pytest.fixture(scope="module")
def built(lite):
    """A read-only catalog for the search tests: the store, its photos and vectors."""
    from vsearch.stores import build_store

    photos, vectors = catalog()
    store = build_store(f"milvus:{lite}#shared", photos, vectors, fingerprint=FINGERPRINT, model={"name": "m"})
    yield store, photos, vectors
    store.close()


def build(where: str, seed: int = 0, fingerprint: str = FINGERPRINT, **kwargs):
    from vsearch.stores import build_store

    photos, vectors = catalog(seed=seed, **kwargs)
    return build_store(f"milvus:{where}", photos, vectors, fingerprint=fingerprint, model={"name": "m"})


# ---------------------------------------------------------------- filters as expressions


def test_to_milvus_writes_json_paths_ors_and_escapes():
    schema = {"price": "float", "brand": "text", "in_stock": "bool"}
    where = parse_where(
        ['brand in (acme, "a\\b")', "price<=50", "in_stock=true", "category!=hats", "brand!=zeta"], schema
    )
    path = lambda f: f if f == "category" else f"attributes[{json.dumps(f)}]"  # noqa: E731
    assert to_milvus(where, path) == (
        '((exists attributes["brand"]) and (attributes["brand"] == "acme" or attributes["brand"] == "a\\\\b"))'
        ' and (attributes["price"] <= 50.0)'
        ' and (attributes["in_stock"] == true) and (category != "hats")'
        ' and ((exists attributes["brand"]) and (attributes["brand"] != "zeta"))'
    )
    assert to_milvus(Filter((Condition("product_id", "in", ("é", 'a"b\n')),))) == '(product_id in ["é", "a\\"b\\n"])'
    assert to_milvus(None) == "" and to_milvus(Filter()) == ""


@pytest.mark.parametrize(
    "expressions",
    [
        ["price<=25"],
        ["price>20", "price<45"],
        ["price>=55"],
        ["brand in (acme,zeta)"],
        ['brand=o"neil é'],
        ["colour!=red"],
        ["colour=blue", "in_stock=false"],
        ["in_stock=true"],
        ["category in (bags,hats)"],
        ["product_id in (p1,p4,nope)"],
        ["category!=shoes", "price in (5,10,15,20)"],
    ],
)
def test_filters_keep_what_matches_keeps(built, expressions):
    store, photos, vectors = built
    where = parse_where(expressions, store.schema)
    expected = {
        p.product_id
        for p in photos
        if matches(where, {"product_id": p.product_id, "category": p.category, "attributes": p.attributes})
    }
    grouped = store.search(vectors[:2], 100, where=where)
    assert all({h["product_id"] for h in hits} == expected for hits in grouped), where.describe()
    photo_hits = store.search(vectors[:1], 100, where=where, group=False)[0]
    assert {h["photo_id"] for h in photo_hits} == {p.photo_id for p in photos if p.product_id in expected}


# ---------------------------------------------------------------- group-by


def test_group_by_product_gives_each_product_once_scored_by_its_best_photo(built):
    store, photos, vectors = built
    queries = np.random.default_rng(7).normal(size=(3, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query, hits in zip(queries, store.search(queries, 5)):
        best: dict[str, tuple[float, str]] = {}
        for photo, score in zip(photos, vectors @ query):
            best[photo.product_id] = max(best.get(photo.product_id, (-2.0, "")), (float(score), photo.photo_id))
        top = sorted(best.items(), key=lambda item: -item[1][0])[:5]
        assert [(h["product_id"], h["photo_id"]) for h in hits] == [(p, s[1]) for p, s in top]
        assert [h["score"] for h in hits] == pytest.approx([s[0] for _, s in top], abs=1e-5)
    photo_hits = store.search(queries[:1], 5, group=False)[0]
    exact = np.argsort(-(vectors @ queries[0]))[:5]
    assert [h["photo_id"] for h in photo_hits] == [photos[i].photo_id for i in exact]
    first = photo_hits[0]
    assert first["id"] == first["photo_id"] and first["path"] == photos[exact[0]].image
    assert first["attributes"] == photos[exact[0]].attributes and first["category"] == photos[exact[0]].category


def test_an_hnsw_catalog_answers_a_selective_filter_exactly(lite):
    """milvus-lite's filtered HNSW walk alone missed photos here (a wrong top 3 for 9 of 20 queries)."""
    from vsearch.stores import build_store, open_store

    photos, vectors = shared.catalog(products=600, per=3, seed=1)
    rare = {"p7", "p100", "p333", "p599"}
    photos = [
        Photo(p.product_id, p.photo_id, p.image, p.category, {**p.attributes, "rare": p.product_id in rare})
        for p in photos
    ]
    build_store(f"milvus:{lite}#hnsw", photos, vectors, fingerprint=FINGERPRINT, kind="hnsw").close()
    store = open_store(f"milvus:{lite}#hnsw")  # milvus-lite builds HNSW in the background; closing waits for it
    listed = list(store.products())  # once: brute() lists the products for every query
    exact = SimpleNamespace(test_photos=photos, test_vectors=vectors, products=lambda: listed)
    try:
        assert store.kind == "hnsw"
        where = parse_where(["rare=true"], store.schema)
        queries = shared.unit(np.random.default_rng(3).normal(size=(20, shared.DIM)))
        for query, products, found in zip(
            queries, store.search(queries, 3, where=where), store.search(queries, 3, where=where, group=False)
        ):
            assert [(h["product_id"], h["photo_id"]) for h in products] == [
                e[:2] for e in shared.brute(exact, query, where)[:3]
            ]
            assert [h["photo_id"] for h in found] == [e[0] for e in shared.brute(exact, query, where, group=False)[:3]]
        assert store.search(queries[:1], 3, where=parse_where(["price<0"], store.schema)) == [[]]
    finally:
        store.close()


def test_search_checks_its_queries(built):
    store, _, vectors = built
    with pytest.raises(DataError, match="dimension 8"):
        store.search(np.ones((1, DIM + 1), np.float32), 3)
    with pytest.raises(DataError, match="NaN or infinity"):
        store.search(np.full((1, DIM), np.nan, np.float32), 3)
    with pytest.raises(DataError, match="at least 1"):
        store.search(vectors[:1], 0)
    assert store.search(vectors[0], 1)[0][0]["photo_id"] == "p0/0"  # one vector is one query


# ---------------------------------------------------------------- metadata kept with the collection


def test_metadata_and_calibration_persist_across_reopen(lite):
    from vsearch.stores import open_store

    store = build(f"{lite}#kept", products=5)
    store.upsert([Photo("p9", "p9/0", "/img/new.jpg", "socks", {"size": "L", "price": 2.5})], np.eye(1, DIM))
    store.set_calibration(calibration(FINGERPRINT))
    before = (store.count(), store.categories(), store.schema, store.search(np.eye(1, DIM), 3))
    store.close()  # the last user of the file: its server stops, the reopen reads the disk
    again = open_store(f"milvus:{lite}#kept", expected_fingerprint=FINGERPRINT)
    try:
        assert (again.fingerprint, again.dim, again.model) == (FINGERPRINT, DIM, {"name": "m"})
        assert again.schema == {"price": "float", "brand": "text", "in_stock": "bool", "colour": "text", "size": "text"}
        assert again.calibration == calibration(FINGERPRINT)
        assert (again.count(), again.categories(), again.schema, again.search(np.eye(1, DIM), 3)) == before
        assert again.get("p9").paths == ("/img/new.jpg",)
    finally:
        again.close()


def test_another_models_catalog_and_calibration_are_refused(lite):
    from vsearch.stores import open_store

    build(f"{lite}#model", products=3).close()
    with pytest.raises(
        DataError, match="built with model fp-a, but the query model is fp-b; rebuild the index with this model"
    ):
        open_store(f"milvus:{lite}#model", expected_fingerprint="fp-b")
    store = open_store(f"milvus:{lite}#model")
    try:
        with pytest.raises(DataError, match="was made with model fp-b"):
            store.set_calibration(calibration("fp-b"))
        assert store.calibration is None and open_store(f"milvus:{lite}#model").calibration is None
    finally:
        store.close()


# ---------------------------------------------------------------- writes


@pytest.mark.parametrize(
    "photos, vectors, message",
    [
        (
            [Photo("p1", "p1/x", "/x.jpg", "bags", {"price": "cheap"})],
            np.eye(1, DIM),
            "'price': 'cheap' is not a number",
        ),
        (
            [Photo("p1", "p1/x", "/x.jpg", "bags", {}), Photo("p1", "p1/y", "/y.jpg", "hats", {})],
            np.eye(2, DIM),
            "disagree",
        ),
        ([Photo("p1", "p1/x", "/x.jpg", "bags", {})], np.eye(1, DIM + 1), "dimension 8"),
        ([Photo("p1", "p1/x", "/x.jpg", "bags", {})], np.full((1, DIM), np.inf), "NaN or infinity"),
        ([Photo("p1", "p1/x", "/x.jpg", "bags", {"score": 1})], np.eye(1, DIM), "reserved"),
        ([Photo("p1", "p0/0", "/x.jpg", "bags", {})], np.eye(1, DIM), "'p0/0' already belongs to product 'p0'"),
    ],
)
def test_a_refused_upsert_writes_nothing(lite, photos, vectors, message):
    store = build(f"{lite}#refused", products=3)
    try:
        before = (store.count(), store.get("p0"), store.get("p1"), store.schema)
        with pytest.raises(DataError, match=message):
            store.upsert(photos, vectors)
        assert (store.count(), store.get("p0"), store.get("p1"), store.schema) == before
    finally:
        store.close()


def test_upsert_replaces_a_products_photos_and_delete_counts_products(lite):
    store = build(f"{lite}#writes", products=4)  # p2 has photos p2/0, p2/1, p2/2
    try:
        assert store.count() == (4, 1 + 2 + 3 + 1)
        store.upsert(
            [Photo("p2", "p2/1", "/a.jpg", "bags", {"price": 7}), Photo("p2", "p2/9", "/b.jpg", "bags", {"price": 7})],
            np.eye(2, DIM),
        )
        assert store.get("p2").photos == ("p2/1", "p2/9") and store.get("p2").attributes == {"price": 7}
        assert store.photo("p2/0") is None and store.photo("p2/9")["path"] == "/b.jpg"
        assert store.count() == (4, 6)
        assert store.search(np.eye(1, DIM), 1, where=parse_where(["price=7"], store.schema))[0][0]["photo_id"] == "p2/1"
        assert store.delete(["p2", "p3", "nope"]) == 2 and store.count() == (2, 3) and store.get("p3") is None
        assert store.delete(["p2"]) == 0
    finally:
        store.close()


def test_attributes_filter_through_typed_columns_and_a_later_one_through_json(lite):
    """milvus-lite reads a JSON path row by row (~100 times a typed column's cost): the
    attributes a catalog is built with get columns; one that joins later still filters."""
    store = build(f"{lite}#columns", products=6)
    try:
        assert set(store.columns) == {"price", "brand", "in_stock", "colour"}
        assert store._field("price") == store.columns["price"] and store._field("size").startswith("attributes[")
        store.upsert([Photo("p9", "p9/0", "/p9.jpg", "hats", {"price": 2.5, "size": 42})], np.eye(1, DIM))
        assert store.schema["price"] == "float" and store.schema["size"] == "int"
        for expressions, expected in (
            (["size>=40"], {"p9"}),
            (["price<3"], {"p0", "p9"}),
            (["price<3", "colour!=red"], set()),
            (["size!=41"], {"p9"}),
        ):
            hits = store.search(np.eye(1, DIM), 20, where=parse_where(expressions, store.schema))[0]
            assert {h["product_id"] for h in hits} == expected, expressions
    finally:
        store.close()


# ---------------------------------------------------------------- the networked road


def test_server_catalogs_are_shared_rebuilt_at_once_and_named(milvus_server):
    from pymilvus import MilvusClient

    from vsearch.stores import open_store

    writer = build(f"{milvus_server}#served", products=6)
    reader = open_store(f"milvus:{milvus_server}#served", expected_fingerprint=FINGERPRINT)
    other = build(f"{milvus_server}#other", products=2)
    admin = MilvusClient(uri=milvus_server)
    try:
        assert reader.refresh() is False and reader.count() == (6, 12)
        writer.upsert([Photo("p40", "p40/0", "/n.jpg", "socks", {"size": "M"})], np.eye(1, DIM))
        assert reader.count() == (7, 13)  # the rows are live, no refresh needed
        assert reader.refresh() is True and reader.schema["size"] == "text" and reader.refresh() is False
        assert reader.categories() == ["bags", "hats", "shoes", "socks"] and other.count() == (2, 3)

        first = writer.collection
        build(f"{milvus_server}#served", products=3, seed=1).close()
        assert reader.count() == (3, 6) and reader.get("p40") is None  # searches move to the new catalog at once
        assert first not in admin.list_collections() and reader.refresh() is True
        build(f"{milvus_server}#served", products=3, fingerprint="fp-b").close()
        with pytest.raises(DataError, match="built with model fp-b"):
            reader.refresh()
        assert len([c for c in admin.list_collections() if c.startswith("served_")]) == 1
    finally:
        admin.close()
        for store in (writer, reader, other):
            store.close()


def test_where_it_cannot_open_it_says_so(lite, monkeypatch, tmp_path):
    from vsearch.stores import open_store

    with pytest.raises(DataError, match="no such milvus-lite store"):
        open_store(f"milvus:{tmp_path}/none.db")
    with pytest.raises(DataError, match="give FILE.db"):
        open_store(f"milvus:{tmp_path}/catalog.vsi")
    with pytest.raises(DataError, match="catalog name"):
        open_store(f"milvus:{lite}#9-lives")
    build(f"{lite}#there", products=1).close()
    with pytest.raises(DataError, match="no vsearch catalog named 'absent'"):
        open_store(f"milvus:{lite}#absent")
    monkeypatch.setattr("vsearch.stores.milvus.connection.CONNECT_TIMEOUT_S", 1)
    from vsearch.stores.milvus_embedded import free_port

    with pytest.raises(DataError, match="cannot open Milvus.*is the server running"):
        open_store(f"milvus:http://127.0.0.1:{free_port()}")


def test_a_milvus_failure_is_one_line_not_a_logged_traceback(built, tmp_path, capfd, caplog):
    """pymilvus logs each failed call, and milvus-lite a file it cannot open, with a traceback of
    30-40 lines on stderr; the store's DataError says it in one."""
    from vsearch import cli

    store = built[0]
    capfd.readouterr()
    with pytest.raises(StoreError, match="Milvus refused: unexpected end of expression"):
        store._count("photo_id ==")
    (tmp_path / "notes.db").write_text("not a milvus-lite store")
    assert cli.main(["index", "info", "--store", f"milvus:{tmp_path}/notes.db"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "cannot open Milvus" in err and "File exists" in err, err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---------------------------------------------------------------- writers, restarts, versions


def test_a_server_killed_mid_way_keeps_every_acknowledged_write(milvus_process):
    """Writers run while the server is killed and started again: every call either succeeds or
    fails with a StoreError (the API's 503, never a 4xx), and each product is as its last
    acknowledged write left it, before the kill, after it, and to a store opened afresh."""
    import threading
    import time

    from vsearch.stores import build_store, open_store

    photos, vectors = shared.catalog(products=6, per=2)
    spec = f"milvus:{milvus_process.uri}#restart"
    store = build_store(spec, photos, vectors, fingerprint="fp")
    ids = ["p1", "p2", "r1", "r2", "r3"]
    log: list = []
    failures: list = []

    def writers(rounds: int, errors=()) -> None:
        threads = [
            threading.Thread(target=shared.hammer, args=(store, ids, rounds, seed, log, failures, errors))
            for seed in range(4)
        ]
        for t in threads:
            t.start()
        return threads

    for t in writers(8):
        t.join()
    assert failures == [] and all(op[4] for op in log)
    milvus_process.stop(hard=True)
    milvus_process.start()
    shared.check_acknowledged(store, ids, log)

    during = writers(20, errors=StoreError)  # the server goes down under them
    time.sleep(0.5)
    milvus_process.stop(hard=True)
    milvus_process.start()
    for t in during:
        t.join()
    for t in writers(4):  # every product written again once the server is back
        t.join()
    assert failures == [], failures
    assert shared.check_acknowledged(store, ids, log) > 100
    store.close()
    again = open_store(spec)
    shared.check_acknowledged(again, ids, log)
    again.close()


WRITER = """
import json, sys
sys.path[:0] = [{tests!r}, {stores!r}]
import test_stores as shared
from vsearch.stores import open_store
store = open_store({spec!r})
log, failures = [], []
shared.hammer(store, {ids!r}, 10, {seed}, log, failures)
store.close()
print(json.dumps({{"log": log, "failures": failures}}))
"""


def test_writers_in_several_processes_take_turns(milvus_server):
    """Two processes and a thread here write the same products of one server catalog at once:
    the lock file beside the server's address keeps them in turn, and nothing acknowledged is lost."""
    import json
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from vsearch.stores import build_store

    photos, vectors = shared.catalog(products=4, per=2)
    spec = f"milvus:{milvus_server}#processes"
    store = build_store(spec, photos, vectors, fingerprint="fp")
    ids = ["p1", "p2", "x1"]
    here = Path(__file__).resolve().parent
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER.format(tests=str(here.parent), stores=str(here), spec=spec, ids=ids, seed=seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in (101, 102)
    ]
    log: list = []
    failures: list = []
    mine = threading.Thread(target=shared.hammer, args=(store, ids, 10, 103, log, failures))
    mine.start()
    for child in children:
        out, _ = child.communicate(timeout=600)
        found = json.loads(out.strip().splitlines()[-1])
        log += [tuple(op) for op in found["log"]]
        failures += found["failures"]
    mine.join()
    assert failures == [] and len(log) == 30
    shared.check_acknowledged(store, ids, log)
    store.close()


def test_the_road_follows_the_server_version():
    from vsearch.stores.milvus import server_roads

    assert server_roads("v2.4.5")["group_by"] == "milvus" and server_roads("2.5.0")["group_by"] == "milvus"
    for older in ("v2.3.5-lite", "v2.3.21", "milvus_lite-3.2.2", "unknown"):
        assert server_roads(older)["group_by"] == "vsearch", older
    assert server_roads("v2.4.5")["consistency"] == "Session"


class GroupingServer:
    """A client of a Milvus 2.4+ for the store: a search with ``group_by_field`` is answered
    grouped by the server (here: the photo search of the real client, grouped by product), and
    every search's options are recorded."""

    def __init__(self, client):
        self.client, self.searches = client, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def search(self, *args, group_by_field=None, group_size=None, **kwargs):
        self.searches.append({"group_by_field": group_by_field, "group_size": group_size, "limit": kwargs["limit"]})
        if group_by_field is None:
            return self.client.search(*args, **kwargs)
        photos = self.client.search(*args, **{**kwargs, "limit": 100})
        grouped = []
        for hits in photos:
            seen, kept = set(), []
            for hit in hits:
                if hit["entity"][group_by_field] not in seen and len(kept) < kwargs["limit"]:
                    seen.add(hit["entity"][group_by_field])
                    kept.append(hit)
            grouped.append(kept)
        return grouped


@pytest.mark.parametrize("where", [None, Filter((Condition("price", "lt", 40.0),))])
def test_a_server_with_group_by_groups_and_answers_as_our_own_grouping(built, where):
    """On 2.4+ the server groups (one search asking ``group_by_field=product_id``, one photo per
    product, ``k`` products); its answer is the one this store's own grouping gives on 2.3."""
    import copy

    store, _, _ = built
    queries = np.random.default_rng(11).normal(size=(4, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ours = store.search(queries, 4, where=where)
    modern = copy.copy(store)
    modern.engine = {**store.engine, "group_by": "milvus"}
    modern.client = server = GroupingServer(store.client)
    answered = modern.search(queries, 4, where=where)
    grouped = [s for s in server.searches if s["group_by_field"]]
    assert grouped and all(s == {"group_by_field": "product_id", "group_size": 1, "limit": 4} for s in grouped)
    assert [[(h["product_id"], h["photo_id"]) for h in hits] for hits in answered] == [
        [(h["product_id"], h["photo_id"]) for h in hits] for hits in ours
    ]
    server.searches.clear()
    older = copy.copy(store)
    older.client = server
    assert older.search(queries, 4, where=where) == ours
    assert server.searches and not any(s["group_by_field"] for s in server.searches)  # 2.3: grouped here


def test_a_store_opened_on_a_server_first_reads_strongly(milvus_server, monkeypatch):
    """A fresh process has no Session of its own: its first read waits for the server to have
    applied every acknowledged write (after a server restart a count read too early said 3 of
    13 products); a milvus-lite file needs no such read."""
    from pymilvus import MilvusClient

    from vsearch.stores import open_store

    build(f"{milvus_server}#catchup", products=3).close()
    levels: list = []
    real = MilvusClient.query

    def query(self, *args, **kwargs):
        levels.append(kwargs.get("consistency_level"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "query", query)
    store = open_store(f"milvus:{milvus_server}#catchup")
    assert levels == ["Strong"] and store.count() == (3, 6)
    store.close()


def test_index_info_and_the_store_say_which_server_and_road(milvus_server, capsys):
    from vsearch import cli

    build(f"{milvus_server}#info", products=3).close()
    assert cli.main(["index", "info", "--store", f"milvus:{milvus_server}#info"]) == 0
    out = capsys.readouterr().out
    assert "server v2.3.5-lite, group_by vsearch, consistency Session" in out, out


def test_a_catalog_of_the_first_layout_is_refused_with_what_to_do(lite):
    """Catalogs of format vsearch-milvus/1 (photo ids as keys, nullable columns) cannot take
    writes on a Milvus without nullable fields: rebuild them."""
    from pymilvus import MilvusClient

    from vsearch.stores import open_store

    store = build(f"{lite}#old", products=2)
    meta = json.loads(store.client.describe_collection("old")["properties"]["vsearch.meta"])
    store.client.alter_collection_properties(
        store.collection, properties={"vsearch.meta": json.dumps({**meta, "format": "vsearch-milvus/1"})}
    )
    store.close()
    assert MilvusClient  # the store's own client wrote it; nothing else needed
    with pytest.raises(DataError, match="an earlier vsearch's catalog .* rebuild it with `vsearch index build`"):
        open_store(f"milvus:{lite}#old")


def test_an_ivf_catalog_on_a_server_searches_and_filters(milvus_server):
    """``auto`` above the exact size builds IVF_FLAT on a server (HNSW found 0.93 of the products at
    a 10% filter whatever its beam); asked for on a small catalog, it answers as the others."""
    from vsearch.stores import build_store, open_store
    from vsearch.stores.milvus import ivf_params

    assert ivf_params(50_000) == {"nlist": 894, "nprobe": 28}  # a sealed segment of 391-d photos
    photos, vectors = shared.catalog(products=200, per=3, seed=4)
    spec = f"milvus:{milvus_server}#ivf"
    store = build_store(spec, photos, vectors, fingerprint="fp", kind="ivf")
    store.test_photos, store.test_vectors = photos, vectors
    try:
        reopened = open_store(spec)
        assert reopened.kind == "ivf" and reopened.ivf == ivf_params(600)
        reopened.close()
        query = vectors[5]
        for where in (None, parse_where(["price<20"], store.schema), parse_where(["brand=acme"], store.schema)):
            hits = store.search(query[None], 5, where=where)[0]
            assert [h["product_id"] for h in hits] == [e[0] for e in shared.brute(store, query, where)[:5]], where
    finally:
        store.close()
