"""The web service over the smoke model and catalog: page, API, limits, bad input, load; `vsearch serve`."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import awkward_files, jpeg_bytes
from fastapi.testclient import TestClient

from vsearch import cli
from vsearch.catalog.products import image_url, public_item
from vsearch.config import MB, SearchConfig, ServerConfig
from vsearch.web.app import create_app
from vsearch.web.server import BackgroundServer, warm_up

MATCH_FIELDS = {"rank", "product_id", "id", "score", "category", "attributes", "image_url"}


@pytest.fixture(scope="module")
def embedder(smoke_index):
    from vsearch.embedder import SavedModelEmbedder

    return SavedModelEmbedder(smoke_index[0])


def copy_store(path: Path, folder: Path) -> Path:
    """A copy of a faiss store (its snapshot and log) in ``folder``, for tests that change it."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for source in (path, path.with_name(path.name + ".log")):
        if source.exists():
            shutil.copy(source, folder / source.name)
    return folder / path.name


def make_searcher(embedder, store: Path, **kwargs):
    from vsearch.catalog.search import Searcher
    from vsearch.stores import open_store

    return Searcher(embedder, open_store(f"faiss:{store}"), **kwargs)


@pytest.fixture(scope="module")
def searcher(embedder, smoke_index):
    return make_searcher(embedder, smoke_index[1])


def add_photo(searcher, photo_id: str, path, source: str, category: str) -> None:
    """A product of one photo, ``photo_id``, whose file is said to be ``path`` (embedded from ``source``)."""
    from vsearch.catalog.manifest import Photo

    searcher.store.upsert([Photo(photo_id, photo_id, str(path), category)], searcher.embed(source)[None])


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher)) as c:
        yield c


@pytest.fixture(scope="module")
def photo(smoke_run) -> bytes:
    return sorted((smoke_run["data"] / "validation" / "red").glob("*.jpg"))[0].read_bytes()


