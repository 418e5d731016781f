"""Frozen-backbone feature extraction per runtime: what `make train` / `make siamese` spend on caching.

The training stages run MobileNetV2's frozen bottom (pixels -> `block_13` output) once per
image view (`vsearch/learn/features.py`). This runs that extraction the way the stages do
(`extract`: a `tf.data` pipeline reading and decoding the files, optionally a seeded
customer-photo view, the bottom, float16 storage) on each runtime of `data.feature_runtime`,
alternately over `--rounds`, and compares the features. The LiteRT conversion is timed
separately (the stages keep the flatbuffer in `.cache/features`, so it is paid once).

    python -m bench.features                   # 512 train photos, keras vs tflite, clean + customer view, 2 rounds
    python -m bench.features --images 128 --no-write

Needs `make data` and the ImageNet weights. Rewrites `bench/results/features.md`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from bench.common import ROOT, output_args, publish, sample_images, shown, use_local_weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
use_local_weights()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--split", default=str(ROOT / "data" / "photos" / "train"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (best and median reported)")
    output_args(parser, "features")
    args = parser.parse_args()

    from vsearch.augment import CUSTOMER_VIEW_SEED, customer_view
    from vsearch.config import DataConfig
    from vsearch.learn import models
    from vsearch.learn.features import Frozen, extract, image_batches

    data = DataConfig()
    paths = [str(p) for p in sample_images(args.split, args.images)]
    base = models.build_backbone(data.image_size, "imagenet", 1.0)
    bottom, _ = models.split_backbone(base, "block_14")
    started, load_before = time.perf_counter(), os.getloadavg()
    runners = {"keras": Frozen(bottom, "keras")}
    one = np.zeros((1, data.image_size, data.image_size, 3), np.float32)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # a cold conversion, not the stages' cached one
        runners["tflite"] = Frozen(bottom, "tflite", cache_dir=tmp)
        runners["tflite"](one)  # converted on first use: here, and timed
    convert_s = time.perf_counter() - t
    views = {"clean": None, "customer view": customer_view}
    seconds: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(args.rounds):
        for view, transform in views.items():
            for name, runner in runners.items():
                ds = image_batches(paths, data.image_size, data.batch_size)
                t = time.perf_counter()
                outputs[name, view] = extract(
                    runner, ds, transform=transform, seed=CUSTOMER_VIEW_SEED + 1, batch_size=data.batch_size
                )
                seconds.setdefault((name, view), []).append(time.perf_counter() - t)
                print(f"{name} {view}: {len(paths) / seconds[name, view][-1]:.1f} img/s", file=sys.stderr)
    rows = [
        "| view | runtime | img/s, median (best) | x keras | max abs diff to keras | mean abs diff / mean abs value |",
        "|---|---|---|---|---|---|",
    ]
    for view in views:
        keras_rate = len(paths) / float(np.median(seconds["keras", view]))
        reference = outputs["keras", view].astype(np.float32)
        for name in runners:
            rate = len(paths) / float(np.median(seconds[name, view]))
            best = len(paths) / min(seconds[name, view])
            diff = np.abs(outputs[name, view].astype(np.float32) - reference)
            rows.append(
                f"| {view} | {name} | {rate:.1f} ({best:.1f}) | {rate / keras_rate:.2f}x | "
                f"{diff.max():.4f} | {diff.mean() / np.abs(reference).mean():.2e} |"
            )
    load_after = os.getloadavg()
    publish(
        args,
        "Frozen-backbone features per runtime",
        [
            f"{len(paths)} photos of `{shown(args.split)}` through `extract` (tf.data reading + decoding, MobileNetV2 "
            f"ImageNet bottom to block_13, float16 storage), {data.image_size} px, batch {data.batch_size}, "
            f"{args.rounds} alternating rounds; {time.perf_counter() - started:.0f} s. LiteRT conversion of the "
            f"bottom (cold): {convert_s:.1f} s. Load average before / after: {load_before[0]:.2f} / "
            f"{load_after[0]:.2f}.",
            "",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
