"""New categories: how a tower trained without some classes retrieves them.

A shop adds categories the model never saw. This measures it on our data: train both
stages on a copy of the data without the ``--held-out`` classes, then embed the whole
data with that tower and score the held-out classes' validation photos against the whole
catalog (every class, as a shop's catalog would be):

- class retrieval (P@1, MAP@R): do a new category's items come back among its own items,
  or among the trained categories they resemble?
- customer R@1 / R@10: a simulated customer photo of a new-category item against catalog +
  validation originals (``vsearch eval``'s seeded photos).

The trained classes' queries are scored too, for contrast. As in ``experiments.branch_mix``, the
tower's class, probability and instance outputs are recombined in numpy for each class
weight ``w`` and probability weight ``p``: ``w 0`` is the instance branch alone, ``w 1 p 0``
the classifier's projected features alone; the configured mix is the exported model.
Baselines: frozen ImageNet MobileNetV2 (GAP) and, with ``--oracle``, the tower trained on
every class (an upper bound: it saw the held-out classes).

    mkdir -p data/holdout5/{train,validation}
    for s in train validation; do for c in dress hat pants shoes t-shirt; do
      ln -sfn "$PWD/data/photos/$s/$c" data/holdout5/$s/$c; done; done
    vsearch train --set data.data_dir=data/holdout5 --set out_dir=saved_models/holdout/classifier
    vsearch siamese --set data.data_dir=data/holdout5 --set classifier_dir=saved_models/holdout/classifier \\
        --set out_dir=saved_models/holdout/embedding --set work_dir=saved_models/holdout/siamese
    python -m experiments.holdout --held-out longsleeve,shorts --oracle saved_models/siamese/tower.keras

Rewrites ``experiments/results/holdout.md``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown
from experiments.branch_mix import branch_outputs, embed_queries, load_queries, mix


def scores(cat, qry, cust, ycat, yval, targets, names, queries: np.ndarray) -> dict:
    """Class retrieval and customer matching of the validation ``queries`` (indices)."""
    from vsearch.learn.evaluate import class_retrieval, customer_matching

    overall = class_retrieval(qry[queries], yval[queries], cat, ycat, names)["overall"]
    chosen = np.isin(targets, queries)
    customer = customer_matching(cust[chosen], targets[chosen], cat, qry)
    return {
        "P@1": overall["precision@1"],
        "MAP@R": overall["map@r"],
        "R@1": customer["recall@1"],
        "R@10": customer["recall@10"],
    }


def row(label: str, result: dict[str, dict]) -> str:
    cells = [f"{result[group][k]:.3f}" for group in ("new", "trained") for k in ("P@1", "MAP@R", "R@1", "R@10")]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tower",
        default=str(ROOT / "saved_models" / "holdout" / "siamese" / "tower.keras"),
        help="tower.keras trained without the held-out classes",
    )
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"), help="every class")
    ap.add_argument("--held-out", default="longsleeve,shorts")
    ap.add_argument("--oracle", default="", help="tower.keras trained on every class (optional)")
    ap.add_argument("--w", default="0,0.2,0.3,0.5,1")
    ap.add_argument("--p", default="0,1")
    ap.add_argument("--seed", type=int, default=7)
    output_args(ap, "holdout", "experiments")
    args = ap.parse_args(argv)
    data = Path(args.data)

    train = data / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    unknown = sorted(set(args.held_out.split(",")) - set(classes))
    if unknown:  # checked before the slow part
        ap.error(f"--held-out: {', '.join(unknown)} not among the classes of {train}: {', '.join(classes) or 'none'}")
    from vsearch.embedder import KerasEmbedder
    from vsearch.learn import models  # after the check: importing TensorFlow takes seconds

    queries = load_queries(data, args.seed)  # once, for every embedding below
    ycat, yval, targets = queries["catalog"].labels, queries["queries"].labels, queries["targets"]
    names = queries["catalog"].class_names
    held = [names.index(c) for c in args.held_out.split(",")]
    new = np.flatnonzero(np.isin(yval, held))
    trained = np.flatnonzero(~np.isin(yval, held))
    groups = {"new": new, "trained": trained}
    lines = [
        f"Tower `{shown(args.tower)}`; held out {args.held_out}: {int(np.isin(ycat, held).sum())} catalog "
        f'items, {len(new)} queries ("new"); trained classes: {len(trained)} queries; catalog {len(ycat)} '
        "items. Customer R@1 / R@10: the seeded customer photo of each query against catalog + validation "
        "originals, as in `vsearch eval`.",
        "",
        "| embedding | new P@1 | new MAP@R | new cust R@1 | new cust R@10 "
        "| trained P@1 | trained MAP@R | trained cust R@1 | trained cust R@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def add(label: str, cat, qry, cust) -> None:
        lines.append(row(label, {g: scores(cat, qry, cust, ycat, yval, targets, names, q) for g, q in groups.items()}))
        print(lines[-1], file=sys.stderr, flush=True)

    frozen = KerasEmbedder(models.build_pooled_features(models.build_backbone(224, "imagenet"), 224))
    vectors = embed_queries(frozen, queries)
    add("frozen ImageNet MobileNetV2 (GAP)", *(vectors[k] for k in ("catalog", "queries", "customer")))
    out = branch_outputs(Path(args.tower), queries)
    for w in (float(v) for v in args.w.split(",")):
        for p in (0.0,) if w == 0 else (float(v) for v in args.p.split(",")):
            add(f"held-out tower, w {w:g}, p {p:g}", *(mix(out[k], w, p) for k in ("catalog", "queries", "customer")))
    if args.oracle:
        oracle = branch_outputs(Path(args.oracle), queries)
        add(
            "tower trained on every class (w 0.3, p 1)",
            *(mix(oracle[k], 0.3, 1.0) for k in ("catalog", "queries", "customer")),
        )
    publish(args, "New categories: a tower trained without some classes", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
