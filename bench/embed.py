"""Whole-path embedding throughput: file bytes -> unit vector, per runtime.

Every variant embeds the same files through the served road,
:func:`vsearch.embedder.embed_images` (Pillow decoding in a thread pool, overlapped with
the model call), so the variants differ only in the model:

* ``baseline``: the frozen Keras MobileNetV2 ImageNet (+ GAP, as ``vsearch eval`` builds it);
* ``savedmodel``: ``saved_models/embedding`` (its ``embed_pixels`` signature);
* ``tflite-fp32`` / ``tflite-dynamic`` / ``tflite-int8``: ``vsearch export --format tflite``
  outputs on LiteRT + XNNPACK.

Each variant runs in a fresh subprocess (so that peak RSS is its own) and embeds the
images at batch 1 and batch 32 after one untimed warm-up batch (tracing, allocation);
reading the files is inside the timed loop. The variants run in ``--rounds`` interleaved
rounds (baseline, SavedModel, ..., then again), so a slow spell of a shared machine hits
every variant alike: the table gives each variant's median over the rounds, and each
ratio to the baseline is the median of the per-round ratios (min..max beside it). The
TFLite variants' vectors are compared with the SavedModel's on the same images (cosine).
``--draft-check`` also measures JPEG draft decoding (``embed_images(draft=True)``) on the
validation photos upscaled 2x and 4x (the catalog's own photos, 400x533, are too small for
it to act): speed, per-image cosine to the SavedModel on the same bytes, and retrieval.

    python -m bench.embed                     # 256 validation images, all variants, 3 rounds
    python -m bench.embed --images 64 --variants tflite-fp32,tflite-int8 --no-write

Needs ``make demo`` and ``make tflite`` (and ``vsearch export --format tflite --quantize
dynamic`` for that variant). Rewrites ``bench/results/embed.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, output_args, publish, sample_images, shown, use_local_weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
use_local_weights()

MODELS = ROOT / "saved_models"
VARIANTS = {
    "baseline": "frozen ImageNet MobileNetV2 (GAP), Keras",
    "savedmodel": "exported embedding, SavedModel",
    "tflite-fp32": "exported embedding, TFLite fp32",
    "tflite-dynamic": "exported embedding, TFLite dynamic-range",
    "tflite-int8": "exported embedding, TFLite int8",
}
FILES = {
    "savedmodel": MODELS / "embedding",
    "tflite-fp32": MODELS / "embedding.tflite",
    "tflite-dynamic": MODELS / "embedding-dynamic.tflite",
    "tflite-int8": MODELS / "embedding-int8.tflite",
}


def _stale(tflite: Path) -> bool:
    """Whether a TFLite export was converted from a SavedModel other than the current one."""
    from vsearch.artifacts import read_metadata
    from vsearch.litert import read_tflite_metadata

    source = read_metadata(MODELS / "embedding")["fingerprint"]
    return read_tflite_metadata(tflite)["fingerprint"].split(":")[0] != source


def load_variant(variant: str, threads: int | None):
    """The embedder of one variant."""
    if variant == "baseline":
        from vsearch.embedder import KerasEmbedder
        from vsearch.learn import models

        return KerasEmbedder(models.build_pooled_features(models.build_backbone(224, "imagenet"), 224))
    from vsearch.embedder import load_embedder

    return load_embedder(FILES[variant], num_threads=threads)


def time_path(embedder, paths: list[Path], batch: int) -> tuple[float, np.ndarray]:
    """Seconds to read and embed every file at ``batch`` images per model call, and the vectors.

    Imports nothing beyond the serving wing, so that a LiteRT worker's peak RSS stays its own.
    """
    from vsearch.embedder import embed_images

    embed_images(embedder, paths[:batch], batch_size=batch)  # warm-up, untimed
    start = time.perf_counter()
    done = embed_images(embedder, paths, batch_size=batch)
    seconds = time.perf_counter() - start
    if done.bad:
        raise SystemExit(f"{len(done.bad)} photo(s) could not be embedded: {done.bad}")
    return seconds, done.vectors


def worker(variant: str, list_file: str, batches: list[int], threads: int | None, vectors_file: str) -> dict:
    """Runs in its own process: load, time each batch size, report peak RSS."""
    paths = [Path(line) for line in Path(list_file).read_text().splitlines()]
    start = time.perf_counter()
    embedder = load_variant(variant, threads)
    load_s = time.perf_counter() - start
    result = {"variant": variant, "load_s": load_s, "images": len(paths), "throughput": {}}
    for batch in batches:
        seconds, vectors = time_path(embedder, paths, batch)
        result["throughput"][str(batch)] = len(paths) / seconds
    np.save(vectors_file, vectors)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return result


def labelled(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Images of ``folder/<class>/`` with integer labels (sorted class names)."""
    names = sorted(d.name for d in folder.iterdir() if d.is_dir())
    paths = sorted(p for name in names for p in (folder / name).iterdir() if p.is_file())
    return paths, np.array([names.index(p.parent.name) for p in paths]), names


