"""The faiss store's files: the log (torn tails, replay, refresh), compaction and its crashes, concurrent writers."""

import io
import json
import multiprocessing
import os
import zipfile

import numpy as np
import pytest

from vsearch.catalog.manifest import Photo
from vsearch.errors import DataError
from vsearch.stores import build_store, journal, open_store
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
    one = journal.encode_record({"op": "delete", "products": ["x"]})
    two = journal.encode_record({"op": "upsert", "photos": []}, np.ones((1, DIM), np.float32))
    records, end = journal.decode_records(one + two)
    assert [r[0]["op"] for r in records] == ["delete", "upsert"] and end == len(one + two)
    assert np.frombuffer(records[1][1], "<f4").tolist() == [1.0] * DIM
    for cut in (one + two[:-3], one + two[:5]):  # torn: the length says more than is there
        assert journal.decode_records(cut)[1] == len(one)
    flipped = bytearray(one + two)
    flipped[-2] ^= 1  # a damaged body fails its checksum
    assert journal.decode_records(bytes(flipped))[1] == len(one)


def test_a_torn_tail_is_ignored_then_cut_off(spec):
    store = open_store(spec)
    store.upsert(photos_of("c", price=2), vectors(2, 1))
    store.delete(["a"])
    expected = state(store)
    whole = os.path.getsize(log_path(spec))
    torn = journal.encode_record({"op": "delete", "products": ["b"]})[:-4]
    with open(log_path(spec), "ab") as fh:  # a writer that crashed mid-record
        fh.write(torn)
    again = open_store(spec)
    assert state(again) == expected  # the half record is not applied
    again.upsert(photos_of("d"), vectors(2, 2))  # the next writer cuts it off, then appends
    records, end = journal.decode_records(open(log_path(spec), "rb").read())
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
    meta, arrays, generation, offset = store._journal.compact_prepare()  # step 1: the state at offset X ...
    staged = store.path.with_name(store.path.name + ".compacting")
    journal.write_snapshot(staged, meta, arrays)
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
        store._journal.compact_commit(staged, meta, generation, offset)
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


def test_a_writer_kept_waiting_by_another_process_is_a_store_error(spec, monkeypatch):
    """Another process holding the writers' lock too long (a bulk `index add`) is the store being
    busy, not the write being wrong: a StoreError (the API's 503 with Retry-After), nothing written."""
    from vsearch.artifacts import file_lock
    from vsearch.errors import StoreError

    store = open_store(spec)
    monkeypatch.setattr(journal, "WRITE_WAIT_S", 0.2)
    with file_lock(spec.split(":", 1)[1]):  # another open file: flock keeps it apart as another process' lock
        with pytest.raises(StoreError, match="another writer still holds .* nothing was written") as error:
            store.upsert(photos_of("c"), vectors(2, 5))
        with pytest.raises(StoreError):
            store.delete(["a"])
    assert error.value.retry_after == 5 and store.get("c") is None and open_store(spec).count() == (2, 4)
    store.upsert(photos_of("c"), vectors(2, 5))
    assert open_store(spec).get("c") is not None


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


# ---------------------------------------------------------------- damage: the log fuzzer, unappliable records, snapshots


def written_log(spec):
    """A log of six changes of every kind, its bytes, where each record starts and ends, and the
    state after each prefix of whole records (``states[n]``: after the first ``n`` changes)."""
    store = open_store(spec)
    states = [state(store)]
    for change in (
        lambda: store.upsert(photos_of("c", price=3), vectors(2, 300)),
        lambda: store.delete(["a"]),
        lambda: store.upsert(photos_of("d", n=3, colour="red"), vectors(3, 301)),
        lambda: store.set_calibration(None),
        lambda: store.upsert(photos_of("b", n=1, price=9), vectors(1, 302)),
        lambda: store.delete(["c"]),
    ):
        change()
        states.append(state(store))
    store.close()
    data = open(log_path(spec), "rb").read()
    records, end = journal.decode_records(data)
    assert end == len(data) and len(records) == len(states)  # the header, then one record per change
    bounds = [0] + [stop for _, _, stop in records]
    return data, bounds, states


