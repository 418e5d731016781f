"""Cost of one training step of the trainable top, per sample.

Both training stages spend most of their time here: the top blocks (from ``--cut``) and
the classifier head, forward and backward, on cached feature maps. This times
``model.fit`` over random feature maps (values do not change the arithmetic) for variants
that could make it cheaper on a CPU:

- ``conv``: the model as it is (MobileNetV2's 1x1 convolutions are ``Conv2D``);
- ``dense``: every 1x1 convolution as a ``Dense`` over the channel axis (same arithmetic,
  oneDNN's matmul instead of its convolution);
- either under the ``mixed_bfloat16`` policy (bfloat16 arithmetic, float32 weights; the
  CPU needs AVX512_BF16 or AMX for it to pay).

    python -m bench.train_step                      # every variant at batch 32 and 128
    python -m bench.train_step --variants conv/float32 --batch 32,64,128

Each variant runs in its own process (the dtype policy is global), 3 timed epochs of
``--samples`` samples after a warm-up; the table gives the median and the spread.
TensorFlow's environment (``TF_NUM_INTRAOP_THREADS``, ``TF_ENABLE_ONEDNN_OPTS``, ...)
passes through to the variants. No data or model needed. Rewrites
``bench/results/train_step.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from bench.common import ROOT, output_args, publish

VARIANTS = ("conv/float32", "dense/float32", "conv/mixed_bfloat16", "dense/mixed_bfloat16")


def measure(variant: str, batch: int, samples: int, cut: str, repeats: int) -> list[float]:
    """ms per sample of ``repeats`` timed epochs (in this process)."""
    import keras
    import numpy as np

    from vsearch.learn import models

    form, policy = variant.split("/")
    base = models.build_backbone(224, "none", 1.0)
    _, top = models.split_backbone(base, cut)

    def swap(layer):
        pointwise = type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
        if form == "dense" and pointwise:
            return keras.layers.Dense(layer.filters, use_bias=layer.use_bias, name=layer.name, dtype=policy)
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    variant_top = keras.models.clone_model(top, clone_function=swap)
    models.set_fine_tuning(variant_top, True)
    head = models.ClassifierHead(7, 0.3)
    inputs = keras.Input(tuple(top.input.shape[1:]))
    logits = keras.layers.Activation("linear", dtype="float32")(head(variant_top(inputs)))
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="categorical_crossentropy")
    n = batch * max(1, samples // batch)
    rng = np.random.default_rng(0)
    x = rng.random((n, *top.input.shape[1:]), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 7, n), 7)
    model.fit(x[: batch * 3], y[: batch * 3], batch_size=batch, epochs=1, verbose=0)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        out.append((time.perf_counter() - t) / n * 1000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", default="32,128")
    ap.add_argument("--samples", type=int, default=2560)
    ap.add_argument("--cut", default="block_14")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # variant:batch, run in a child process
    output_args(ap, "train_step")
    args = ap.parse_args(argv)
    if args.one:
        variant, batch = args.one.rsplit(":", 1)
        print(json.dumps(measure(variant, int(batch), args.samples, args.cut, args.repeats)))
        return 0
    settings = (
        " ".join(
            f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("TF_") and k != "TF_CPP_MIN_LOG_LEVEL"
        )
        or "TensorFlow's defaults"
    )
    lines = [
        f"Top from {args.cut}, {args.samples} samples per timed epoch, {args.repeats} epochs; ms per "
        f"sample, median (min-max). Environment: {settings}.",
        "",
        "| variant | batch | ms / sample | min-max |",
        "|---|---|---|---|",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            ap.error(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
        for batch in args.batch.split(","):
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.train_step",
                    "--one",
                    f"{variant}:{batch}",
                    "--samples",
                    str(args.samples),
                    "--cut",
                    args.cut,
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            if child.returncode:
                print(child.stderr[-2000:], file=sys.stderr)
                return child.returncode
            times = sorted(json.loads(child.stdout.strip().splitlines()[-1]))
            lines.append(f"| {variant} | {batch} | {times[len(times) // 2]:.2f} | {times[0]:.2f}-{times[-1]:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    publish(args, "One training step of the trainable top, per sample", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
