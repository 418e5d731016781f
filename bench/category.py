"""Search restricted to one category (``--category NAME``, ``category=`` of the API) at scale.

A catalog of synthetic unit vectors (``bench.search``'s sampler: the real catalog's
covariance, or isotropic without one) whose items fall in categories of a few sizes, from
a handful of items to half the catalog. For each index kind and category size: p50 / p99
latency of one query at a time through ``Searcher.search_vector(q, k, category)``, and
its recall@k against an exact search over that category's vectors. The ``widening`` rows
time the alternative on the same index and queries: an ordinary search, 4x deeper each
round until k items of the category come back. Where the two cost the same sets
``vsearch.search.SCAN_CATEGORY_SHARE``.

    python -m bench.category                    # 200k items; about 10 min on 2 cores
    python -m bench.category --size 20000 --no-write

Rewrites ``bench/results/category.md``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import ROOT, output_args, publish
from bench.search import sampler


class _Model:
    """The searcher's model, as far as a search by vector needs it."""

    image_size = 224

    def __init__(self, dim: int):
        self.dim, self.fingerprint = dim, "bench"


def widening(catalog, vector: np.ndarray, category: str, k: int) -> list[dict]:
    """Widens an ordinary search until k items of ``category`` come back."""
    depth = max(4 * k, 64)
    while True:
        found = catalog.search(vector[None], depth)[0]
        hits = [m for m in found if m.get("category") == category]
        if len(hits) >= k or depth >= len(catalog):
            return hits[:k]
        depth *= 4


def timed(fn, queries: np.ndarray) -> tuple[np.ndarray, list]:
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    return np.array(times), out


def main() -> None:
    from vsearch.index import Catalog, FaissIndex
    from vsearch.search import Searcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=200_000)
    ap.add_argument("--like", default=str(ROOT / "saved_models" / "catalog.vsi"))
    ap.add_argument("--dim", type=int, default=391, help="dimension of isotropic vectors (--like none)")
    ap.add_argument("--shares", default="0.00002,0.001,0.01,0.1,0.5", help="category sizes, shares of the catalog")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--widening-queries", type=int, default=3,
                    help="queries for widening (over a minute each for a tiny category of an HNSW index)")
    ap.add_argument("-k", type=int, default=10)
    output_args(ap, "category")
    args = ap.parse_args()
    started = time.perf_counter()

    draw, dim = sampler(args.like, args.dim)
    vectors, queries = draw(args.size), draw(args.queries)
    shares = [float(s) for s in args.shares.split(",")]
    rng = np.random.default_rng(1)
    categories = np.full(args.size, "rest", dtype=object)
    order, start = rng.permutation(args.size), 0
    names = []
    for share in shares:
        n = max(1, int(round(share * args.size)))
        names.append((f"c{n}", n))
        categories[order[start:start + n]] = f"c{n}"
        start += n
    items = [{"id": str(i), "category": str(c)} for i, c in enumerate(categories)]

    rows = []
    for kind in ("exact", "hnsw"):
        t = time.perf_counter()
        catalog = Catalog(dim, "bench", index=FaissIndex(dim, kind))
        catalog.add(items, vectors)
        build_s = time.perf_counter() - t
        searcher = Searcher(_Model(dim), catalog)
        searcher.search_vector(queries[0], args.k, names[0][0])  # groups the ids by category once
        for name, n in names:
            members = np.flatnonzero(categories == name)
            exact = [set(map(str, members[np.argsort(-(vectors[members] @ q))[:args.k]])) for q in queries]
            for method, fn, qs in (
                    ("Searcher", lambda q: searcher.search_vector(q, args.k, name).matches, queries),
                    ("widening", lambda q: widening(catalog, q, name, args.k), queries[:args.widening_queries])):
                times, found = timed(fn, qs)
                recall = np.mean([len({m["id"] for m in f} & e) / min(args.k, n) for f, e in zip(found, exact)])
                rows.append((kind, n, method, len(qs), np.percentile(times, 50), np.percentile(times, 99), recall))
                print(f"{kind} {n} {method}: p50 {rows[-1][4]:.1f} ms, recall {recall:.3f}", flush=True)
        print(f"{kind}: built in {build_s:.0f} s", flush=True)

    lines = [f"{args.size:,} items of dimension {dim}, k {args.k}, one query at a time; recall@k against an "
             f"exact search over the category's vectors; {time.perf_counter() - started:.0f} s. `Searcher`: "
             "`Searcher.search_vector(q, k, category)`; `widening`: an ordinary search, 4x deeper each round "
             "until k items of the category come back.", "",
             "| index | category items | method | queries | p50 ms | p99 ms | recall@k |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {kind} | {n:,} | {method} | {q} | {p50:.1f} | {p99:.1f} | {rec:.3f} |"
              for kind, n, method, q, p50, p99, rec in rows]
    publish(args, "Category-restricted search", lines)


if __name__ == "__main__":
    main()
