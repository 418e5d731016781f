"""The admin API: product writes behind a token, seen by the next search, persisted, serialized.

Over a real faiss store and the fake model of tests/fake_server.py (no TensorFlow).
"""

from __future__ import annotations

import json
import random
import threading

import httpx
import pytest
from fake_server import COLOURS, load_searcher, photo, png, post, write_catalog
from fastapi.testclient import TestClient

from vsearch.catalog.products import MAX_PHOTOS
from vsearch.config import MB, ServerConfig
from vsearch.errors import DataError
from vsearch.web.admin import DISABLED, TOKEN_ENV, admin_token
from vsearch.web.app import create_app
from vsearch.web.server import BackgroundServer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HAT = {"title": "Blue hat", "price": 12.5, "brand": "omega", "in_stock": True}


@pytest.fixture
def shop(tmp_path):
    """A fresh copy of the fake catalog (tests write to it) and a media folder."""
    return write_catalog(tmp_path / "shop"), tmp_path / "media"


def app_over(shop, max_upload_bytes: int | None = None, **kwargs):
    kwargs = {"admin_token": TOKEN, "media_dir": shop[1], **kwargs}
    limit = {} if max_upload_bytes is None else {"max_upload_mb": max_upload_bytes / MB}
    return create_app(load_searcher(shop[0]), ServerConfig(reload_interval_s=0, **limit), **kwargs)


@pytest.fixture
def client(shop):
    with TestClient(app_over(shop)) as c:
        yield c


def hat_photo(seed: int = 1) -> bytes:
    return png(photo(COLOURS["blue"], 100 + seed))


def put(client, product_id: str, photos, attributes=HAT, category="blue", headers=AUTH, **fields):
    data = {
        **(
            {"attributes": json.dumps(attributes) if isinstance(attributes, dict) else attributes}
            if attributes is not None
            else {}
        ),
        **({"category": category} if category is not None else {}),
        **fields,
    }
    files = [("files", (f"p{i}.png", p, "image/png")) for i, p in enumerate(photos)]
    return client.put(f"/api/products/{product_id}", files=files, data=data, headers=headers)


def media_files(shop) -> list:
    return sorted(p for p in shop[1].rglob("*") if p.is_file()) if shop[1].exists() else []


def config_of(page: str) -> dict:
    return json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])


# ---------------------------------------------------------------- the token


def test_admin_token_prefers_the_file_and_strips_it(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    assert admin_token(str(token_file)) == "from-file"
    assert admin_token(None) == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    assert admin_token(None) is None


@pytest.mark.parametrize("content", [None, " \n"], ids=["missing", "empty"])
def test_an_unusable_token_file_is_an_error(tmp_path, content):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(DataError, match=str(token_file)):
        admin_token(str(token_file))


def test_without_a_token_writes_are_403_and_reads_public(shop):
    with TestClient(create_app(load_searcher(shop[0]), media_dir=shop[1])) as c:
        for r in (put(c, "hat", [hat_photo()]), c.delete("/api/products/red/1", headers=AUTH)):
            assert r.status_code == 403 and r.json() == {"error": DISABLED}
        got = c.get("/api/products/red/1")
        assert got.status_code == 200 and got.json()["product_id"] == "red/1"
    assert media_files(shop) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["missing", "wrong", "not-bearer", "empty", "longer"],
)
def test_a_missing_or_wrong_token_is_401(client, shop, headers):
    attempts = (
        put(client, "hat", [hat_photo()], headers=headers),
        client.delete("/api/products/red/1", headers=headers),
    )
    for r in attempts:
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    assert client.get("/api/products/hat").status_code == 404 and client.get("/api/products/red/1").status_code == 200
    assert media_files(shop) == []


# ---------------------------------------------------------------- writes


