"""Re-ranking the served short list without retraining: local features, and a second embedding look.

The served model (embedding cosine over the whole catalog, the ``Searcher``'s default
``category=any``) finds the exact item of a simulated customer photo first ~90% of the
time and in its top 10 ~97%. This re-orders the top ``K`` with:

- ``orb`` / ``sift``: :mod:`vsearch.catalog.rerank`'s geometric verification (ratio test, RANSAC
  homography inliers; ``orb@input``: the query taken from the model's square input, which
  is all the server keeps of a photo, catalog photos from disk), under three rules:
  ``first`` (walk the list in cosine order, the first candidate with >= T inliers goes
  first; the module's rule), ``most`` (the candidate with the most inliers goes first if it
  has >= T), ``add`` (sort by cosine + w * log(1 + inliers));
- ``views``: a second embedding look at the query, the mean vector of the photo, its mirror
  and a centre crop (``--crop``), re-scoring the top K (``views-max``: the best of the three).

Protocol (as ``vsearch eval``): catalog = train + validation originals; queries = the seeded
customer photos of the validation items (``--seeds``, the first is ``vsearch eval``'s 7).
T and w are chosen on customer photos of ``--tune`` train items (seed ``--tune-seed``),
searched in the same pool, and only then read on validation. Class P@1 / MAP@R: validation
originals against the train split, the same re-ranker applied to their top K. Latency: the
added time per query of :func:`vsearch.catalog.rerank.rerank` on ``--timed`` photos, catalog
features kept (warm) and decoded from disk on the spot (cold), p50 / p90, on this machine.

    python -m experiments.rerank                 # saved_models/embedding, ~20 min on 2 cores (11 with cached vectors)
    python -m experiments.rerank --limit 60 --no-write   # a quick look

Rewrites ``experiments/results/rerank.md``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown, use_local_weights

use_local_weights()

THRESHOLDS = (6, 8, 10, 12, 15, 20, 25, 30, 40)
WEIGHTS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


# ---------------------------------------------------------------- data and vectors


def query_sets(data_dir: Path, seeds: list[int], tune: int, tune_seed: int, limit: int) -> dict:
    """Catalog, validation originals, and the customer-photo query sets (photos, pool targets)."""
    from experiments.branch_mix import load_queries
    from vsearch.images import load_image
    from vsearch.learn.evaluate import customer_queries

    data = load_queries(data_dir, customer_photos=False)
    cat, val = data["catalog"], data["queries"]
    n = len(cat.paths)
    sets = {}
    for seed in seeds:
        photos, targets = customer_queries(val.paths, seed, limit)
        sets[f"validation, seed {seed}"] = (photos, targets + n)
    chosen = targets if limit else np.arange(len(val.paths))
    hard = [harder_photo(load_image(val.paths[i]), np.random.default_rng([seeds[0], int(i)])) for i in chosen]
    sets[f"harder, seed {seeds[0]}"] = (hard, chosen + n)
    photos, targets = customer_queries(cat.paths, tune_seed, tune)
    sets[f"train (tuning), seed {tune_seed}"] = (photos, targets)
    return {"catalog": cat, "val": val, "sets": sets}


def harder_photo(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A customer photo our generator does not make: a perspective tilt, a bend and a hand in the way.

    :func:`vsearch.augment.customer_photo`, then the four corners moved by up to 10% of the
    side (a photo taken at an angle), a smooth sideways wave of up to 2.5% of the side (cloth
    that is not flat), and a grey patch over 8-20% of the picture (an occluding hand or bag).
    Re-ranking rules are chosen on plain customer photos; this shows whether they fail safe.
    """
    import cv2

    from vsearch.augment import customer_photo

    img = customer_photo(pixels, rng)
    h, w = img.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = corners + rng.uniform(-0.1, 0.1, (4, 2)).astype(np.float32) * np.float32([w, h])
    fill = tuple(int(v) for v in img[0, 0])
    img = cv2.warpPerspective(img, cv2.getPerspectiveTransform(corners, moved), (w, h), borderValue=fill)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    amp, period, phase = rng.uniform(0.01, 0.025) * w, rng.uniform(0.4, 1.0) * h, rng.uniform(0, 2 * np.pi)
    img = cv2.remap(
        img, xs + amp * np.sin(2 * np.pi * ys / period + phase), ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    area = rng.uniform(0.08, 0.2) * w * h
    pw, ph = int(np.sqrt(area * rng.uniform(0.6, 1.6))), int(np.sqrt(area / rng.uniform(0.6, 1.6)))
    x0, y0 = int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))
    img[y0 : y0 + ph, x0 : x0 + pw] = np.uint8(rng.integers(60, 200))
    return img


