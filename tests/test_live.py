"""Catalog reloads: a replaced index file is noticed and swapped in under load."""
from __future__ import annotations

import json
import threading
import time

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fake_server import load_searcher, photo_of, sample, write_catalog
from vsearch import cli
from vsearch.app import create_app
from vsearch.live import LiveSearcher
from vsearch.serve import BackgroundServer


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


def test_without_an_index_path_nothing_is_watched(tmp_path):
    app = create_app(load_searcher(write_catalog(tmp_path)))
    with TestClient(app):
        assert app.state.live.path is None and app.state.live._thread is None
