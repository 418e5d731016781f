"""The app's search API and item routes on a real Searcher with a fake model (fast, no TensorFlow)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from conftest import awkward_files
from fake_server import load_searcher, photo_of, post
from vsearch.app import create_app, image_url
from vsearch.serve import BackgroundServer

LEARNING_WING = {f"vsearch.{m}" for m in ("data", "augment", "features", "models", "losses", "mining", "train",
                                          "training", "siamese", "export", "tflite", "evaluate", "calibrate",
                                          "plots", "datasets", "checks")}


# ---------------------------------------------------------------- item ids

ODD_IDS = ["red/line\nbreak", "red/crlf\r\nend\n", "red/tab\there", "red/ctl\x01\x1f\x7f", "red/100%", "red/%2F..%2Fx",
           "red/what?x=1", "red/#1", "red/a b ", "red/ünïcødé", "red/trailing/", "plain"]


@pytest.fixture(scope="module")
def odd_server(fake_index):
    searcher = load_searcher(fake_index)
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

@pytest.mark.parametrize("photo", ["catalog png", "exif-rotated jpeg"])
def test_the_served_road_answers_like_the_searcher(fake_client, fake_searcher, tmp_path, photo):
    """decode (under the budget), embed, search: the matches and scores of Searcher.search."""
    data = photo_of(fake_searcher, "green/2") if photo == "catalog png" else awkward_files(tmp_path)["exif"].read_bytes()
    r = post(fake_client, data, k=6)
    assert r.status_code == 200, r.text
    direct = fake_searcher.search(data, 6).matches
    assert [m["id"] for m in r.json()["matches"]] == [m["id"] for m in direct]
    np.testing.assert_allclose([m["score"] for m in r.json()["matches"]], [m["score"] for m in direct], atol=1e-6)


def test_serving_imports_neither_tensorflow_nor_the_learning_wing(fake_index):
    """The app, its middleware, budget, reloads and metrics answer a search in a fresh process."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fastapi.testclient import TestClient
from fake_server import load_searcher, photo_of
from vsearch.app import create_app
from vsearch.serve import warm_up
searcher = load_searcher({str(fake_index)!r})
warm_up(searcher)
with TestClient(create_app(searcher)) as client:
    r = client.post("/api/search", files={{"file": ("q.png", photo_of(searcher, "red/1"))}})
    assert r.status_code == 200, r.text
    assert client.get("/metrics").status_code == 200
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
                       or m in {sorted(LEARNING_WING)!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
