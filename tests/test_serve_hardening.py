"""The server's hardening, on a real Searcher with a fake model (fast, no TensorFlow):
HEAD, offline docs, odd item ids, /metrics, the decode budget, catalog reloads, CLI limits."""
from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fake_server import load_searcher, write_catalog
from vsearch import cli
from vsearch.images import image_header
from vsearch.serve import BackgroundServer, DecodeBudget, LiveSearcher, create_app, image_url


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="module")
def searcher(index):
    return load_searcher(index)


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher)) as c:
        yield c


@pytest.fixture(scope="module")
def server(searcher):
    """uvicorn on loopback: what HEAD, percent-decoding and streaming really do."""
    with BackgroundServer(create_app(searcher)) as s:
        yield s


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def post(client, data: bytes, name: str = "q.png", **fields):
    return client.post("/api/search", files={"file": (name, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


def photo_of(searcher, item_id: str) -> bytes:
    return searcher.image_path(item_id).read_bytes()


def metrics_of(client) -> dict[str, list]:
    """Scraped /metrics, parsed: family name -> its samples."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(r.text)}


def sample(families, name: str, **labels) -> float:
    for family in families.values():
        for s in family:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


# ---------------------------------------------------------------- HEAD

@pytest.mark.parametrize("url", ["/", "/healthz", "/api/items/red/1", "/api/items/red/1/image", "/docs",
                                 "/openapi.json"])
def test_head_answers_like_get_without_a_body(server, url):
    get, head = httpx.get(server.url + url), httpx.head(server.url + url)
    assert get.status_code == 200 and head.status_code == 200, head.text
    assert head.content == b"" and len(get.content) > 0
    for name in ("content-type", "content-length"):
        assert head.headers[name] == get.headers[name]


def test_head_of_missing_things_keeps_their_status(server):
    assert httpx.head(server.url + "/api/items/red/none").status_code == 404
    assert httpx.head(server.url + "/no/such/route").status_code == 404
    r = httpx.head(server.url + "/api/search")
    assert r.status_code == 405 and r.content == b""


# ---------------------------------------------------------------- API docs offline

EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/"])
def test_pages_reference_no_other_host(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://", html), re.search(r".{40}https?://.{40}", html)
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) + re.findall(r"url\(([^)]+)\)", html)
    references += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)""", html)
    assert not [u for u in references if EXTERNAL.match(u)]
    for url in references:  # every asset the page loads is served here
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    if page in ("/docs", "/redoc"):  # what the bundles fetch by themselves stays here too
        policy = r.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "http" not in policy and "*" not in policy
    if page == "/docs":
        assert any(u.endswith("swagger-ui-bundle.js") for u in references)
    if page == "/redoc":
        assert any(u.endswith("redoc.standalone.js") for u in references)
        assert client.get("/openapi.json").json()["info"]["title"] == "vsearch"


# ---------------------------------------------------------------- item ids

ODD_IDS = ["red/line\nbreak", "red/crlf\r\nend\n", "red/tab\there", "red/ctl\x01\x1f\x7f", "red/100%", "red/%2F..%2Fx",
           "red/what?x=1", "red/#1", "red/a b ", "red/ünïcødé", "red/trailing/", "plain"]


@pytest.fixture(scope="module")
def odd_server(index):
    searcher = load_searcher(index)
    source = searcher.catalog.items["red/1"]
    vectors = np.repeat(searcher.catalog.index.vectors[:1], len(ODD_IDS), axis=0)
    searcher.catalog.add([{**source, "id": i, "title": f"odd {i!r}"} for i in ODD_IDS], vectors)
    with BackgroundServer(create_app(searcher)) as s:
        yield s, searcher


@pytest.mark.parametrize("item_id", ODD_IDS)
def test_odd_item_ids_round_trip_through_their_urls(odd_server, item_id):
    server, searcher = odd_server
    meta = httpx.get(server.url + "/api/items/" + quote(item_id, safe="/"))
    assert meta.status_code == 200, meta.text
    assert meta.json()["id"] == item_id and meta.json()["image_url"] == image_url(item_id)
    photo = httpx.get(server.url + meta.json()["image_url"])
    assert photo.status_code == 200, photo.text
    assert photo.content == searcher.image_path(item_id).read_bytes()


def test_search_results_carry_working_urls_for_odd_ids(odd_server):
    server, searcher = odd_server
    r = httpx.post(server.url + "/api/search", files={"file": ("q.png", photo_of(searcher, "red/1"))},
                   data={"k": "100"})
    assert r.status_code == 200, r.text
    found = {m["id"]: m["image_url"] for m in r.json()["matches"]}
    assert set(ODD_IDS) <= found.keys()
    for item_id in ("red/line\nbreak", "red/#1", "red/100%"):
        assert httpx.get(server.url + found[item_id]).status_code == 200


# ---------------------------------------------------------------- the served road

def test_the_served_steps_make_the_searchers_vector(searcher):
    """decode (under the budget), then embed: the same vector as Searcher.embed."""
    from vsearch.serve import decode_upload, embed_input

    data = photo_of(searcher, "green/2")
    served = embed_input(searcher, decode_upload(searcher, data, "q.png"))
    np.testing.assert_allclose(served, searcher.embed(data), atol=1e-6)


# ---------------------------------------------------------------- /metrics

def test_metrics_scrape(searcher, index):
    app = create_app(searcher, decode_budget_bytes=123_456_789)
    with TestClient(app) as c:
        assert post(c, photo_of(searcher, "red/1"), k=2).status_code == 200
        assert post(c, b"not an image").status_code == 422
        assert c.get("/api/items/red/none").status_code == 404
        assert c.get("/no/such/route").status_code == 404
        assert c.head("/healthz").status_code == 200
        families = metrics_of(c)
    requests = "vsearch_http_requests_total"
    assert sample(families, requests, route="/api/search", method="POST", status="200") == 1
    assert sample(families, requests, route="/api/search", method="POST", status="422") == 1
    assert sample(families, requests, route="/api/items/{item_id}", method="GET", status="404") == 1
    assert sample(families, requests, route="unmatched", method="GET", status="404") == 1
    assert sample(families, requests, route="/healthz", method="HEAD", status="200") == 1
    assert sample(families, "vsearch_http_request_duration_seconds_count", route="/api/search") == 2
    for step in ("decode", "embed", "search"):
        assert sample(families, "vsearch_search_step_seconds_count", step=step) == 1
        assert sample(families, "vsearch_search_step_seconds_sum", step=step) > 0
    assert sample(families, "vsearch_decode_budget_bytes") == 123_456_789
    assert sample(families, "vsearch_decode_in_flight_bytes") == 0
    assert sample(families, "vsearch_decode_refusals_total", reason="busy") == 0
    assert sample(families, "vsearch_decode_refusals_total", reason="too_large") == 0
    assert sample(families, "vsearch_catalog_items") == len(searcher.catalog) == 12
    assert sample(families, "vsearch_catalog_reloads_total", outcome="ok") == 0
    assert sample(families, "vsearch_model_info", fingerprint=searcher.catalog.fingerprint, dim="8",
                  image_size="16") == 1


def test_metrics_label_values_stay_bounded(client):
    """Paths and methods a client invents do not become label values."""
    for i in range(5):
        client.get(f"/random/{i}")
        client.request("BREW", "/healthz")
    families = metrics_of(client)
    routes = {s.labels["route"] for s in families["vsearch_http_requests"]}
    methods = {s.labels["method"] for s in families["vsearch_http_requests"]}
    assert not any(r.startswith("/random") for r in routes) and "BREW" not in methods and "other" in methods


# ---------------------------------------------------------------- the decode budget

def test_budget_counts_and_refuses():
    budget = DecodeBudget(100)
    assert budget.try_acquire(60) and not budget.try_acquire(41) and budget.try_acquire(40)
    assert budget.in_flight == 100
    budget.release(100)
    assert budget.in_flight == 0
    with pytest.raises(RuntimeError):
        budget.release(1)
    with pytest.raises(ValueError):
        DecodeBudget(0)


def test_budget_waits_briefly_then_gives_up():
    budget = DecodeBudget(100)
    assert budget.try_acquire(80)
    threading.Timer(0.2, budget.release, args=(80,)).start()  # from another thread, like a worker
    start = time.monotonic()
    assert asyncio.run(budget.acquire(50, wait_s=5))
    assert 0.2 <= time.monotonic() - start < 0.5  # woken by the release, not after the wait
    start = time.monotonic()
    assert not asyncio.run(budget.acquire(60, wait_s=0.2))  # 50 still held
    assert 0.2 <= time.monotonic() - start < 1
    start = time.monotonic()
    assert not asyncio.run(budget.acquire(101, wait_s=5))  # never fits: no wait at all
    assert time.monotonic() - start < 0.1 and budget.in_flight == 50 and budget.waiting == 0


def test_budget_wakes_waiters_in_turn_and_caps_how_many_wait():
    async def scenario():
        budget = DecodeBudget(100, max_waiting=2)
        assert budget.try_acquire(100)
        first = asyncio.create_task(budget.acquire(60, wait_s=5))
        second = asyncio.create_task(budget.acquire(60, wait_s=5))
        await asyncio.sleep(0.05)
        assert budget.waiting == 2
        assert not await budget.acquire(1, wait_s=5)  # a third is refused at once
        budget.release(100)
        done, pending = await asyncio.wait({first, second}, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and next(iter(done)).result() and budget.in_flight == 60
        budget.release(60)  # the other one gets its turn
        assert await asyncio.wait_for(next(iter(pending)), 1) and budget.in_flight == 60
        assert budget.waiting == 0

    asyncio.run(scenario())


def test_photo_over_the_whole_budget_is_422(searcher):
    big = png(np.full((500, 500, 3), 128, np.uint8))
    cost = image_header(big).decoded_bytes
    with TestClient(create_app(searcher, decode_budget_bytes=cost - 1)) as c:
        r = post(c, big, name="big.png")
        assert r.status_code == 422 and "decode budget" in r.json()["error"] and r.json()["error"].startswith("big.png")
        assert post(c, photo_of(searcher, "red/1")).status_code == 200  # small photos still fit
        assert sample(metrics_of(c), "vsearch_decode_refusals_total", reason="too_large") == 1
    with TestClient(create_app(searcher, decode_budget_bytes=cost)) as c:
        assert post(c, big).status_code == 200


def test_sixteen_bit_photos_count_at_their_decoded_size(searcher):
    """A 16-bit gray PNG costs more than an 8-bit one of the same size; the budget sees it."""
    gray8 = png(np.full((600, 600), 90, np.uint8))
    gray16 = png(np.full((600, 600), 90 * 257, np.uint16))
    cost8, cost16 = image_header(gray8).decoded_bytes, image_header(gray16).decoded_bytes
    assert cost16 > cost8
    with TestClient(create_app(searcher, decode_budget_bytes=cost8)) as c:
        assert post(c, gray8).status_code == 200
        assert post(c, gray16).status_code == 422


def test_busy_budget_is_503_with_retry_after(searcher):
    app = create_app(searcher, decode_wait_s=0.3)
    budget = app.state.decode_budget
    with TestClient(app) as c:
        assert budget.try_acquire(budget.capacity)  # other requests hold all of it
        start = time.monotonic()
        r = post(c, photo_of(searcher, "red/1"))
        assert r.status_code == 503 and "busy" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - start >= 0.3
        assert c.get("/healthz").status_code == 200  # only decoding waits
        budget.release(budget.capacity)
        assert post(c, photo_of(searcher, "red/1")).status_code == 200
        families = metrics_of(c)
        assert sample(families, "vsearch_decode_refusals_total", reason="busy") == 1
        assert sample(families, "vsearch_http_requests_total", route="/api/search", status="503") == 1
    assert budget.in_flight == 0


def test_budget_is_released_when_decoding_fails(searcher):
    app = create_app(searcher)
    truncated = png(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))[:5000]
    with TestClient(app) as c:
        for _ in range(3):
            assert post(c, truncated).status_code == 422
    assert app.state.decode_budget.in_flight == 0


# ---------------------------------------------------------------- catalog reloads

def test_live_searcher_notices_a_replaced_file(tmp_path, caplog):
    index = write_catalog(tmp_path)
    live = LiveSearcher(load_searcher(index), index)
    assert not live.check()
    old = live.current
    assert cli.main(["index", "remove", str(index), "green/0"]) == 0
    assert live.check() and live.current is not old
    assert "green/0" not in live.current.catalog.items and "green/0" in old.catalog.items
    assert not live.check()
    # a file that cannot be loaded: logged once, the current catalog kept
    good = live.current
    broken = tmp_path / "broken.vsi"
    broken.write_bytes(b"not an index")
    broken.replace(index)
    assert not live.check() and live.current is good and "cannot be loaded" in caplog.text
    assert not live.check()
    write_catalog(tmp_path)  # a good file again
    assert live.check() and len(live.current.catalog) == 12


def test_replaced_index_is_swapped_in_without_failed_requests(tmp_path):
    """Serve, remove an item with `vsearch index remove` under load: it disappears, nothing fails."""
    index = write_catalog(tmp_path)
    searcher = load_searcher(index)
    gone = "blue/2"
    query = photo_of(searcher, gone)
    failures, seen_after_gone, lock = [], [], threading.Lock()
    stop = threading.Event()

    def client_loop(url: str, worker: int) -> None:
        vanished = False
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                if worker % 2:
                    r = http.get("/api/items/" + gone)
                    ok = r.status_code in (200, 404)
                    present = r.status_code == 200
                else:
                    r = http.post("/api/search", files={"file": ("q.png", query)}, data={"k": "12"})
                    ok = r.status_code == 200
                    present = ok and gone in {m["id"] for m in r.json()["matches"]}
                with lock:
                    if not ok:
                        failures.append((r.status_code, r.text))
                    if vanished and present:
                        seen_after_gone.append(worker)
                vanished = vanished or not present

    with BackgroundServer(create_app(searcher, index_path=index, reload_interval_s=0.1)) as server:
        threads = [threading.Thread(target=client_loop, args=(server.url, w)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert cli.main(["index", "remove", str(index), gone]) == 0
        removed_at = time.monotonic()
        while time.monotonic() - removed_at < 10:
            item = httpx.get(server.url + "/api/items/" + gone)
            r = httpx.post(server.url + "/api/search", files={"file": ("q.png", query)}, data={"k": "12"})
            if item.status_code == 404 and gone not in {m["id"] for m in r.json()["matches"]}:
                break
            time.sleep(0.05)
        swap_s = time.monotonic() - removed_at
        time.sleep(0.5)  # more load on the new catalog
        stop.set()
        for t in threads:
            t.join()
        health = httpx.get(server.url + "/healthz").json()
        page = httpx.get(server.url + "/").text
        families = {f.name: f.samples for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert swap_s < 10, "the removed item was still served 10 s after the index file was replaced"
    assert health["items"] == 11
    assert json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])["items"] == 11
    assert not failures, failures[:3]
    assert not seen_after_gone, "a client saw the item again after it had gone"
    assert sample(families, "vsearch_catalog_reloads_total", outcome="ok") == 1
    assert sample(families, "vsearch_catalog_items") == 11


def test_without_an_index_path_nothing_is_watched(searcher):
    app = create_app(searcher)
    with TestClient(app):
        assert app.state.live.path is None and app.state.live._thread is None


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, fragment", [
    (["--max-upload-mb", "nan"], "--max-upload-mb"), (["--max-upload-mb", "inf"], "--max-upload-mb"),
    (["--max-upload-mb", "-1"], "--max-upload-mb"), (["--max-upload-mb", "0"], "--max-upload-mb"),
    (["--max-upload-mb", "1e-9"], "--max-upload-mb"),
    (["--port", "99999"], "--port"), (["--port", "-1"], "--port"), (["--port", "0"], "--port"),
    (["--decode-budget-mb", "nan"], "--decode-budget-mb"), (["--decode-budget-mb", "-5"], "--decode-budget-mb"),
    (["--decode-budget-mb", "inf"], "--decode-budget-mb"),
    (["--reload-interval", "-1"], "--reload-interval"), (["--reload-interval", "nan"], "--reload-interval"),
    (["--threads", "0"], "--threads"),
])
def test_serve_bad_numbers_exit_2_with_one_line(index, capsys, args, fragment):
    assert cli.main(["serve", "--index", str(index), "--model", "no-model", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err


def test_serve_port_in_use_exits_2_before_loading_the_model(index, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        assert cli.main(["serve", "--index", str(index), "--model", "no-model", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], err
    assert time.monotonic() - start < 5
