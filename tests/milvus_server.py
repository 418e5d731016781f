"""A milvus-lite server on loopback for the tests of the networked Milvus store.

``python tests/milvus_server.py DATA_DIR`` runs one in the foreground and prints its URI;
the tests use :func:`running` (a context manager) and the ``milvus_server`` fixture. It is
``milvus-lite server`` (milvus-lite's own gRPC server, the one ``pip install milvus-lite``
ships) bound to 127.0.0.1 on a free port, its data in ``DATA_DIR``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=2)
    except Exception:  # noqa: BLE001  (not listening yet)
        return False
    try:
        client.list_collections()
        return True
    finally:
        client.close()


@contextlib.contextmanager
def running(data_dir: str | Path) -> Iterator[str]:
    """Starts a server with its data in ``data_dir``; yields its URI; stops it on leaving."""
    port = free_port()
    log = Path(data_dir).with_suffix(".log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"milvus-lite server did not start (exit {process.poll()}): "
                    f"{log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
        yield uri
    finally:
        process.send_signal(signal.SIGINT)  # the server closes its data on KeyboardInterrupt
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """The URI of one milvus-lite server shared by the session's tests."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    with running(tmp_path_factory.mktemp("milvus") / "server-data") as uri:
        yield uri


if __name__ == "__main__":
    with running(sys.argv[1]) as found:
        print(found, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
