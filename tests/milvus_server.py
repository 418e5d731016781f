"""The Milvus server of the tests of the networked Milvus store: the real Milvus 2.3 standalone
server of PyPI's ``milvus`` package (the ``milvus-server`` extra, part of ``dev``), started once
per test session on 127.0.0.1 ports with its data in a temporary folder
(:mod:`vsearch.stores.milvus_embedded`).

``milvus_server`` is its URI; ``milvus_process`` the :class:`EmbeddedMilvus` itself, for the
tests that stop and start it. ``python tests/milvus_server.py DATA_DIR`` runs one in the
foreground and prints its URI.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def milvus_process(tmp_path_factory) -> Iterator:
    """One Milvus server for the session (started at the first test that asks for it)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus", reason="the embedded Milvus server: pip install 'vsearch[milvus-server]'")
    from vsearch.stores.milvus_embedded import EmbeddedMilvus

    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus") / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server(milvus_process) -> str:
    """The URI of the session's Milvus server."""
    return milvus_process.uri


if __name__ == "__main__":
    from vsearch.stores.milvus_embedded import EmbeddedMilvus

    found = EmbeddedMilvus(sys.argv[1])
    print(found.start(), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    found.stop()