def post(client, data: bytes, name: str = "photo.jpg", **fields):
    return client.post(
        "/api/search",
        files={"file": (name, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def assert_well_formed(body: dict, k: int, categories) -> None:
    """k ranked matches with the public fields, best first, and no file-system paths."""
    assert [m["rank"] for m in body["matches"]] == list(range(1, k + 1))
    for m in body["matches"]:
        assert MATCH_FIELDS <= m.keys() and "path" not in m
        assert m["category"] in categories and m["image_url"] == image_url(m["id"])
    scores = [m["score"] for m in body["matches"]]
    assert all(-1.01 <= s <= 1.01 for s in scores)
    assert {"mode", "predicted", "confidence", "applied"} <= body["category"].keys()
    if body["category"]["mode"] != "auto":  # auto ranks by score plus the category prior
        rest = scores[1:]  # a verified product may have moved first
        assert rest == sorted(rest, reverse=True)


def assert_json_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body


def assert_still_serving(client, photo: bytes) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert len(post(client, photo, k=2).json()["matches"]) == 2


# ---------------------------------------------------------------- page and API


def test_page_is_self_contained(client, searcher):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'type="file"' in page and "/api/search" in page and 'id="results"' in page
    config = json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    assert config["categories"] == searcher.categories and config["max_upload_bytes"] == 10 * 1024 * 1024
    # works offline: no stylesheet, script or font fetched from elsewhere
    assert "<link" not in page and 'src="http' not in page and "@import" not in page


def test_search_returns_k_public_matches(client, searcher, photo, smoke_run):
    r = post(client, photo, k=4)
    assert r.status_code == 200, r.text
    assert_well_formed(r.json(), 4, searcher.categories)
    assert str(smoke_run["root"]) not in r.text and str(Path(smoke_run["root"]).resolve()) not in r.text


@pytest.mark.parametrize("category", ["any", "auto", "green"])
def test_search_category_modes(client, searcher, photo, category):
    r = post(client, photo, k=3, category=category)
    assert r.status_code == 200, r.text
    body = r.json()
    assert_well_formed(body, 3, searcher.categories)
    assert body["category"]["mode"] == category
    if category == "green":
        assert {m["category"] for m in body["matches"]} == {"green"}
    if category == "auto":
        assert body["category"]["predicted"] in searcher.categories and 0 < body["category"]["confidence"] <= 1


def test_k_and_category_as_query_fields(client, photo):
    r = client.post("/api/search?k=2&category=blue", files={"file": ("q.jpg", photo)})
    assert r.status_code == 200, r.text
    assert [m["category"] for m in r.json()["matches"]] == ["blue", "blue"]


def test_warm_up_searches_an_encoded_photo(searcher, monkeypatch):
    calls, original = [], searcher.search
    monkeypatch.setattr(
        searcher, "search", lambda image, *a, **kw: calls.append(type(image)) or original(image, *a, **kw)
    )
    warm_up(searcher)
    assert calls == [bytes]  # encoded bytes, decoded like an upload


def test_default_k(client, photo):
    assert len(post(client, photo).json()["matches"]) == 5


def first_photo(searcher) -> str:
    return sorted(p for product in searcher.store.products() for p in product.photos)[0]


def test_item_metadata_and_image(client, searcher):
    item_id = first_photo(searcher)
    r = client.get(f"/api/items/{item_id}")
    assert r.status_code == 200 and r.json() == public_item(searcher.store.photo(item_id))
    assert "path" not in r.json() and "/" in item_id  # ids carry their category folder
    image = client.get(r.json()["image_url"])
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    assert image.content == searcher.image_path(item_id).read_bytes()


def test_an_item_called_image_keeps_its_metadata_url(embedder, smoke_index, tmp_path):
    searcher = make_searcher(embedder, copy_store(smoke_index[1], tmp_path))
    source = searcher.store.photo(first_photo(searcher))
    category = source["category"]
    add_photo(searcher, f"{category}/image", source["path"], source["path"], category)
    client = TestClient(create_app(searcher))
    meta = client.get(f"/api/items/{category}/image")  # also the photo URL of an item called "<category>"
    assert meta.status_code == 200 and meta.json()["id"] == f"{category}/image"
    photo = client.get(meta.json()["image_url"])
    assert photo.status_code == 200 and photo.content == Path(source["path"]).read_bytes()


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/red/no_such_item",
        "/api/items/red/no_such_item/image",
        "/api/items/..%2F..%2Fetc%2Fpasswd",
        "/api/items/..%2F..%2Fetc%2Fpasswd/image",
        "/api/items/%2Fetc%2Fpasswd/image",
        "/api/items/../../etc/passwd/image",
    ],
)
def test_unknown_items_are_404(client, url):
    r = client.get(url)
    assert_json_error(r, 404, "")
    assert "root:" not in r.text


def test_missing_photo_file_is_404(embedder, smoke_index, tmp_path):
    searcher = make_searcher(embedder, copy_store(smoke_index[1], tmp_path / "store"))
    source = searcher.store.photo(first_photo(searcher))
    item_id, gone = "gone/1", tmp_path / "gone.jpg"
    add_photo(searcher, item_id, gone, source["path"], source["category"])
    with TestClient(create_app(searcher)) as c:
        r = c.get(image_url(item_id))
    assert_json_error(r, 404, "missing on the server")
    assert str(gone) not in r.text


def test_healthz(client, searcher, smoke_run):
    body = client.get("/healthz").json()
    photos = [p for p in (smoke_run["data"] / "train").rglob("*") if p.is_file()]
    assert body["status"] == "ok" and (body["products"], body["photos"]) == searcher.store.count()
    assert body["photos"] == len(photos)  # one product per photo of the folder
    assert body["model"]["fingerprint"] == searcher.store.fingerprint and body["categories"] == searcher.categories


def test_openapi_describes_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {
        "/api/search",
        "/api/items/{item_id}",
        "/api/items/{item_id}/image",
        "/healthz",
        "/api/products/{product_id}",
    } <= spec["paths"].keys()
    assert {"get", "put", "delete"} <= spec["paths"]["/api/products/{product_id}"].keys()
    assert "filter" in json.dumps(spec["paths"]["/api/search"])
    assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("empty", "empty"),
        ("corrupt", "corrupt"),
        ("text", "not a recognised image"),
        ("truncated", "truncated"),
    ],
)
def test_unusable_uploads_are_422(client, photo, tmp_path, name, fragment):
    r = post(client, awkward_files(tmp_path)[name].read_bytes(), name="query.jpg")
    assert_json_error(r, 422, fragment)
    assert r.json()["error"].startswith("query.jpg: ")  # names the upload, never a server path
    assert_still_serving(client, photo)


