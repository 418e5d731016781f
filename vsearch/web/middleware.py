"""The web server's ASGI middleware: a cap on request bodies, ``HEAD``, and the docs' policy.

Each wraps the app (``app.add_middleware(BodyLimitMiddleware, ...)``) and speaks plain
ASGI, so it sees every request, whatever route it reaches. Errors go out as the API's
JSON ``{"error": "..."}`` (:func:`error_response`). Counting requests for ``/metrics`` is
:class:`vsearch.web.prometheus.MetricsMiddleware`.
"""

from __future__ import annotations


def error_response(status: int, message: str, headers: dict | None = None):
    """The API's error: JSON ``{"error": message}`` with ``status``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


def megabytes(n: int) -> str:
    """A size as the server's messages say it: ``10.0 MB``, or bytes below a megabyte."""
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_body_bytes`` with 413 and ``message``, before or while reading.

    A declared ``Content-Length`` over the limit is refused without reading a byte; a body
    that grows past the limit (a lying or missing length, chunked uploads) is cut off at the
    first chunk over it, so an upload never costs more than the limit in memory or spool.
    ``routes``: ``(method, path prefix, limit, message)`` for requests allowed another limit
    (a product write carries several photos); the first that fits a request is its limit.
    """

    def __init__(
        self,
        app,
        max_body_bytes: int,
        message: str = "upload too large",
        routes: tuple[tuple[str, str, int, str], ...] = (),
    ):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.message = message
        self.routes = tuple((method, prefix, int(limit), text) for method, prefix, limit, text in routes)

    def limit_of(self, scope) -> tuple[int, str]:
        for method, prefix, limit, message in self.routes:
            if scope.get("method") == method and scope.get("path", "").startswith(prefix):
                return limit, message
        return self.max_body_bytes, self.message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, message = self.limit_of(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await error_response(413, message)(scope, receive, send)
        received, over, started = 0, False, False

        async def limited_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # FastAPI may turn the interrupted read into its own error: ours wins
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await error_response(413, message)(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HeadMiddleware:
    """``HEAD`` runs the ``GET`` route and sends its status and headers without the body.

    FastAPI routes answer only the methods they name, so ``HEAD`` (uptime checks) was 405.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class DocsPolicyMiddleware:
    """The API docs pages may load nothing from another host (a Content-Security-Policy).

    Their scripts and styles are served here; the policy also keeps what the bundles would
    fetch by themselves (ReDoc's footer logo) from leaving the machine.
    """

    PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
    POLICY = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.PAGES:
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", self.POLICY.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_policy)
