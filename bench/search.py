"""Vector search at catalog scale: exact vs HNSW FAISS indexes on synthetic unit vectors.

For each size (default 10k, 100k, 1M) and index kind: build time, memory added by the
index (RSS), p50/p99 latency of one query at a time on one thread (what a request costs),
and recall@10 against exact search.

    python -m bench.search                       # 10k, 100k, 1M; about 15 min on 2 cores
    python -m bench.search --sizes 10000 --no-write

Data: unit vectors drawn from a Gaussian with the covariance of the real catalog's
embeddings (``--like faiss:saved_models/catalog.vsi``: a store's photo vectors), so their
spectrum is that of real embeddings; without that store, or with ``--like none``,
isotropic vectors of ``--dim`` dimensions, the hardest case for any approximate index (all
neighbours almost equally far). Queries are fresh draws from the same distribution.
Rewrites ``bench/results/search.md``.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def local_store(like: str) -> str | None:
    """``like`` as a store spec when it names an embedded (``faiss:``) store that exists, else None."""
    from vsearch.stores import parse_spec

    if like == "none":
        return None
    backend, where = parse_spec(like)
    return f"{backend}:{where}" if backend == "faiss" and Path(where).is_file() else None


def sampler(like: str | None, dim: int, seed: int = 0):
    """A function n -> (n, dim) float32 unit vectors (shaped like the store ``like``'s when given)."""
    rng = np.random.default_rng(seed)
    if like is not None:
        from vsearch.stores import open_store

        store = open_store(like)
        real = store.vectors()[1].astype(np.float64)
        store.close()
        dim = real.shape[1]
        mean, cov = real.mean(axis=0), np.cov(real, rowvar=False)
        vals, vecs = np.linalg.eigh(cov)
        transform = vecs * np.sqrt(np.clip(vals, 0, None))
    else:
        mean, transform = np.zeros(dim), np.eye(dim)

    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            x = mean + rng.standard_normal((m, dim)) @ transform.T
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw, dim


def latencies(index, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        out.append((time.perf_counter() - t) * 1000)
    return np.array(out)


def main() -> None:
    import faiss

    from vsearch.stores.rows import FaissIndex, recall_at_k

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument(
        "--like",
        default=f"faiss:{ROOT / 'saved_models' / 'catalog.vsi'}",
        help="faiss store whose photo vectors' covariance shapes the synthetic data, or 'none'",
    )
    ap.add_argument("--dim", type=int, default=391, help="dimension of isotropic vectors (--like none)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--ef-search", default="64,128")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    output_args(ap, "search")
    args = ap.parse_args()
    like = local_store(args.like)
    draw, dim = sampler(like, args.dim)
    queries = draw(args.queries)
    rows, cores = [], faiss.omp_get_max_threads()
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = draw(size)
        ids = [str(i) for i in range(size)]
        faiss.omp_set_num_threads(cores)
        exact = FaissIndex(dim, "exact")
        gc.collect()
        before = rss_mb()
        t = time.perf_counter()
        exact.add(ids, vectors)
        build = time.perf_counter() - t
        mem = rss_mb() - before
        truth = exact.search(queries, 10)[1]  # batched: the ground truth
        faiss.omp_set_num_threads(1)  # one query at a time, one thread: what a request costs
        lat = latencies(exact, queries, 10)
        rows.append((size, "exact (IndexFlatIP)", build, mem, np.percentile(lat, 50), np.percentile(lat, 99), 1.0))
        print(rows[-1], flush=True)
        del exact
        gc.collect()
        faiss.omp_set_num_threads(cores)
        hnsw = FaissIndex(dim, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
        before = rss_mb()
        t = time.perf_counter()
        hnsw.add(ids, vectors)
        build = time.perf_counter() - t
        mem = rss_mb() - before
        faiss.omp_set_num_threads(1)
        for ef in (int(e) for e in args.ef_search.split(",")):
            hnsw.ef_search = ef
            recall = recall_at_k(hnsw.search(queries, 10)[1], truth, 10)
            lat = latencies(hnsw, queries, 10)
            rows.append(
                (
                    size,
                    f"HNSW M={args.hnsw_m} efC={args.ef_construction} efSearch={ef}",
                    build,
                    mem,
                    np.percentile(lat, 50),
                    np.percentile(lat, 99),
                    recall,
                )
            )
            print(rows[-1], flush=True)
        del hnsw, vectors
        gc.collect()

    data = f"Gaussian with the covariance of {shown(like.partition(':')[2])}'s vectors" if like else "isotropic"
    table = [
        "| vectors | index | build s | index memory MB | p50 ms | p99 ms | recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {n:,} | {kind} | {b:.1f} | {m:.0f} | {p50:.2f} | {p99:.2f} | {r:.3f} |"
        for n, kind, b, m, p50, p99, r in rows
    ]
    publish(
        args,
        "Vector search: exact vs HNSW",
        [
            f"Data: {data}, {dim}-d, unit norm; {len(queries)} queries, one at a time on one thread (build on "
            "all cores); recall against exact search.",
            "",
            *table,
        ],
    )


if __name__ == "__main__":
    main()
