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
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Decided at collection, before the session's smoke model is built for nothing.
if not Path(CHROMIUM).is_file():
    _MISSING = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VSEARCH_CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(_MISSING + "; CI must install it", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def page_url(smoke_index):
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import SavedModelEmbedder
    from vsearch.stores import open_store
    from vsearch.web.app import create_app
    from vsearch.web.server import BackgroundServer

    model, index = smoke_index
    with BackgroundServer(create_app(Searcher(SavedModelEmbedder(model), open_store(f"faiss:{index}")))) as server:
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
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)", timeout=30_000)
        widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == k and all(w > 0 for w in widths), widths
        page.select_option("#category", "green")  # changing the filter searches again
        page.wait_for_function(
            "[...document.querySelectorAll('#results .badge')].every(b => b.textContent === 'green')", timeout=30_000
        )
        assert page.eval_on_selector_all("#results .card", "els => els.length") == k
        assert page.text_content("#status").startswith(f"{k} products")
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
def fake_url(fake_index):
    """A server over the fake model's catalog, its answers carrying a verdict when the top score
    is near 1 (tests/fake_server.py): the API docs and the box need no trained model."""
    from fake_server import load_searcher

    from vsearch.web.app import create_app
    from vsearch.web.server import BackgroundServer

    with BackgroundServer(create_app(load_searcher(fake_index, verdicts=True))) as server:
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
        page.wait_for_function(
            "() => document.body.innerText.includes('Search the catalog with a photo')", timeout=30_000
        )
        assert "/api/items/" in page.inner_text("body")
        assert not elsewhere, elsewhere
    finally:
        page.close()


# ---------------------------------------------------------------- a box on the photo, the verdict

CARD_IDS = "els => els.map(e => e.querySelector('img').getAttribute('src'))"


def drag(page, start, end, touch: bool = False) -> None:
    """Drags on the query photo from ``start`` to ``end`` (fractions of it), by mouse or by finger."""
    rect = page.locator("#preview").bounding_box()
    (x0, y0), (x1, y1) = [(rect["x"] + fx * rect["width"], rect["y"] + fy * rect["height"]) for fx, fy in (start, end)]
    steps = [(x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8) for i in range(1, 9)]
    if not touch:
        page.mouse.move(x0, y0)
        page.mouse.down()
        for x, y in steps:
            page.mouse.move(x, y)
        page.mouse.up()
        return
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    for x, y in steps:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def searched(page, action):
    """Runs ``action`` and returns the JSON of the search it makes once the page has drawn it."""
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as response:
        action()
    body = response.value.json()
    page.wait_for_function("n => document.querySelectorAll('#results .card').length === n", arg=len(body["matches"]))
    page.wait_for_function("() => !document.querySelector('#status').textContent.startsWith('Searching')")
    return body


@pytest.mark.parametrize("touch", [False, True], ids=["mouse", "touch"])
def test_a_box_dragged_on_the_photo_searches_that_part(browser, fake_url, fake_searcher, tmp_path, touch):
    from fake_server import side_by_side
    from PIL import Image

    canvas = tmp_path / "canvas.png"  # a red and a blue catalog photo side by side
    Image.fromarray(side_by_side(fake_searcher, ["red/1", "blue/2"])).save(canvas)
    page = browser.new_page(viewport={"width": 1200, "height": 800}, has_touch=touch)
    try:
        page.goto(fake_url + "/")
        page.fill("#k", "4")
        page.locator("#k").blur()  # its change event now, not when a later click takes the focus
        whole = searched(page, lambda: page.set_input_files("#file", str(canvas)))
        assert whole["box"] is None and "match" not in whole
        assert page.is_hidden("#verdict") and page.is_hidden("#box") and page.is_hidden("#clearbox")
        cards = page.eval_on_selector_all("#results .card", CARD_IDS)
        page.evaluate(
            "() => { window.pointers = []; "
            "addEventListener('pointerdown', (e) => pointers.push(e.pointerType), true); }"
        )

        # the left half, around the red photo: its search, the box on the photo, the banner
        part = searched(page, lambda: drag(page, (0.03, 0.05), (0.46, 0.95), touch))
        assert page.evaluate("() => pointers") == ["touch" if touch else "mouse"]
        assert part["box"] == pytest.approx([0.03, 0.05, 0.46, 0.95], abs=0.02)
        assert part["match"]["verdict"] == "exact"
        assert page.eval_on_selector_all("#results .card", CARD_IDS) != cards
        assert page.eval_on_selector_all("#results .badge", "els => els.map(e => e.textContent)") == ["red"] * 4
        page.wait_for_selector("#verdict", state="visible")
        assert page.text_content("#verdict strong") == "This is it"
        likely = f"{round(100 * part['match']['confidence'])}% likely that #1 is the very item"
        assert page.text_content("#verdict span") == likely
        photo, drawn = page.locator("#preview").bounding_box(), page.locator("#box").bounding_box()
        assert drawn["x"] == pytest.approx(photo["x"] + 0.03 * photo["width"], abs=4)
        assert drawn["width"] == pytest.approx(0.43 * photo["width"], abs=6)
        assert drawn["height"] == pytest.approx(0.90 * photo["height"], abs=6)
        assert "in the box" in page.text_content("#status")

        # a tap is not a box: nothing is searched and the box stays
        rect = page.locator("#preview").bounding_box()
        if touch:
            page.touchscreen.tap(rect["x"] + 10, rect["y"] + 10)
        else:
            page.mouse.click(rect["x"] + 10, rect["y"] + 10)
        page.wait_for_timeout(300)
        assert page.is_visible("#box") and page.is_visible("#verdict")

        # the whole photo again
        again = searched(page, lambda: page.click("#clearbox"))
        assert again["box"] is None and page.is_hidden("#box") and page.is_hidden("#verdict")
        assert page.eval_on_selector_all("#results .card", CARD_IDS) == cards
        assert not page.is_visible("#error")
    finally:
        page.close()


