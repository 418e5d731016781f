"""Catalog embedding throughput: `vsearch embed` on Beam's DirectRunner, 1 vs 2 workers, against `vsearch index build`.

Each variant is the command line a user would type, run in a fresh subprocess over the
same catalog and timed from start to exit (Python start-up, model loading and the
pipeline's own start-up included, since a user waits for them too); photos/s is the
catalog's photos over that time. The variants, one run each, in this order:

* `index build`: `vsearch index build` (`embed_images`: decoding threads overlapped with
  the model; the runtime's default inference threads);
* `embed, 1 worker`: `vsearch embed ... --threads 1` on the in-memory DirectRunner;
* `embed, 2 workers`: `vsearch embed ... --threads 1 -- --direct_num_workers 2
  --direct_running_mode multi_processing` (one inference thread per worker).

Issue 20's targets: 2 workers >= 1.7x one worker; one worker within 20% of `index build`.
The last pipeline run's vectors are compared with the index's (cosine per photo) and its
dead letters with the corrupt files planted. Peak RSS is the largest single process of a
variant (a worker's, under multi_processing).

The catalog is `--catalog DIR` (e.g. `data/clothing/train`) or synthetic: `--photos N`
generated 400x533 JPEGs (the clothing photos' size) in three category folders, plus
`--corrupt K` corrupt files. The model is `--model` (default
`saved_models/embedding.tflite`); `--model synthetic` exports an untrained MobileNetV2
tower of the served shape (224 px, 256-d; the same work per photo as the trained model)
and its LiteRT fp32 conversion into a temporary folder.

    python -m bench.pipeline                               # 2,000 synthetic photos + 20 corrupt
    python -m bench.pipeline --model synthetic --photos 300 --no-write

Needs `pip install 'vsearch[beam]'` (`make venv` installs it). Rewrites `bench/results/pipeline.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, shown

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Runs a command and reports the largest RSS of it and its descendants (they are waited for).
MEASURE = ("import json, resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
           "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
           "open(sys.argv[1], 'w').write(json.dumps({'code': code, 'peak_kib': peak}))\n")


def synthetic_catalog(root: Path, photos: int, corrupt: int) -> tuple[Path, set[str]]:
    """``photos`` noisy 400x533 JPEGs in three category folders, and ``corrupt`` files that are not."""
    from vsearch.synthetic import COLOURS, product_photo

    colours = list(COLOURS.items())
    for i in range(photos):
        name, colour = colours[i % len(colours)]
        (root / name).mkdir(parents=True, exist_ok=True)
        product_photo(colour, i, size=(400, 533)).save(root / name / f"{i:06d}.jpg", quality=90)
    planted = set()
    for i in range(corrupt):
        path = root / "corrupt" / f"{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG " + bytes([i % 256]) * 64)
        planted.add(str(path.resolve()))
    return root, planted


def synthetic_model(root: Path) -> Path:
    """An untrained MobileNetV2 tower of the served shape, exported and converted to LiteRT fp32."""
    import keras

    from vsearch import models
    from vsearch.export import export_embedding
    from vsearch.tflite import export_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    x = models.preprocessing_layer()(inputs)
    x = keras.layers.GlobalAveragePooling2D()(models.build_backbone(224, "none")(x))
    outputs = models.L2Normalize()(keras.layers.Dense(256)(x))
    model_dir = export_embedding(keras.Model(inputs, outputs), root / "embedding", {"class_names": []})
    return export_tflite(model_dir, None, "none", log=lambda *_: None)


def run_variant(command: list[str], log_dir: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of one command, run through MEASURE."""
    report = log_dir / "measure.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", MEASURE, str(report), *command], check=True)
    seconds = time.perf_counter() - start
    measured = json.loads(report.read_text())
    if measured["code"] != 0:
        raise SystemExit(f"failed (exit {measured['code']}): {' '.join(command)}")
    return {"seconds": seconds, "peak_mib": measured["peak_kib"] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", help="a <category>/<photo> folder (default: a synthetic one)")
    parser.add_argument("--photos", type=int, default=2000, help="synthetic catalog: photos (default 2000)")
    parser.add_argument("--corrupt", type=int, default=20, help="synthetic catalog: corrupt files (default 20)")
    parser.add_argument("--model", default=str(ROOT / "saved_models" / "embedding.tflite"),
                        help="SavedModel folder or .tflite, or `synthetic` (default saved_models/embedding.tflite)")
    parser.add_argument("--batch-size", type=int, default=32)
    output_args(parser, "pipeline")
    args = parser.parse_args()

    from vsearch.catalog import catalog_files
    from vsearch.pipeline import load_embeddings
    from vsearch.stores import open_store

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        if args.catalog:
            catalog, planted = Path(args.catalog), None
        else:
            catalog, planted = synthetic_catalog(tmp / "catalog", args.photos, args.corrupt)
        model = synthetic_model(tmp / "model") if args.model == "synthetic" else Path(args.model)
        if not model.exists():
            raise SystemExit(f"{model}: no model (run `make demo` and `make tflite`, or give --model synthetic)")
        photos = len(catalog_files(catalog))
        vsearch = [sys.executable, "-m", "vsearch"]
        store = f"faiss:{tmp / 'catalog.vsi'}"
        embed = [*vsearch, "embed", str(catalog), "--model", str(model), "--batch-size", str(args.batch_size),
                 "--threads", "1"]
        variants = {
            "index build": [*vsearch, "index", "build", str(catalog), "--model", str(model), "--store", store,
                            "--kind", "exact", "--batch-size", str(args.batch_size)],
            "embed, 1 worker": [*embed, "--out", str(tmp / "one"), "--", "--direct_num_workers", "1"],
            "embed, 2 workers": [*embed, "--out", str(tmp / "two"), "--", "--direct_num_workers", "2",
                                 "--direct_running_mode", "multi_processing"],
        }
        load_before, results = os.getloadavg(), {}
        for name, command in variants.items():
            results[name] = run_variant(command, tmp)
            print(f"{name}: {photos / results[name]['seconds']:.1f} photos/s", file=sys.stderr)
        load_after = os.getloadavg()

        built = open_store(store)
        stored_ids, stored = built.vectors()
        built.close()
        done = load_embeddings(tmp / "two")
        ids = [photo.photo_id for photo in done.photos]
        row_of = {photo_id: n for n, photo_id in enumerate(stored_ids)}
        reference = stored[[row_of[i] for i in ids]]
        cosines = np.sum(reference * done.vectors, axis=1)
        dead = set(done.dead_letters)

    rate = {name: photos / r["seconds"] for name, r in results.items()}
    rows = ["| variant | wall s | photos/s | x index build | peak RSS, largest process (MiB) |", "|---|---|---|---|---|"]
    rows += [f"| {name} | {r['seconds']:.1f} | {rate[name]:.1f} | {rate[name] / rate['index build']:.2f}x | "
             f"{r['peak_mib']:.0f} |" for name, r in results.items()]
    two_over_one = rate["embed, 2 workers"] / rate["embed, 1 worker"]
    one_over_build = rate["embed, 1 worker"] / rate["index build"]
    what = (f"`{shown(catalog)}`" if args.catalog else
            f"a synthetic catalog of {args.photos} 400x533 JPEGs plus {args.corrupt} corrupt files")
    lines = [f"{photos} files ({what}); model `{'synthetic (untrained MobileNetV2 tower, 224 px, 256-d, LiteRT fp32)' if args.model == 'synthetic' else shown(model)}`, "
             f"batch {args.batch_size}; one run per variant, wall time of the whole command. Load average "
             f"before / after: {load_before[0]:.2f} / {load_after[0]:.2f}.", "", *rows, "",
             f"- 2 workers / 1 worker: {two_over_one:.2f}x (target >= 1.7x)",
             f"- 1 worker / index build: {one_over_build:.2f}x (target >= 0.8x)",
             f"- vectors of `vsearch embed` (2 workers) against `index build`'s: cosine min {cosines.min():.6f} "
             f"over {len(ids)} photos; {len(dead)} dead letter(s)"
             + (f", {'equal to' if dead == planted else 'NOT equal to'} the {len(planted)} corrupt files planted"
                if planted is not None else "")]
    publish(args, "Catalog embedding on Apache Beam (DirectRunner) against `vsearch index build`", lines)


if __name__ == "__main__":
    main()
