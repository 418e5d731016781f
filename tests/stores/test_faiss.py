"""The faiss store's files: the log (torn tails, replay, refresh), compaction and its crashes, concurrent writers."""

import multiprocessing
import os

import numpy as np
import pytest

from vsearch.catalog.manifest import Photo
from vsearch.errors import DataError
from vsearch.stores import build_store, open_store
from vsearch.stores import faiss as faiss_store

DIM = 8


def unit(rows):
    rows = np.atleast_2d(np.asarray(rows, np.float32))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def photos_of(product, n=2, **attributes):
    return [Photo(product, f"{product}/{i}.jpg", f"/p/{product}/{i}.jpg", "hats", attributes) for i in range(n)]


def vectors(n, seed):
    return unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def state(store):
    """Everything a store holds, comparable: products, schema, calibration, and what a search finds."""
    products = {p.product_id: p for p in store.products()}
    return products, dict(store.schema), store.calibration, store.count()


@pytest.fixture
def spec(tmp_path):
    spec = f"faiss:{tmp_path}/c.vsi"
    build_store(spec, photos_of("a") + photos_of("b", price=1), vectors(4, 0), fingerprint="fp").close()
    return spec


def log_path(spec):
    return spec.split(":", 1)[1] + ".log"


def test_records_check_themselves():
    one = faiss_store.encode_record({"op": "delete", "products": ["x"]})
    two = faiss_store.encode_record({"op": "upsert", "photos": []}, np.ones((1, DIM), np.float32))
    records, end = faiss_store.decode_records(one + two)
    assert [r[0]["op"] for r in records] == ["delete", "upsert"] and end == len(one + two)
    assert np.frombuffer(records[1][1], "<f4").tolist() == [1.0] * DIM
    for cut in (one + two[:-3], one + two[:5]):  # torn: the length says more than is there
        assert faiss_store.decode_records(cut)[1] == len(one)
    flipped = bytearray(one + two)
    flipped[-2] ^= 1  # a damaged body fails its checksum
    assert faiss_store.decode_records(bytes(flipped))[1] == len(one)


def test_a_torn_tail_is_ignored_then_cut_off(spec):
    store = open_store(spec)
    store.upsert(photos_of("c", price=2), vectors(2, 1))
    store.delete(["a"])
    expected = state(store)
    whole = os.path.getsize(log_path(spec))
    torn = faiss_store.encode_record({"op": "delete", "products": ["b"]})[:-4]
    with open(log_path(spec), "ab") as fh:  # a writer that crashed mid-record
        fh.write(torn)
    again = open_store(spec)
    assert state(again) == expected  # the half record is not applied
    again.upsert(photos_of("d"), vectors(2, 2))  # the next writer cuts it off, then appends
    records, end = faiss_store.decode_records(open(log_path(spec), "rb").read())
    assert end == os.path.getsize(log_path(spec)) > whole and [r[0]["op"] for r in records][-1] == "upsert"
    assert state(open_store(spec))[0].keys() == {"b", "c", "d"}


def test_refresh_takes_in_another_instances_writes(spec):
    first, second = open_store(spec), open_store(spec)
    assert second.refresh() is False  # nothing new: one stat
    first.upsert(photos_of("c", colour="red"), vectors(2, 3))
    first.set_calibration(None)
    assert second.refresh() is True and state(second) == state(first) and second.schema["colour"] == "text"
    second.delete(["c"])
    second.upsert(photos_of("a", n=1, price=5), vectors(1, 4))  # second's writes land after first's
    assert first.refresh() is True and state(first) == state(second) and first.get("a").attributes == {"price": 5}
    assert first.refresh() is False
    assert state(open_store(spec)) == state(first)


def test_a_new_build_replaces_the_catalog_and_its_log(spec):
    reader = open_store(spec)
    reader.upsert(photos_of("c"), vectors(2, 5))
    build_store(spec, photos_of("z", n=3), vectors(3, 6), fingerprint="fp").close()
    assert reader.refresh() is True and state(reader)[0].keys() == {"z"}
    assert state(open_store(spec))[0].keys() == {"z"}


def test_compaction_keeps_everything_and_empties_the_log(spec):
    store, reader = open_store(spec), open_store(spec)
    for n in range(5):
        store.upsert(photos_of(f"n{n}", weight=n), vectors(2, 10 + n))
    store.delete(["a", "n1"])
    store.set_calibration(None)
    expected = state(store)
    before = os.path.getsize(log_path(spec))
    assert store.compact() is True
    assert os.path.getsize(log_path(spec)) < before and store.log_bytes() == 0
    assert state(open_store(spec)) == expected
    assert reader.refresh() is True and state(reader) == expected  # followed, not reloaded
    assert reader.refresh() is False
    reader.upsert(photos_of("after"), vectors(2, 20))
    assert store.refresh() is True and "after" in state(store)[0]
    answer = store.search(vectors(1, 11), 3)
    assert open_store(spec).search(vectors(1, 11), 3) == answer


