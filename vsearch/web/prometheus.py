"""The web server's Prometheus metrics (``GET /metrics``) and the middleware that counts requests.

Each app has a registry of its own (:class:`ServerMetrics`): requests by route template,
method and status; request latency by route; the latency of a search's decode, embed and
search steps (:func:`timed`); the decode budget (capacity, bytes in flight, waiting photos,
refusals, time waited); the catalog's size, load time and reloads; the model fingerprint.
Label values stay bounded: a path that matches no route is ``unmatched``, an unknown
method ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Seconds: from a small photo's decode (~1 ms) to a 40-Mpx one's (several seconds).
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")  # others are counted as "other"


class ServerMetrics:
    """The app's metrics, over ``live`` (a :class:`vsearch.web.live.LiveSearcher`) and ``budget``."""

    def __init__(self, live, budget):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "vsearch_http_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "vsearch_http_request_duration_seconds",
            "HTTP request latency by route",
            ("route",),
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "vsearch_search_step_seconds",
            "Latency of the steps of a search: decode, embed, search",
            ("step",),
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        Gauge("vsearch_decode_budget_bytes", "Decoded bytes allowed in flight across requests", registry=registry).set(
            budget.capacity
        )
        Gauge("vsearch_decode_in_flight_bytes", "Decoded bytes in flight now", registry=registry).set_function(
            lambda: budget.in_flight
        )
        Gauge(
            "vsearch_decode_waiting_requests", "Photos waiting for the decode budget now", registry=registry
        ).set_function(lambda: budget.waiting)
        self.refusals = Counter(
            "vsearch_decode_refusals",
            "Photos refused by the decode budget: busy (503) or too_large (422, over the whole budget)",
            ("reason",),
            registry=registry,
        )
        self.decode_wait_seconds = Histogram(
            "vsearch_decode_wait_seconds", "Time waited for the decode budget", buckets=STAGE_BUCKETS, registry=registry
        )
        Gauge("vsearch_catalog_products", "Products in the catalog being served", registry=registry).set_function(
            lambda: live.current.store.count()[0]
        )
        Gauge("vsearch_catalog_photos", "Photos (vectors) in the catalog being served", registry=registry).set_function(
            lambda: live.current.store.count()[1]
        )
        self.reloads = Counter(
            "vsearch_catalog_reloads",
            "Store refreshes that changed the catalog, and refreshes or compactions that failed",
            ("outcome",),
            registry=registry,
        )
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)  # present from the start, at 0
        for reason in ("busy", "too_large"):
            self.refusals.labels(reason)
        Gauge(
            "vsearch_catalog_loaded_timestamp_seconds", "When the catalog being served was loaded", registry=registry
        ).set_function(lambda: live.loaded_at)
        searcher = live.current
        Info("vsearch_model", "The embedding model", registry=registry).info(
            {
                "fingerprint": str(searcher.store.fingerprint),
                "dim": str(searcher.store.dim),
                "image_size": str(int(searcher.embedder.image_size)),
            }
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def timed(histogram, func, *args):
    """``func(*args)``, its duration observed in ``histogram`` (also when it raises)."""
    start = time.perf_counter()
    try:
        return func(*args)
    finally:
        histogram.observe(time.perf_counter() - start)


class MetricsMiddleware:
    """Counts every request by route template, method and status, and times it."""

    def __init__(self, app, metrics: ServerMetrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts
        start = time.perf_counter()

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_label(self.routes(), scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)


def _route_label(routes, scope) -> str:
    """The template of the route a request matched (bounded label values), or ``unmatched``.

    The router leaves the route it chose in the scope; a request it never saw (a HEAD,
    answered through a GET of its own scope) is matched again here.
    """
    from starlette.routing import Match

    chosen = scope.get("route")
    if getattr(chosen, "path_format", None):
        return str(chosen.path_format)
    probe = {**scope, "method": "GET" if scope["method"] == "HEAD" else scope["method"]}
    for route in _flat(routes):
        match, _ = route.matches(probe)
        if match != Match.NONE:
            return str(getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched")
    return "unmatched"


def _flat(routes):
    """``routes`` with each included router replaced by its own routes (FastAPI keeps an
    ``include_router``'s routes in the router it included)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route
