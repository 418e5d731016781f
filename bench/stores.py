"""Product stores at catalog scale: filtered search, one-product upserts, build time, memory.

For each size (photos, 3 per product) and store, on the same synthetic catalog and queries:
``faiss`` (``faiss:FILE``, the embedded default), ``milvus`` (a Milvus server:
``--milvus-uri URI``, else the embedded Milvus 2.3 server of ``pip install
'vsearch[milvus-server]'``, started by the run on 127.0.0.1 with its data in ``--work``) and
``milvus-lite`` (``milvus:FILE.db``, in the run's process):

* **search**: p50 / p99 latency of one query at a time (``store.search(q, k=10)``, grouped
  by product), unfiltered and with a ``price`` filter keeping 10% and 0.1% of the
  products, and recall@10 against the exact filtered answer (numpy over the same vectors,
  each product scored by its best photo); hits the filter should have dropped are counted;
* **upsert**: p50 / p99 of ``store.upsert`` of one new product (3 photos, already
  embedded) into the built catalog; the store returns once it has persisted it;
* **context**: build time (``build_store``), reopen time (``open_store``), peak RSS of the
  client (the run's process: data, store, the exact answers) and, apart, of the Milvus
  server's process (sampled), and the RSS the data alone took; the index settings.

Targets at 1M photos: ``faiss`` search p50 <= 10 ms at recall@10 >= 0.95; a Milvus server
search p50 <= 20 ms unfiltered and at the 10% filter at recall@10 >= 0.95; both upsert
p50 <= 50 ms.

    python -m bench.stores --stores faiss,milvus            # 100k and 1M photos, embedded server
    python -m bench.stores --stores faiss,milvus --milvus-uri http://127.0.0.1:19530
    python -m bench.stores --stores milvus-lite --cap milvus-lite=100000
    python -m bench.stores --quick --no-write               # 10k photos, 50 queries: a minute

Each (size, store) runs in its own process (``--timeout`` minutes at most), so one's
memory does not count against the next and a stuck run is stopped and reported; a store
whose searches take over ``--search-budget`` seconds for one filter runs fewer queries
(the table says how many). Data:
unit vectors of ``--dim`` dimensions (default: the dimension of the store ``--like``, or
391) with the structure of a catalog: 7 categories, styles within them, products within
styles, photos around their product; a query is a fresh photo of a random product.
Prices are uniform in 0..1000, so ``price<100`` keeps about 10% and ``price<1`` about
0.1% of the products. Searches run on one thread (FAISS's OpenMP set to 1; milvus-lite
serves from threads of the same process). Rewrites ``bench/results/stores.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish

PHOTOS_PER_PRODUCT = 3
CATEGORIES = 7
PRODUCTS_PER_STYLE = 100
FILTERS = {"none": None, "10%": 100.0, "0.1%": 1.0}  # name -> price below which a product is kept
K = 10
TARGETS = {
    "faiss": {"p50_ms": 10.0, "recall": 0.95, "upsert_p50_ms": 50.0, "filters": ("none", "10%", "0.1%")},
    "milvus": {"p50_ms": 20.0, "recall": 0.95, "upsert_p50_ms": 50.0, "filters": ("none", "10%")},
}
# Why a store is usually capped (said beside the --cap note in the results).
CAP_WHY = {
    "milvus-lite": "milvus-lite 3.x is pure Python: every search and query walks every row in Python to drop "
    "superseded and deleted ones (milvus_lite/search/executor_indexed.py, _build_local_mask; "
    "query: search/bitmap.py), whatever the index, so its cost grows with the catalog (about "
    "ten times the 100k figures at 1M, seconds a search and a write) and its build streams "
    "every row through gRPC; a Milvus server does this in C++"
}


# ---------------------------------------------------------------- the synthetic catalog


@dataclass(frozen=True)
class Spec:
    """One (size, store) run, as the parent process hands it to the worker."""

    store: str
    photos: int
    dim: int
    queries: int
    upserts: int
    seed: int
    faiss_kind: str
    search_budget_s: float
    work: str
    result: str
    milvus_uri: str = ""  # a Milvus server to use; "" starts the embedded one


def around(centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near ``centres``: cosine to their centre about ``1 / sqrt(1 + spread**2)``."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32) * np.float32(spread / np.sqrt(centres.shape[1]))
    out = centres + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def catalog(photos: int, dim: int, seed: int) -> dict:
    """Product centres, photo vectors (product p owns rows 3p..3p+2), categories and prices."""
    rng = np.random.default_rng(seed)
    products = photos // PHOTOS_PER_PRODUCT
    categories = around(np.zeros((CATEGORIES, dim), np.float32), 1e3, rng)
    styles_of = rng.integers(CATEGORIES, size=max(1, products // PRODUCTS_PER_STYLE))
    styles = around(categories[styles_of], 1.0, rng)
    style = rng.integers(len(styles), size=products)
    centres = np.empty((products, dim), np.float32)
    vectors = np.empty((products * PHOTOS_PER_PRODUCT, dim), np.float32)
    for start in range(0, products, 50_000):  # in chunks: no float64 copy of a 1M catalog
        part = slice(start, min(products, start + 50_000))
        centres[part] = around(styles[style[part]], 0.8, rng)
        rows = slice(part.start * PHOTOS_PER_PRODUCT, part.stop * PHOTOS_PER_PRODUCT)
        vectors[rows] = around(np.repeat(centres[part], PHOTOS_PER_PRODUCT, axis=0), 0.4, rng)
    prices = np.round(rng.uniform(0, 1000, products), 2)
    return {"centres": centres, "vectors": vectors, "category": styles_of[style], "price": prices}


def photo_rows(data: dict, start: int = 0, prefix: str = "p") -> list:
    """:class:`vsearch.catalog.manifest.Photo` s of every product in ``data`` (a product's photos share one dict)."""
    from vsearch.catalog.manifest import Photo

    out = []
    for p, (category, price) in enumerate(zip(data["category"].tolist(), data["price"].tolist()), start=start):
        pid, attrs = f"{prefix}{p:07d}", {"price": price}
        out += [
            Photo(pid, f"{pid}/{j}", f"/synthetic/{pid}/{j}.jpg", f"c{category}", attrs)
            for j in range(PHOTOS_PER_PRODUCT)
        ]
    return out


def queries_for(data: dict, count: int, seed: int) -> np.ndarray:
    """Fresh photos of random products: what a customer's photo of a catalog item is."""
    rng = np.random.default_rng(seed + 1)
    return around(data["centres"][rng.integers(len(data["centres"]), size=count)], 0.6, rng)


def exact_products(vectors: np.ndarray, queries: np.ndarray, keep: np.ndarray, k: int) -> list[list[int]]:
    """Per query, the best ``k`` kept products (by their best photo), exactly; fewer when fewer are kept."""
    best_s = np.full((0, len(queries)), -np.inf, np.float32)
    best_i = np.zeros((0, len(queries)), np.int64)
    chunk = 30_000  # products
    for start in range(0, len(keep), chunk):
        stop = min(len(keep), start + chunk)
        rows = vectors[start * PHOTOS_PER_PRODUCT : stop * PHOTOS_PER_PRODUCT]
        scores = (rows @ queries.T).reshape(stop - start, PHOTOS_PER_PRODUCT, -1).max(axis=1)
        scores[~keep[start:stop]] = -np.inf
        ids = np.broadcast_to(np.arange(start, stop)[:, None], scores.shape)
        both_s, both_i = np.concatenate([best_s, scores]), np.concatenate([best_i, ids])
        top = np.argpartition(-both_s, min(k, len(both_s)) - 1, axis=0)[:k]
        best_s, best_i = np.take_along_axis(both_s, top, 0), np.take_along_axis(both_i, top, 0)
    return [[int(i) for i, s in zip(best_i[:, q], best_s[:, q]) if np.isfinite(s)] for q in range(len(queries))]


def recall(found: list[str], truth: list[int]) -> float:
    if not truth:
        return 1.0
    want = {f"p{i:07d}" for i in truth}
    return len(want.intersection(found)) / len(want)


# ---------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident memory of process ``pid`` (default: this one) and its descendants, leaving
    out the trees of ``apart()``'s pids (a server this process started), sampled every ``every`` s."""

    def __init__(self, pid: int | None = None, apart=lambda: (), every: float = 0.2):
        self.pid, self.apart, self.every = pid or os.getpid(), apart, every
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        """MB resident in the process and its descendants (less the trees set apart)."""
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            parents[int(entry)] = int(fields.get("PPid", "0").strip() or 0)
            rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        apart = {p for p in self.apart() if p}
        mine, todo = set(), [self.pid]
        while todo:
            pid = todo.pop()
            if pid in apart:
                continue
            mine.add(pid)
            todo += [child for child, parent in parents.items() if parent == pid and child not in mine]
        return sum(rss.get(pid, 0.0) for pid in mine)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRSS:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def one_thread_search(enabled: bool) -> None:
    """FAISS's OpenMP threads: 1 while timing one-query searches (what a request costs)."""
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1 if enabled else os.cpu_count() or 1)


