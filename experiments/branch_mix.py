"""Re-weights the trained tower's branches after training: the class / instance trade-off.

The exported embedding is ``normalize([sqrt(w) * class_mix, sqrt(1 - w) * instance])`` with
``class_mix = normalize([class_projection, p * probabilities])``. The branch outputs do not
depend on ``w`` or ``p``, so one pass over the images gives the metrics of every mix: this
shows how much of a change of ``class_weight`` / ``class_probs_weight`` needs no retraining
(the instance branch was trained under the configured mix, so a full ``vsearch siamese``
confirms the choice).

    python -m experiments.branch_mix                       # saved_models/siamese/tower.keras
    python -m experiments.branch_mix --w 0.25,0.3,0.35 --p 0.5,1,2,4

Metrics as `vsearch eval` computes them, through the same road: validation queries against
the train split (P@1, MAP@R), and the same seeded customer photos against train +
validation originals (R@1, R@10). Needs `make demo`. Rewrites
`experiments/results/branch_mix.md`. ``load_queries``, ``embed_queries``,
``branch_outputs`` and ``mix`` serve the other experiments too.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown, use_local_weights

use_local_weights()


def load_queries(data_dir: Path, seed: int = 7, customer_photos: bool = True) -> dict:
    """Catalog (train split), queries (validation split) and the seeded customer photos of the queries.

    ``customer_photos=False`` leaves out the photos (``photos`` and ``targets``) for callers
    that make their own.
    """
    from vsearch.config import DataConfig
    from vsearch.learn.datasets import load_splits
    from vsearch.learn.evaluate import customer_queries

    cat, val = load_splits(DataConfig(data_dir=str(data_dir)), ROOT / "reports" / ".clean")
    if not customer_photos:
        return {"catalog": cat, "queries": val}
    photos, targets = customer_queries(val.paths, seed)
    return {"catalog": cat, "queries": val, "photos": photos, "targets": targets}


def embed_queries(embedder, data: dict) -> dict[str, np.ndarray]:
    """Vectors of the catalog, the queries and the customer photos of :func:`load_queries`."""
    from vsearch.learn.evaluate import embed_all

    return {
        "catalog": embed_all(embedder, data["catalog"].paths, 32, "catalog"),
        "queries": embed_all(embedder, data["queries"].paths, 32, "queries"),
        "customer": embed_all(embedder, data["photos"], 32, "customer photos"),
    }


def branch_outputs(tower_path: Path, data: dict) -> dict[str, list[np.ndarray]]:
    """(class_l2, probs, instance_l2) of catalog, queries and customer photos (:func:`load_queries`)."""
    import keras

    import vsearch.learn.models  # noqa: F401  (registers the custom layers)
    from vsearch.embedder import KerasEmbedder

    tower = keras.saving.load_model(tower_path)
    outputs = [tower.get_layer(n).output for n in ("class_l2", "class_head", "instance_l2")]
    split = [o.shape[-1] for o in outputs]
    parts = keras.Model(tower.input, keras.layers.Concatenate()(outputs))
    vectors = embed_queries(KerasEmbedder(parts, normalize=False), data)
    return {name: np.split(v, np.cumsum(split)[:-1], axis=1) for name, v in vectors.items()}


def mix(parts, w: float, p: float) -> np.ndarray:
    """The two-branch head of :func:`vsearch.learn.models.two_branch_head`, in numpy."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)  # noqa: E731
    cls, probs, inst = parts
    cls = unit(np.concatenate([cls, p * probs], axis=1)) if p > 0 else cls
    return unit(np.concatenate([np.sqrt(w) * cls, np.sqrt(1 - w) * inst], axis=1))


def main(argv=None) -> int:
    from vsearch.learn.evaluate import class_retrieval, customer_matching

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", default=str(ROOT / "saved_models" / "siamese" / "tower.keras"))
    ap.add_argument("--data", default=str(ROOT / "data" / "photos"))
    ap.add_argument("--w", default="0.2,0.25,0.3,0.35,0.4")
    ap.add_argument("--p", default="0,0.5,1,1.5,2,3")
    output_args(ap, "branch_mix", "experiments")
    args = ap.parse_args(argv)
    data = load_queries(Path(args.data))
    out = branch_outputs(Path(args.tower), data)
    ycat, yval, targets, names = (
        data["catalog"].labels,
        data["queries"].labels,
        data["targets"],
        data["catalog"].class_names,
    )
    lines = [
        f"Tower `{shown(args.tower)}`: {len(ycat)} catalog items, {len(yval)} queries. Its class, "
        "probability and instance outputs recombined for each class weight `w` and probability weight `p`; "
        "only the mix the instance branch was trained under is the exported model.",
        "",
        "| class_weight | class_probs_weight | P@1 | MAP@R | customer R@1 | customer R@10 |",
        "|---|---|---|---|---|---|",
    ]
    for w in (float(v) for v in args.w.split(",")):
        for p in (float(v) for v in args.p.split(",")):
            cat, qry, cust = (mix(out[k], w, p) for k in ("catalog", "queries", "customer"))
            o = class_retrieval(qry, yval, cat, ycat, names)["overall"]
            c = customer_matching(cust, targets, cat, qry)
            lines.append(
                f"| {w:g} | {p:g} | {o['precision@1']:.3f} | {o['map@r']:.3f} | "
                f"{c['recall@1']:.3f} | {c['recall@10']:.3f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    publish(args, "Branch mix: class / instance trade-off of a trained tower", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