def model_view(photo: np.ndarray, embedder) -> np.ndarray:
    """The photo as the server holds it after decoding: the model's square input, as uint8."""
    from vsearch.images import resize_bilinear

    return np.clip(np.rint(resize_bilinear(photo, int(embedder.image_size))), 0, 255).astype(np.uint8)


def views(photos: list[np.ndarray], crop: float) -> list[np.ndarray]:
    """Each photo's mirror and centre crop (``crop`` of each side), interleaved."""
    out = []
    for p in photos:
        h, w = p.shape[:2]
        dy, dx = int(h * (1 - crop) / 2), int(w * (1 - crop) / 2)
        out += [np.ascontiguousarray(p[:, ::-1]), np.ascontiguousarray(p[dy : h - dy, dx : w - dx])]
    return out


# ---------------------------------------------------------------- re-ranking a short list


def shortlist(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) pool indices, best first by cosine (ties by index, as a stable sort)."""
    return np.argsort(-(queries @ pool.T), axis=1, kind="stable")[:, :k]


def inlier_matrix(query_feats: list, top: np.ndarray, pool_feats, config) -> np.ndarray:
    """(Q, K) inliers of each query against each short-listed pool photo."""
    from vsearch.catalog.rerank import inliers

    return np.array([[inliers(q, pool_feats(j), config) for j in row] for q, row in zip(query_feats, top)])


def order_by(rule: str, counts: np.ndarray, cosine: np.ndarray, value: float) -> np.ndarray:
    """(Q, K) new positions of each short list under a rule."""
    from vsearch.catalog.rerank import promote_first

    if rule == "first":
        return np.array([promote_first(c, value) for c in counts])
    if rule == "most":
        best = counts.argmax(axis=1)
        return np.array(
            [
                promote_first(np.arange(len(c)) == b, 1) if c[b] >= value else list(range(len(c)))
                for c, b in zip(counts, best)
            ]
        )
    return np.argsort(-(cosine + value * np.log1p(counts)), axis=1, kind="stable")  # "add"


def customer_recall(top: np.ndarray, order: np.ndarray, base_rank: np.ndarray, targets: np.ndarray) -> dict:
    """R@1 / R@10 of the targets after re-ordering the short lists (beyond K: the embedding's rank)."""
    ranked = np.take_along_axis(top, order, axis=1)
    hit = ranked == targets[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), np.maximum(base_rank, top.shape[1]))
    return {"R@1": float((rank < 1).mean()), "R@10": float((rank < 10).mean()), "first": rank < 1}


def class_metrics(full: np.ndarray, order: np.ndarray | None, qlabels, clabels) -> dict:
    """P@1 / MAP@R of a full catalog ranking whose first K columns are re-ordered."""
    from vsearch.learn.metrics import retrieval_metrics

    full = full.copy()
    if order is not None:
        k = order.shape[1]
        full[:, :k] = np.take_along_axis(full[:, :k], order, axis=1)
    o = retrieval_metrics(qlabels, clabels[full], clabels)
    return {"P@1": o["precision@1"], "MAP@R": o["map@r"]}