def ms_percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def time_searches(
    store, queries: np.ndarray, where, truth: list[list[int]], keep_price: float | None, budget_s: float
) -> dict:
    """One query at a time: latency percentiles, mean recall@K, hits the filter should have dropped.

    Stops after ``budget_s`` seconds (a slow store); ``queries`` says how many ran.
    """
    for q in queries[:3]:  # warm caches and lazy loads
        store.search(q[None], K, where=where)
    times, recalls, outside, started = [], [], 0, time.perf_counter()
    for q, want in zip(queries, truth):
        if time.perf_counter() - started > budget_s:
            break
        t = time.perf_counter()
        hits = store.search(q[None], K, where=where)[0]
        times.append((time.perf_counter() - t) * 1000)
        recalls.append(recall([h["product_id"] for h in hits], want))
        if keep_price is not None:
            outside += sum(1 for h in hits if not h["attributes"].get("price", np.inf) < keep_price)
    p50, p99 = ms_percentiles(times)
    return {"p50_ms": p50, "p99_ms": p99, "recall": float(np.mean(recalls)), "outside": outside, "queries": len(times)}


def time_upserts(store, data: dict, count: int, seed: int) -> dict:
    """``count`` upserts of one new product (3 photos near a random product's) each."""
    rng = np.random.default_rng(seed + 2)
    new = {"category": rng.integers(CATEGORIES, size=count), "price": np.round(rng.uniform(0, 1000, count), 2)}
    photos = photo_rows(new, prefix="new")
    base = data["centres"][rng.integers(len(data["centres"]), size=count)]
    vectors = around(np.repeat(base, PHOTOS_PER_PRODUCT, axis=0), 0.4, rng)
    times = []
    for i in range(count):
        rows = slice(i * PHOTOS_PER_PRODUCT, (i + 1) * PHOTOS_PER_PRODUCT)
        t = time.perf_counter()
        store.upsert(photos[rows], vectors[rows])
        times.append((time.perf_counter() - t) * 1000)
    p50, p99 = ms_percentiles(times)
    return {"upsert_p50_ms": p50, "upsert_p99_ms": p99}


