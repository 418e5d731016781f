"""`vsearch serve` stops within its grace period whatever its requests are doing (#34): one
stuck in a store call that never returns kept uvicorn waiting for ever, and SIGTERM did nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from vsearch.web.server import listen

# A server as `vsearch serve` runs it (vsearch.web.server.serve), with a route that never ends.
SERVER = """
import sys
from fastapi import FastAPI
from vsearch.web import server

app = FastAPI()

@app.get("/stuck")
def stuck():  # a sync route: it runs in a worker thread, which no cancel can stop
    while True:
        sum(range(1000))

@app.get("/ok")
def ok():
    return {"ok": True}

server.SHUTDOWN_GRACE_S = 1
server.serve(app, server.listen("127.0.0.1", int(sys.argv[1])), "warning")
"""


def wait_for_ever(url: str) -> None:
    try:
        httpx.get(url, timeout=60)
    except httpx.HTTPError:  # the server went away: what the test waits for
        pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stuck_request_does_not_keep_the_server_up(sig):
    with listen("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/ok", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.1)
        threading.Thread(target=wait_for_ever, args=(url + "/stuck",), daemon=True).start()
        time.sleep(0.5)  # the request is in its thread
        start = time.monotonic()
        process.send_signal(sig)
        process.wait(timeout=20)  # before: still running after SIGTERM; after Ctrl-C it waited for the thread
        assert time.monotonic() - start < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = process.stdout.read()
    assert process.returncode in (0, -signal.SIGTERM), out
    if sig == signal.SIGINT:
        assert "vsearch: stopped" in out and "1 request(s) still running abandoned" in out, out
