"""The served ranking, measured through the real ``Searcher``: what a customer gets by default.

``experiments/rerank.py`` and ``bench/`` measure the embedding; this runs every query through
:meth:`vsearch.catalog.search.Searcher.search_vector` over a FAISS store (:mod:`vsearch.learn.served_ranking`), the
re-rank fed the query's model input as the server feeds it, so the numbers are those of the
served road: the category handling (``auto``: cosine plus a soft prior for the voted
category; ``any``: cosine only) and the re-rank (on / off).

Protocol (as ``vsearch eval``): class P@1 / MAP@R: validation originals against a store of
the train split, the whole catalog ranked; customer R@1 / R@10: the seeded customer photos of
the validation items (``--seeds``, the first is ``vsearch eval``'s 7) against a store of
train + validation originals; "harder": the first seed's photos tilted, bent and partly
covered (``experiments.rerank.harder_photo``).

The prior's weight (``CATEGORY_PRIOR``) is chosen by a rule fixed beforehand: the largest
class MAP@R among the weights (``--weights``) whose customer R@10 is within ``--r10-slack`` of
the weight 0's and whose harder R@10 is within ``--harder-slack`` of it (ties to the smaller
weight). No other data can choose it: the model was trained on the train split's photos and
on customer views of its items, where the category vote is never wrong (a first attempt on
them found every weight equal). So the rule runs on validation, cross-fitted: the weight
chosen on the odd-numbered items is read on the even-numbered ones and vice versa, and the
table reports what that procedure gives, beside the weight the rule picks on all items.

    python -m experiments.served                 # saved_models/embedding, ~35 min on 2 cores
    python -m experiments.served --limit 60 --weights 0,0.05 --no-write   # a quick look
    python -m experiments.served --model saved_models/holdout/embedding --held-out longsleeve,shorts \
        --variants-weight 0.02 --baseline --out experiments/results/served-holdout.md   # trained without two classes

Rewrites ``experiments/results/served.md``. One training run: the spread shown is over photo
seeds, not over training seeds.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown, use_local_weights

use_local_weights()

WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2)


# ---------------------------------------------------------------- queries


def load_sets(data_dir: Path, seeds: list[int], limit: int) -> dict:
    """Splits, the validation items asked about, and their photo sets: name -> (photos, item index)."""
    from experiments.branch_mix import load_queries
    from experiments.rerank import harder_photo
    from vsearch.augment import customer_photo
    from vsearch.images import load_image

    data = load_queries(data_dir, customer_photos=False)
    val = data["queries"]
    items = np.arange(len(val.paths))  # the same items in every set (vsearch.learn.evaluate.customer_queries' photos)
    if limit:
        items = np.sort(np.random.default_rng(seeds[0]).choice(len(items), min(limit, len(items)), replace=False))
    originals = {int(i): load_image(val.paths[i]) for i in items}
    sets = {
        f"customer, seed {seed}": (
            [customer_photo(originals[int(i)], np.random.default_rng([seed, int(i)])) for i in items],
            items,
        )
        for seed in seeds
    }
    sets[f"harder, seed {seeds[0]}"] = (
        [harder_photo(originals[int(i)], np.random.default_rng([seeds[0], int(i)])) for i in items],
        items,
    )
    return {"catalog": data["catalog"], "val": val, "items": items, "sets": sets}


# ---------------------------------------------------------------- per-item figures


def per_item(searchers: dict, vectors: dict, data: dict, category: str, rerank: bool) -> dict:
    """Per asked validation item: class P@1 and AP@R of its original; rank of its item per photo set."""
    from vsearch.learn import metrics
    from vsearch.learn.served_ranking import full_rankings, target_ranks

    cat, val, items = data["catalog"], data["val"], data["items"]
    clabels, vlabels = np.asarray(cat.labels), np.asarray(val.labels)[items]
    order = full_rankings(
        searchers["train"],
        vectors["originals"][items],
        [data["originals"][i] for i in items],
        len(clabels),
        category,
        rerank,
    )
    relevant = clabels[order] == vlabels[:, None]
    num_relevant = np.bincount(clabels, minlength=vlabels.max() + 1)[vlabels]
    out = {"P@1": relevant[:, 0].astype(float), "AP@R": metrics.map_at_r(relevant, num_relevant)}
    for name, (photos, targets) in data["sets"].items():
        out[name] = target_ranks(
            searchers["both"], vectors[name], photos, np.asarray(targets) + len(clabels), category, rerank
        )
    return out


def summary(figures: dict, mask: np.ndarray) -> dict:
    """Means over the items in ``mask``: class P@1, MAP@R; customer R@1 / R@10 (mean and sd over seeds); harder."""
    customer = [name for name in figures if name.startswith("customer")]
    hard = next(name for name in figures if name.startswith("harder"))
    r1 = np.array([(figures[name][mask] < 1).mean() for name in customer])
    r10 = np.array([(figures[name][mask] < 10).mean() for name in customer])
    return {
        "P@1": float(figures["P@1"][mask].mean()),
        "MAP@R": float(figures["AP@R"][mask].mean()),
        "R@1": float(r1.mean()),
        "R@1 sd": float(r1.std()),
        "R@10": float(r10.mean()),
        "R@10 sd": float(r10.std()),
        "harder R@1": float((figures[hard][mask] < 1).mean()),
        "harder R@10": float((figures[hard][mask] < 10).mean()),
    }


def choose(grid: dict, mask: np.ndarray, r10_slack: float, harder_slack: float) -> float:
    """The rule: the best MAP@R among weights that keep customer and harder R@10 within their slack of weight 0's."""
    base = summary(grid[0.0], mask)
    allowed = [
        w
        for w, figures in grid.items()
        if summary(figures, mask)["R@10"] >= base["R@10"] - r10_slack - 1e-12
        and summary(figures, mask)["harder R@10"] >= base["harder R@10"] - harder_slack - 1e-12
    ]
    return max(sorted(allowed), key=lambda w: summary(grid[w], mask)["MAP@R"])