def progress(spec: Spec, what: str) -> None:
    print(f"[{spec.store} {spec.photos:,}] {what}", file=sys.stderr, flush=True)


class MilvusServer:
    """The Milvus server of a ``milvus`` run: ``spec.milvus_uri``, or the embedded one started here
    (its data in ``folder``). ``uri``, ``pid`` (None for a server not started here); ``drop(name)``
    removes a catalog the run left on a server it did not start."""

    def __init__(self, spec: Spec, folder: Path):
        self.embedded = None
        self.uri = spec.milvus_uri
        if not self.uri:
            from vsearch.stores.milvus_embedded import EmbeddedMilvus

            self.embedded = EmbeddedMilvus(folder / "milvus-server")
            self.uri = self.embedded.start()

    @property
    def pid(self) -> int | None:
        return self.embedded.pid if self.embedded else None

    def close(self, name: str) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            return
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri)
        try:
            if client.has_collection(name):
                target = client.describe_collection(name)["collection_name"]
                client.drop_alias(name)
                client.drop_collection(target)
        finally:
            client.close()


def location(spec: Spec, folder: Path, server: MilvusServer | None) -> str:
    if spec.store == "faiss":
        return f"faiss:{folder / 'catalog.vsi'}"
    if spec.store == "milvus-lite":
        return f"milvus:{folder / 'catalog.db'}"
    assert server is not None
    return f"milvus:{server.uri}#bench_{spec.photos}_{os.getpid()}"


