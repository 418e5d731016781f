"""The decode budget: its accounting and waiting, and what the app answers with it."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fake_server import metrics_of, photo_of, png, post, sample
from fastapi.testclient import TestClient

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
    with TestClient(create_app(fake_searcher, decode_budget_bytes=cost - 1)) as c:
        r = post(c, big, name="big.png")
        assert r.status_code == 422 and "decode budget" in r.json()["error"] and r.json()["error"].startswith("big.png")
        assert post(c, photo_of(fake_searcher, "red/1")).status_code == 200  # small photos still fit
        assert sample(metrics_of(c), "vsearch_decode_refusals_total", reason="too_large") == 1
    with TestClient(create_app(fake_searcher, decode_budget_bytes=cost)) as c:
        assert post(c, big).status_code == 200


def test_a_box_costs_the_whole_photo(fake_searcher):
    """The box is cut from the decoded photo, so a small box does not make a large photo fit."""
    big = png(np.full((500, 500, 3), 128, np.uint8))
    cost = image_header(big).decoded_bytes
    with TestClient(create_app(fake_searcher, decode_budget_bytes=cost - 1)) as c:
        r = post(c, big, name="big.png", box="0,0,0.1,0.1")
        assert r.status_code == 422 and "decode budget" in r.json()["error"], r.text
    with TestClient(create_app(fake_searcher, decode_budget_bytes=cost)) as c:
        assert post(c, big, box="0,0,0.1,0.1").json()["box"] == [0, 0, 0.1, 0.1]


def test_sixteen_bit_photos_count_at_their_decoded_size(fake_searcher):
    """A 16-bit gray PNG costs more than an 8-bit one of the same size; the budget sees it."""
    gray8 = png(np.full((600, 600), 90, np.uint8))
    gray16 = png(np.full((600, 600), 90 * 257, np.uint16))
    cost8, cost16 = image_header(gray8).decoded_bytes, image_header(gray16).decoded_bytes
    assert cost16 > cost8
    with TestClient(create_app(fake_searcher, decode_budget_bytes=cost8)) as c:
        assert post(c, gray8).status_code == 200
        assert post(c, gray16).status_code == 422


def test_busy_budget_is_503_with_retry_after(fake_searcher):
    app = create_app(fake_searcher, decode_wait_s=0.3)
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