def draft_check(threads: int | None) -> dict:
    """TFLite fp32 with and without draft on the validation photos upscaled 2x and 4x.

    Against the SavedModel on the same bytes (per-image cosine) and in retrieval: class
    P@1 / MAP@R against the SavedModel's catalog, and the rank of the photo's original
    among catalog + validation originals (R@1), as ``vsearch eval`` measures them.
    """
    from PIL import Image

    from vsearch.embedder import SavedModelEmbedder, embed_images
    from vsearch.learn import metrics
    from vsearch.learn.evaluate import class_retrieval, embed_all
    from vsearch.litert import TFLiteEmbedder

    data = ROOT / "data" / "photos"
    cat_paths, cat_labels, names = labelled(data / "train")
    val_paths, val_labels, _ = labelled(data / "validation")
    saved = SavedModelEmbedder(FILES["savedmodel"])
    catalog, originals = embed_all(saved, cat_paths, 32), embed_all(saved, val_paths, 32)
    pool, targets = np.concatenate([catalog, originals]), np.arange(len(val_paths)) + len(catalog)
    tflite = TFLiteEmbedder(FILES["tflite-fp32"], num_threads=threads)
    runs = {
        "SavedModel": (saved, False),
        "TFLite fp32, full decode": (tflite, False),
        "TFLite fp32, draft decode": (tflite, True),
    }
    out = {}
    for factor in (2, 4):
        blobs = []
        for p in val_paths:
            img = Image.open(p).convert("RGB")
            buf = io.BytesIO()
            img.resize((img.width * factor, img.height * factor), Image.BICUBIC).save(buf, "JPEG", quality=90)
            blobs.append(buf.getvalue())
        reference = None
        for name, (embedder, draft) in runs.items():
            embed_images(embedder, blobs[:32], draft=draft)  # warm-up, untimed
            start = time.perf_counter()
            vectors = embed_images(embedder, blobs, batch_size=32, draft=draft).vectors
            seconds = time.perf_counter() - start
            reference = vectors if reference is None else reference
            cosine = np.sum(vectors * reference, axis=1)
            overall = class_retrieval(vectors, val_labels, catalog, cat_labels, names)["overall"]
            recall = metrics.instance_recall(metrics.rank_of_targets(vectors, pool, targets), (1,))
            out[f"{factor}x/{name}"] = {
                "images_per_s": len(blobs) / seconds,
                "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min()),
                "p@1": overall["precision@1"],
                "map@r": overall["map@r"],
                "original_r@1": recall["recall@1"],
            }
    return out


def run_worker(args_list: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.embed", *args_list], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args_list[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine_rounds(rounds: list[list[dict]], batches: list[int]) -> list[dict]:
    """Per variant: median throughput over the rounds, and the median (min, max) of its
    per-round ratio to the same round's baseline."""
    out = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds]
        merged = {
            **first,
            "load_s": float(np.median([r["load_s"] for r in runs])),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "throughput": {str(b): float(np.median([r["throughput"][str(b)] for r in runs])) for b in batches},
            "rounds": len(runs),
        }
        base = [next((x for x in r if x["variant"] == "baseline"), None) for r in rounds]
        if all(base):
            ratios = {
                str(b): [r[i]["throughput"][str(b)] / x["throughput"][str(b)] for r, x in zip(rounds, base)]
                for b in batches
            }
            merged["ratio"] = {b: (float(np.median(v)), min(v), max(v)) for b, v in ratios.items()}
        out.append(merged)
    return out


