"""The upload page in a real headless Chromium against uvicorn on loopback.

Needs the system Chromium (Debian: ``apt-get install chromium``); Playwright never
downloads a browser here. Without it the test is skipped, except under CI (``CI`` set),
where a missing browser is a failure: CI must install it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("VSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Offline and quiet: no GPU, no sandbox (containers), nothing fetched in the background.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Decided at collection, before the session's smoke model is built for nothing.
if not Path(CHROMIUM).is_file():
    _MISSING = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VSEARCH_CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(_MISSING + "; CI must install it", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def page_url(smoke_index):
    from vsearch.embedder import SavedModelEmbedder
    from vsearch.index import Catalog
    from vsearch.search import Searcher
    from vsearch.app import create_app
    from vsearch.serve import BackgroundServer

    model, index = smoke_index
    with BackgroundServer(create_app(Searcher(SavedModelEmbedder(model), Catalog.load(index)))) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_upload_shows_a_grid_of_loaded_matches(browser, page_url, smoke_run, tmp_path):
    k = 6
    photo = sorted((smoke_run["data"] / "validation" / "green").glob("*.jpg"))[0]
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        page.goto(page_url + "/")
        page.fill("#k", str(k))
        page.set_input_files("#file", str(photo))
        page.wait_for_function(f"document.querySelectorAll('#results .card').length === {k}", timeout=30_000)
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)",
                               timeout=30_000)
        widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == k and all(w > 0 for w in widths), widths
        page.select_option("#category", "green")  # changing the filter searches again
        page.wait_for_function("[...document.querySelectorAll('#results .badge')].every(b => b.textContent === 'green')",
                               timeout=30_000)
        assert page.eval_on_selector_all("#results .card", "els => els.length") == k
        assert page.text_content("#status").startswith(f"{k} matches")
        assert not page.is_visible("#error")

        # an unusable file: the error is shown, the grid cleared, and the next search works again
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error.shown", timeout=30_000)
        assert "not a recognised image" in page.text_content("#error")
        assert page.eval_on_selector_all("#results .card", "els => els.length") == 0
        page.set_input_files("#file", str(photo))
        page.wait_for_function(f"document.querySelectorAll('#results .card').length === {k}", timeout=30_000)
        assert not page.is_visible("#error")
    finally:
        page.close()


@pytest.fixture(scope="module")
def fake_url(tmp_path_factory):
    """A server over the fake model's catalog: the API docs need no trained model."""
    from fake_server import load_searcher, write_catalog
    from vsearch.app import create_app
    from vsearch.serve import BackgroundServer

    with BackgroundServer(create_app(load_searcher(write_catalog(tmp_path_factory.mktemp("fake"))))) as server:
        yield server.url


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_with_nothing_from_elsewhere(browser, fake_url, path):
    """Swagger UI and ReDoc draw the API from this server alone: every other host is cut off."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    elsewhere = []

    def only_this_server(route):
        url = route.request.url
        if url.startswith((fake_url + "/", "data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    try:
        page.goto(fake_url + path)
        # A function, not an expression: Playwright evals an expression in the page, which the
        # pages' Content-Security-Policy forbids.
        page.wait_for_function("() => document.body.innerText.includes('Search the catalog with a photo')",
                               timeout=30_000)
        assert "/api/items/" in page.inner_text("body")
        assert not elsewhere, elsewhere
    finally:
        page.close()