def inlier_spread(counts: dict, tops: dict, sets: dict, k: int = 10) -> dict:
    """Percentiles of the true item's inliers and of the best other candidate's, in the top ``k``."""

    def spread(names):
        true, other = [], []
        for name in names:
            hit = tops[name][:, :k] == sets[name][1][:, None]
            c = counts[name][:, :k]
            true += list(c[hit])
            other += list(np.where(hit, -1, c).max(axis=1))
        return {"true": np.percentile(true, [10, 50]), "other": [*np.percentile(other, [50, 99]), max(other)]}

    best = counts["class"][:, :k].max(axis=1)
    return {
        "validation customer photos, every seed": spread([s for s in sets if s.startswith("validation")]),
        "harder photos": spread([s for s in sets if s.startswith("harder")]),
        "validation originals vs the train split": {"other": [*np.percentile(best, [50, 99]), best.max()]},
    }


# ---------------------------------------------------------------- latency


def view_latency(embedder, photos, tops, pool, crop: float) -> dict[str, float]:
    """p50 / p90 ms of embedding a photo's mirror and centre crop and re-scoring its short list."""
    from vsearch.images import resize_bilinear

    size = int(embedder.image_size)
    times = []
    for photo, row in zip(photos, tops):
        start = time.perf_counter()
        batch = np.stack([resize_bilinear(v, size) for v in views([photo], crop)])
        extra = np.asarray(embedder.embed_pixels(batch))
        np.argsort(-(extra.mean(axis=0) @ pool[row].T))
        times.append(time.perf_counter() - start)
    return {"p50": 1e3 * float(np.median(times)), "p90": 1e3 * float(np.percentile(times, 90))}


