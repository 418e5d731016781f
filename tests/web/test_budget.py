"""The decode budget: its accounting and waiting, and what the app answers with it."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from fake_server import metrics_of, photo_of, png, post, sample
from fastapi.testclient import TestClient
from PIL import Image

from vsearch.config import MB, ServerConfig
from vsearch.images import image_header
from vsearch.web.app import create_app
from vsearch.web.budget import DecodeBudget


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
    start = time.monotonic()
    threading.Timer(0.2, budget.release, args=(80,)).start()  # from another thread, like a worker
    assert asyncio.run(budget.acquire(50, wait_s=5))
    # Woken by the release, not after the 5 s wait (the bounds leave room for a busy machine).
    assert 0.2 <= time.monotonic() - start < 2
    start = time.monotonic()
    assert not asyncio.run(budget.acquire(60, wait_s=0.2))  # 50 still held
    # It waited (the event loop's timer may fire a clock tick early), then gave up.
    assert 0.15 <= time.monotonic() - start < 2
    start = time.monotonic()
    assert not asyncio.run(budget.acquire(101, wait_s=5))  # never fits: no wait at all
    assert time.monotonic() - start < 1 and budget.in_flight == 50 and budget.waiting == 0


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


def test_photo_over_the_whole_budget_is_422(fake_searcher):
    big = png(np.full((500, 500, 3), 128, np.uint8))
    cost = image_header(big).decoded_bytes
    with TestClient(create_app(fake_searcher, ServerConfig(decode_budget_mb=(cost - 1) / MB))) as c:
        r = post(c, big, name="big.png")
        assert r.status_code == 422 and "decode budget" in r.json()["error"] and r.json()["error"].startswith("big.png")
        assert post(c, photo_of(fake_searcher, "red/1")).status_code == 200  # small photos still fit
        assert sample(metrics_of(c), "vsearch_decode_refusals_total", reason="too_large") == 1
    with TestClient(create_app(fake_searcher, ServerConfig(decode_budget_mb=cost / MB))) as c:
        assert post(c, big).status_code == 200


def test_a_box_costs_the_whole_photo(fake_searcher):
    """The box is cut from the decoded photo, so a small box does not make a large photo fit."""
    big = png(np.full((500, 500, 3), 128, np.uint8))
    cost = image_header(big).decoded_bytes
    with TestClient(create_app(fake_searcher, ServerConfig(decode_budget_mb=(cost - 1) / MB))) as c:
        r = post(c, big, name="big.png", box="0,0,0.1,0.1")
        assert r.status_code == 422 and "decode budget" in r.json()["error"], r.text
    with TestClient(create_app(fake_searcher, ServerConfig(decode_budget_mb=cost / MB))) as c:
        assert post(c, big, box="0,0,0.1,0.1").json()["box"] == [0, 0, 0.1, 0.1]


def test_sixteen_bit_photos_count_at_their_decoded_size(fake_searcher):
    """A 16-bit gray PNG costs more than an 8-bit one of the same size; the budget sees it."""
    gray8 = png(np.full((600, 600), 90, np.uint8))
    gray16 = png(np.full((600, 600), 90 * 257, np.uint16))
    cost8, cost16 = image_header(gray8).decoded_bytes, image_header(gray16).decoded_bytes
    assert cost16 > cost8
    with TestClient(create_app(fake_searcher, ServerConfig(decode_budget_mb=cost8 / MB))) as c:
        assert post(c, gray8).status_code == 200
        assert post(c, gray16).status_code == 422


def test_busy_budget_is_503_with_retry_after(fake_searcher):
    app = create_app(fake_searcher, ServerConfig(decode_wait_s=0.3))
    budget = app.state.decode_budget
    with TestClient(app) as c:
        assert budget.try_acquire(budget.capacity)  # other requests hold all of it
        start = time.monotonic()
        r = post(c, photo_of(fake_searcher, "red/1"))
        assert r.status_code == 503 and "busy" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - start >= 0.3
        assert c.get("/healthz").status_code == 200  # only decoding waits
        budget.release(budget.capacity)
        assert post(c, photo_of(fake_searcher, "red/1")).status_code == 200
        families = metrics_of(c)
        assert sample(families, "vsearch_decode_refusals_total", reason="busy") == 1
        assert sample(families, "vsearch_http_requests_total", route="/api/search", status="503") == 1
    assert budget.in_flight == 0


def test_budget_is_released_when_decoding_fails(fake_searcher):
    app = create_app(fake_searcher)
    truncated = png(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))[:5000]
    with TestClient(app) as c:
        for _ in range(3):
            assert post(c, truncated).status_code == 422
    assert app.state.decode_budget.in_flight == 0


def test_budget_is_released_before_the_search_steps(fake_searcher, monkeypatch):
    """Decoding, the model call and the store search run in one worker thread; only decoding holds the budget."""
    app = create_app(fake_searcher)
    budget = app.state.decode_budget
    seen = []
    embed = fake_searcher.embedder.embed_pixels

    def watched(pixels):
        seen.append((budget.in_flight, threading.current_thread().name))
        return embed(pixels)

    monkeypatch.setattr(fake_searcher.embedder, "embed_pixels", watched)
    with TestClient(app) as c:
        r = post(c, photo_of(fake_searcher, "red/1"))
    assert r.status_code == 200 and r.json()["matches"]
    assert seen and seen[0][0] == 0 and seen[0][1] != threading.main_thread().name


def test_a_worker_thread_holds_the_budget_waiting_for_a_release():
    budget = DecodeBudget(100)
    assert budget.try_acquire(80)
    threading.Timer(0.2, budget.release, args=(80,)).start()
    start = time.monotonic()
    with budget.hold(50, wait_s=5) as admitted:
        assert admitted and budget.in_flight == 50
        assert 0.15 <= time.monotonic() - start < 2  # woken by the release, not after 5 s
    assert budget.in_flight == 0
    assert budget.try_acquire(80)
    start = time.monotonic()
    with budget.hold(50, wait_s=0.2) as admitted:
        assert not admitted and budget.in_flight == 80  # it waited, gave up, and holds nothing
    assert 0.15 <= time.monotonic() - start < 2
    with budget.hold(101, wait_s=5) as admitted:  # never fits: no wait
        assert not admitted
    budget.release(80)


# ---------------------------------------------------------------- the re-rank's catalog photos (#34.12)


def textured(seed: int, size: int = 192) -> np.ndarray:
    """A busy picture the re-rank finds corners in (as tests/catalog/test_rerank.py's)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y, w, h = (int(v) for v in rng.integers(0, size, 2).tolist() + rng.integers(5, 40, 2).tolist())
        cv2.rectangle(img, (x, y), (x + w, y + h), colour, -1)
    return img


def seen_at_an_angle(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    corners = np.float32([[40, 30], [250, 55], [230, 230], [25, 200]])
    homography = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), corners)
    return cv2.warpPerspective(img, homography, (300, 260), borderValue=(200, 200, 200))