def cross_fitted(grid: dict, odd: np.ndarray, r10_slack: float, harder_slack: float) -> tuple[dict, dict]:
    """Each half read with the weight the other half chose: (per-item figures, {half: weight})."""
    chosen = {"even": choose(grid, odd, r10_slack, harder_slack), "odd": choose(grid, ~odd, r10_slack, harder_slack)}
    mixed = {key: np.where(odd, grid[chosen["odd"]][key], grid[chosen["even"]][key]) for key in grid[0.0]}
    return mixed, chosen


def frozen_baseline(data: dict, folder: Path, size: int) -> dict:
    """Per-item figures of the frozen ImageNet MobileNetV2 (GAP) features, cosine only, through the Searcher."""
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import KerasEmbedder
    from vsearch.learn import models
    from vsearch.learn.evaluate import embed_all
    from vsearch.learn.served_ranking import GivenVectors, photo_store

    cat, val = data["catalog"], data["val"]
    frozen = KerasEmbedder(models.build_pooled_features(models.build_backbone(size, "imagenet"), size), "frozen")
    frozen.fingerprint = "frozen-imagenet"
    pool = embed_all(frozen, list(cat.paths) + list(val.paths), 32, "frozen: catalog + validation")
    vectors = {
        "originals": pool[len(cat.paths) :],
        **{name: embed_all(frozen, photos, 32, f"frozen: {name}") for name, (photos, _) in data["sets"].items()},
    }
    names, n = list(cat.class_names), len(cat.paths)
    both = photo_store(
        folder / "frozen-pool.vsi",
        list(cat.paths) + list(val.paths),
        np.concatenate([cat.labels, val.labels]),
        names,
        pool,
        frozen.fingerprint,
    )
    train = photo_store(folder / "frozen-train.vsi", cat.paths, cat.labels, names, pool[:n], frozen.fingerprint)
    try:
        stand_in = GivenVectors(frozen)
        return per_item(
            {"both": Searcher(stand_in, both), "train": Searcher(stand_in, train)}, vectors, data, "any", False
        )
    finally:
        both.close()
        train.close()