def latency(photos, tops, pool_matches, config, warm) -> dict[str, float]:
    """p50 / p90 ms of :func:`vsearch.catalog.rerank.rerank` per query, catalog features kept or decoded."""
    from vsearch.catalog.rerank import FeatureCache, rerank

    cache = FeatureCache(config=config) if warm else FeatureCache(config=config, size=0)
    if warm:
        for row in tops:
            for j in row[: config.depth]:
                cache(pool_matches[j])
    times = []
    for photo, row in zip(photos, tops):
        start = time.perf_counter()
        rerank(photo, [pool_matches[j] for j in row], cache, config)
        times.append(time.perf_counter() - start)
    return {"p50": 1e3 * float(np.median(times)), "p90": 1e3 * float(np.percentile(times, 90))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"))
    ap.add_argument("--seeds", default="7,8,9", help="customer-photo seeds of the validation queries")
    ap.add_argument("--tune", type=int, default=400, help="train items whose customer photos choose T and w")
    ap.add_argument("--tune-seed", type=int, default=11)
    ap.add_argument("--depth", default="10,20", help="short-list lengths K")
    ap.add_argument(
        "--detectors",
        default="orb,sift,orb@input",
        help="@input: the query is the model's square input (what the server keeps), not the photo",
    )
    ap.add_argument("--crop", type=float, default=0.8)
    ap.add_argument("--timed", type=int, default=100, help="validation photos timed")
    ap.add_argument("--limit", type=int, default=0, help="validation photos per seed (0: all)")
    output_args(ap, "rerank", "experiments")
    args = ap.parse_args(argv)
    started = time.time()
    import cv2

    from vsearch.catalog.rerank import RerankConfig, local_features
    from vsearch.embedder import load_embedder
    from vsearch.learn.evaluate import embed_all

    depths = [int(v) for v in args.depth.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    data = query_sets(Path(args.data), seeds, args.tune, args.tune_seed, args.limit)
    cat, val, sets = data["catalog"], data["val"], data["sets"]
    tune_name = list(sets)[-1]
    embedder = load_embedder(args.model)
    pool_paths = cat.paths + val.paths
    pool, val_extra = cached_vectors(embedder, pool_paths, val.paths, args.crop)
    qvec = {name: embed_all(embedder, photos, 32, name) for name, (photos, _) in sets.items()}
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    vview = {}
    for name, (photos, _) in sets.items():  # (Q, 3, D): the photo, its mirror, its centre crop
        extra = embed_all(embedder, views(photos, args.crop), 32, f"{name}: views").reshape(len(photos), 2, -1)
        vview[name] = np.concatenate([qvec[name][:, None], extra], axis=1)
    n = len(cat.paths)
    val_vec, cat_vec = pool[n:], pool[:n]
    val_views = np.concatenate([val_vec[:, None], val_extra], axis=1)
    class_full = np.argsort(-(val_vec @ cat_vec.T), axis=1, kind="stable")
    K = max(depths)
    tops = {name: shortlist(qvec[name], pool, K) for name in sets}
    base_rank = {
        name: (qvec[name] @ pool.T > np.sum(qvec[name] * pool[t], axis=1)[:, None]).sum(axis=1)
        for name, (_, t) in sets.items()
    }

    # Every (set, re-ranker, K) -> (R@1, R@10), and class metrics of the validation originals.
    results: dict[tuple, dict] = {}
    for name in sets:
        results[(name, "embedding (served)", "", 0)] = customer_recall(
            tops[name], np.tile(np.arange(K), (len(tops[name]), 1)), base_rank[name], sets[name][1]
        )
    class_base = class_metrics(class_full, None, val.labels, cat.labels)
    class_rows = {("embedding (served)", "", 0): class_base}

    def record(label, param, k, order_of):
        for name, (_, targets) in sets.items():
            results[(name, label, param, k)] = customer_recall(
                tops[name][:, :k], order_of(name, k), base_rank[name], targets
            )
        class_rows[(label, param, k)] = class_metrics(class_full, order_of("class", k), val.labels, cat.labels)

    # The second embedding look: re-score the top K with the mean (or best) of three query views.
    for how in ("mean", "max"):

        def order_of(name, k, how=how):
            v = val_views if name == "class" else vview[name]
            top = class_full[:, :k] if name == "class" else tops[name][:, :k]
            cand = (cat_vec if name == "class" else pool)[top]  # (Q, k, D)
            sims = np.einsum("qvd,qkd->qvk", v, cand)
            score = np.einsum("qd,qkd->qk", unit(v.mean(axis=1)), cand) if how == "mean" else sims.max(axis=1)
            return np.argsort(-score, axis=1, kind="stable")

        for k in depths:
            record(f"views-{how} (photo, mirror, centre crop {args.crop:g})", "", k, order_of)

    # Local features: inliers of every short-listed candidate, once per detector.
    timings, spread = {}, {}
    first = list(sets)[0]
    timings[("views", True)] = view_latency(
        embedder, sets[first][0][: args.timed], tops[first][:, :10], pool, args.crop
    )
    cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's generator
    for det in args.detectors.split(","):
        config = RerankConfig(detector=det.split("@")[0], depth=K)
        as_input = det.endswith("@input")  # the query as the server holds it: the model's square input
        t0 = time.time()
        feats: dict[int, object] = {}

        def pool_feats(j, feats=feats, config=config):
            if j not in feats:
                feats[j] = local_features(load_image_rgb(pool_paths[j]), config)
            return feats[j]

        counts = {
            name: inlier_matrix(
                [local_features(model_view(p, embedder) if as_input else p, config) for p in photos],
                tops[name],
                pool_feats,
                config,
            )
            for name, (photos, _) in sets.items()
        }
        counts["class"] = inlier_matrix(
            [pool_feats(n + i) for i in range(len(val.paths))], class_full[:, :K], pool_feats, config
        )
        print(f"{det}: inliers in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        cosine = {name: np.take_along_axis(qvec[name] @ pool.T, tops[name], axis=1) for name in sets}
        cosine["class"] = np.take_along_axis(val_vec @ cat_vec.T, class_full[:, :K], axis=1)
        for rule, values in (("first", THRESHOLDS), ("most", THRESHOLDS), ("add", WEIGHTS)):
            for value in values:
                for k in depths:
                    record(
                        f"{det}-{rule}",
                        value,
                        k,
                        lambda name, k, det=det, rule=rule, value=value, c=counts, s=cosine: order_by(
                            rule, c[name][:, :k], s[name][:, :k], value
                        ),
                    )
        photos = [model_view(p, embedder) if as_input else p for p in sets[first][0][: args.timed]]
        matches = [{"id": str(j), "path": p} for j, p in enumerate(pool_paths)]
        chosen = best_param(results, tune_name, f"{det}-first", 10)
        for warm in (True, False):
            timings[(det, warm)] = latency(
                photos,
                tops[first][: args.timed],
                matches,
                RerankConfig(detector=config.detector, depth=10, min_inliers=chosen),
                warm,
            )
        spread[det] = inlier_spread(counts, tops, sets)
        print(f"{det}: latency {timings[(det, True)]}", file=sys.stderr)

    lines = report(
        args, results, class_rows, timings, spread, sets, tune_name, depths, len(pool_paths), time.time() - started
    )
    publish(args, "Re-ranking the short list (no retraining)", lines)
    return 0


def cached_vectors(embedder, pool_paths: list[str], val_paths: list[str], crop: float):
    """Pool vectors and the validation originals' (mirror, crop) vectors, kept in .cache/rerank per model."""
    import hashlib

    from vsearch.learn.evaluate import embed_all

    key = hashlib.sha1("\n".join([embedder.fingerprint, f"{crop:g}", *pool_paths]).encode()).hexdigest()[:16]
    path = ROOT / ".cache" / "rerank" / f"{key}.npz"
    if path.is_file():
        kept = np.load(path)
        return kept["pool"], kept["val_views"]
    pool = embed_all(embedder, pool_paths, 32, "catalog + validation originals")
    extra = embed_all(
        embedder, views([load_image_rgb(p) for p in val_paths], crop), 32, "val originals: views"
    ).reshape(len(val_paths), 2, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, pool=pool, val_views=extra)
    return pool, extra


def load_image_rgb(path):
    from vsearch.images import load_image

    return load_image(path)


def best_param(results: dict, tune_name: str, label: str, k: int):
    """The parameter of ``label`` with the best tuning R@1 at depth ``k``.

    Ties go to the most conservative setting (the highest threshold T, the lowest weight w):
    the one that moves fewest lists, safest on photos our generator did not make.
    """
    sign = -1 if label.endswith("-add") else 1
    cands = [
        (v["R@1"], sign * p if isinstance(p, (int, float)) else 0, p)
        for (s, lab, p, kk), v in results.items()
        if s == tune_name and lab == label and kk == k
    ]
    return max(cands)[2]


def report(args, results, class_rows, timings, spread, sets, tune_name, depths, pool_size, seconds) -> list[str]:
    val_sets = [s for s in sets if s.startswith("validation")]
    hard = next(s for s in sets if s.startswith("harder"))
    n_val = len(sets[val_sets[0]][1])

    def cells(label, param, k):
        r = {s: results[(s, label, param, k)] for s in sets}
        r1 = np.array([r[s]["R@1"] for s in val_sets])
        r10 = np.array([r[s]["R@10"] for s in val_sets])
        c = class_rows[(label, param, k)]
        now = np.concatenate([r[s]["first"] for s in val_sets])
        before = np.concatenate([results[(s, "embedding (served)", "", 0)]["first"] for s in val_sets])
        return " | ".join(
            [
                f"{r[tune_name]['R@1']:.3f}",
                *(f"{r[s]['R@1']:.3f}" for s in val_sets),
                f"{r1.mean():.3f} ± {r1.std():.3f}",
                f"{r10.mean():.3f}",
                f"{int((now & ~before).sum())} / {int((before & ~now).sum())}",
                f"{r[hard]['R@1']:.3f}",
                f"{r[hard]['R@10']:.3f}",
                f"{c['P@1']:.3f}",
                f"{c['MAP@R']:.3f}",
            ]
        )

    seed_cols = " | ".join(f"R@1 {s.split(', ')[1]}" for s in val_sets)
    head = [
        f"| re-ranker | T or w | K | tuning R@1 | {seed_cols} | val R@1 mean ± sd | val R@10 mean "
        "| val first: won / lost | harder R@1 | harder R@10 | class P@1 | class MAP@R |",
        "|---|---|---|---|" + "---|" * len(val_sets) + "---|---|---|---|---|---|---|",
    ]
    lines = [
        f"Model `{shown(args.model)}`; pool (catalog) = {pool_size} train + validation originals; "
        f"{n_val} validation customer photos per seed ({', '.join(s.split(', ')[1] for s in val_sets)}; "
        f"mean ± sd over the seeds); tuning: customer photos of {len(sets[tune_name][1])} train items "
        f'({tune_name.split(", ")[1]}), searched in the same pool. "harder": the {hard.split(", ")[1]} '
        "photos tilted in perspective, bent and partly covered (`harder_photo`), a stand-in for customer "
        "photos our generator does not make; nothing was tuned on them. Baseline = the served ranking (cosine "
        "over the whole catalog, `category=any`). Class P@1 / MAP@R: validation originals against the train "
        "split with the same re-ranker on their top K. T / w chosen on the tuning photos (best R@1 at K 10, "
        f'ties to the most conservative). "won / lost": validation photos (every seed) whose first result '
        f"became the item / stopped being it, against the served ranking. Run time {seconds / 60:.0f} min.",
        "",
        "## Chosen on the tuning split, read on validation",
        "",
        *head,
    ]
    lines.append(f"| embedding (served) | | | {cells('embedding (served)', '', 0)} |")
    labels = sorted({lab for (_, lab, _, _) in results if lab != "embedding (served)"})
    for label in labels:
        param = best_param(results, tune_name, label, 10)
        for k in depths:
            lines.append(f"| {label} | {param} | {k} | {cells(label, param, k)} |")
    lines += [
        "",
        "## Latency added per query (K 10, the `first` rule, `vsearch.catalog.rerank.rerank`)",
        "",
        f"{args.timed} validation customer photos ({val_sets[0].split(', ')[1]}), pixels in hand; the query's "
        "own features are included; warm: catalog features kept (`FeatureCache`), cold: each candidate "
        "decoded from disk and described on the spot. Includes the early stop at the first verified "
        "candidate. Other sessions shared the 2 cores, so these are upper bounds.",
        "",
        "| detector | warm p50 ms | warm p90 ms | cold p50 ms | cold p90 ms |",
        "|---|---|---|---|---|",
    ]
    for det in sorted({d for d, _ in timings} - {"views"}):
        w, c = timings[(det, True)], timings[(det, False)]
        lines.append(f"| {det} | {w['p50']:.1f} | {w['p90']:.1f} | {c['p50']:.1f} | {c['p90']:.1f} |")
    v = timings[("views", True)]
    lines += [
        "",
        f"The second embedding look (mirror and centre crop of the query embedded in one batch, top 10 "
        f"re-scored): p50 {v['p50']:.1f} ms, p90 {v['p90']:.1f} ms per query.",
        "",
        "## Inliers (K 10)",
        "",
        "| detector | photos | true item in the list: its inliers p10 / p50 | best other candidate p50 / p99 / max |",
        "|---|---|---|---|",
    ]
    for det, by in spread.items():
        for what, st in by.items():
            lines.append(
                f"| {det} | {what} | "
                + (f"{st['true'][0]:.0f} / {st['true'][1]:.0f}" if "true" in st else "(no true item)")
                + f" | {st['other'][0]:.0f} / {st['other'][1]:.0f} / {st['other'][2]:.0f} |"
            )
    lines += ["", "## Every setting (K 10; validation read for transparency, not for the choice)", "", *head]
    for label in labels:
        params = sorted({p for (_, lab, p, k) in results if lab == label and k == 10}, key=str)
        for p in sorted(params) if all(isinstance(x, (int, float)) for x in params) else params:
            lines.append(f"| {label} | {p} | 10 | {cells(label, p, 10)} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
