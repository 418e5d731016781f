"""The catalog contract over HTTP, on every store: faiss, a milvus-lite file and a Milvus server.

What a shop operator relies on whatever ``--store`` says: one result per product, filters,
the admin token, a PUT found by the next search, a DELETE gone from it, 20 concurrent PUTs
all answered 200 and all there after a restart (of the app, and of the Milvus server, killed),
concurrent PUTs and DELETEs of the same products leaving exactly what was acknowledged (the
Milvus server killed under them, too), and a store that fails on its side answered 503 with
``Retry-After``, never a 4xx.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import httpx
import numpy as np
import pytest
import writes  # tests/writes.py: what acknowledged writes must leave
from fake_server import COLOURS, FINGERPRINT, ColourEmbedder, photo, png, post, write_catalog
from fastapi.testclient import TestClient

from vsearch.config import ServerConfig
from vsearch.errors import StoreError
from vsearch.web.app import create_app
from vsearch.web.server import BackgroundServer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def copy_catalog(faiss_path, spec: str) -> None:
    """The fake catalog (tests/fake_server.py) built again at ``spec``: its photos re-embedded."""
    from vsearch.catalog.manifest import Photo
    from vsearch.images import model_input
    from vsearch.stores import build_store, open_store

    source = open_store(f"faiss:{faiss_path}")
    photos = [
        Photo(p.product_id, photo_id, path, p.category, p.attributes)
        for p in source.products()
        for photo_id, path in zip(p.photos, p.paths)
    ]
    source.close()
    embedder = ColourEmbedder()
    vectors = embedder.embed_pixels(np.stack([model_input(p.image, embedder.image_size) for p in photos]))
    build_store(spec, photos, vectors, fingerprint=FINGERPRINT, model={"source": "fake"}).close()


@pytest.fixture(params=["faiss", "milvus", pytest.param("server", marks=pytest.mark.slow)])
def shop(request, tmp_path):
    """(store spec, media folder) of a fresh fake catalog on each store."""
    faiss_path = write_catalog(tmp_path / "shop")
    if request.param == "faiss":
        return f"faiss:{faiss_path}", tmp_path / "media"
    pytest.importorskip("vsearch.stores.milvus")
    if request.param == "milvus":
        spec = f"milvus:{tmp_path}/catalog.db"
    else:
        name = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
        spec = f"milvus:{request.getfixturevalue('milvus_server')}#w_{name}"
    copy_catalog(faiss_path, spec)
    return spec, tmp_path / "media"


def app_over(shop):
    from vsearch.catalog.search import Searcher
    from vsearch.stores import open_store

    searcher = Searcher(ColourEmbedder(), open_store(shop[0], expected_fingerprint=FINGERPRINT))
    return create_app(searcher, ServerConfig(reload_interval_s=0), admin_token=TOKEN, media_dir=shop[1])


def put(http, product_id: str, seed: int, attributes: dict, category: str = "blue"):
    files = [("files", ("p.png", png(photo(COLOURS[category], seed)), "image/png"))]
    data = {"attributes": json.dumps(attributes), "category": category}
    return http.put(f"/api/products/{product_id}", files=files, data=data, headers=AUTH)


def test_the_catalog_contract_holds_on_every_store(shop):
    with TestClient(app_over(shop)) as client:
        health = client.get("/healthz").json()
        assert health["store"]["backend"] == shop[0].split(":")[0]
        if shop[0].startswith("milvus:http"):
            assert health["store"]["server"].startswith("v2.") and health["store"]["group_by"] in ("milvus", "vsearch")
        matches = post(client, png(photo(COLOURS["red"], 7)), k=20).json()["matches"]
        assert len(matches) == health["products"] == len({m["product_id"] for m in matches})  # one result a product
        acme = post(client, png(photo(COLOURS["red"], 7)), k=20, filter=json.dumps({"brand": "acme"})).json()
        assert acme["matches"] and all(m["attributes"]["brand"] == "acme" for m in acme["matches"])
        no_token = client.put("/api/products/y", files=[("files", ("p.png", png(photo(COLOURS["blue"], 2))))])
        assert no_token.status_code == 401 and client.get("/api/products/y").status_code == 404
        r = put(client, "hat", 101, {"price": 3})  # a PUT that leaves out the catalog's attributes
        assert r.status_code == 200, r.text
        assert post(client, png(photo(COLOURS["blue"], 101)), k=1).json()["matches"][0]["product_id"] == "hat"
        assert client.delete("/api/products/hat", headers=AUTH).status_code == 200
        assert "hat" not in {
            m["product_id"] for m in post(client, png(photo(COLOURS["blue"], 101)), k=30).json()["matches"]
        }


def test_20_concurrent_puts_are_all_answered_and_kept_after_a_restart(shop, request):
    """8 clients PUT 20 different products at once (milvus-lite answered 3-8 of them 422 while
    keeping them): every one is 200, and every one is there after the app, and the Milvus
    server (killed), start again."""
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def client(t: int, server):
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for n in range(t, 20, 8):
                r = put(http, f"conc{n}", 500 + n, {"writer": t, "n": n})
                with lock:
                    answers[f"conc{n}"] = r.status_code if r.status_code == 200 else f"{r.status_code} {r.text}"

    app = app_over(shop)
    with BackgroundServer(app) as server:
        workers = [threading.Thread(target=client, args=(t, server)) for t in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    app.state.live.store.close()  # the last user of a milvus-lite file: its server stops
    assert answers == {f"conc{n}": 200 for n in range(20)}
    if shop[0].startswith("milvus:http"):
        process = request.getfixturevalue("milvus_process")
        process.stop(hard=True)
        process.start()
    with TestClient(app_over(shop)) as again:
        for n in range(20):
            got = again.get(f"/api/products/conc{n}").json()
            assert got["attributes"] == {"writer": n % 8, "n": n}, got


def test_a_store_failure_is_503_with_retry_after_never_a_4xx(shop, monkeypatch):
    with TestClient(app_over(shop)) as client:
        store = client.app.state.live.current.store

        def failing(*_, **__):
            raise StoreError(f"{shop[0]}: Milvus refused: server unavailable", retry_after=2)

        monkeypatch.setattr(store, "upsert", failing)
        monkeypatch.setattr(store, "search", failing)
        monkeypatch.setattr(store, "delete", failing)
        for r in (
            put(client, "hat", 1, {"price": 3}),
            post(client, png(photo(COLOURS["blue"], 1)), k=3),
            client.delete("/api/products/red/1", headers=AUTH),
        ):
            assert r.status_code == 503 and r.headers["retry-after"] == "2", (r.status_code, r.text)
            assert "server unavailable" in r.json()["error"]


# ---------------------------------------------------------------- concurrent PUTs and DELETEs of the same products

HAMMERED = ("red/1", "blue/2", "w1", "w2", "w3")  # two of the catalog's products and three new ones


def admin_writer(url: str, seed: int, rounds: int, log: list, wrong: list) -> None:
    """One admin client's ``rounds`` PUTs (1-3 new photos, one of two attribute sets) or DELETEs of
    random :data:`HAMMERED` products, logged as tests/writes.py says: a 200 (or a DELETE's 404:
    nothing there) is acknowledged, a 503 with ``Retry-After`` is not; any other answer, or a
    PUT answered with anything but what it wrote, goes to ``wrong``."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=120) as http:
        for n in range(rounds):
            product_id = HAMMERED[rng.integers(len(HAMMERED))]
            started = time.monotonic()
            if rng.random() < 0.3:
                r = http.delete(f"/api/products/{product_id}", headers=AUTH)
                effect, acknowledged = None, r.status_code in (200, 404)
            else:
                blobs = [png(photo(COLOURS["green"], 1000 * seed + 10 * n + j)) for j in range(rng.integers(1, 4))]
                attributes = {"price": float(n), "brand": f"w{seed}"} if rng.random() < 0.5 else {"stock": n}
                r = http.put(
                    f"/api/products/{product_id}",
                    files=[("files", (f"{j}.png", blob, "image/png")) for j, blob in enumerate(blobs)],
                    data={"attributes": json.dumps(attributes), "category": "green"},
                    headers=AUTH,
                )
                photos = [f"{product_id}/{hashlib.sha256(blob).hexdigest()[:16]}" for blob in blobs]
                effect, acknowledged = (
                    {"category": "green", "attributes": attributes, "photos": photos},
                    r.status_code == 200,
                )
                if acknowledged and state(r.json()) != effect:
                    wrong.append(("answered another product than it wrote", product_id, r.json(), effect))
            log.append((started, time.monotonic(), product_id, effect if acknowledged else "?", acknowledged))
            if not acknowledged and not (r.status_code == 503 and r.headers.get("retry-after")):
                wrong.append((r.request.method, product_id, r.status_code, r.text))


