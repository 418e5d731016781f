"""The server's ASGI middleware, through the app over a fake model: HEAD, and API docs offline.

The body limit (413) is tested with the rest of the upload limits in test_serve.py.
"""

from __future__ import annotations

import re

import httpx
import pytest

from vsearch.web.app import create_app
from vsearch.web.server import BackgroundServer


@pytest.fixture(scope="module")
def server(fake_searcher):
    """uvicorn on loopback: what HEAD, percent-decoding and streaming really do."""
    with BackgroundServer(create_app(fake_searcher)) as s:
        yield s


# ---------------------------------------------------------------- HEAD


@pytest.mark.parametrize(
    "url", ["/", "/healthz", "/api/items/red/1", "/api/items/red/1/image", "/docs", "/openapi.json"]
)
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
def test_pages_reference_no_other_host(fake_client, page):
    r = fake_client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://", html), re.search(r".{40}https?://.{40}", html)
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) + re.findall(r"url\(([^)]+)\)", html)
    references += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)""", html)
    assert not [u for u in references if EXTERNAL.match(u)]
    for url in references:  # every asset the page loads is served here
        asset = fake_client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    if page in ("/docs", "/redoc"):  # what the bundles fetch by themselves stays here too
        policy = r.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "http" not in policy and "*" not in policy
    if page == "/docs":
        assert any(u.endswith("swagger-ui-bundle.js") for u in references)
    if page == "/redoc":
        assert any(u.endswith("redoc.standalone.js") for u in references)
        assert fake_client.get("/openapi.json").json()["info"]["title"] == "vsearch"
