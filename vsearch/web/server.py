"""Running the web app: ``vsearch serve``, and a server in a thread for tests and tools.

    vsearch serve --model saved_models/embedding --store faiss:saved_models/catalog.vsi \
        --admin-token-file token.txt --media saved_models/media --preset default --set port=8080

:func:`run` loads the model and opens the store, searches once to warm up, and serves the
app of :mod:`vsearch.web.app` with uvicorn until Ctrl-C, with the settings of a
:class:`~vsearch.config.ServerConfig`, taking in other writers' changes to
the store as it goes (:mod:`vsearch.web.live`); with an admin token it also takes product
writes (:mod:`vsearch.web.admin`). :class:`BackgroundServer` serves an app from a daemon thread
on a free loopback port. Both bind their socket with :func:`listen`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vsearch.config import ServerConfig
from vsearch.errors import DataError
from vsearch.web.app import create_app

if TYPE_CHECKING:
    import uvicorn


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn; a clear DataError if the address cannot be had.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY only on sockets that say they
    are TCP, and without it every response waits ~40 ms for the client's delayed ACK.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise DataError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


class BackgroundServer:
    """uvicorn serving an app from a daemon thread on a loopback port (for tests and tools).

    Binds the socket itself (port 0: a free one), so there is no race for the port::

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host, self.port, self.log_level = app, host, int(port), log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        import uvicorn

        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = self._server = uvicorn.Server(uvicorn.Config(self.app, log_level=self.log_level, access_log=False))
        thread = self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def warm_up(searcher) -> None:
    """One search of an encoded blank photo, on the road an upload takes (bytes -> model -> index).

    The first call traces the model's graph (about a second on 2 cores): better paid at
    start-up than by the first customer.
    """
    from vsearch.images import encode_png

    searcher.search(encode_png(np.full((300, 200, 3), 255, np.uint8)), k=1, source="<warm-up>")


def run(
    model: str | os.PathLike,
    store: str,
    config: ServerConfig = ServerConfig(),
    *,
    num_threads: int | None = None,
    admin_token: str | None = None,
    media_dir: str | os.PathLike | None = None,
    log_level: str = "info",
) -> None:
    """Loads the model and opens the store, then serves until interrupted (Ctrl-C).

    Args:
        model: A SavedModel folder or a ``.tflite`` file (``num_threads``: TFLite's inference threads).
        store: ``faiss:PATH`` (a bare path too), ``milvus:FILE.db`` or ``milvus:http://...``.
        config: The server's settings (:class:`~vsearch.config.ServerConfig`: address, limits,
            searches).
        admin_token: What product writes need (:func:`vsearch.web.admin.admin_token`); None: no writes.
        media_dir: Where uploaded photos are kept (default: ``media/`` beside a local store).

    Binds loopback by default: put a reverse proxy in front before exposing it. The address
    is taken before the slow model load, so a port in use fails at once.
    """
    from vsearch.catalog.search import Searcher
    from vsearch.stores import parse_spec

    backend, where = parse_spec(str(store))  # a bad spec fails before the slow model load
    if backend == "faiss" and not Path(where).exists():
        raise DataError(f"{where}: no such catalog store; build one with `vsearch index build`")
    host, port = config.host, config.port
    sock = listen(host, port)
    searcher = Searcher.from_paths(model, f"{backend}:{where}", config.search, num_threads=num_threads)
    note = calibration_note(searcher.store.calibration, config.search)
    if note:
        print(note, file=sys.stderr, flush=True)
    warm_up(searcher)
    app = create_app(searcher, config, admin_token=admin_token, media_dir=media_dir)
    products, photos = searcher.store.count()
    refresh = (
        f"other writers' changes taken in every {config.reload_interval_s:g} s"
        if config.reload_interval_s > 0
        else "other writers' changes not taken in"
    )
    writes = f"writes on (photos kept in {app.state.media_dir})" if admin_token else "writes off (no admin token)"
    print(
        f"vsearch: {products} products ({photos} photos) in {backend}:{where}, {refresh}; {writes}; serving "
        f"http://{host}:{port}/ (API docs at /docs, metrics at /metrics)"
    )
    serve(app, sock, log_level)


def calibration_note(calibration: dict | None, search) -> str | None:
    """One line when the catalog's calibration was fitted on other searches than ``search``
    (a :class:`~vsearch.config.SearchConfig`; :func:`~vsearch.catalog.verdict.road_differences`), else None."""
    from vsearch.catalog.verdict import road_differences

    differs = road_differences(calibration, search) if calibration else {}
    if not differs:
        return None
    fitted = ", ".join(f"{key} {_setting(was)}" for key, (was, _) in differs.items())
    served = ", ".join(f"{key} {_setting(now)}" for key, (_, now) in differs.items())
    return (
        f"vsearch: note: the catalog's calibration was fitted on searches with {fitted}; this server "
        f"searches with {served}, whose scores it was not fitted on: calibrate again with the serving "
        "settings (vsearch calibrate --queries ... with the same --preset/--set)"
    )


def _setting(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


SHUTDOWN_GRACE_S = 10  # seconds after SIGTERM or Ctrl-C, how long running requests may take to finish


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serves ``app`` on ``sock`` until SIGTERM or Ctrl-C, then stops within ``SHUTDOWN_GRACE_S``.

    Requests still running then are cancelled; one whose thread will not end (a store call
    that never returns) is abandoned: after Ctrl-C the process exits without waiting for it
    (uvicorn waited for ever, and SIGTERM, which it does not repeat as a forced quit, did nothing).
    """
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    # After SIGTERM uvicorn ends the process by re-raising it; after Ctrl-C it re-raises that
    # once shut down, which may land here or only after run() has returned.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    print("vsearch: stopped", flush=True)
    stuck = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if stuck:  # request threads past the grace period: Python would wait for them at exit
        print(f"vsearch: {len(stuck)} request(s) still running abandoned", file=sys.stderr, flush=True)
        os._exit(0)
