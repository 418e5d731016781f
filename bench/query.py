"""Query latency: one photo end to end (decode, embed, search) on the real catalog.

Every validation photo is a query, sent as encoded bytes held in memory: in-process through
``Searcher.search`` with its defaults (plus a pass timing its steps: decoding, resize + model
call, store search with the category prior and the re-rank), then as ``POST /api/search`` to
``vsearch serve`` started in its own process on loopback, as a deployment runs it, one
request at a time (the defaults, then cosine only) and from concurrent clients. The catalog
photos' re-rank keypoints are computed before the clock starts, as a server does at start.
The HTTP client is ``http.client`` over kept-alive connections with each form body encoded
before the clock starts, so the figure is the server's answer time plus loopback, not a
Python client's own cost. p50 / p99 / mean latency and throughput per path.

    python -m bench.query                       # the served default model, faiss:saved_models/catalog.vsi
    python -m bench.query --model saved_models/embedding --out bench/results/query-savedmodel.md

Build the catalog first (``make index``; ``--store`` names another one). Rewrites
``bench/results/query.md`` (``--out`` for another model's run).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown
from bench.http_timing import COSINE_ONLY, multipart, post

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
WARMUP = 5  # the first calls trace TF functions and fill caches


def load_queries(folder: Path, minimum: int) -> list[tuple[str, bytes]]:
    from vsearch.images import IMAGE_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < minimum:
        sys.exit(f"{folder}: {len(files)} photos, need at least {minimum}")
    return [(p.name, p.read_bytes()) for p in files]


def summary(name: str, seconds, wall: float | None = None) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "path": name,
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "qps": len(ms) / wall if wall else 1000 / ms.mean(),
    }


def in_process(searcher, queries, k: int) -> list[dict]:
    """Searcher.search end to end (its defaults), then the same work split into its steps.

    The catalog photos' re-rank keypoints are computed first, as a server does at start.
    """
    from vsearch.images import to_pixels

    searcher.warm_rerank()
    for _, data in queries[:WARMUP]:
        searcher.search(data, k)
    total = []
    for _, data in queries:
        start = time.perf_counter()
        searcher.search(data, k)
        total.append(time.perf_counter() - start)
    model = "TFLite" if str(getattr(searcher.embedder, "path", "")).endswith(".tflite") else "SavedModel"
    store = searcher.store.spec.partition(":")[0]
    stages = {
        "decode (Pillow, EXIF, RGB)": [],
        f"resize + embed ({model})": [],
        f"store search, category prior and re-rank ({store}, ORB)": [],
        f"store search and category prior alone, no re-rank ({store})": [],
    }
    for _, data in queries:
        t0 = time.perf_counter()
        pixels = to_pixels(data, max_pixels=searcher.max_pixels, max_bytes=searcher.max_bytes)
        t1 = time.perf_counter()
        model_input = searcher.model_input(pixels)
        vector = searcher.embedder.embed_pixels(model_input[None])[0]
        t2 = time.perf_counter()
        searcher.search_vector(vector, k, rerank_query=model_input)
        t3 = time.perf_counter()
        searcher.search_vector(vector, k)
        t4 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[key].append(dt)
    rows = [summary("in-process `Searcher.search` (defaults: category auto, re-rank)", total)]
    rows += [summary(f"&nbsp;&nbsp;of which {name}", times) for name, times in stages.items()]
    return rows


@contextmanager
def served(model: str, store: str, threads: int | None):
    """``vsearch serve`` in its own process on a free loopback port; yields the port once /healthz answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "vsearch", "serve", "--model", model, "--store", store, "--port", str(port)]
    command += ["--threads", str(threads)] if threads else []
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    sys.exit(f"vsearch serve did not start:\n{log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.2)
        wait_for_keypoints(port, deadline=time.monotonic() + 900)
        yield port
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_for_keypoints(port: int, deadline: float) -> None:
    """Until the server has computed its catalog photos' re-rank keypoints (it does so at start)."""
    from vsearch.catalog.rerank import KEPT_PHOTOS

    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            health = json.loads(answer.read())
        if health.get("rerank_keypoints", 0) >= min(health["photos"], KEPT_PHOTOS):
            return
        time.sleep(0.5)


def over_http(port: int, queries, k: int, concurrency: int) -> list[dict]:
    """POST /api/search to the server: one client sending one request at a time, then ``concurrency`` clients."""
    requests = [(name, *multipart(name, data, k)) for name, data in queries]
    rows = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    plain = [(name, *multipart(name, data, k, **COSINE_ONLY)) for name, data in queries]
    for label, batch in (
        ("sequential (defaults: category auto, re-rank)", requests),
        ("sequential, `category=any`, `rerank=false` (cosine only)", plain),
    ):
        for request in batch[:WARMUP]:
            post(connection, request, k)
        start = time.perf_counter()
        times = [post(connection, request, k) for request in batch]
        rows.append(summary(f"HTTP `POST /api/search`, {label}", times, time.perf_counter() - start))
    connection.close()

    local = threading.local()

    def one(request):
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        return post(local.connection, request, k)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests[: concurrency * 2]))  # warm every client's connection
        start = time.perf_counter()
        times = list(pool.map(one, requests))
        rows.append(
            summary(f"HTTP `POST /api/search`, {concurrency} concurrent clients", times, time.perf_counter() - start)
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| path | queries | p50 ms | p99 ms | mean ms | throughput q/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} | {r['qps']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    parser.add_argument(
        "--store",
        default=f"faiss:{ROOT / 'saved_models' / 'catalog.vsi'}",
        help="the catalog: faiss:FILE or milvus:FILE.db|http://HOST:19530",
    )
    parser.add_argument("--queries", default=str(ROOT / "data" / "photos" / "validation"))
    parser.add_argument("--min-queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    output_args(parser, "query")
    args = parser.parse_args()

    from vsearch.catalog.search import Searcher

    queries = load_queries(Path(args.queries), args.min_queries)
    searcher = Searcher.from_paths(args.model, args.store, num_threads=args.threads)
    load_before = os.getloadavg()[0]
    rows = in_process(searcher, queries, args.k)
    with served(args.model, args.store, args.threads) as port:
        rows += over_http(port, queries, args.k, args.concurrency)
    load_after = os.getloadavg()[0]
    products, photos = searcher.store.count()
    kind = getattr(searcher.store, "kind", None)  # the faiss store's index: exact or hnsw
    backend = searcher.store.spec.partition(":")[0] + (f", {kind} index" if kind else "")
    lines = [
        f"Catalog: {products} products ({photos} photos), {searcher.store.dim}-d, {backend}; "
        f"model {Path(args.model).name} ({searcher.embedder.image_size} px); queries: {len(queries)} "
        f"photos of {shown(args.queries)}, k={args.k}, {WARMUP} warm-up queries per path not counted. "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after.",
        "",
        table(rows),
    ]
    publish(args, "Query latency: one photo -> matches", lines)


if __name__ == "__main__":
    main()