@pytest.fixture
def large_catalog(tmp_path):
    """A product whose only photo is a 12-megapixel JPEG, indexed without re-rank keypoints
    (as a catalog indexed before they were stored), and a small view of it as the query."""
    import cv2

    from vsearch.catalog.manifest import Photo
    from vsearch.stores import build_store

    face = textured(13)
    big = tmp_path / "large.jpg"
    Image.fromarray(cv2.resize(face, (4000, 3000), interpolation=cv2.INTER_LINEAR)).save(big, quality=85)
    other = tmp_path / "other.png"
    Image.fromarray(textured(14)).save(other)
    photos = [Photo("large", "large/0", str(big), "tops"), Photo("other", "other/0", str(other), "tops")]
    vectors = np.asarray([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    store = build_store(f"faiss:{tmp_path / 'c.vsi'}", photos, vectors, fingerprint="colour-v1")
    yield store, big, png(seen_at_an_angle(face))
    store.close()


class SharpColourEmbedder:
    """Mean colour as the vector; a model input large enough for the re-rank to find keypoints in."""

    image_size, dim, fingerprint = 256, 4, "colour-v1"

    def embed_pixels(self, pixels):
        mean = np.asarray(pixels, np.float32).mean(axis=(1, 2)) / 255.0
        out = np.concatenate([mean, np.full((len(mean), 1), 0.1, np.float32)], axis=1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def rerank_server(store, wait_s: float):
    """An app over ``store`` with a 64 MB decode budget; it re-ranks when a search asks (no
    keypoints are computed ahead at start: the search's own decode is what is measured)."""
    from vsearch.catalog.search import Searcher
    from vsearch.config import SearchConfig

    settings = SearchConfig(category="any", rerank=False)
    config = ServerConfig(search=settings, decode_budget_mb=64, decode_wait_s=wait_s)
    return create_app(Searcher(SharpColourEmbedder(), store, settings), config)


def test_the_rerank_decodes_a_large_catalog_photo_small_and_inside_the_budget(large_catalog, monkeypatch):
    """A 12-megapixel catalog photo would take ~250 MB to decode at full size, over the whole
    64 MB budget: the re-rank decodes it at 1/8 scale, and only once the budget holds its cost."""
    from vsearch.catalog import rerank
    from vsearch.catalog.rerank import draft_size
    from vsearch.config import RerankConfig

    store, big, query = large_catalog
    app = rerank_server(store, wait_s=2.0)
    budget = app.state.decode_budget
    assert app.state.live.current.decode_budget is budget
    assert image_header(big.read_bytes()).decoded_bytes > budget.capacity  # at full size it could never fit
    decoded = []
    real = rerank.decode_image
    monkeypatch.setattr(
        rerank, "decode_image", lambda *a, **k: decoded.append((budget.in_flight, real(*a, **k).shape)) or real(*a, **k)
    )
    view = np.asarray(Image.open(io.BytesIO(query)))
    wide = png(np.concatenate([view, np.full_like(view, 200)], axis=1))  # the view, then as much grey
    with TestClient(app) as c:
        r = post(c, query, k=2, rerank="true")
        boxed = post(c, wide, k=2, rerank="true", box="0,0,0.5,1")
    assert r.status_code == 200, r.text
    first = r.json()["matches"][0]
    assert first["product_id"] == "large" and first["inliers"] >= RerankConfig().min_inliers
    assert len(first["outline"]) == 4
    drafted = image_header(str(big), draft_size=draft_size(4000, 3000, RerankConfig().side))
    assert max(drafted.width, drafted.height) < 4000 / 3  # libjpeg at 1/4 or less: the longer side still >= side
    assert decoded == [(decoded[0][0], (drafted.height, drafted.width, 3))]  # not 3000 x 4000; once, then kept
    assert 0 < decoded[0][0] <= budget.capacity  # held in the budget while it was decoded
    assert budget.in_flight == 0
    # searched in a box, the outline is still in fractions of the whole photo: half as wide here
    outline = np.array(boxed.json()["matches"][0]["outline"])
    assert np.abs(outline - np.array(first["outline"]) * (0.5, 1)).max() < 0.02


def test_the_rerank_skips_a_catalog_photo_the_budget_cannot_take_in_time(large_catalog, monkeypatch):
    from vsearch.catalog import rerank

    store, big, query = large_catalog
    app = rerank_server(store, wait_s=0.3)
    budget = app.state.decode_budget
    decoded = []
    real = rerank.decode_image
    monkeypatch.setattr(
        rerank, "decode_image", lambda data, source, *a, **k: decoded.append(source) or real(data, source, *a, **k)
    )
    held = budget.capacity - 3 * MB  # another upload's decode: the query still fits, the catalog photo does not
    assert budget.try_acquire(held)
    with TestClient(app) as c:
        start = time.monotonic()
        r = post(c, query, k=2, rerank="true")
        waited = time.monotonic() - start
    assert r.status_code == 200 and r.json()["matches"][0]["product_id"] == "large"  # the cosine order, unverified
    assert "outline" not in r.json()["matches"][0] and r.json()["matches"][0]["inliers"] == 0
    assert 0.25 <= waited < 5  # it waited for the budget, then answered without it
    assert str(big) not in decoded  # and never decoded the large photo (the small one fitted)
    budget.release(held)
    assert budget.in_flight == 0


def budget_watched(monkeypatch, budget) -> list:
    """Every catalog photo the re-rank decodes: (its file name, the bytes the budget held
    then, the decoded shape)."""
    from vsearch.catalog import rerank

    decoded = []
    real = rerank.decode_image

    def watched(data, source, *args, **kwargs):
        pixels = real(data, source, *args, **kwargs)
        decoded.append((str(source).rsplit("/", 1)[-1], budget.in_flight, pixels.shape))
        return pixels

    monkeypatch.setattr(rerank, "decode_image", watched)
    return decoded


def test_the_start_up_pass_decodes_catalog_photos_small_and_inside_the_budget(large_catalog, monkeypatch):
    """The other road to a catalog photo: the keypoints a server computes when it starts."""
    from vsearch.catalog.rerank import draft_size
    from vsearch.catalog.search import Searcher
    from vsearch.config import RerankConfig, SearchConfig

    store, big, _ = large_catalog
    settings = SearchConfig(category="any", rerank=True)  # re-ranking by default: keypoints computed at start
    app = create_app(
        Searcher(SharpColourEmbedder(), store, settings), ServerConfig(search=settings, decode_budget_mb=64)
    )
    budget = app.state.decode_budget
    decoded = budget_watched(monkeypatch, budget)
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/healthz").json()["rerank_keypoints"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the start-up pass runs in the background
    drafted = image_header(str(big), draft_size=draft_size(4000, 3000, RerankConfig().side))
    assert sorted(name for name, _, _ in decoded) == ["large.jpg", "other.png"]
    assert all(held > 0 for _, held, _ in decoded)  # each decoded while the budget held its cost
    assert [shape for name, _, shape in decoded if name == "large.jpg"] == [(drafted.height, drafted.width, 3)]
    assert budget.in_flight == 0


def test_a_written_product_s_keypoints_are_decoded_small_and_inside_the_budget(tmp_path, monkeypatch):
    """The third road: a product write computes its photos' keypoints (after its own decode,
    which the decode budget admits as an upload's)."""
    import cv2

    from vsearch.catalog.manifest import Photo
    from vsearch.catalog.rerank import draft_size
    from vsearch.catalog.search import Searcher
    from vsearch.config import RerankConfig, SearchConfig
    from vsearch.stores import build_store

    Image.fromarray(textured(14)).save(tmp_path / "other.png")
    store = build_store(
        f"faiss:{tmp_path / 'c.vsi'}",
        [Photo("other", "other/0", str(tmp_path / "other.png"), "tops")],
        np.asarray([[0, 1, 0, 0]], np.float32),
        fingerprint="colour-v1",
    )
    large = io.BytesIO()
    Image.fromarray(cv2.resize(textured(13), (4000, 3000), interpolation=cv2.INTER_LINEAR)).save(
        large, format="JPEG", quality=85
    )
    settings = SearchConfig(category="any", rerank=False)
    config = ServerConfig(search=settings, decode_budget_mb=300, reload_interval_s=0)
    app = create_app(
        Searcher(SharpColourEmbedder(), store, settings), config, admin_token="t0ken", media_dir=tmp_path / "media"
    )
    budget = app.state.decode_budget
    decoded = budget_watched(monkeypatch, budget)
    with TestClient(app) as c:
        r = c.put(
            "/api/products/large",
            files=[("files", ("large.jpg", large.getvalue(), "image/jpeg"))],
            data={"category": "tops"},
            headers={"Authorization": "Bearer t0ken"},
        )
    assert r.status_code == 200, r.text
    side = draft_size(4000, 3000, RerankConfig().side)
    assert len(decoded) == 1 and decoded[0][1] > 0  # the stored photo, decoded while the budget held it
    assert max(decoded[0][2][:2]) < 4000 / 3 and min(decoded[0][2][:2]) >= side  # at 1/4 scale or less
    assert budget.in_flight == 0
    store.close()


def test_an_upload_whose_header_would_be_decoded_is_refused_unread(fake_searcher, monkeypatch):
    """The header is read before the budget admits a decode: an ICO (16x16 declared, any PNG
    inside) is decoded by Pillow to learn its size, so it is refused before that."""
    import struct

    from PIL import PngImagePlugin

    inner = png(np.full((1500, 2000, 3), 120, np.uint8))
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22) + inner
    opened = []
    real = PngImagePlugin.PngImageFile._open
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", lambda self: opened.append(1) or real(self))
    with TestClient(create_app(fake_searcher)) as c:
        r = post(c, ico, name="icon.ico")
    assert r.status_code == 422 and "not a recognised image format" in r.json()["error"], r.text
    assert opened == []  # the PNG inside was never opened, let alone decoded