def settings(store) -> str:
    """The index a store searches, as the results state it."""
    from vsearch.stores import engine
    from vsearch.stores.rows import FaissIndex

    graph = FaissIndex(1).params()
    kind = getattr(store, "kind", "?")
    ivf = getattr(store, "ivf", None) or {}
    if kind == "hnsw":
        index = (
            f"HNSW M={graph['hnsw_m']}, efConstruction={graph['ef_construction']}, efSearch={graph['ef_search']} "
            "(widened by the inverse of a filter's share)"
        )
    elif kind == "ivf":
        index = (
            f"IVF_FLAT nlist={ivf.get('nlist')}, nprobe={ivf.get('nprobe')} (widened by the inverse of a filter's "
            "share, at most 4 times); a filter keeping at most 4,096 photos is scored exactly"
        )
    else:
        index = kind
    road = ", ".join(f"{k} {v}" for k, v in engine(store).items() if k != "backend")
    return index + (f"; {road}" if road else "")


def run_one(spec: Spec) -> dict:
    """The worker: builds one store over one size and measures it."""
    from vsearch.stores import build_store, open_store
    from vsearch.stores.filters import parse_where

    progress(spec, "data")
    data = catalog(spec.photos, spec.dim, spec.seed)
    queries = queries_for(data, spec.queries, spec.seed)
    filters, truths, kept = {}, {}, {}
    for name, below in FILTERS.items():
        filters[name] = parse_where([f"price<{below:g}"] if below else [], {"price": "float"})
        keep = data["price"] < (below or np.inf)
        kept[name] = int(keep.sum())
        truths[name] = exact_products(data["vectors"], queries, keep, K)
    photos = photo_rows(data)
    gc.collect()
    folder = Path(tempfile.mkdtemp(prefix=f"stores-{spec.store}-", dir=spec.work))
    result = {**asdict(spec), "products": len(data["price"]), "stored": len(photos), "kept": kept, "search": {}}
    server, where = None, ""
    try:
        if spec.store == "milvus":
            progress(spec, "server")
            server = MilvusServer(spec, folder)
        where = location(spec, folder, server)
        server_pid = server.pid if server else None
        with PeakRSS(apart=lambda: [server_pid]) as rss, PeakRSS(server_pid or -1) as server_rss:
            result["data_rss_mb"] = rss.now()
            progress(spec, "build")
            one_thread_search(False)
            t = time.perf_counter()
            store = build_store(
                where,
                photos,
                data["vectors"],
                fingerprint="bench",
                model={"name": "bench.stores"},
                kind=spec.faiss_kind,
            )
            result["build_s"] = time.perf_counter() - t
            store.close()
            t = time.perf_counter()
            store = open_store(where, expected_fingerprint="bench")
            result["open_s"] = time.perf_counter() - t
            result["index"] = settings(store)
            one_thread_search(True)
            for name, condition in filters.items():
                progress(spec, f"search, filter {name}")
                result["search"][name] = time_searches(
                    store, queries, condition, truths[name], FILTERS[name], spec.search_budget_s
                )
            progress(spec, "upserts")
            result.update(time_upserts(store, data, spec.upserts, spec.seed))
            result["count_after"] = list(store.count())
            result["count_expected"] = [
                result["products"] + spec.upserts,
                len(photos) + PHOTOS_PER_PRODUCT * spec.upserts,
            ]
            store.close()
        result["peak_rss_mb"] = rss.peak
        result["server_rss_mb"] = server_rss.peak if server_pid else None
    finally:
        if server is not None:
            server.close(where.partition("#")[2])
        shutil.rmtree(folder, ignore_errors=True)
    return result


# ---------------------------------------------------------------- the parent: one process per run


def why_not(store: str, milvus_uri: str = "") -> str | None:
    """Why ``store`` cannot run here, or None."""
    import importlib.util

    if store not in ("faiss", "milvus", "milvus-lite"):
        return f"no store {store!r}: use faiss, milvus or milvus-lite"
    if store == "milvus-lite" and not all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite")):
        return "pymilvus / milvus-lite not installed (pip install 'vsearch[milvus]')"
    if store == "milvus" and importlib.util.find_spec("pymilvus") is None:
        return "pymilvus not installed (pip install 'vsearch[milvus]')"
    if store == "milvus" and not milvus_uri and importlib.util.find_spec("milvus") is None:
        return "no --milvus-uri and no embedded server (pip install 'vsearch[milvus-server]')"
    return None