VERDICT_ANSWERS = [
    ({"verdict": "exact", "confidence": 0.973}, "This is it", "97%"),
    ({"verdict": "similar", "confidence": 0.41}, "Similar items", "41%"),
    ({"verdict": "none", "confidence": 0.03}, "We could not find this item", "3%"),
    (None, None, None),
    ({"verdict": "maybe", "confidence": 0.5}, None, None),
]


def test_the_banner_says_what_the_verdict_means(browser, fake_url, fake_searcher):
    """Each verdict an answer may carry, and none, as the page shows it (answers made up here)."""
    import json

    answer = {
        "category": {"mode": "any", "predicted": None, "confidence": None, "applied": False},
        "matches": [{"rank": 1, "id": "red/1", "score": 0.9, "category": "red", "image_url": "/api/items/red/1/image"}],
        "box": None,
        "elapsed_ms": 1.0,
    }
    current = {}
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.route(
        "**/api/search",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(current["answer"])),
    )
    try:
        page.goto(fake_url + "/")
        for match, title, confidence in VERDICT_ANSWERS:
            current["answer"] = {**answer, **({"match": match} if match else {})}
            if not page.locator("#preview").get_attribute("src"):
                action = lambda: page.set_input_files("#file", str(fake_searcher.image_path("red/1")))  # noqa: E731
            else:
                action = lambda: page.click("#go")  # noqa: E731
            searched(page, action)
            if title is None:
                assert page.is_hidden("#verdict"), match
            else:
                assert page.is_visible("#verdict")
                assert page.text_content("#verdict strong") == title
                assert page.text_content("#verdict span") == f"{confidence} likely that #1 is the very item"
                assert page.get_attribute("#verdict", "class") == f"verdict {match['verdict']}"
    finally:
        page.close()


def test_a_verified_match_is_outlined_on_the_photo(browser, fake_url, fake_searcher):
    """The outline an answer carries for its verified match (made up here) is drawn where it says on
    the photo, its card says so, and an answer without one draws none."""
    import json

    corners = [[0.1, 0.2], [0.8, 0.25], [0.75, 0.9], [0.15, 0.85]]
    first = {"rank": 1, "id": "red/1", "score": 0.9, "category": "red", "image_url": "/api/items/red/1/image"}
    second = {**first, "rank": 2, "id": "red/2", "image_url": "/api/items/red/2/image", "inliers": 3}
    answer = {"category": {"mode": "any"}, "matches": [{**first, "inliers": 41, "outline": corners}, second]}
    answer.update(box=None, elapsed_ms=1.0)
    current = {"answer": answer}
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.route(
        "**/api/search",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(current["answer"])),
    )
    try:
        page.goto(fake_url + "/")
        searched(page, lambda: page.set_input_files("#file", str(fake_searcher.image_path("red/1"))))
        assert page.is_visible("#outline")
        photo, drawn = page.locator("#preview").bounding_box(), page.locator("#outline polygon").bounding_box()
        assert drawn["x"] == pytest.approx(photo["x"] + 0.1 * photo["width"], abs=3)
        assert drawn["y"] == pytest.approx(photo["y"] + 0.2 * photo["height"], abs=3)
        assert drawn["width"] == pytest.approx(0.7 * photo["width"], abs=4)
        assert drawn["height"] == pytest.approx(0.7 * photo["height"], abs=4)
        notes = page.eval_on_selector_all("#results .card", "els => els.map(e => e.querySelector('.verified'))")
        assert notes[1] is None
        assert page.text_content("#results .card .verified") == "\u2713 seen in your photo (41 points)"
        current["answer"] = {**answer, "matches": [first, second]}
        searched(page, lambda: page.click("#go"))
        assert page.is_hidden("#outline") and page.locator("#results .card .verified").count() == 0
    finally:
        page.close()


