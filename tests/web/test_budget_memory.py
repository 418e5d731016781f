"""Peak memory of a served process under concurrent near-limit uploads (the decode budget).

A 16-bit or palette PNG of 5800x5800 pixels (under the 40-Mpx limit) is about 100 KB on
the wire and hundreds of MB once decoded. Without a budget, ten at once took the server
several GB; with it, the server's peak resident memory stays within the budget plus a
stated allowance, and every answer is 200 or 503 (retried after ``Retry-After``).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from vsearch.images import image_header

FAKE_SERVER = Path(__file__).parents[1] / "fake_server.py"
MB = 1024 * 1024
BUDGET_MB = 1024
# What else grows while uploads are served: upload buffers, threads, allocator slack.
ALLOWANCE_MB = 256
CLIENTS = 10
DEADLINE_S = 240


def encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def sixteen_bit(side: int) -> bytes:
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // side).astype(np.uint16)
    return encoded(Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (side, side)))))


def palette(side: int) -> bytes:
    img = Image.new("P", (side, side))
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.paste(
        Image.fromarray(np.ascontiguousarray(np.broadcast_to((np.arange(side) % 256).astype(np.uint8), (side, side))))
    )
    return encoded(img)


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.fixture
def served(tmp_path):
    port_file = tmp_path / "port"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(FAKE_SERVER),
            "--root",
            str(tmp_path / "catalog"),
            "--port-file",
            str(port_file),
            "--budget-mb",
            str(BUDGET_MB),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        while httpx.get(url + "/healthz", timeout=30).status_code != 200:
            time.sleep(0.1)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/<pid>/status")
def test_peak_memory_stays_within_the_decode_budget(served):
    proc, url = served
    uploads = [sixteen_bit(5800), palette(5800), sixteen_bit(4000), palette(4000), sixteen_bit(5000)]
    costs = [image_header(u).decoded_bytes for u in uploads]
    assert max(len(u) for u in uploads) < 200_000 and all(c < BUDGET_MB * MB for c in costs)
    assert max(image_header(u).pixels for u in uploads) > 0.8 * 40_000_000  # near the pixel limit

    small = encoded(Image.fromarray(np.full((64, 64), 1000, np.uint16)))  # warm the code paths first
    assert httpx.post(url + "/api/search", files={"file": ("small.png", small)}).status_code == 200
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    baseline = proc_status(proc.pid, "VmRSS")

    statuses, answered, lock = [], [], threading.Lock()

    def client(i: int) -> None:
        data = uploads[i % len(uploads)]
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                r = http.post("/api/search", files={"file": (f"big{i}.png", data)}, data={"k": "3"})
                with lock:
                    statuses.append(r.status_code)
                if r.status_code != 503:
                    with lock:
                        answered.append((r.status_code, r.text[:200]))
                    return
                time.sleep(float(r.headers["retry-after"]))

    start = time.monotonic()
    stop_at = start + DEADLINE_S
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    peak = proc_status(proc.pid, "VmHWM")
    families = {f.name: f.samples for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f}

    growth = (peak - baseline) / MB
    print(
        f"\n{CLIENTS} clients, uploads of {[round(len(u) / 1000) for u in uploads]} KB costing "
        f"{[round(c / MB) for c in costs]} MB decoded: {wall:.1f} s, {statuses.count(503)} x 503 then retried; "
        f"baseline RSS {baseline / MB:.0f} MB, peak {peak / MB:.0f} MB (+{growth:.0f} MB; "
        f"bound +{BUDGET_MB + ALLOWANCE_MB} MB)"
    )
    assert set(statuses) <= {200, 503}, statuses
    assert len(answered) == CLIENTS and all(status == 200 for status, _ in answered), answered
    assert growth <= BUDGET_MB + ALLOWANCE_MB, f"peak RSS grew by {growth:.0f} MB"
    assert values[("vsearch_decode_in_flight_bytes", ())] == 0
    assert values[("vsearch_decode_refusals_total", (("reason", "busy"),))] == statuses.count(503)
