"""/metrics: what a scrape holds after a few requests, and label values that stay bounded."""

from __future__ import annotations

from fake_server import metrics_of, photo_of, post, sample
from fastapi.testclient import TestClient

from vsearch.config import MB, ServerConfig
from vsearch.web.app import create_app


def test_metrics_scrape(fake_searcher):
    app = create_app(fake_searcher, ServerConfig(decode_budget_mb=123_456_789 / MB))
    with TestClient(app) as c:
        assert post(c, photo_of(fake_searcher, "red/1"), k=2).status_code == 200
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
    assert sample(families, "vsearch_catalog_products") == fake_searcher.store.count()[0] == 12
    assert sample(families, "vsearch_catalog_photos") == fake_searcher.store.count()[1] == 15
    assert sample(families, "vsearch_catalog_reloads_total", outcome="ok") == 0
    assert (
        sample(families, "vsearch_model_info", fingerprint=fake_searcher.store.fingerprint, dim="8", image_size="16")
        == 1
    )


def test_metrics_label_values_stay_bounded(fake_client):
    """Paths and methods a client invents do not become label values."""
    for i in range(5):
        fake_client.get(f"/random/{i}")
        fake_client.request("BREW", "/healthz")
    families = metrics_of(fake_client)
    routes = {s.labels["route"] for s in families["vsearch_http_requests"]}
    methods = {s.labels["method"] for s in families["vsearch_http_requests"]}
    assert not any(r.startswith("/random") for r in routes) and "BREW" not in methods and "other" in methods
