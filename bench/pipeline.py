"""Catalog embedding on Apache Beam (`vsearch embed`, DirectRunner) against `vsearch index build`.

Three parts, each a section of `bench/results/pipeline.md`; a run rewrites the sections of
the parts it ran (`--part`) and keeps the others' current text.

* `throughput`: a synthetic catalog of `--photos` 400x533 JPEGs (the clothing photos'
  size) plus `--corrupt` corrupt files. Three variants, each the command a user types, run
  in a fresh subprocess and timed from start to exit: `index build` (`vsearch index build
  --threads 1`: one LiteRT inference thread, `embed_images`' 4 decoding threads), `embed,
  1 worker` (`vsearch embed --threads 1`, in-memory DirectRunner) and `embed, 2 workers`
  (`--threads 1 -- --direct_num_workers 2 --direct_running_mode multi_processing`). Each
  also runs over a 32-photo catalog: that wall time is its fixed start-up (Python, Beam,
  worker processes, model loading), and (photos - 32) / (wall - start-up) its steady rate.
  The 2-worker run's vectors are compared with the index's and its dead letters with the
  corrupt files planted. Issue 20's targets: 2 workers >= 1.7x one worker, one worker >=
  0.8x `index build`.
* `scale`: `vsearch embed` with 2 workers over `--scale-photos` small (`--scale-side` px)
  JPEGs plus `--corrupt` corrupt files: wall time, photos/s, peak RSS of the launching
  process and of each worker, dead letters against the files planted.
* `parity`: `vsearch embed` (2 workers) and `vsearch index build` over the clothing
  catalog (`--catalog`, default `data/photos/train`) with `--parity-model`: cosine of
  each photo's two vectors, and the top-5 products of every photo of `--queries` (default
  `data/photos/validation`) in the index built from each.

Peak RSS is sampled (psutil, every 0.2 s) per process of the command's tree. The model
of the first two parts is `--model` (default `saved_models/embedding.tflite`, the served
fp32 LiteRT export).

    python -m bench.pipeline --part throughput --photos 3000 --corrupt 30
    nice -n 5 python -m bench.pipeline --part scale --scale-photos 100000 --corrupt 30
    python -m bench.pipeline --part parity
    python -m bench.pipeline --part throughput --photos 200 --no-write   # a quick look

Needs `pip install 'vsearch[beam]'` (`make venv` installs it).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, command, output_args, refuse_uncommitted, shown

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TITLE = "Catalog embedding on Apache Beam (DirectRunner) against `vsearch index build`"
PARTS = {
    "throughput": "Throughput",
    "scale": "A large catalog of small photos",
    "parity": "Parity on the clothing catalog",
}
STARTUP_PHOTOS = 32
CORRUPT_KINDS = ("truncated", "not an image", "zero bytes")


# ---------------------------------------------------------------- catalogs


def synthetic_catalog(root: Path, photos: int, corrupt: int, size: tuple[int, int] = (400, 533)) -> set[str]:
    """``photos`` noisy JPEGs in three category folders, and ``corrupt`` unusable files (their paths)."""
    from vsearch.learn.synthetic import COLOURS, product_photo

    colours = list(COLOURS.items())
    for name, _ in colours:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(photos):
        name, colour = colours[i % len(colours)]
        product_photo(colour, i, size=size).save(root / name / f"{i:06d}.jpg", quality=90)
    buf = io.BytesIO()
    product_photo(colours[0][1], 0, size=size).save(buf, format="JPEG", quality=90)
    bad = {
        "truncated": buf.getvalue()[: len(buf.getvalue()) // 2],
        "not an image": b"not a photo at all\n" * 8,
        "zero bytes": b"",
    }
    (root / "corrupt").mkdir(exist_ok=True)
    planted = set()
    for i in range(corrupt):
        path = root / "corrupt" / f"{i:04d}.jpg"
        path.write_bytes(bad[CORRUPT_KINDS[i % len(CORRUPT_KINDS)]])
        planted.add(str(path.resolve()))
    return planted


# ---------------------------------------------------------------- running one command


def run_measured(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds and peak RSS (MiB) of the command and of each process it started."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    top, peaks, cpu, pythons = psutil.Process(proc.pid), {}, {}, set()
    while proc.poll() is None:
        try:
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                if p.pid not in peaks and "python" in Path(p.cmdline()[0]).name:
                    pythons.add(p.pid)  # Beam's workers; not the shells between
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
            except psutil.Error:
                pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    workers = [peaks[pid] for pid in sorted(pythons) if pid != proc.pid]
    return {
        "seconds": seconds,
        "cpu": sum(cpu.values()),
        "main_mib": peaks.get(proc.pid, 0) / 2**20,
        "worker_mib": [w / 2**20 for w in workers],
    }


def vsearch(*words: str) -> list[str]:
    return [sys.executable, "-m", "vsearch", *words]


def embed_cmd(catalog, model, out, batch_size: int, workers: int) -> list[str]:
    beam = ["--direct_num_workers", str(workers)]
    if workers > 1:
        beam += ["--direct_running_mode", "multi_processing"]
    return vsearch(
        "embed",
        str(catalog),
        "--model",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--threads",
        "1",
        "--",
        *beam,
    )


def compare_vectors(store: str, folder: Path) -> tuple[float, int, set[str]]:
    """The smallest cosine between ``vsearch embed``'s vectors and the store's, photos, dead letters."""
    from vsearch.catalog.pipeline import load_embeddings
    from vsearch.stores import open_store

    built = open_store(store)
    stored_ids, stored = built.vectors()
    built.close()
    done = load_embeddings(folder)
    row_of = {photo_id: n for n, photo_id in enumerate(stored_ids)}
    reference = stored[[row_of[p.photo_id] for p in done.photos]]
    return float(np.sum(reference * done.vectors, axis=1).min()), len(done.photos), set(done.dead_letters)


def load_line() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- the parts


def throughput(args, tmp: Path) -> list[str]:
    planted = synthetic_catalog(tmp / "catalog", args.photos, args.corrupt)
    synthetic_catalog(tmp / "small", STARTUP_PHOTOS, 0)
    model, b = Path(args.model), args.batch_size
    variants = {
        "index build": lambda cat, n: vsearch(
            "index",
            "build",
            str(cat),
            "--model",
            str(model),
            "--store",
            f"faiss:{tmp / f'index-{n}.vsi'}",
            "--kind",
            "exact",
            "--threads",
            "1",
            "--batch-size",
            str(b),
        ),
        "embed, 1 worker": lambda cat, n: embed_cmd(cat, model, tmp / f"one-{n}", b, 1),
        "embed, 2 workers": lambda cat, n: embed_cmd(cat, model, tmp / f"two-{n}", b, 2),
    }
    before, res = load_line(), {}
    for name, make in variants.items():
        small = run_measured(make(tmp / "small", "small"))
        full = run_measured(make(tmp / "catalog", "full"))
        res[name] = {
            **full,
            "startup": small["seconds"],
            "rate": args.photos / full["seconds"],
            "steady": (args.photos - STARTUP_PHOTOS) / max(full["seconds"] - small["seconds"], 1e-9),
        }
        print(f"{name}: {res[name]['rate']:.1f} photos/s, steady {res[name]['steady']:.1f}", file=sys.stderr)
    after = load_line()
    cos, embedded, dead = compare_vectors(f"faiss:{tmp / 'index-full.vsi'}", tmp / "two-full")

    build, one, two = (res[k] for k in variants)
    rows = [
        "| variant | wall s | photos/s | x index build | start-up s | steady photos/s | steady x index build "
        "| CPU s | peak RSS MiB: launcher / each worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        workers = " / ".join(f"{w:.0f}" for w in r["worker_mib"]) or "-"
        rows.append(
            f"| {name} | {r['seconds']:.1f} | {r['rate']:.1f} | {r['rate'] / build['rate']:.2f}x | "
            f"{r['startup']:.1f} | {r['steady']:.1f} | {r['steady'] / build['steady']:.2f}x | {r['cpu']:.0f} | "
            f"{r['main_mib']:.0f} / {workers} |"
        )
    return [
        f"{args.photos} synthetic 400x533 JPEGs plus {args.corrupt} corrupt files ({', '.join(CORRUPT_KINDS)}); "
        f"model `{shown(model)}`, batch {b}, one inference thread per process (`--threads 1`); `index build` "
        f"also decodes in 4 threads, and so does each `vsearch embed` worker (the same `embed_images`). "
        f"Start-up: the same command over {STARTUP_PHOTOS} photos; steady: the rest of the photos over the rest "
        f"of the time. One run each. Load average (1/5/15 min) before: {before}; after: {after}.",
        "",
        *rows,
        "",
        f"- 2 workers / 1 worker: {two['rate'] / one['rate']:.2f}x whole command, "
        f"{two['steady'] / one['steady']:.2f}x steady (target >= 1.7x)",
        f"- 1 worker / index build: {one['rate'] / build['rate']:.2f}x whole command, "
        f"{one['steady'] / build['steady']:.2f}x steady (target >= 0.8x)",
        f"- 2 workers' vectors against the index's: cosine min {cos:.6f} over {embedded} photos; {len(dead)} dead "
        f"letter(s), {'equal to' if dead == planted else 'NOT equal to'} the {len(planted)} corrupt files planted",
    ]


def scale(args, tmp: Path) -> list[str]:
    started = time.perf_counter()
    side = args.scale_side
    planted = synthetic_catalog(tmp / "catalog", args.scale_photos, args.corrupt, size=(side, side))
    made = time.perf_counter() - started
    before = load_line()
    r = run_measured(embed_cmd(tmp / "catalog", Path(args.model), tmp / "out", args.batch_size, 2))
    after = load_line()
    from vsearch.catalog.pipeline import read_dead_letters, read_summary

    summary = read_summary(str(tmp / "out"))
    dead = set(read_dead_letters(str(tmp / "out"), summary))
    workers = ", ".join(f"{w:.0f}" for w in r["worker_mib"])
    return [
        f"{args.scale_photos} synthetic {side}x{side} JPEGs plus {args.corrupt} corrupt files "
        f"({', '.join(CORRUPT_KINDS)}), written in {made:.0f} s; model `{shown(args.model)}` (input 224 px), "
        f"batch {args.batch_size}, `--threads 1`, 2 workers (multi_processing). Load average (1/5/15 min) "
        f"before: {before}; after: {after}.",
        "",
        "| wall s | photos/s | CPU s | embedded | dead letters | planted | peak RSS MiB: launcher | each worker |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['seconds']:.0f} | {args.scale_photos / r['seconds']:.1f} | {r['cpu']:.0f} | "
        f"{summary['counts']['embedded']} | {summary['counts']['dead_letters']} | {len(planted)} | "
        f"{r['main_mib']:.0f} | {workers} |",
        "",
        f"- dead letters {'equal' if dead == planted else 'NOT equal'} to the corrupt files planted "
        f"({len(dead)} vs {len(planted)}); {len(summary['shards'])} shard(s)",
    ]


def parity(args, tmp: Path) -> list[str]:
    from vsearch.embedder import embed_images, load_embedder
    from vsearch.stores import open_store

    model, catalog = Path(args.parity_model), Path(args.catalog)
    built, made = f"faiss:{tmp / 'built.vsi'}", f"faiss:{tmp / 'embedded.vsi'}"
    run_measured(vsearch("index", "build", str(catalog), "--model", str(model), "--store", built, "--kind", "exact"))
    run_measured(embed_cmd(catalog, model, tmp / "out", args.batch_size, 2))
    run_measured(
        vsearch(
            "index",
            "build",
            "--from-embeddings",
            str(tmp / "out"),
            "--store",
            made,
            "--model",
            str(model),
            "--kind",
            "exact",
        )
    )
    cos, photos, dead = compare_vectors(built, tmp / "out")

    queries = sorted(p for p in Path(args.queries).rglob("*") if p.is_file())
    embedded = embed_images(load_embedder(model), queries, args.batch_size)
    answers = []
    for spec in (built, made):
        store = open_store(spec)
        answers.append([[(m["product_id"], m["score"]) for m in hits] for hits in store.search(embedded.vectors, 5)])
        store.close()
    same = sum([p for p, _ in a] == [p for p, _ in b] for a, b in zip(*answers))
    score_gap = max(abs(x - y) for a, b in zip(*answers) for (_, x), (_, y) in zip(a, b))
    return [
        f"`{shown(catalog)}` with `{shown(model)}`: `vsearch embed` (2 workers, multi_processing, "
        f"`--threads 1`) then `index build --from-embeddings`, against `vsearch index build`.",
        "",
        f"- vectors: cosine min {cos:.6f} over {photos} photos (target >= 0.9999); {len(dead)} dead letter(s)",
        f"- top-5 products of the {len(embedded.good)} photos of `{shown(args.queries)}`: {same} of "
        f"{len(embedded.good)} identical, in order; largest score difference {score_gap:.2e}",
    ]


# ---------------------------------------------------------------- the results file


def sections(text: str) -> dict[str, str]:
    """The results file's sections by heading (``## ...``), each with its own lines."""
    found = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="throughput,parity", help="throughput, scale, parity (comma-separated)")
    parser.add_argument("--photos", type=int, default=3000, help="throughput: synthetic photos (default 3000)")
    parser.add_argument("--corrupt", type=int, default=30, help="corrupt files planted (default 30)")
    parser.add_argument("--scale-photos", type=int, default=100_000, help="scale: photos (default 100000)")
    parser.add_argument("--scale-side", type=int, default=80, help="scale: photo side in px (default 80)")
    parser.add_argument(
        "--model",
        default=str(ROOT / "saved_models" / "embedding.tflite"),
        help="throughput and scale: SavedModel folder or .tflite (default saved_models/embedding.tflite)",
    )
    parser.add_argument(
        "--parity-model",
        default=str(ROOT / "saved_models" / "embedding"),
        help="parity: the model (default saved_models/embedding, the SavedModel)",
    )
    parser.add_argument("--catalog", default=str(ROOT / "data" / "photos" / "train"), help="parity: the catalog")
    parser.add_argument(
        "--queries", default=str(ROOT / "data" / "photos" / "validation"), help="parity: photos to search with"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    output_args(parser, "pipeline")
    args = parser.parse_args()
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--part: choose from {', '.join(PARTS)}")

    from vsearch.artifacts import provenance, write_atomic

    new = {}
    for part in parts:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            lines = globals()[part](args, Path(tmp))
        info = provenance()
        new[PARTS[part]] = (
            "\n".join(
                [
                    f"## {PARTS[part]}",
                    "",
                    f"- date: {info['date']}",
                    f"- commit: {info['commit']}",
                    f"- machine: {info['machine']}",
                    f"- command: `{command()}`",
                    "",
                    *lines,
                ]
            )
            + "\n"
        )
    out = Path(args.out)
    kept = sections(out.read_text()) if out.exists() and not args.no_write else {}
    body = [new.get(title) or kept.get(title) for title in PARTS.values()]
    text = f"# {TITLE}\n\n" + "\n".join(s for s in body if s)
    print(text)
    if not args.no_write:
        refuse_uncommitted()
        write_atomic(out, text)
        print(f"wrote {shown(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