def test_compaction_rebuilds_faiss_when_many_rows_are_dead(spec):
    store = open_store(spec)
    for n in range(4):
        store.upsert(photos_of("a", n=3, round=n), vectors(3, 30 + n))  # each upsert leaves the old rows dead
    assert len(store._index._dead) > len(store._alive) // 4
    expected = state(store)
    store.compact()
    assert not store._index._dead and state(store) == expected and state(open_store(spec)) == expected
    assert store.search(vectors(3, 33)[1:2], 1)[0][0]["photo_id"] == "a/1.jpg"


class Crash(BaseException):
    pass


@pytest.mark.parametrize("crash_at", ["snapshot", "log"])
def test_a_crash_inside_compaction_loses_nothing(spec, monkeypatch, crash_at):
    store, other = open_store(spec), open_store(spec)
    store.upsert(photos_of("c", price=3), vectors(2, 40))
    meta, arrays, generation, offset = store._compact_prepare()  # step 1: the state at offset X ...
    staged = store.path.with_name(store.path.name + ".compacting")
    faiss_store._write_snapshot(staged, meta, arrays)
    other.upsert(photos_of("d", price=4), vectors(2, 41))  # ... while another process writes on
    other.delete(["a"])
    expected = (other.refresh(), state(other))[1]
    target = {"snapshot": store.path, "log": store.log_path}[crash_at]
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(target):
            raise Crash(f"power cut before renaming onto {dst}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        store._compact_commit(staged, meta, generation, offset)
    monkeypatch.setattr(os, "replace", real)
    reader = open_store(spec)
    assert state(reader) == expected
    assert other.refresh() in (True, False) and state(other) == expected
    other.upsert(photos_of("e"), vectors(2, 42))  # a writer finishes (or ignores) the half-done compaction
    expected = state(other)
    assert state(open_store(spec)) == expected
    assert reader.refresh() is True and state(reader) == expected
    assert open_store(spec).compact() is True and state(open_store(spec)) == expected


def test_damaged_and_foreign_files_are_one_line_errors(spec, tmp_path):
    with pytest.raises(DataError, match="no such catalog index"):
        open_store(f"faiss:{tmp_path}/nothing.vsi")
    (tmp_path / "junk.vsi").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="junk.vsi: not a vsearch catalog index"):
        open_store(f"faiss:{tmp_path}/junk.vsi")
    whole = open(spec.split(":", 1)[1], "rb").read()
    (tmp_path / "half.vsi").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="half.vsi: not a vsearch catalog index"):
        open_store(f"faiss:{tmp_path}/half.vsi")
    with open(log_path(spec), "r+b") as fh:  # the log's header is damaged
        fh.write(b"XXXX")
    with pytest.raises(DataError, match="c.vsi.log: not a vsearch catalog log"):
        open_store(spec)


def test_a_float_widens_an_int_attribute_and_new_attributes_join(spec):
    store = open_store(spec)
    store.upsert(photos_of("c", n=1, stock=3), vectors(1, 50))
    assert store.schema["stock"] == "int"
    store.upsert(photos_of("d", n=1, stock=2.5, note="x"), vectors(1, 51))
    assert store.schema == {"price": "int", "stock": "float", "note": "text"}
    assert state(open_store(spec))[1] == store.schema


def test_searches_run_beside_a_writer_and_a_refresher(spec):
    import threading

    store, other = open_store(spec), open_store(spec)
    stop, problems = threading.Event(), []

    def search():
        while not stop.is_set():
            try:
                for hits in store.search(vectors(3, 60), 4):
                    ids = [h["product_id"] for h in hits]
                    assert len(ids) == len(set(ids)) and all(
                        h["photo_id"].startswith(h["product_id"] + "/") for h in hits
                    )
            except Exception as exc:  # noqa: BLE001  (reported below)
                problems.append(exc)

    def refresh():
        while not stop.is_set():
            store.refresh()

    threads = [threading.Thread(target=search) for _ in range(3)] + [threading.Thread(target=refresh)]
    for thread in threads:
        thread.start()
    for n in range(15):
        store.upsert(photos_of(f"t{n % 3}", n=2, round=n), vectors(2, 70 + n))
        other.upsert(photos_of(f"o{n % 3}", n=1), vectors(1, 90 + n))
        if n % 5 == 0:
            store.delete([f"t{(n + 1) % 3}"])
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not problems
    assert store.refresh() in (True, False) and state(store) == state(open_store(spec))