def test_the_part_of_the_photo_that_gave_the_answer_is_drawn_dashed(browser, fake_url, fake_searcher):
    """The region an answer carries (made up here) is drawn dashed where it says, beside the
    verified match's outline; an answer without one draws none, and a box drawn is still the box."""
    import json

    first = {"rank": 1, "id": "red/1", "score": 0.9, "category": "red", "image_url": "/api/items/red/1/image"}
    corners = [[0.2, 0.2], [0.7, 0.2], [0.7, 0.8], [0.2, 0.8]]
    answer = {"category": {"mode": "any"}, "matches": [{**first, "inliers": 30, "outline": corners}], "box": None}
    answer.update(region=[0.1, 0.1, 0.9, 0.9], elapsed_ms=1.0)
    current = {"answer": answer}
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.route(
        "**/api/search",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(current["answer"])),
    )
    try:
        page.goto(fake_url + "/")
        searched(page, lambda: page.set_input_files("#file", str(fake_searcher.image_path("red/1"))))
        assert page.is_visible("#region") and page.is_visible("#outline") and page.is_hidden("#box")
        assert page.eval_on_selector("#region", "e => getComputedStyle(e).borderTopStyle") == "dashed"
        photo, drawn = page.locator("#preview").bounding_box(), page.locator("#region").bounding_box()
        assert drawn["x"] == pytest.approx(photo["x"] + 0.1 * photo["width"], abs=3)
        assert drawn["y"] == pytest.approx(photo["y"] + 0.1 * photo["height"], abs=3)
        assert drawn["width"] == pytest.approx(0.8 * photo["width"], abs=4)
        assert drawn["height"] == pytest.approx(0.8 * photo["height"], abs=4)
        assert "found in the dashed part" in page.text_content("#status")
        current["answer"] = {**answer, "region": None}
        searched(page, lambda: page.click("#go"))
        assert page.is_hidden("#region") and page.is_visible("#outline")
        assert "dashed" not in page.text_content("#status")
    finally:
        page.close()


# ---------------------------------------------------------------- products and filters

CARDS = """els => els.map(e => ({product: e.dataset.product, src: e.querySelector('img').getAttribute('src'),
                               title: e.querySelector('.title').textContent,
                               brand: (e.querySelector('.brand') || {}).textContent || null,
                               price: (e.querySelector('.price') || {}).textContent || null}))"""


def test_products_are_grouped_and_the_filters_change_them(browser, fake_url, fake_searcher):
    """Cards are products (one per product, with the photo that matched); checking a brand, a price
    bound and a yes/no narrows them to what the catalog says passes."""
    from vsearch.catalog.products import image_url

    products = {p.product_id: p for p in fake_searcher.store.products()}
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(fake_url + "/")
        assert page.eval_on_selector_all("#filters .facet", "els => els.map(e => e.dataset.name)") == [
            "price",
            "brand",
            "in_stock",
        ]
        page.fill("#k", "50")
        page.locator("#k").blur()
        body = searched(page, lambda: page.set_input_files("#file", str(fake_searcher.image_path("red/0/back"))))
        cards = page.eval_on_selector_all("#results .card", CARDS)
        assert len(cards) == len(products) == len({c["product"] for c in cards})  # 15 photos, 12 products
        first = products["red/0"]
        assert cards[0] == {
            "product": "red/0",
            "src": image_url("red/0/back"),
            "title": first.attributes["title"],
            "brand": first.attributes["brand"],
            "price": f"{first.attributes['price']:.2f}",
        }
        assert body["filter"] == {} and "filtered" not in page.text_content("#status")

        zeta = searched(page, lambda: page.check('#filters .facet[data-name="brand"] input[value="zeta"]'))
        assert set(zeta["filter"]) == {"brand"}
        cards = page.eval_on_selector_all("#results .card", CARDS)
        assert {c["product"] for c in cards} == {p for p, v in products.items() if v.attributes["brand"] == "zeta"}
        assert {c["brand"] for c in cards} == {"zeta"} and "filtered" in page.text_content("#status")

        bound = page.locator('#filters .facet[data-name="price"] input[data-op="lte"]')
        cheap = searched(page, lambda: (bound.fill("20"), bound.blur()))
        assert cheap["filter"]["price"] == {"lte": 20}
        assert {c["product"] for c in page.eval_on_selector_all("#results .card", CARDS)} == {
            p for p, v in products.items() if v.attributes["brand"] == "zeta" and v.attributes["price"] <= 20
        }

        stocked = searched(page, lambda: page.select_option('#filters .facet[data-name="in_stock"] select', "true"))
        expected = {
            p
            for p, v in products.items()
            if v.attributes["brand"] == "zeta" and v.attributes["price"] <= 20 and v.attributes["in_stock"]
        }
        assert {m["product_id"] for m in stocked["matches"]} == expected
        if not expected:
            assert page.text_content("#results .empty") == "No matching products."

        again = searched(page, lambda: page.select_option('#filters .facet[data-name="in_stock"] select', ""))
        assert set(again["filter"]) == {"brand", "price"}
        assert not page.is_visible("#error")
    finally:
        page.close()