@pytest.mark.parametrize("name", ["gray", "rgba", "sixteen", "cmyk", "exif"])
def test_awkward_valid_photos_succeed(client, searcher, tmp_path, name):
    path = awkward_files(tmp_path)[name]
    r = post(client, path.read_bytes(), name=path.name, k=3)
    assert r.status_code == 200, r.text
    assert_well_formed(r.json(), 3, searcher.categories)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"k": 0}, "k (form)"),
        ({"k": 101}, "k (form)"),
        ({"k": "many"}, "k (form)"),
        ({"category": "boots"}, "unknown category 'boots'"),
    ],
)
def test_bad_arguments_are_422(client, photo, fields, fragment):
    assert_json_error(post(client, photo, **fields), 422, fragment)


def test_bad_query_k_and_missing_file_are_422(client, photo):
    assert_json_error(client.post("/api/search?k=-1", files={"file": ("q.jpg", photo)}), 422, "k (query)")
    assert_json_error(client.post("/api/search", data={"k": "3"}), 422, "file")
    assert_json_error(client.get("/api/search"), 405, "Method Not Allowed")
    assert_json_error(client.get("/no/such/route"), 404, "Not Found")


@pytest.fixture(scope="module")
def small_client(embedder, smoke_index):
    """Tight limits: 4,000-byte uploads, 1,000-pixel photos (the smoke photos are 40x48)."""
    config = ServerConfig(max_upload_mb=4000 / MB, search=SearchConfig(max_pixels=1000))
    app = create_app(make_searcher(embedder, smoke_index[1]), config)
    with TestClient(app) as c:
        yield c


