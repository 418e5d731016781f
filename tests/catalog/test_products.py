"""Writing a product: checked id, category and attributes; decoded, embedded, kept, upserted.

Over a real faiss store and the fake model of tests/fake_server.py (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import pytest
from fake_server import COLOURS, load_searcher, photo, png, write_catalog

from vsearch.catalog.products import (
    MAX_ID_CHARS,
    MAX_PHOTOS,
    Upload,
    check_attributes,
    check_product,
    collect_media,
    delete_product,
    media_path,
    photo_id,
    public_product,
    put_product,
)
from vsearch.errors import DataError, ImageError
from vsearch.stores import RESERVED

SCHEMA = {"title": "text", "price": "float", "stock": "int", "in_stock": "bool", "brand": "text"}


@pytest.fixture
def catalog(tmp_path):
    """A fresh copy of the fake catalog (tests write to it) and its media folder."""
    return write_catalog(tmp_path / "shop"), tmp_path / "media"


@pytest.fixture
def searcher(catalog):
    s = load_searcher(catalog[0])
    yield s
    s.store.close()


def upload(colour: str, seed: int, name: str = "p.png") -> Upload:
    return Upload(name, png(photo(COLOURS[colour], seed)))


def files_under(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- step 1: checking


@pytest.mark.parametrize("product_id", ["a", "x" * MAX_ID_CHARS, "shoes/red 1", "ünïcødé", "100%?#"])
def test_good_product_ids_pass_unchanged(product_id):
    assert check_product(product_id, "", {}, SCHEMA).product_id == product_id


@pytest.mark.parametrize(
    "product_id, fragment",
    [
        ("", "may not be empty"),
        ("x" * (MAX_ID_CHARS + 1), "over the limit"),
        (" a", "starts or ends with a space"),
        ("a ", "starts or ends with a space"),
        ("a\nb", "unprintable"),
        ("a\x00", "unprintable"),
        (7, "expected text"),
    ],
)
def test_bad_product_ids_are_refused(product_id, fragment):
    with pytest.raises(DataError, match="product id") as err:
        check_product(product_id, "", {}, SCHEMA)
    assert fragment in str(err.value)


def test_a_category_is_checked_like_an_id_but_may_be_empty():
    assert check_product("a", "", None, SCHEMA).category == ""
    with pytest.raises(DataError, match="category.*unprintable"):
        check_product("a", "hats\t", None, SCHEMA)


def test_attributes_take_the_schemas_types():
    got = check_attributes({"price": 3, "stock": 4.0, "in_stock": False, "title": "Hat", "brand": None}, SCHEMA)
    assert got == {"price": 3.0, "stock": 4, "in_stock": False, "title": "Hat", "brand": None}
    assert isinstance(got["price"], float) and isinstance(got["stock"], int)


@pytest.mark.parametrize(
    "attributes, name",
    [
        ({"price": "cheap"}, "price"),
        ({"price": True}, "price"),
        ({"stock": 2.5}, "stock"),
        ({"in_stock": 1}, "in_stock"),
        ({"title": 12}, "title"),
        ({"colour": ["red"]}, "colour"),
        ({"weight": float("nan")}, "weight"),
        ({"weight": {"kg": 1}}, "weight"),
        ({"bad name": 1}, "bad name"),
    ],
)
def test_a_value_that_does_not_fit_names_its_attribute(attributes, name):
    with pytest.raises(DataError) as err:
        check_attributes(attributes, SCHEMA)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused(name):
    with pytest.raises(DataError, match="reserved"):
        check_attributes({name: "x"}, SCHEMA)


def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "attributes, fragment",
    [
        ({"price": 10**400}, "'price': a whole number of about 401 digits is out of range"),
        ({"colour": -(10**400)}, "'colour': a negative whole number of about 401 digits is out of range"),
        ({"stock": 2**63}, "'stock': 9223372036854775808 is out of range"),
        ({"stock": 1e300}, "'stock': 1e+300 is out of range"),
        ({"title": "a \udc80 b"}, "'title': 'a \\udc80 b' is not Unicode text"),
        ({"colour": nested(900)}, "'colour': a list value ([[[[...]]]])"),
    ],
)
def test_a_value_no_store_can_hold_is_refused_naming_its_attribute(attributes, fragment):
    with pytest.raises(DataError) as err:
        check_attributes(attributes, SCHEMA)
    assert fragment in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300, err.value


def test_a_new_attribute_is_allowed_with_its_own_type():
    assert check_attributes({"colour": "red", "weight_kg": 1.5, "fragile": True}, SCHEMA) == {
        "colour": "red",
        "weight_kg": 1.5,
        "fragile": True,
    }


def test_attributes_must_be_an_object():
    with pytest.raises(DataError, match="attributes: expected a JSON object"):
        check_attributes(["price", 3], SCHEMA)


# ---------------------------------------------------------------- the whole write


def test_a_written_product_is_stored_searchable_and_kept_as_media(searcher, catalog):
    media = catalog[1]
    products, photos = searcher.store.count()
    front, back = upload("blue", 91, "front.png"), upload("blue", 92, "back.png")
    stored = put_product(
        searcher,
        "blue-hat",
        [front, back],
        category="blue",
        attributes={"title": "Blue hat", "price": 12, "brand": "acme", "in_stock": True},
        media_dir=media,
    )
    digests = [hashlib.sha256(u.data).hexdigest() for u in (front, back)]
    assert (
        stored.photos
        == tuple(f"blue-hat/{d[:16]}" for d in digests)
        == (photo_id("blue-hat", digests[0]), photo_id("blue-hat", digests[1]))
    )
    assert stored.attributes == {"title": "Blue hat", "price": 12.0, "brand": "acme", "in_stock": True}
    assert stored.category == "blue"
    for u, d, path in zip((front, back), digests, stored.paths):
        assert path == str(media_path(media, d, "png").resolve()) and open(path, "rb").read() == u.data
    assert len(files_under(media)) == 2
    best = searcher.search(front.data, k=1).matches[0]
    assert best["product_id"] == "blue-hat" and best["id"] == stored.photos[0]
    assert best["attributes"]["title"] == "Blue hat" and best["score"] > 0.999
    assert searcher.store.count() == (products + 1, photos + 2)


def test_the_same_photo_keeps_its_id_and_is_kept_once(searcher, catalog):
    a, b = upload("red", 81), upload("red", 82)
    first = put_product(searcher, "p", [a, b, Upload("copy.png", a.data)], media_dir=catalog[1])
    assert len(first.photos) == 2
    again = put_product(searcher, "p", [b], media_dir=catalog[1], attributes={"price": 5})
    assert again.photos == (first.photos[1],) and again.attributes == {"price": 5.0}
    assert len(files_under(catalog[1])) == 2  # a's file stays: content-addressed, it may be shared
    assert searcher.store.photo(first.photos[0]) is None  # the product has exactly the photos of its last write


def test_an_unusable_photo_writes_nothing(searcher, catalog):
    before = searcher.store.count()
    with pytest.raises(ImageError, match="broken.jpg"):
        put_product(
            searcher,
            "p",
            [upload("red", 1), Upload("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg")],
            media_dir=catalog[1],
        )
    assert searcher.store.get("p") is None and searcher.store.count() == before
    assert files_under(catalog[1]) == []


def test_a_value_of_the_wrong_type_for_the_catalog_writes_nothing(searcher, catalog):
    assert searcher.store.schema["price"] in ("int", "float")
    with pytest.raises(DataError, match="'price'"):
        put_product(searcher, "p", [upload("red", 1)], attributes={"price": "cheap"}, media_dir=catalog[1])
    assert searcher.store.get("p") is None and files_under(catalog[1]) == []


def test_a_400_digit_number_writes_nothing_and_the_catalog_goes_on(searcher, catalog):
    """Once, it passed every check, was fsynced into the log, then failed when applied: every later write and
    every reopening of the catalog failed with it."""
    log = f"{catalog[0]}.log"
    size = os.path.getsize(log)
    for attributes in ({"price": 10**400}, {"price": 2**63}, {"new_count": 10**400}):
        with pytest.raises(DataError, match=f"attribute '{next(iter(attributes))}': .* out of range"):
            put_product(searcher, "p", [upload("red", 1)], attributes=attributes, media_dir=catalog[1])
    assert searcher.store.get("p") is None and files_under(catalog[1]) == [] and os.path.getsize(log) == size
    put_product(searcher, "p", [upload("red", 1)], attributes={"price": 2}, media_dir=catalog[1])
    again = load_searcher(catalog[0])
    assert again.store.get("p").attributes == {"price": 2.0}
    again.store.close()


@pytest.mark.parametrize("count, fragment", [(0, "at least one photo"), (MAX_PHOTOS + 1, f"at most {MAX_PHOTOS}")])
def test_the_number_of_photos_is_bounded(searcher, catalog, count, fragment):
    with pytest.raises(DataError, match=fragment):
        put_product(searcher, "p", [upload("red", i) for i in range(count)], media_dir=catalog[1])


def test_local_files_are_used_in_place(searcher, catalog, tmp_path):
    path = tmp_path / "local" / "green.png"
    path.parent.mkdir()
    path.write_bytes(png(photo(COLOURS["green"], 5)))
    stored = put_product(searcher, "local", [Upload.from_path(path, searcher.max_bytes)])
    assert stored.paths == (str(path.resolve()),) and not catalog[1].exists()
    assert stored.photos == (photo_id("local", hashlib.sha256(path.read_bytes()).hexdigest()),)


def test_uploads_need_a_media_folder(searcher):
    with pytest.raises(DataError, match="media"):
        put_product(searcher, "p", [upload("red", 1)])
    assert searcher.store.get("p") is None


def test_decoded_pixels_are_taken_as_given(searcher, catalog):
    """The server decodes under its budget and passes the pixels: the same vectors as decoding here."""
    photos = [upload("green", 3), upload("green", 4)]
    pixels = np.stack([searcher.model_input(u.data, u.name) for u in photos])
    put_product(searcher, "given", photos, media_dir=catalog[1], pixels=pixels)
    put_product(searcher, "decoded", photos, media_dir=catalog[1])
    given = searcher.search(photos[1].data, k=2, category="any", rerank=False).matches  # the cosine alone
    assert {m["product_id"] for m in given} == {"given", "decoded"}
    assert given[0]["score"] == pytest.approx(given[1]["score"], abs=1e-6)


def test_a_stored_write_is_answered_with_what_it_wrote(searcher, catalog, monkeypatch, caplog):
    """Once the store has it, the write is acknowledged: deleted by another writer at once, or its
    re-rank keypoints failing, it answers the product it stored, never an error."""
    written = put_product(searcher, "mine", [upload("red", 5)], media_dir=catalog[1], attributes={"price": 3})
    upsert = searcher.store.upsert

    def upsert_then_deleted(photos, vectors):  # another writer's DELETE lands right after this write
        upsert(photos, vectors)
        searcher.store.delete(["mine"])

    def failing(photos):
        raise RuntimeError("keypoints unavailable")

    monkeypatch.setattr(searcher.store, "upsert", upsert_then_deleted)
    monkeypatch.setattr(searcher, "store_keypoints", failing)
    again = put_product(searcher, "mine", [upload("red", 5)], media_dir=catalog[1], attributes={"price": 3})
    assert again == written and searcher.store.get("mine") is None
    assert "re-rank keypoints not stored (keypoints unavailable)" in caplog.text


def test_delete_says_whether_the_product_was_there(searcher, catalog):
    put_product(searcher, "gone", [upload("red", 7)], media_dir=catalog[1])
    assert delete_product(searcher.store, "gone") is True
    assert searcher.store.get("gone") is None and delete_product(searcher.store, "gone") is False


def test_the_public_form_has_no_paths(searcher, catalog):
    stored = put_product(searcher, "p/1", [upload("red", 7)], media_dir=catalog[1], category="red")
    public = public_product(stored)
    assert set(public) == {"product_id", "category", "attributes", "photos"}
    assert public["photos"] == [{"id": stored.photos[0], "image_url": f"/api/items/{stored.photos[0]}/image"}]
    assert str(catalog[1]) not in repr(public)


# ---------------------------------------------------------------- collecting unused media


def age(paths, seconds: float = 3600) -> None:
    for path in paths:
        then = time.time() - seconds
        os.utime(path, (then, then))


def test_collect_media_removes_only_files_no_stored_photo_uses(searcher, catalog):
    media = catalog[1]
    a, b, c, d = (upload("red", seed) for seed in (61, 62, 63, 64))
    put_product(searcher, "A", [a, b], media_dir=media)
    put_product(searcher, "B", [b, c], media_dir=media)  # b's file is both products'
    file_of = {u.data: media_path(media, u.digest, "png") for u in (a, b, c, d)}
    (media / "notes.txt").write_text("not media")
    (media / "ab").mkdir(exist_ok=True)
    (media / "ab" / ("ab" * 32 + ".png.tmp")).write_bytes(b"a writer's temporary file")
    age(files_under(media))
    assert collect_media(searcher.store, media, min_age_s=60) == []  # everything is in use
    delete_product(searcher.store, "A")
    assert collect_media(searcher.store, media, min_age_s=60) == [file_of[a.data]]  # b is still B's
    put_product(searcher, "B", [d], media_dir=media)  # b and c replaced
    age([file_of[d.data]])
    assert sorted(collect_media(searcher.store, media, min_age_s=60)) == sorted([file_of[b.data], file_of[c.data]])
    assert file_of[d.data].is_file() and (media / "notes.txt").is_file()
    assert (media / "ab" / ("ab" * 32 + ".png.tmp")).is_file()
    assert searcher.store.get("B").paths == (str(file_of[d.data].resolve()),)


def test_collect_media_spares_young_files_and_a_photo_kept_again_is_young(searcher, catalog):
    media = catalog[1]
    a = upload("blue", 71)
    put_product(searcher, "A", [a], media_dir=media)
    delete_product(searcher.store, "A")
    assert collect_media(searcher.store, media) == []  # just written: spared by default
    age(files_under(media))
    put_product(searcher, "A2", [a], media_dir=media)  # the same bytes, kept again
    delete_product(searcher.store, "A2")
    assert collect_media(searcher.store, media, min_age_s=60) == []
    assert len(files_under(media)) == 1


def test_collect_media_waits_for_a_write_between_keeping_and_upserting(searcher, catalog):
    """A photo saved as media but not yet upserted is nobody's yet: the collector must not take it."""
    media, store = catalog[1], searcher.store
    kept, go, errors = threading.Event(), threading.Event(), []
    upsert = store.upsert

    def slow_upsert(photos, vectors):
        kept.set()
        go.wait(10)
        upsert(photos, vectors)

    store.upsert = slow_upsert
    new = upload("green", 51)

    def write():
        try:
            put_product(searcher, "N", [new], media_dir=media)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert kept.wait(10)
    removed = []
    collector = threading.Thread(target=lambda: removed.extend(collect_media(store, media, min_age_s=0)))
    collector.start()
    time.sleep(0.5)
    assert collector.is_alive()  # held off by the write's shared lock
    assert media_path(media, new.digest, "png").is_file()
    go.set()
    writer.join(10)
    collector.join(10)
    assert not errors and removed == []
    assert store.get("N").paths == (str(media_path(media, new.digest, "png").resolve()),)
    assert media_path(media, new.digest, "png").is_file()


def test_the_server_collects_unused_media_after_a_background_compaction(searcher, catalog):
    from vsearch.web.live import LiveSearcher

    media = catalog[1]
    kept, dropped = upload("red", 81), upload("blue", 82)
    put_product(searcher, "K", [kept], media_dir=media)
    put_product(searcher, "D", [dropped], media_dir=media)
    delete_product(searcher.store, "D")
    age(files_under(media))
    live = LiveSearcher(searcher, interval_s=0)
    live.check()  # no compaction due: nothing collected
    assert len(files_under(media)) == 2
    searcher.store.should_compact = lambda: True
    live.check()
    assert len(files_under(media)) == 2  # no media folder given (a server without writes)
    live.media_dir = media
    live.check()
    assert files_under(media) == [media_path(media, kept.digest, "png")]
    assert searcher.store.get("K") is not None