# ---------------------------------------------------------------- several processes writing at once


def _writer(spec, worker, rounds, queue):
    """One process's writes; reports what the store acknowledged."""
    store = open_store(spec)
    acknowledged, mixed = {}, None
    rng = np.random.default_rng(100 + worker)
    for n in range(rounds):
        product = f"w{worker}-{n % 4}"
        vector = unit(rng.normal(size=(2, DIM)))
        photos = photos_of(product, n=2, round=n, **{f"only{worker}": worker})
        store.upsert(photos, vector)
        acknowledged[product] = ([p.photo_id for p in photos], {"round": n, f"only{worker}": worker}, vector.tolist())
        if n % 5 == 4:
            store.delete([product])
            acknowledged[product] = None
        if worker == 0 and n % 7 == 3:
            store.compact()
    try:  # workers disagree on this attribute's type: only the first writer's type may win
        store.upsert(
            photos_of(f"mixed{worker}", n=1, mixed=worker if worker % 2 else str(worker)),
            unit(rng.normal(size=(1, DIM))),
        )
        mixed = True
    except DataError:
        mixed = False
    queue.put((worker, acknowledged, mixed))


def test_concurrent_writers_keep_exactly_what_was_acknowledged(spec):
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no OpenMP state copied by fork
    queue = context.Queue()
    workers = [context.Process(target=_writer, args=(spec, w, 12, queue)) for w in range(4)]
    for process in workers:
        process.start()
    results = [queue.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    store = open_store(spec)
    products = {p.product_id: p for p in store.products()}
    expected = {"a", "b"} | {pid for _, acked, _ in results for pid, what in acked.items() if what is not None}
    mixed = {f"mixed{w}" for w, _, ok in results if ok}
    assert products.keys() == expected | mixed
    for _worker, acknowledged, _ in results:
        for pid, what in acknowledged.items():
            if what is None:
                continue
            photo_ids, attributes, vector = what
            assert products[pid].photos == tuple(photo_ids) and products[pid].attributes == attributes
            hit = store.search(np.asarray(vector[:1], np.float32), 1, group=False)[0][0]
            assert hit["photo_id"] == photo_ids[0] and hit["score"] > 0.999
    kinds = {type(products[m].attributes["mixed"]) for m in mixed}
    assert mixed and len(kinds) == 1  # every accepted value has the type of the first one
    assert store.schema["mixed"] == ("int" if kinds == {int} else "text")
    assert {w % 2 for w, _, ok in results if ok} == ({1} if kinds == {int} else {0})


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_a_broad_filter_goes_through_faiss_with_a_selector(tmp_path, monkeypatch, kind):
    from vsearch.stores import filters

    rng = np.random.default_rng(7)
    shade = rng.integers(0, 4, 400)
    photos = [
        Photo(f"p{i // 3}", f"p{i // 3}/{i % 3}", "/x", "hats", {"shade": int(shade[i // 3])}) for i in range(1200)
    ]
    store = build_store(f"faiss:{tmp_path}/s.vsi", photos, vectors(1200, 8), fingerprint="fp", kind=kind)
    store.delete(["p1", "p2"])
    where = filters.parse_where(["shade=2"], store.schema)
    queries = vectors(10, 9)
    exact = store.search(queries, 10, where=where)
    monkeypatch.setattr(faiss_store, "EXACT_BELOW", 0)  # every filter takes the selector road
    store._cache.clear()
    broad = store.search(queries, 10, where=where)
    assert all(h["attributes"]["shade"] == 2 and h["product_id"] not in ("p1", "p2") for row in broad for h in row)
    found = [len({h["product_id"] for h in a} & {h["product_id"] for h in b}) for a, b in zip(broad, exact)]
    assert sum(found) >= 0.95 * 10 * len(queries)


@pytest.mark.parametrize("share", [0.1, 0.5, 1.0])
def test_exact_scores_match_a_plain_product_whichever_road(share):
    from vsearch.stores.faiss import exact_scores

    rng = np.random.default_rng(3)
    storage = rng.standard_normal((300, 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    rows = np.sort(rng.choice(300, int(300 * share), replace=False))
    np.testing.assert_allclose(exact_scores(storage, rows, query), storage[rows] @ query, rtol=1e-5, atol=1e-5)
