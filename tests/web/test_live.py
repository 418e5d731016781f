"""The served catalog kept up to date: other writers' changes taken in under load (vsearch.web.live)."""

from __future__ import annotations

import threading
import time

import httpx
from fake_server import load_searcher, photo_of, sample, write_catalog
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from vsearch import cli
from vsearch.config import ServerConfig
from vsearch.web.app import create_app
from vsearch.web.live import LiveSearcher
from vsearch.web.server import BackgroundServer


def test_live_searcher_takes_in_another_writers_change(tmp_path, caplog):
    index = write_catalog(tmp_path)
    live = LiveSearcher(load_searcher(index))
    outcomes = []
    live.listeners.append(outcomes.append)
    assert not live.check()
    query = photo_of(live.current, "green/1")
    assert live.current.search(query, 1).matches[0]["product_id"] == "green/1"
    assert cli.main(["index", "remove", "green/1", "--store", str(index)]) == 0  # another process's write
    assert live.check() and outcomes == ["ok"]
    assert live.current.search(query, 1).matches[0]["product_id"] != "green/1"
    assert live.current.store.get("green/1") is None and live.current.store.count()[0] == 11
    assert not live.check()

    def broken():
        raise OSError("disk on fire")

    live.current.store.refresh = broken  # a refresh that fails: logged, the catalog kept
    assert not live.check() and outcomes == ["ok", "failed"] and "disk on fire" in caplog.text
    assert live.current.store.count()[0] == 11


def test_a_grown_log_is_compacted_in_the_background_and_loses_nothing(tmp_path):
    index = write_catalog(tmp_path)
    live = LiveSearcher(load_searcher(index))
    store = live.current.store
    if not hasattr(store, "should_compact"):
        return
    store.delete(["red/1", "blue/2"])
    compacted = []
    store.should_compact = lambda: True
    real = store.compact
    store.compact = lambda: compacted.append(1) or real()
    live.check()
    assert compacted == [1]
    fresh = load_searcher(index).store  # a new reader of the compacted files
    assert fresh.count() == store.count() == (10, 13)
    assert fresh.get("red/1") is None and fresh.get("red/0") is not None


def test_a_removed_product_disappears_under_load_without_failed_requests(tmp_path):
    """Serve, remove a product with `vsearch index remove` under load: it disappears, nothing fails."""
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
                    present = ok and gone in {m["product_id"] for m in r.json()["matches"]}
                with lock:
                    if not ok:
                        failures.append((r.status_code, r.text))
                    if vanished and present:
                        seen_after_gone.append(worker)
                vanished = vanished or not present

    with BackgroundServer(create_app(searcher, ServerConfig(reload_interval_s=0.1))) as server:
        threads = [threading.Thread(target=client_loop, args=(server.url, w)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert cli.main(["index", "remove", gone, "--store", str(index)]) == 0
        removed_at = time.monotonic()
        while time.monotonic() - removed_at < 10:
            item = httpx.get(server.url + "/api/items/" + gone)
            r = httpx.post(server.url + "/api/search", files={"file": ("q.png", query)}, data={"k": "12"})
            if item.status_code == 404 and gone not in {m["product_id"] for m in r.json()["matches"]}:
                break
            time.sleep(0.05)
        swap_s = time.monotonic() - removed_at
        time.sleep(0.5)  # more load on the changed catalog
        stop.set()
        for t in threads:
            t.join()
        families = {f.name: f.samples for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert swap_s < 10, "the removed product was still served 10 s after `vsearch index remove`"
    assert not failures, failures[:3]
    assert not seen_after_gone, "a client saw the product again after it had gone"
    assert sample(families, "vsearch_catalog_reloads_total", outcome="ok") == 1
    assert sample(families, "vsearch_catalog_products") == 11


def test_an_interval_of_zero_watches_nothing(tmp_path):
    app = create_app(load_searcher(write_catalog(tmp_path)), ServerConfig(reload_interval_s=0))
    with TestClient(app):
        assert app.state.live._thread is None