def format_table(results: list[dict], batches: list[int], cosines: dict) -> str:
    base = next((r for r in results if r["variant"] == "baseline"), None)
    head = ["variant", "model size"] + [f"batch {b} img/s" for b in batches]
    if base:
        head += [f"x baseline (b{b}), median (min..max)" for b in batches]
    head += ["peak RSS", "load", "cosine to SavedModel (mean / min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        path = FILES.get(r["variant"])
        size = "" if path is None else f"{_size(path) / 2**20:.1f} MiB"
        row = [VARIANTS[r["variant"]], size] + [f"{r['throughput'][str(b)]:.1f}" for b in batches]
        if base:
            row += [
                f"{r['ratio'][str(b)][0]:.2f}x ({r['ratio'][str(b)][1]:.2f}..{r['ratio'][str(b)][2]:.2f})"
                for b in batches
            ]
        cos = cosines.get(r["variant"])
        row += [
            f"{r['peak_rss_mib']:.0f} MiB",
            f"{r['load_s']:.1f} s",
            "" if cos is None else f"{cos[0]:.4f} / {cos[1]:.4f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def format_draft(check: dict) -> str:
    lines = [
        "| validation photos (276) | embedder | img/s (batch 32) | cosine to SavedModel, same bytes "
        "(mean / min) | P@1 | MAP@R | original R@1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in check.items():
        factor, name = key.split("/", 1)
        lines.append(
            f"| upscaled {factor} (bicubic, JPEG q90) | {name} | {r['images_per_s']:.1f} | "
            f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['p@1']:.3f} | {r['map@r']:.3f} | "
            f"{r['original_r@1']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--split", default=str(ROOT / "data" / "photos" / "validation"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="TFLite threads (default: every core)")
    parser.add_argument("--draft-check", action="store_true", help="also measure JPEG draft decoding")
    output_args(parser, "embed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker == "draft":
        print(json.dumps(draft_check(args.threads)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.list, batches, args.threads, args.vectors)))
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    missing = [str(FILES[v]) for v in variants if v in FILES and not FILES[v].exists()]
    stale = [str(FILES[v]) for v in variants if v.startswith("tflite") and FILES[v].exists() and _stale(FILES[v])]
    if stale:
        raise SystemExit(
            f"{stale}: converted from another SavedModel than {MODELS / 'embedding'}; "
            "re-run `vsearch export --format tflite`"
        )
    if unknown or missing:
        raise SystemExit(
            f"unknown variants {unknown} or missing models {missing} "
            "(run `vsearch export --format tflite [--quantize int8|dynamic]` first)"
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    paths = sample_images(Path(args.split), args.images)
    (tmp / "list.txt").write_text("\n".join(str(p) for p in paths))
    load_before = os.getloadavg()
    started = time.perf_counter()
    common = ["--list", str(tmp / "list.txt"), "--batches", args.batches]
    if args.threads:
        common += ["--threads", str(args.threads)]
    rounds = []
    for r in range(args.rounds):
        rounds.append([])
        for variant in variants:
            rounds[-1].append(run_worker(["--worker", variant, "--vectors", str(tmp / f"{variant}.npy"), *common]))
            print(
                f"round {r + 1} {variant}: "
                + ", ".join(f"b{b} {v:.1f} img/s" for b, v in rounds[-1][-1]["throughput"].items())
                + f", peak RSS {rounds[-1][-1]['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
    results = combine_rounds(rounds, batches)
    cosines = {}
    if (tmp / "savedmodel.npy").is_file():
        reference = np.load(tmp / "savedmodel.npy")
        for variant in variants:
            if variant.startswith("tflite"):
                cos = np.sum(np.load(tmp / f"{variant}.npy") * reference, axis=1)
                cosines[variant] = (float(cos.mean()), float(cos.min()))
    table = format_table(results, batches, cosines)
    draft = format_draft(run_worker(["--worker", "draft", *common])) if args.draft_check else ""
    load_after = os.getloadavg()
    lines = [
        f"{len(paths)} images from `{shown(args.split)}`, the same in every variant, each variant in a "
        f"fresh process (peak RSS = its ru_maxrss), {args.rounds} interleaved rounds, medians; "
        f"{time.perf_counter() - started:.0f} s. Load average before / after: {load_before[0]:.2f} / "
        f"{load_after[0]:.2f}.",
        "",
        table,
        "",
    ]
    if draft:
        lines += [
            "JPEG draft decoding on photos larger than the catalog's (`--draft-check`; retrieval "
            "against the SavedModel's catalog of the train split):",
            "",
            draft,
            "",
        ]
    publish(args, "Whole-path embedding throughput, file bytes -> vector", lines)


if __name__ == "__main__":
    main()