def test_upload_over_the_size_limit_is_413(small_client, photo):
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    from PIL import Image

    big = jpeg_bytes(Image.fromarray(noisy), quality=95)
    assert 4000 < len(big) < 4000 + 16 * 1024  # within the form allowance: the endpoint's own cap refuses it
    assert_json_error(post(small_client, big), 413, "limit is 4000 bytes")
    # a declared Content-Length over the limit is refused before the body is read
    assert_json_error(post(small_client, b"\xff" * 200_000), 413, "upload too large")
    # so is a body without a length that grows past it (chunked upload)
    chunks = (b"x" * 10_000 for _ in range(10))
    r = small_client.post("/api/search", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_json_error(r, 413, "upload too large")
    assert small_client.get("/healthz").status_code == 200


def test_photo_over_the_pixel_limit_is_422(small_client, photo):
    assert len(photo) < 4000
    assert_json_error(post(small_client, photo), 422, "1000-pixel limit")
    assert small_client.get("/healthz").status_code == 200


def test_unexpected_failure_is_a_json_500(embedder, smoke_index, photo, monkeypatch):
    searcher = make_searcher(embedder, smoke_index[1])
    monkeypatch.setattr(searcher, "search_query", lambda *a, **kw: 1 / 0)
    with TestClient(create_app(searcher), raise_server_exceptions=False) as c:
        assert_json_error(post(c, photo), 500, "internal error (ZeroDivisionError)")
        assert c.get("/healthz").status_code == 200


# ---------------------------------------------------------------- a real server under load


def test_loopback_load(searcher, smoke_run):
    """200 searches from 8 concurrent clients against uvicorn on loopback: no errors."""
    import httpx

    photos = [p.read_bytes() for p in sorted((smoke_run["data"] / "validation").rglob("*.jpg"))]
    latencies, failures, lock = [], [], threading.Lock()

    def client_loop(worker: int, count: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(count):
                k = 1 + (worker + i) % 6
                start = time.perf_counter()
                r = http.post(
                    "/api/search",
                    files={"file": ("q.jpg", photos[(worker * 7 + i) % len(photos)])},
                    data={"k": str(k), "category": ("any", "auto")[i % 2]},
                )
                elapsed = time.perf_counter() - start
                try:
                    assert r.status_code == 200, r.text
                    assert_well_formed(r.json(), k, searcher.categories)
                except AssertionError as exc:
                    with lock:
                        failures.append(str(exc))
                with lock:
                    latencies.append(elapsed)

    with BackgroundServer(create_app(searcher)) as server:
        threads = [threading.Thread(target=client_loop, args=(w, 25, server.url)) for w in range(8)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        assert httpx.get(server.url + "/healthz").status_code == 200
    assert not failures, failures[:3]
    assert len(latencies) == 200
    ms = np.array(latencies) * 1000
    print(
        f"\nloopback load (smoke model): 200 requests, 8 clients, {wall:.1f} s, "
        f"p50 {statistics.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, {200 / wall:.0f} req/s"
    )


# ---------------------------------------------------------------- the command line


def test_serve_has_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])
    assert info.value.code == 0 and "--max-upload-mb" in capsys.readouterr().out


def test_serve_missing_store_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["serve", "--store", f"faiss:{tmp_path / 'none.vsi'}", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.vsi: no such catalog store" in err[0]


@pytest.mark.parametrize("content", [None, "\n"], ids=["missing", "empty"])
def test_serve_with_an_unusable_token_file_exits_2(fake_index, tmp_path, capsys, content):
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    assert (
        cli.main(["serve", "--store", f"faiss:{fake_index}", "--model", "no-model", "--admin-token-file", str(token)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(token) in err[0], err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--max-upload-mb", "nan"], "--max-upload-mb"),
        (["--max-upload-mb", "inf"], "--max-upload-mb"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--max-upload-mb", "1e-9"], "--max-upload-mb"),
        (["--port", "99999"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "0"], "--port"),
        (["--decode-budget-mb", "nan"], "--decode-budget-mb"),
        (["--decode-budget-mb", "-5"], "--decode-budget-mb"),
        (["--decode-budget-mb", "inf"], "--decode-budget-mb"),
        (["--reload-interval", "-1"], "--reload-interval"),
        (["--reload-interval", "nan"], "--reload-interval"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_serve_bad_numbers_exit_2_with_one_line(fake_index, capsys, args, fragment):
    assert cli.main(["serve", "--store", f"faiss:{fake_index}", "--model", "no-model", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err


@pytest.fixture
def served_config(monkeypatch):
    """The ServerConfig `vsearch serve` would run with (the server itself is not started)."""
    seen = []
    monkeypatch.setattr("vsearch.web.server.run", lambda model, store, config, **kwargs: seen.append(config))
    return seen


def test_serve_settings_come_from_the_preset_a_file_set_and_the_flags(fake_index, tmp_path, served_config):
    from vsearch.config import ServerConfig, preset, save_json

    store = ["--store", f"faiss:{fake_index}", "--model", "no-model"]
    assert cli.main(["serve", *store]) == 0
    assert served_config[-1] == ServerConfig()
    args = ["--preset", "cosine", "--set", "search.k=7", "--set", "decode_wait_s=2", "--set", "port=9000"]
    assert cli.main(["serve", *store, *args, "--port", "9001", "--category-prior", "0.1", "--no-rerank"]) == 0
    config = served_config[-1]
    assert (config.port, config.decode_wait_s, config.search.k) == (9001, 2.0, 7)  # a flag after --set
    assert config.search.category_prior == 0.1 and config.search.rerank is False
    assert config.search.reranker == preset(ServerConfig, "cosine").search.reranker
    save_json(ServerConfig(port=9002, search=preset(ServerConfig, "smoke").search), tmp_path / "serve.json")
    assert cli.main(["serve", *store, "--config", str(tmp_path / "serve.json"), "--set", "title=shop"]) == 0
    config = served_config[-1]
    assert (config.port, config.title, config.search) == (9002, "shop", preset(ServerConfig, "smoke").search)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "search.reranker.depth=0"], "search.reranker.depth must be >= 1, got 0"),
        (["--set", "search.category_prior=-1"], "search.category_prior must be a number >= 0"),
        (["--set", "max_upload_mb=0"], "max_upload_mb must be a positive number of MB"),
        (["--category-prior", "-1"], "--category-prior must be a number >= 0, got -1.0"),
        (["--port", "0"], "--port must be 1..65535, got 0"),
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--set", "port"], "not KEY=VALUE"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_serve_bad_settings_exit_2_naming_the_key_or_flag(fake_index, capsys, served_config, args, message):
    assert cli.main(["serve", "--store", f"faiss:{fake_index}", "--model", "no-model", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vsearch serve: error: ") and message in err[0], err
    assert served_config == []


def test_serve_port_in_use_exits_2_before_loading_the_model(fake_index, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        assert cli.main(["serve", "--store", f"faiss:{fake_index}", "--model", "no-model", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], err
    assert time.monotonic() - start < 5


def test_serve_says_once_at_start_when_the_calibration_was_fitted_on_another_road(tmp_path, monkeypatch, capsys):
    from fake_server import ColourEmbedder, write_catalog

    from vsearch.catalog.calibration import calibrate_catalog
    from vsearch.stores import open_store
    from vsearch.web import server

    index = write_catalog(tmp_path)
    store = open_store(f"faiss:{index}")
    calibration = calibrate_catalog(store, ColourEmbedder(), photos=12, log=lambda _: None)
    store.set_calibration({**calibration, "road": {"category": "auto", "rerank": True, "regions": "none"}})
    store.close()
    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    monkeypatch.setattr(server, "serve", lambda app, sock, log_level="info": sock.close())  # started, not served
    for preset, noted in (("default", False), ("thorough", True)):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = ["serve", "--store", f"faiss:{index}", "--model", "fake", "--port", str(port), "--preset", preset]
        assert cli.main(args) == 0
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if "calibration was fitted on" in line]
        assert len(notes) == noted, err
    assert notes[0] == (
        "vsearch: note: the catalog's calibration was fitted on searches with regions none; this server searches "
        "with regions centre, whose scores it was not fitted on: calibrate again with the serving settings "
        "(vsearch calibrate --queries ... with the same --preset/--set)"
    )


def test_vsearch_serve_serves_writes_and_takes_in_other_writers(smoke_index, smoke_run, tmp_path):
    """`vsearch serve` as an operator runs it: serves, takes a product write with its token, and
    picks up `vsearch index remove` from another process."""
    import signal
    import subprocess
    import sys

    import httpx

    model, index = smoke_index
    local = copy_store(index, tmp_path / "store")
    token = tmp_path / "token.txt"
    token.write_text("let-me-in\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vsearch",
            "serve",
            "--model",
            str(model),
            "--store",
            f"faiss:{local}",
            "--port",
            str(port),
            "--reload-interval",
            "0.2",
            "--admin-token-file",
            str(token),
            "--media",
            str(tmp_path / "media"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "vsearch serve did not start"
            try:
                health = httpx.get(url + "/healthz", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        photo = sorted((smoke_run["data"] / "validation" / "blue").glob("*.jpg"))[0].read_bytes()
        r = httpx.put(
            url + "/api/products/new-1",
            files={"files": ("new.jpg", photo)},
            data={"attributes": '{"title": "New"}', "category": "blue"},
            headers={"Authorization": "Bearer let-me-in"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        found = httpx.post(url + "/api/search", files={"file": ("q.jpg", photo)}, data={"k": "1"}, timeout=60)
        assert found.json()["matches"][0]["product_id"] == "new-1"
        assert list((tmp_path / "media").rglob("*.jpg"))

        gone = sorted(p.product_id for p in catalog_products(local) if p.product_id != "new-1")[0]
        assert httpx.get(url + "/api/products/" + gone).status_code == 200
        assert cli.main(["index", "remove", gone, "--store", f"faiss:{local}"]) == 0
        deadline = time.monotonic() + 10
        while httpx.get(url + "/api/products/" + gone).status_code != 404:
            assert time.monotonic() < deadline, "the removed product was still served after 10 s"
            time.sleep(0.1)
        assert httpx.get(url + "/healthz").json()["products"] == health["products"]  # one more, one less
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and "Traceback" not in out, out  # Ctrl-C stops it cleanly
    assert f"serving http://127.0.0.1:{port}/" in out and "writes on" in out and "let-me-in" not in out


def catalog_products(path) -> list:
    from vsearch.stores import open_store

    store = open_store(f"faiss:{path}")
    try:
        return list(store.products())
    finally:
        store.close()