def run_in_child(spec: Spec, timeout_min: float) -> dict:
    """Runs :func:`run_one` in a fresh process; a run past ``timeout_min`` is stopped."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.stores", "--worker", json.dumps(asdict(spec))], cwd=ROOT, start_new_session=True
    )
    try:
        code = child.wait(timeout=timeout_min * 60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own process group: it and what it started
        child.wait()
        return {"skipped": f"stopped after {timeout_min:g} min (--timeout)"}
    if code != 0 or not Path(spec.result).is_file():
        return {"skipped": f"failed (exit {code}; its error is in the run's log)"}
    return json.loads(Path(spec.result).read_text())


def store_dim(like: str, fallback: int) -> int:
    """The dimension of the store ``like`` when one opens there, else ``fallback``."""
    from vsearch.errors import VSearchError
    from vsearch.stores import open_store

    try:
        store = open_store(like)
    except (VSearchError, OSError, ImportError):
        return fallback
    try:
        return int(store.dim)
    finally:
        store.close()


def parse_caps(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        name, _, size = item.partition("=")
        if not size.isdigit():
            raise SystemExit(f"--cap {item!r}: expected STORE=PHOTOS, e.g. milvus=100000")
        caps[name] = int(size)
    return caps


# ---------------------------------------------------------------- the results


def search_table(results: list[dict]) -> list[str]:
    lines = [
        "| photos | products | store | filter | products kept | queries | p50 ms | p99 ms | recall@10 | "
        "hits outside filter |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            continue
        for name, s in r["search"].items():
            lines.append(
                f"| {r['stored']:,} | {r['products']:,} | {r['store']} | {name} | {r['kept'][name]:,} | "
                f"{s['queries']} | "
                f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['recall']:.3f} | {s['outside']} |"
            )
    return lines


def write_table(results: list[dict]) -> list[str]:
    lines = [
        "| photos | store | build s | reopen s | upsert p50 ms | upsert p99 ms | client peak RSS MB | "
        "server peak RSS MB | data RSS MB | count after upserts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['photos']:,} | {r['store']} | {r['skipped']} | | | | | | | |")
            continue
        server = f"{r['server_rss_mb']:.0f}" if r.get("server_rss_mb") else "-"
        count = (
            "as expected"
            if r["count_after"] == r["count_expected"]
            else f"{r['count_after']} (expected {r['count_expected']})"
        )
        lines.append(
            f"| {r['stored']:,} | {r['store']} | {r['build_s']:.1f} | {r['open_s']:.1f} | "
            f"{r['upsert_p50_ms']:.1f} | {r['upsert_p99_ms']:.1f} | {r['peak_rss_mb']:.0f} | {server} | "
            f"{r['data_rss_mb']:.0f} | {count} |"
        )
    return lines


def verdict(results: list[dict]) -> list[str]:
    """Each faiss and Milvus server run against its targets (stated for 1M photos)."""
    lines = []
    for r in results:
        target = TARGETS.get(r["store"])
        if target is None or "skipped" in r:
            continue
        measured = [r["search"][name] for name in target["filters"]]
        worst = min(measured, key=lambda s: s["recall"])
        slowest = max(s["p50_ms"] for s in measured)
        search_ok = slowest <= target["p50_ms"] and worst["recall"] >= target["recall"]
        upsert_ok = r["upsert_p50_ms"] <= target["upsert_p50_ms"]
        lines.append(
            f"* {r['store']} at {r['stored']:,} photos: search ({', '.join(target['filters'])}) "
            f"{'meets' if search_ok else 'misses'} the target (slowest p50 {slowest:.2f} ms, lowest recall@10 "
            f"{worst['recall']:.3f}); upsert {'meets' if upsert_ok else 'misses'} it (p50 {r['upsert_p50_ms']:.1f} ms)."
        )
    return lines


def index_notes(results: list[dict]) -> list[str]:
    """The index settings each store searched with, once per store."""
    seen: dict[str, str] = {}
    for r in results:
        if "index" in r:
            seen.setdefault(r["store"], r["index"])
    return [f"* {store}: {index}." for store, index in seen.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="catalog sizes in photos (3 per product)")
    ap.add_argument("--stores", default="faiss,milvus", help="faiss, milvus (a server), milvus-lite")
    ap.add_argument(
        "--milvus-uri", default="", help="the Milvus server of the milvus runs (default: start the embedded one)"
    )
    ap.add_argument("--queries", type=int, default=200, help="queries per filter")
    ap.add_argument("--upserts", type=int, default=50)
    ap.add_argument("--like", default="faiss:saved_models/catalog.vsi", help="a store whose dim to take")
    ap.add_argument("--dim", type=int, default=391, help="dimension when --like does not open")
    ap.add_argument("--faiss-kind", default="auto", help="build_store's kind for faiss: auto, exact or hnsw")
    ap.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="STORE=PHOTOS",
        help="skip runs of STORE above PHOTOS photos (e.g. milvus=100000), said in the results",
    )
    ap.add_argument("--timeout", type=float, default=60, help="minutes one (size, store) run may take")
    ap.add_argument(
        "--search-budget",
        type=float,
        default=120,
        help="seconds of searching per filter, store and size; a slower store runs fewer queries",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=tempfile.gettempdir(), help="folder for the stores' files (removed after)")
    ap.add_argument("--quick", action="store_true", help="10k photos, 50 queries, 20 upserts")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    output_args(ap, "stores")
    args = ap.parse_args()
    if args.worker:
        spec = Spec(**json.loads(args.worker))
        Path(spec.result).write_text(json.dumps(run_one(spec)))
        return
    if args.quick:
        args.sizes, args.queries, args.upserts = "10000", 50, 20
    caps, dim = parse_caps(args.cap), store_dim(args.like, args.dim)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stores-", dir=args.work) as work:
        for size in (int(s) for s in args.sizes.split(",")):
            for store in args.stores.split(","):
                spec = Spec(
                    store,
                    size,
                    dim,
                    args.queries,
                    args.upserts,
                    args.seed,
                    args.faiss_kind,
                    args.search_budget,
                    work,
                    str(Path(work) / f"{store}-{size}.json"),
                    args.milvus_uri,
                )
                reason = why_not(store, args.milvus_uri) or (
                    f"not run above {caps[store]:,} photos (--cap)" if size > caps.get(store, size) else None
                )
                started = time.perf_counter()
                results.append(
                    {**asdict(spec), "skipped": reason}
                    if reason
                    else {**asdict(spec), **run_in_child(spec, args.timeout)}
                )
                print(f"{store} {size:,}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    notes = [
        f"* {r['store']} at {r['photos']:,} photos: {r['skipped']}"
        + (f"; {CAP_WHY[r['store']]}." if "--cap" in r["skipped"] and r["store"] in CAP_WHY else ".")
        for r in results
        if "skipped" in r
    ]
    publish(
        args,
        "Product stores: filtered search, upserts, build",
        [
            f"Data: {dim}-d synthetic unit vectors with a catalog's structure (categories, styles, products, "
            f"{PHOTOS_PER_PRODUCT} photos a product); {args.queries} queries per filter (fewer where a store's searches "
            f"ran past {args.search_budget:g} s: see the queries column), each a fresh photo of a random product, one at "
            f"a time on one thread; k={K} products; recall against the exact filtered "
            "answer (numpy). Filters on `price`: none, `price<100` (about 10% of products), `price<1` (about 0.1%).",
            "",
            f"Targets at 1M photos: faiss search p50 <= {TARGETS['faiss']['p50_ms']:g} ms (every filter), a Milvus "
            f"server's <= {TARGETS['milvus']['p50_ms']:g} ms (unfiltered and 10%), at recall@10 >= "
            f"{TARGETS['faiss']['recall']}; upsert of one product (3 photos, persisted) p50 <= "
            f"{TARGETS['faiss']['upsert_p50_ms']:g} ms.",
            "",
            *verdict(results),
            "",
            "Index settings:",
            "",
            *index_notes(results),
            "",
            "## Search",
            "",
            *search_table(results),
            "",
            f"## Upsert, build and memory ({args.upserts} upserts of one new product each)",
            "",
            *write_table(results),
            "",
            "Client peak RSS: the run's process and its children but the Milvus server, data included (the "
            "data RSS column: after generating vectors, queries and the exact answers, before the store); "
            "server peak RSS: the embedded Milvus server's process (- for faiss, milvus-lite, which runs in the "
            "client, and a --milvus-uri server).",
            *(["", "## Not measured", "", *notes] if notes else []),
        ],
    )


if __name__ == "__main__":
    main()
