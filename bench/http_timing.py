"""Timing ``POST /api/search``: the form body, one timed request, and served roads compared.

The client is ``http.client`` over a kept-alive connection with each form body encoded
before the clock starts, so a figure is the server's answer time plus loopback, not a
Python client's own cost. ``bench.query`` times ``vsearch serve`` in its own process with
:func:`post`; the experiments time the app serving their own searcher with :func:`served_p50`.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid

import numpy as np

# the plain road a served road's cost is compared with: the cosine order alone
COSINE_ONLY = {"category": "any", "rerank": "false"}


def multipart(name: str, data: bytes, k: int, **fields) -> tuple[bytes, str]:
    """A ``POST /api/search`` form body (``file``, ``k`` and ``fields``) and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in {"k": k, **fields}.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode(),
        data,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(connection: http.client.HTTPConnection, request: tuple[str, bytes, str], k: int) -> float:
    """One search over a kept-alive connection: seconds from sending to the last byte of the answer."""
    name, body, content_type = request
    start = time.perf_counter()
    connection.request("POST", "/api/search", body, {"Content-Type": content_type})
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200 or len(json.loads(answer)["matches"]) != k:
        raise RuntimeError(f"{name}: HTTP {response.status} {answer[:200]!r}")
    return elapsed


def served_p50(
    searcher, photos: list[bytes], roads: dict[str, dict], k: int, search=None, warmup: int = 5
) -> dict[str, float]:
    """p50 ms of ``POST /api/search`` per road, on a loopback server in this process.

    The server is uvicorn serving the app ``vsearch serve`` builds (catalog keypoints stored
    beside the store are used), without reloads. Each photo is sent on every road in turn,
    so the roads share the machine's state of the moment; the first ``warmup`` photos are
    sent once more first and not counted.

    Args:
        searcher: The :class:`~vsearch.catalog.search.Searcher` the app serves.
        photos: The query photos, encoded.
        roads: Label -> the request's form fields besides ``file`` and ``k`` (e.g. :data:`COSINE_ONLY`).
        k: Matches asked for; every answer must carry that many.
        search: The server's :class:`~vsearch.config.SearchConfig` (default: ``ServerConfig``'s).
        warmup: Photos sent first and not counted.
    Returns:
        Label -> p50 milliseconds.
    """
    from vsearch.config import ServerConfig
    from vsearch.web.app import create_app
    from vsearch.web.server import BackgroundServer

    config = ServerConfig(reload_interval_s=0) if search is None else ServerConfig(search=search, reload_interval_s=0)
    times: dict[str, list[float]] = {name: [] for name in roads}
    with BackgroundServer(create_app(searcher, config)) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        try:
            for i, photo in enumerate(photos[:warmup] + photos):
                for name, fields in roads.items():
                    elapsed = post(connection, ("q.jpg", *multipart("q.jpg", photo, k, **fields)), k)
                    if i >= warmup:
                        times[name].append(elapsed)
        finally:
            connection.close()
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}