def test_a_put_product_is_found_by_the_next_search(client, shop):
    r = put(client, "hat", [hat_photo(1), hat_photo(2)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["product_id"] == "hat" and body["category"] == "blue" and body["attributes"] == HAT
    assert len(body["photos"]) == 2 and str(shop[1]) not in r.text
    assert client.get("/api/products/hat").json() == body
    for p, sent in zip(body["photos"], (hat_photo(1), hat_photo(2))):
        assert client.get(p["image_url"]).content == sent
    found = post(client, hat_photo(2), k=3).json()["matches"][0]
    assert (found["product_id"], found["id"], found["attributes"]) == ("hat", body["photos"][1]["id"], HAT)
    assert "path" not in found


def test_a_put_is_persisted(client, shop):
    assert put(client, "hat", [hat_photo()]).status_code == 200
    with TestClient(app_over(shop)) as fresh:  # another app over the store as reopened from disk
        assert fresh.get("/api/products/hat").json()["attributes"] == HAT
        assert post(fresh, hat_photo(), k=1).json()["matches"][0]["product_id"] == "hat"


def test_a_put_replaces_the_product(client):
    first = put(client, "hat", [hat_photo(1), hat_photo(2)]).json()
    second = put(client, "hat", [hat_photo(3)], attributes={"price": 3}, category=None).json()
    assert second["attributes"] == {"price": 3.0} and second["category"] == ""
    assert len(second["photos"]) == 1 and second["photos"][0]["id"] not in {p["id"] for p in first["photos"]}
    assert client.get(first["photos"][0]["image_url"]).status_code == 404


def test_delete(client):
    before = client.get("/healthz").json()
    assert before["products"] > 0 and before["photos"] >= before["products"]
    r = client.delete("/api/products/red/1", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"deleted": "red/1"}
    assert client.get("/api/products/red/1").status_code == 404
    assert client.get("/api/items/red/1").status_code == 404
    assert "red/1" not in {m["product_id"] for m in post(client, hat_photo(), k=100).json()["matches"]}
    after = client.get("/healthz").json()
    assert (after["products"], after["photos"]) == (before["products"] - 1, before["photos"] - 1)
    assert client.delete("/api/products/red/1", headers=AUTH).status_code == 404


def test_get_shows_the_public_product(client):
    r = client.get("/api/products/red/0")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"product_id", "category", "attributes", "photos"} and body["category"] == "red"
    assert {p["id"] for p in body["photos"]} == {"red/0", "red/0/back"}
    assert all(client.get(p["image_url"]).status_code == 200 for p in body["photos"])
    assert client.get("/api/products/nothing").status_code == 404


@pytest.mark.parametrize(
    "attributes, fragment",
    [
        ("{not json", "attributes: not JSON"),
        ("[1, 2]", "attributes: expected a JSON object"),
        ({"price": "cheap"}, "'price'"),
        ({"in_stock": "yes"}, "'in_stock'"),
        ({"score": 1}, "'score'"),
        ({"bad name": 1}, "'bad name'"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_bad_attributes_are_422_naming_them(client, shop, attributes, fragment):
    r = put(client, "hat", [hat_photo()], attributes=attributes)
    assert r.status_code == 422 and fragment in r.json()["error"], r.text
    assert client.get("/api/products/hat").status_code == 404 and media_files(shop) == []


@pytest.mark.parametrize(
    "attributes",
    [
        '{"price": 1' + "0" * 400 + "}",  # a number attribute
        '{"weight": -1' + "0" * 400 + "}",  # a new one
        '{"price": 9223372036854775808}',  # one past 64 bits
        '{"price": 1e999}',  # Python's json reads Infinity
    ],
)
def test_a_number_no_store_can_hold_is_422_and_the_catalog_goes_on(client, shop, attributes):
    """Once, such a number was fsynced into the log before it failed: a 500, then 422 for every later write,
    and the catalog would not open again."""
    r = put(client, "hat", [hat_photo()], attributes=attributes)
    name = attributes.split('"')[1]
    assert r.status_code == 422 and f"attribute {name!r}: " in r.json()["error"], r.text
    assert "\n" not in r.json()["error"] and len(r.json()["error"]) < 400
    assert client.get("/api/products/hat").status_code == 404 and media_files(shop) == []
    assert put(client, "hat", [hat_photo()]).status_code == 200  # later writes go on
    assert load_searcher(shop[0]).store.get("hat").attributes == HAT  # and the catalog opens again


@pytest.mark.parametrize(
    "product_id, fragment", [("%20hat", "space"), ("a%0Ab", "unprintable"), ("x" * 257, "over the limit")]
)
def test_bad_product_ids_are_422(client, product_id, fragment):
    r = put(client, product_id, [hat_photo()])
    assert r.status_code == 422 and fragment in r.json()["error"], r.text


def test_a_bad_photo_is_422_and_nothing_is_written(client, shop):
    r = put(client, "hat", [hat_photo(), b"\xff\xd8\xff\xe0 not really a jpeg"])
    assert r.status_code == 422 and r.json()["error"].startswith("p1.png: "), r.text
    assert "nothing was written" in r.json()["error"]
    assert client.get("/api/products/hat").status_code == 404 and media_files(shop) == []


@pytest.mark.parametrize("fields, fragment", [({}, "at least one photo"), ({"file": "x"}, "unknown form field")])
def test_a_put_without_photos_is_422(client, fields, fragment):
    r = put(client, "hat", [], **fields)
    assert r.status_code == 422 and fragment in r.json()["error"], r.text


def test_upload_limits_apply_to_each_photo_and_their_number(shop):
    small = hat_photo()
    with TestClient(app_over(shop, max_upload_bytes=len(small) + 10)) as c:
        big = png(photo(COLOURS["blue"], 5, size=(400, 400)))
        assert len(big) > len(small) + 10
        r = put(c, "hat", [small, big])
        assert r.status_code == 413 and "p1.png" in r.json()["error"], r.text
        r = put(c, "hat", [small] * (MAX_PHOTOS + 1))
        assert r.status_code == 413 and str(MAX_PHOTOS) in r.json()["error"], r.text
        assert put(c, "hat", [small] * 2).status_code == 200  # the same photo twice is kept once
        assert len(c.get("/api/products/hat").json()["photos"]) == 1
    assert len(media_files(shop)) == 1


def test_a_write_changes_the_pages_filters(client):
    brands = next(a for a in config_of(client.get("/").text)["attributes"] if a["name"] == "brand")["values"]
    assert "omega" not in brands
    items = config_of(client.get("/").text)["items"]
    assert put(client, "hat", [hat_photo()]).status_code == 200
    after = config_of(client.get("/").text)
    assert next(a for a in after["attributes"] if a["name"] == "brand")["values"] == sorted(brands + ["omega"])
    assert after["items"] == items + 1


# ---------------------------------------------------------------- concurrent writes


def test_concurrent_puts_and_deletes_lose_nothing(shop):
    """Threads write and remove their own products through uvicorn at once; the store reopened
    from disk holds exactly what the last acknowledged write of each product said."""
    threads, rounds = 4, 8
    expected: dict[str, dict | None] = {}
    failures = []
    lock = threading.Lock()

    def worker(t: int):
        rng = random.Random(t)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
            for n in range(rounds):
                product = f"t{t}/p{rng.randrange(3)}"
                if rng.random() < 0.3:
                    r = http.delete(f"/api/products/{product}")
                    ok = r.status_code in (200, 404)
                    state = None
                else:
                    attributes = {"writer": t, "round": n}
                    files = [("files", ("p.png", png(photo(COLOURS["green"], 1000 * t + n)), "image/png"))]
                    r = http.put(
                        f"/api/products/{product}",
                        files=files,
                        data={"attributes": json.dumps(attributes), "category": "green"},
                    )
                    ok = r.status_code == 200
                    state = attributes
                with lock:
                    if ok:
                        expected[product] = state
                    else:
                        failures.append((product, r.status_code, r.text))

    with BackgroundServer(app_over(shop)) as server:
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert not failures, failures[:3]
    assert len(expected) > threads  # enough distinct products were written to mean something
    store = load_searcher(shop[0]).store
    try:
        for product, state in expected.items():
            got = store.get(product)
            assert (got.attributes if got else None) == state, product
        written = {p.product_id for p in store.products() if p.product_id.startswith("t")}
        assert written == {p for p, s in expected.items() if s is not None}
    finally:
        store.close()