def admin_writers(url: str, rounds: int, log: list, wrong: list, seeds=range(6)) -> list[threading.Thread]:
    threads = [threading.Thread(target=admin_writer, args=(url, seed, rounds, log, wrong)) for seed in seeds]
    for t in threads:
        t.start()
    return threads


def state(product: dict) -> dict:
    """A product as the API shows it -> as a write's logged effect says it."""
    return {
        "category": product["category"],
        "attributes": product["attributes"],
        "photos": [p["id"] for p in product["photos"]],
    }


def check_catalog(shop, log: list) -> None:
    """The catalog, opened afresh, holds what the acknowledged writes left, in its reads, its
    searches and its counts."""
    with TestClient(app_over(shop)) as client:

        def read(product_id: str) -> dict | None:
            r = client.get(f"/api/products/{product_id}")
            assert r.status_code in (200, 404), r.text
            return state(r.json()) if r.status_code == 200 else None

        writes.check_acknowledged(read, HAMMERED, log)
        there = {product_id for product_id in HAMMERED if read(product_id) is not None}
        matches = post(client, png(photo(COLOURS["green"], 1)), k=100, category="any").json()["matches"]
        assert {m["product_id"] for m in matches} & set(HAMMERED) == there  # no phantom rows, none missing
        assert client.get("/healthz").json()["products"] == 10 + len(there) == len(matches)
        client.app.state.live.store.close()