def timed(searcher, vectors, photos, category: str, rerank: bool, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """ms per search (after a ranking pass over the same queries: catalog keypoints cached; the
    query's model input made before the clock starts, as the server has it), and whether the
    first product was verified."""
    times, verified = [], []
    for vector, photo in zip(vectors, photos):
        query = searcher.model_input(photo) if rerank else None
        start = time.perf_counter()
        first = searcher.search_vector(vector, k, category, rerank_query=query).matches[0]
        times.append(time.perf_counter() - start)
        verified.append(first.get("inliers", 0) >= searcher.rerank_config.min_inliers)
    return 1e3 * np.asarray(times), np.asarray(verified)


# ---------------------------------------------------------------- the run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "saved_models" / "embedding"))
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"))
    ap.add_argument("--seeds", default="7,8,9", help="customer-photo seeds of the validation queries")
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    ap.add_argument("--r10-slack", type=float, default=0.005, help="customer R@10 the prior may cost")
    ap.add_argument("--harder-slack", type=float, default=0.01, help="harder-photo R@10 the prior may cost")
    ap.add_argument("--limit", type=int, default=0, help="validation items asked about (0: all)")
    ap.add_argument("--more-keypoints", type=int, default=500, help="a re-rank with more keypoints, for comparison")
    ap.add_argument(
        "--variants-weight",
        type=float,
        default=None,
        metavar="W",
        help="the prior's weight for the variants table (default: the rule's choice)",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also the frozen ImageNet MobileNetV2 (global average pooling), cosine only, same photos",
    )
    ap.add_argument(
        "--held-out",
        default="",
        metavar="CLASSES",
        help="comma-separated classes the --model never trained on: the variants are also shown for "
        "their items and for the others (experiments/holdout.py trains such a model)",
    )
    output_args(ap, "served", "experiments")
    args = ap.parse_args(argv)

    from experiments.rerank import cached_vectors
    from vsearch.catalog.rerank import RerankConfig
    from vsearch.catalog.search import Searcher
    from vsearch.config import CATEGORY_PRIOR, SearchConfig
    from vsearch.embedder import load_embedder
    from vsearch.images import load_image
    from vsearch.learn.evaluate import embed_all
    from vsearch.learn.served_ranking import GivenVectors, photo_store

    started = time.time()
    weights = [float(w) for w in args.weights.split(",")]
    if 0.0 not in weights:
        ap.error("--weights must include 0 (the rule compares with it)")
    embedder = load_embedder(args.model)
    data = load_sets(Path(args.data), [int(s) for s in args.seeds.split(",")], args.limit)
    cat, val = data["catalog"], data["val"]
    names, n = list(cat.class_names), len(cat.paths)
    pool, _ = cached_vectors(embedder, list(cat.paths) + list(val.paths), val.paths, 0.8)
    vectors = {
        "originals": pool[n:],
        **{name: embed_all(embedder, photos, 32, name) for name, (photos, _) in data["sets"].items()},
    }
    data["originals"] = [load_image(p) for p in val.paths]
    odd = np.asarray(data["items"]) % 2 == 1
    stand_in = GivenVectors(embedder)
    grid, plain, timings = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        both = photo_store(
            Path(tmp) / "pool.vsi",
            list(cat.paths) + list(val.paths),
            np.concatenate([cat.labels, val.labels]),
            names,
            pool,
            embedder.fingerprint,
        )
        train = photo_store(Path(tmp) / "train.vsi", cat.paths, cat.labels, names, pool[:n], embedder.fingerprint)

        def searchers(weight, config=RerankConfig()):
            settings = SearchConfig(category_prior=weight, reranker=config)
            return {"both": Searcher(stand_in, both, settings), "train": Searcher(stand_in, train, settings)}

        for weight in weights:  # the default, auto with the re-rank, at every weight
            grid[weight] = per_item(searchers(weight), vectors, data, "auto", True)
            print(
                f"auto, re-rank, weight {weight:g}: {summary(grid[weight], np.ones_like(odd))}",
                file=sys.stderr,
                flush=True,
            )
        chosen = choose(grid, np.ones_like(odd), args.r10_slack, args.harder_slack)
        shown_weight = chosen if args.variants_weight is None else args.variants_weight
        mixed, halves = cross_fitted(grid, odd, args.r10_slack, args.harder_slack)
        variants = {
            "any, re-rank off": ("any", False, RerankConfig()),
            "any, re-rank on": ("any", True, RerankConfig()),
            "auto, re-rank off": ("auto", False, RerankConfig()),
            f"**auto, re-rank on ({RerankConfig().features} keypoints)**": ("auto", True, RerankConfig()),
            f"auto, re-rank on ({args.more_keypoints} keypoints)": (
                "auto",
                True,
                replace(RerankConfig(), features=args.more_keypoints),
            ),
        }
        first = next(iter(data["sets"]))
        for label, (category, rerank, config) in variants.items():
            s = searchers(shown_weight, config)
            plain[label] = per_item(s, vectors, data, category, rerank)  # also fills the keypoint caches
            timings[label] = (
                timed(s["both"], vectors[first], data["sets"][first][0], category, rerank),
                timed(
                    s["train"],
                    vectors["originals"][data["items"]],
                    [data["originals"][i] for i in data["items"]],
                    category,
                    rerank,
                ),
            )
        if args.baseline:
            plain["frozen ImageNet MobileNetV2 (GAP), cosine"] = frozen_baseline(data, Path(tmp), embedder.image_size)
        both.close()
        train.close()
    lines = report(
        args,
        data,
        grid,
        chosen,
        shown_weight,
        halves,
        mixed,
        plain,
        timings,
        CATEGORY_PRIOR,
        odd,
        time.time() - started,
    )
    if args.held_out:
        lines += by_group(plain, data, [c for c in args.held_out.split(",") if c])
    publish(args, "The served ranking (the Searcher's defaults), measured", lines)
    return 0


def report(args, data, grid, chosen, shown_weight, halves, mixed, plain, timings, default, odd, seconds) -> list[str]:
    every = np.ones_like(odd)
    seeds = [name.split("seed ")[1] for name in data["sets"] if name.startswith("customer")]

    def cells(s: dict) -> str:
        return (
            f"{s['P@1']:.3f} | {s['MAP@R']:.3f} | {s['R@1']:.3f} ± {s['R@1 sd']:.3f} | "
            f"{s['R@10']:.3f} ± {s['R@10 sd']:.3f} | {s['harder R@1']:.3f} | {s['harder R@10']:.3f}"
        )

    head = "| class P@1 | class MAP@R | customer R@1 | customer R@10 | harder R@1 | harder R@10 |"
    lines = [
        f"Model `{shown(args.model)}` (one training run); {len(data['items'])} validation items; catalog for "
        f"customer photos: {len(data['catalog'].paths)} train + {len(data['val'].paths)} validation originals; "
        f"customer photo seeds {', '.join(seeds)} (mean ± sd over them); class metrics: the validation "
        "originals against the train split, the whole catalog ranked. Every query goes through "
        "`Searcher.search_vector` (the re-rank gets the query's 224 px model input). "
        f"Run time {seconds / 60:.0f} min.",
        "",
        f"## The served variants (weight {shown_weight:g})",
        "",
        "| variant " + head + " ms p50 (customer) | ms p50 (originals) | originals verified |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, figures in plain.items():
        if label not in timings:  # a baseline: the plain cosine road, timed in the first row
            lines.append(f"| {label} | {cells(summary(figures, every))} | | | |")
            continue
        (customer_ms, _), (originals_ms, verified) = timings[label]
        lines.append(
            f"| {label} | {cells(summary(figures, every))} | {np.median(customer_ms):.2f} | "
            f"{np.median(originals_ms):.2f} | {verified.mean():.3f} |"
        )
    lines += [
        "",
        "Bold: the defaults. ms: `search_vector` in process, k 10, vectors given (no decoding, no "
        "model), catalog keypoints cached: a second pass over the first seed's customer photos (their item "
        "is in the catalog: the walk stops at it) and over the validation originals against the train split "
        "(their item is not: all 10 are compared). Other work may have shared the machine: compare rows. "
        '"originals verified": validation originals, whose item is not in the train catalog, whose first '
        "product was verified: another product moved first on the strength of shared keypoints (a similar "
        "print or logo).",
        "",
        "## The prior's weight (`category=auto`, re-rank on)",
        "",
        "| weight " + head,
        "|---|---|---|---|---|---|---|",
    ]
    for weight, figures in grid.items():
        lines.append(f"| {weight:g} | {cells(summary(figures, every))} |")
    lines.append(
        f"| cross-fitted (odd items read at {halves['odd']:g}, even at {halves['even']:g}) | "
        f"{cells(summary(mixed, every))} |"
    )
    lines += [
        "",
        f"The rule (best MAP@R among weights whose customer R@10 is within {args.r10_slack:g} and harder "
        f"R@10 within {args.harder_slack:g} of weight 0's) picks {chosen:g} on all items; "
        f"`vsearch.config.CATEGORY_PRIOR` is {default:g}. Cross-fitted: the weight chosen on the even items "
        f"({halves['odd']:g}) read on the odd ones and the one chosen on the odd items ({halves['even']:g}) "
        "on the even ones: what choosing by the rule gives on items it did not see.",
    ]
    return lines


def by_group(plain: dict, data: dict, held_out: list[str]) -> list[str]:
    """The variants on the items of the classes the model never trained on, and on the others."""
    names = list(data["catalog"].class_names)
    unknown = sorted(set(held_out) - set(names))
    if unknown:
        raise SystemExit(f"--held-out: no such class {unknown}; the classes are {names}")
    labels = np.asarray(data["val"].labels)[data["items"]]
    new = np.isin(labels, [names.index(c) for c in held_out])
    lines = [
        "",
        f"## Categories the model never trained on ({', '.join(held_out)}: {int(new.sum())} items) "
        f"and the others ({int((~new).sum())})",
        "",
        "| variant | group | class P@1 | class MAP@R | customer R@1 | customer R@10 | harder R@1 | harder R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, figures in plain.items():
        for group, mask in (("new", new), ("trained", ~new)):
            s = summary(figures, mask)
            lines.append(
                f"| {label} | {group} | {s['P@1']:.3f} | {s['MAP@R']:.3f} | {s['R@1']:.3f} ± "
                f"{s['R@1 sd']:.3f} | {s['R@10']:.3f} ± {s['R@10 sd']:.3f} | {s['harder R@1']:.3f} | "
                f"{s['harder R@10']:.3f} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