def test_the_decoder_tells_a_torn_tail_from_a_damaged_record_at_every_bit(spec):
    data, bounds, _ = written_log(spec)
    whole, _ = journal.decode_records(data)
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 1 << (at % 8)
        record = max(n for n, start in enumerate(bounds[:-1]) if start <= at)  # the record the bit is in
        try:
            records, end = journal.decode_records(bytes(damaged))
        except journal.LogDamage as damage:
            assert record < len(bounds) - 2, f"byte {at}: the last record's damage is a torn tail"
            assert (damage.offset, damage.index, damage.following) == (bounds[record], record, bounds[record + 1])
            continue
        assert record == len(bounds) - 2, f"byte {at}: damage in record {record} with intact records after it"
        assert records == whole[:record] and end == bounds[record]  # nothing damaged is taken in


def test_the_log_fuzzer_never_loses_or_destroys_an_intact_record(spec):
    """Bit flips in every part of every record, truncations at and inside every record boundary:
    a torn tail (nothing intact after the damage) is left out and cut by the next writer; a
    damaged record with intact ones after it is an error naming it, and no writer cuts anything."""
    data, bounds, states = written_log(spec)
    path = log_path(spec)
    last = len(bounds) - 2  # the index of the last record (0 is the header)

    def write(content):
        with open(path, "wb") as fh:
            fh.write(content)

    def upsert_keeps(prefix):
        """A writer takes the damaged catalog, writes, and leaves ``prefix`` then its own record."""
        open_store(spec).upsert(photos_of("w", n=1), vectors(1, 310))
        after = open(path, "rb").read()
        records, end = journal.decode_records(after)
        assert after.startswith(prefix) and end == len(after) and records[-1][0]["photos"][0]["product_id"] == "w"

    for cut in bounds[1:]:  # a log cut at a record boundary: exactly the records before it
        write(data[:cut])
        assert state(open_store(spec)) == states[bounds.index(cut) - 1]
    for n in range(1, last + 1):  # a torn record: the ones before it, the torn one cut off
        start, stop = bounds[n], bounds[n + 1]
        for cut in sorted({start + 1, start + journal.HEAD.size, start + journal.HEAD.size + 5, stop - 1}):
            write(data[:cut])
            assert state(open_store(spec)) == states[n - 1], (n, cut)
            upsert_keeps(data[:start])
    for n in range(1, last + 1):
        start, stop = bounds[n], bounds[n + 1]
        head = start + journal.HEAD.size
        for at in sorted({start, start + 5, start + 12, head, head + 4, (head + stop) // 2, stop - 1}):
            damaged = bytearray(data)
            damaged[at] ^= 0x10
            write(bytes(damaged))
            if n == last:  # the last record damaged, nothing after it: a torn tail
                assert state(open_store(spec)) == states[n - 1]
                upsert_keeps(data[:start])
                continue
            write(data[:start])
            writer = open_store(spec)  # a writer that read the log before the damaged record was written ...
            write(bytes(damaged))
            with pytest.raises(DataError) as error:
                open_store(spec)
            message = str(error.value)
            assert f"{path}: record {n} (byte {start}) is damaged" in message and "\n" not in message
            with pytest.raises(DataError, match=f"record {n} "):
                writer.upsert(photos_of("w", n=1), vectors(1, 310))
            assert open(path, "rb").read() == bytes(damaged)  # ... cuts nothing, appends nothing
            write(data)


def test_ten_acknowledged_changes_survive_one_flipped_bit_before_them(spec):
    store, other = open_store(spec), open_store(spec)  # other: a writer that has not read the changes yet
    for n in range(10):
        store.upsert(photos_of(f"n{n}", n=1, round=n), vectors(1, 320 + n))
    expected = state(store)
    data = open(log_path(spec), "rb").read()
    records, _ = journal.decode_records(data)
    damaged = bytearray(data)
    damaged[records[2][2] + journal.HEAD.size + 6] ^= 4  # inside record 3's JSON
    with open(log_path(spec), "wb") as fh:
        fh.write(bytes(damaged))
    with pytest.raises(DataError, match=r"c\.vsi\.log: record 3 \(byte \d+\) is damaged"):
        open_store(spec)
    with pytest.raises(DataError, match="record 3"):  # the next writer refuses too, and cuts nothing
        other.upsert(photos_of("late", n=1), vectors(1, 340))
    with pytest.raises(DataError, match="record 3"):
        other.refresh()
    assert open(log_path(spec), "rb").read() == bytes(damaged)
    with open(log_path(spec), "wb") as fh:  # the file restored: all ten are there
        fh.write(data)
    assert state(open_store(spec)) == expected


def append_raw(spec, meta, vectors_=None):
    """A record written as an older version (or a hand) would, checksum and all, past today's checks."""
    with open(log_path(spec), "ab") as fh:
        fh.write(journal.encode_record(meta, vectors_))


@pytest.mark.parametrize(
    "meta",
    [
        {"op": "upsert", "photos": [{**photos_of("big")[0].to_dict(), "attributes": {"price": 10**400}}]},
        {"op": "upsert", "photos": [{**photos_of("big")[0].to_dict(), "attributes": {"price": [1, 2]}}]},
        {"op": "upsert", "photos": [{**photos_of("big")[0].to_dict(), "attributes": {"price": "cheap"}}]},
        {"op": "upsert", "photos": "not a list"},
        {"op": "delete", "products": [["a"]]},
        {"op": "calibration", "calibration": [1]},
        {"op": "rename"},
        ["not", "a", "change"],
    ],
)
def test_an_unappliable_record_is_an_error_naming_it_never_a_traceback(spec, meta):
    store = open_store(spec)
    store.upsert(photos_of("c", price=2), vectors(2, 350))
    expected = state(store)
    upsert = isinstance(meta, dict) and meta.get("op") == "upsert"
    append_raw(spec, meta, vectors(1, 351) if upsert else None)
    before = open(log_path(spec), "rb").read()
    for attempt in (lambda: open_store(spec), store.refresh, lambda: store.upsert(photos_of("d"), vectors(2, 352))):
        with pytest.raises(DataError) as error:
            attempt()
        assert f"{log_path(spec)}: record 2 (byte " in str(error.value) and "cannot be applied" in str(error.value)
        assert "\n" not in str(error.value)
    assert state(store) == expected and open(log_path(spec), "rb").read() == before


def test_a_write_that_cannot_be_applied_is_refused_before_the_log(spec):
    store = open_store(spec)
    size = os.path.getsize(log_path(spec))
    for attributes in ({"price": 10**400}, {"price": 2**63}, {"n": -(2**63) - 1}, {7: "x"}, {"t": "\udc80"}):
        with pytest.raises(DataError, match="product 'big': attribute"):
            store.upsert([Photo("big", "big/0.jpg", "/p", "hats", attributes)], vectors(1, 360))
    assert os.path.getsize(log_path(spec)) == size
    store.upsert(photos_of("fine", price=2**63 - 1), vectors(2, 361))  # the store goes on
    assert open_store(spec).get("fine").attributes == {"price": 2**63 - 1}


def rewrite_member(spec, name, content):
    """The snapshot with one member replaced, the zip itself intact (its checksums right)."""
    path = spec.split(":", 1)[1]
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[f"{name}.npy"] = content(members[f"{name}.npy"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def npy(array):
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def flip_header(at, value=b"("):
    def damage(data):
        return data[:at] + value + data[at + 1 :]

    return damage


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
@pytest.mark.parametrize(
    "member, damage",
    [
        ("meta", flip_header(45)),  # inside the header's dict: numpy's tokenizer fails
        ("meta", flip_header(10)),
        ("rows", flip_header(59)),
        ("products", flip_header(66)),
        ("products", flip_header(8, b"\x09")),  # a header length past the member
        ("data", flip_header(45)),
        ("data", flip_header(73)),
        ("data", lambda data: data.replace(b"'shape': (", b"'shape': (99999999999")),  # no room for it
        ("data", lambda data: data.replace(b"'fortran_order': False", b"'fortran_order': True ")),
        ("rows", lambda data: data.replace(b"'|u1'", b"'<f8'")),
        ("data", lambda data: data[:-7]),
    ],
)
def test_a_damaged_array_header_in_an_intact_snapshot_is_an_error_naming_it(tmp_path, kind, member, damage):
    spec = f"faiss:{tmp_path}/c.vsi"
    build_store(spec, photos_of("a") + photos_of("b", price=1), vectors(4, 0), fingerprint="fp", kind=kind).close()
    rewrite_member(spec, {"data": "faiss" if kind == "hnsw" else "vectors"}.get(member, member), damage)
    with pytest.raises(DataError, match=r"c\.vsi: (not a vsearch catalog index|damaged catalog index)") as error:
        open_store(spec)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_snapshot_of_non_finite_vectors_is_refused(spec, value):
    bad = vectors(4, 0)
    bad[1, 3] = value
    rewrite_member(spec, "vectors", lambda data: npy(bad))
    with pytest.raises(DataError, match=r"c\.vsi: damaged catalog index .*NaN or infinity"):
        open_store(spec)


def test_an_hnsw_snapshot_of_nan_vectors_is_refused(tmp_path):
    import faiss

    spec = f"faiss:{tmp_path}/c.vsi"
    build_store(spec, photos_of("a") + photos_of("b"), vectors(4, 0), fingerprint="fp", kind="hnsw").close()
    graph = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(vectors(4, 0))
    storage = faiss.downcast_index(graph.storage)
    faiss.rev_swig_ptr(storage.get_xb(), 4 * DIM)[:] = np.nan  # a graph over vectors later damaged
    rewrite_member(spec, "faiss", lambda data: npy(faiss.serialize_index(graph)))
    with pytest.raises(DataError, match="NaN or infinity"):
        open_store(spec)


@pytest.mark.parametrize(
    "member, content",
    [
        ("products", {"a": ["hats", {"price": 10**400}, ["a/0.jpg", "a/1.jpg"], ["/x", "/y"]]}),
        ("products", {"a": ["hats", {}, ["a/0.jpg"], ["/x"]]}),  # a photo with a row but no product
        ("products", {"a": ["hats", {}, ["a/0.jpg", "a/1.jpg"], ["/x"]]}),
        ("rows", [["a/0.jpg", "a"], ["a/0.jpg", "a"], None, None]),
        ("rows", [1, 2, 3, 4]),
        ("rows", "[" * 100_000),
    ],
)
def test_a_snapshot_whose_parts_disagree_is_an_error_naming_it(spec, member, content):
    text = content if isinstance(content, str) else json.dumps(content)
    rewrite_member(spec, member, lambda data: npy(np.frombuffer(text.encode(), np.uint8)))
    with pytest.raises(DataError, match=r"c\.vsi: damaged catalog index"):
        open_store(spec)


@pytest.mark.parametrize(
    "change",
    [
        {"index": {"kind": "hnsw", "hnsw_m": -1, "ef_construction": 80, "ef_search": 256}},  # FAISS would crash
        {"index": {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 80, "ef_search": 0}},
        {"index": {"kind": "exact", "hnsw_m": True, "ef_construction": 80, "ef_search": 256}},
        {"index": {"kind": "ivf"}},
        {"index": {"kind": "exact", "nlist": 4}},
        {"base": {"generation": 5, "offset": "x"}},
        {"base": {"generation": "g", "offset": -1}},
    ],
)
@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_a_snapshot_header_with_parameters_faiss_cannot_take_is_an_error(tmp_path, change, kind):
    spec = f"faiss:{tmp_path}/c.vsi"
    build_store(spec, photos_of("a") + photos_of("b"), vectors(4, 0), fingerprint="fp", kind=kind).close()

    def edit(data):
        meta = json.loads(np.load(io.BytesIO(data)).tobytes())
        return npy(np.frombuffer(json.dumps({**meta, **change}).encode(), np.uint8))

    rewrite_member(spec, "meta", edit)
    with pytest.raises(DataError, match=r"c\.vsi: not a vsearch catalog index \("):
        open_store(spec)