def test_concurrent_puts_and_deletes_of_the_same_products_keep_what_was_acknowledged(shop, request):
    """6 admin clients PUT and DELETE 5 products at once (milvus-lite answered such PUTs 422 while
    keeping them): every write is answered 200 (a DELETE of nothing 404), a PUT with what it
    wrote, and the catalog holds what the last acknowledged write of each product left, after the
    store is opened again and the Milvus server killed and started again. On the server, writers
    then run while it is killed: each write is acknowledged or answered 503 with Retry-After, and
    what was acknowledged is there after it."""
    log: list = []
    wrong: list = []
    app = app_over(shop)
    with BackgroundServer(app) as server:
        for t in admin_writers(server.url, 8, log, wrong):
            t.join()
    app.state.live.store.close()
    assert wrong == [] and len(log) == 48 and all(op[4] for op in log), wrong
    server_process = request.getfixturevalue("milvus_process") if shop[0].startswith("milvus:http") else None
    if server_process is not None:
        server_process.stop(hard=True)
        server_process.start()
    check_catalog(shop, log)
    if server_process is None:
        return
    app = app_over(shop)
    with BackgroundServer(app) as server:
        during = admin_writers(server.url, 12, log, wrong, seeds=range(10, 16))
        time.sleep(1.0)
        server_process.stop(hard=True)
        server_process.start()
        for t in during:
            t.join()
        for t in admin_writers(server.url, 3, log, wrong, seeds=range(20, 26)):  # once the server is back
            t.join()
    app.state.live.store.close()
    assert wrong == [] and not all(op[4] for op in log[48:]), wrong  # some writes met the server down
    check_catalog(shop, log)
