"""``vsearch embed``: a catalog -> Parquet shards of vectors, as an Apache Beam pipeline.

    vsearch embed catalog.csv --model saved_models/embedding --out embeddings/ \\
        -- --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing

:func:`embed_catalog` reads and checks the manifest (or folder) with
:func:`vsearch.catalog.manifest.read_manifest` before any work, stages its rows beside the output,
and runs the pipeline :func:`build_pipeline` describes:

1. read the staged rows and spread them over the workers (``Reshuffle``);
2. ``RunInference`` with :class:`EmbeddingHandler`, on batches of rows: the exported model
   (the SavedModel's ``embed_pixels`` signature, or the LiteRT flatbuffer) loaded once per
   worker process by :func:`vsearch.embedder.load_embedder`; :func:`embed_rows` sends each
   batch through :func:`vsearch.embedder.embed_images`, the batching loop of ``vsearch index
   build``: the road of :func:`vsearch.images.model_input` in decoding threads, the next
   model batch decoded while this one runs. A local photo is read by those threads; another
   filesystem's (``gs://``, ``s3://``, where those Beam extras are installed) through Beam's
   ``FileSystems``. An unusable photo never reaches a model batch;
3. :func:`sort_outcome`: a vector goes on, an unusable photo to the dead letters with its
   reason;
4. Parquet shards ``embeddings-SSSSS-of-NNNNN.parquet`` (``product_id``, ``photo_id``,
   ``category``, ``image``, one typed column per attribute, ``vector`` as a fixed-size list
   of float32), ``dead_letters.jsonl``, and last ``embeddings.json``: model fingerprint,
   dimension, columns, counts, shard names and a sample of the dead letters.

Everything after ``--`` is Beam's ``PipelineOptions`` (runner, workers, project...); an
option Beam does not know is refused rather than dropped. :func:`load_embeddings` reads
the shards back (``vsearch index build --from-embeddings``) without re-embedding.

Beam's own TensorFlow model handler needs ``tensorflow_hub`` and ``tf-keras`` (a second
TensorFlow) and refuses Keras 3 SavedModel folders, hence the small handler here. The
model path must be readable on every worker as a local path (a path in the worker image or
a shared mount).
"""

from __future__ import annotations

import heapq
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from vsearch.catalog.manifest import Manifest, Photo, read_manifest
from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

FORMAT = "vsearch-embeddings/1"
SUMMARY_FILE = "embeddings.json"
INPUT_FILE = "photos.jsonl"
SHARD_PREFIX = "embeddings"
DEAD_LETTERS = "dead_letters"  # + ".jsonl"
DEAD = "dead"  # the tag of sort_outcome's dead-letter output
FIXED_COLUMNS = ("product_id", "photo_id", "category", "image")
ARROW_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "text": pa.string()}
DEAD_SAMPLE = 20  # dead letters quoted in the summary; the file holds them all
ROWS_PER_BATCH = 4  # model batches of rows per RunInference call: decoding overlaps 3 of 4


# ---------------------------------------------------------------- the model, described and run


def describe_model(path: str | os.PathLike) -> dict:
    """What the launcher needs of a model, from its metadata alone (nothing is loaded).

    Returns:
        ``source``, ``image_size``, ``dim``, ``fingerprint`` and ``class_names``.
    Raises:
        DataError: not a local SavedModel folder or ``.tflite`` file exported by vsearch.
    """
    if "://" in os.fspath(path):
        raise DataError(
            f"{path}: the model must be a local path on every worker (a path in the worker image "
            "or a shared mount), not a URL"
        )
    p = Path(path)
    if p.is_dir():
        from vsearch.artifacts import read_metadata

        meta = read_metadata(p)
    elif p.suffix == ".tflite":
        from vsearch.litert import read_tflite_metadata

        meta = read_tflite_metadata(p)
    else:
        what = "no such file or folder" if not p.exists() else "not a SavedModel folder or a .tflite file"
        raise DataError(
            f"{p}: {what}; expected an exported SavedModel folder (`vsearch siamese`) "
            "or a .tflite file (`vsearch export --format tflite`)"
        )
    return {
        "source": str(p),
        "image_size": int(meta["image_size"]),
        "dim": int(meta["embedding_dim"]),
        "fingerprint": str(meta.get("fingerprint", "")),
        "class_names": list(meta.get("class_names", [])),
    }


def _limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow's thread pools, when this process has not started them yet (a fresh worker)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised (the in-process DirectRunner): keep what it has
        pass


class EmbeddingHandler(ModelHandler):
    """RunInference's model: batches of staged rows -> (row, vector or None, reason or None).

    Args:
        model: SavedModel folder or ``.tflite`` file, a local path on every worker.
        batch_size: Photos per model call. ``BatchElements`` hands over ``ROWS_PER_BATCH``
            model batches of rows at a time (a bundle's last may be smaller), so that decoding
            the next model batch overlaps the model's run on this one.
        threads: Inference threads per worker (LiteRT's ``num_threads``; TensorFlow's pools
            in a fresh worker process). Default: the runtime's own choice.
        max_pixels / max_bytes: The road's limits (:func:`vsearch.images.model_input`).
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        rows = batch_size * ROWS_PER_BATCH
        super().__init__(min_batch_size=rows, max_batch_size=rows)
        self.model, self.batch_size, self.threads = str(model), int(batch_size), threads
        self.max_pixels, self.max_bytes = max_pixels, max_bytes

    def load_model(self):
        from vsearch.embedder import load_embedder

        if self.threads and Path(self.model).is_dir():
            _limit_tensorflow_threads(self.threads)
        return load_embedder(self.model, num_threads=self.threads)

    def run_inference(self, batch: Sequence[dict], model, inference_args=None):
        return embed_rows(model, batch, self.batch_size, self.max_pixels, self.max_bytes)

    def get_metrics_namespace(self) -> str:
        return "vsearch_embed"


# ---------------------------------------------------------------- reading, decoding and embedding rows


def read_photo(location: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A photo's bytes through Beam's FileSystems, within ``max_bytes``; any failure is an ImageError."""
    try:
        with FileSystems.open(location, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(location, "no such file") from None
    except Exception as exc:  # noqa: BLE001  (each filesystem raises its own kinds; one photo's failure)
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ImageError(location, f"cannot read the file ({detail})") from None
    if not data:
        raise ImageError(location, "file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(location, f"file is over the {max_bytes}-byte limit")
    return data


def embed_rows(
    embedder,
    rows: Sequence[dict],
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[tuple[dict, np.ndarray | None, str | None]]:
    """Staged rows -> (row, unit vector, None), or (row, None, why the photo is unusable).

    A local path goes to :func:`vsearch.embedder.embed_images` as a path (its decoding
    threads read it); a URL's bytes are read here through Beam's FileSystems.
    """
    from vsearch.embedder import embed_images

    images, reasons = [], {}
    for n, row in enumerate(rows):
        if "://" not in row["image"]:
            images.append(row["image"])
            continue
        try:
            images.append(read_photo(row["image"], max_bytes))
        except ImageError as exc:
            images.append(b"")
            reasons[n] = exc.reason
    readable = [n for n in range(len(rows)) if n not in reasons]
    done = embed_images(embedder, [images[n] for n in readable], batch_size, max_pixels=max_pixels, max_bytes=max_bytes)
    vectors = dict(zip((readable[j] for j in done.good), done.vectors))
    for j, n in enumerate(readable):
        if n not in vectors:  # embed_images names a failure by its path, or "<image j>" for bytes
            image = images[n]
            reasons[n] = done.bad[image if isinstance(image, str) else f"<image {j}>"]
    return [(row, vectors.get(n), reasons.get(n)) for n, row in enumerate(rows)]


def sort_outcome(outcome: tuple[dict, np.ndarray | None, str | None]) -> Iterable:
    """(row, vector) on the main output, or a dead letter {photo_id, product_id, image, reason}."""
    row, vector, reason = outcome
    if reason is None:
        yield row, vector
    else:
        yield beam.pvalue.TaggedOutput(
            DEAD,
            {"photo_id": row["photo_id"], "product_id": row["product_id"], "image": row["image"], "reason": reason},
        )


# ---------------------------------------------------------------- the output


def parquet_schema(attributes: dict[str, str], dim: int) -> pa.Schema:
    """The shards' columns: the fixed ones, one per attribute (typed), the vector."""
    clash = sorted(set(attributes) & {*FIXED_COLUMNS, "vector"})
    if clash:
        raise DataError(f"attribute column(s) {clash} would overwrite the output's own columns; rename them")
    return pa.schema(
        [
            *((c, pa.string()) for c in FIXED_COLUMNS),
            *((name, ARROW_TYPES[kind]) for name, kind in attributes.items()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def to_record(element: tuple[dict, np.ndarray]) -> dict:
    row, vector = element
    return {**{c: row[c] for c in FIXED_COLUMNS}, **row["attributes"], "vector": vector.tolist()}


def _write_text(path: str, text: str) -> None:
    """A small file beside the shards: atomically when local, through FileSystems elsewhere."""
    if "://" in path:
        with FileSystems.create(
            path, mime_type="application/json", compression_type=CompressionTypes.UNCOMPRESSED
        ) as fh:
            fh.write(text.encode())
    else:
        from vsearch.artifacts import write_atomic

        write_atomic(path, text)


def count_rows(shards: Sequence[str]) -> int:
    """Rows in the Parquet shards, from their footers."""
    import pyarrow.parquet as pq

    total = 0
    for shard in shards:
        with _open(shard) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def tally_dead_letters(path: str | None) -> tuple[int, list[dict]]:
    """How many dead letters the file holds, and the first ``DEAD_SAMPLE`` by photo id (one pass)."""
    if path is None:
        return 0, []
    count = 0

    def letters(fh):
        nonlocal count
        for line in fh:
            if line.strip():
                count += 1
                yield json.loads(line)

    with _open(path) as fh:
        sample = heapq.nsmallest(DEAD_SAMPLE, letters(fh), key=lambda d: d["photo_id"])
    return count, sample


def write_summary(_, out: str, facts: dict, shards: list[str], dead_files: list[str]) -> dict:
    """The last step: ``embeddings.json``, written once every shard and the dead letters are.

    The counts are read back from what was written (the shards' footers, the dead-letter
    file), so the summary cannot disagree with the files it names.
    """
    dead_file = dead_files[0] if dead_files else None
    dead, sample = tally_dead_letters(dead_file)
    summary = {
        **facts,
        "shards": sorted(posixpath.basename(s) for s in shards),
        "counts": {**facts["counts"], "embedded": count_rows(shards), "dead_letters": dead},
        "dead_letters": {"file": posixpath.basename(dead_file) if dead_file else None, "sample": sample},
    }
    _write_text(FileSystems.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------- the pipeline


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the words after ``--``; one Beam does not know is an error, not dropped."""
    options = PipelineOptions(list(beam_args))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        raise DataError(
            f"not Beam pipeline option(s): {', '.join('--' + u for u in unknown)} "
            "(after --, vsearch embed passes Beam's own options: --runner, --direct_num_workers, ...)"
        )
    return options


def stage_input(manifest: Manifest, out: str) -> str:
    """The checked rows as JSON Lines beside the output, for the workers to read in parallel.

    A large ``beam.Create`` would travel inside the job's graph (Dataflow limits it to a
    few MB); a file is read in splits by whichever workers are there.
    """
    if "://" not in out:
        Path(out).mkdir(parents=True, exist_ok=True)
    old = FileSystems.join(out, SUMMARY_FILE)
    if FileSystems.exists(old):  # no reader may pair the last run's summary with this run's shards
        FileSystems.delete([old])
    staged = FileSystems.join(out, INPUT_FILE)
    with FileSystems.create(staged, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        for photo in manifest.photos:
            fh.write((json.dumps(photo.to_dict()) + "\n").encode())
    return staged


def build_pipeline(
    p: beam.Pipeline,
    staged: str,
    out: str,
    model: dict,
    attributes: dict[str, str],
    facts: dict,
    batch_size: int,
    threads: int | None,
) -> None:
    """The steps of ``vsearch embed`` on ``p`` (see the module's doc)."""
    rows = (
        p | "ReadRows" >> beam.io.ReadFromText(staged) | "Parse" >> beam.Map(json.loads) | "Spread" >> beam.Reshuffle()
    )
    outcomes = rows | "Embed" >> RunInference(EmbeddingHandler(model["source"], batch_size, threads))
    decoded = outcomes | "Sort" >> beam.FlatMap(sort_outcome).with_outputs(DEAD, main="ok")
    shards = (
        decoded.ok
        | "ToRecord" >> beam.Map(to_record)
        | "WriteShards"
        >> beam.io.WriteToParquet(
            FileSystems.join(out, SHARD_PREFIX), parquet_schema(attributes, model["dim"]), file_name_suffix=".parquet"
        )
    )
    dead = decoded[DEAD]
    dead_files = (
        dead
        | "DeadJson" >> beam.Map(json.dumps)
        | "WriteDead"
        >> beam.io.WriteToText(FileSystems.join(out, DEAD_LETTERS), file_name_suffix=".jsonl", shard_name_template="")
    )
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Summary" >> beam.Map(write_summary, out, facts, beam.pvalue.AsList(shards), beam.pvalue.AsList(dead_files))
    )


def embed_catalog(
    source: str | os.PathLike,
    model: str | os.PathLike,
    out: str,
    batch_size: int = 32,
    threads: int | None = None,
    beam_args: Sequence[str] = (),
) -> dict:
    """``vsearch embed``: checks everything it can first, runs the pipeline, returns the summary.

    Args:
        source: A manifest (CSV, JSON Lines, Parquet) or a ``<category>/<photo>`` folder.
        model: SavedModel folder or ``.tflite`` file, a local path on every worker.
        out: Output folder (local, or ``gs://...`` where Beam's GCP extra is installed).
        batch_size: Photos per model call.
        threads: Inference threads per worker.
        beam_args: Beam's ``PipelineOptions`` flags (runner and its options).
    Returns:
        What ``embeddings.json`` holds.
    Raises:
        DataError: the manifest, model, options or output cannot be used; nothing ran.
        ValueError: ``batch_size`` or ``threads`` below 1.
    """
    if batch_size < 1 or (threads is not None and threads < 1):
        raise ValueError(f"embed_catalog: batch_size and threads must be >= 1, got {batch_size} and {threads}")
    from vsearch.artifacts import provenance

    options = pipeline_options(beam_args)
    info = describe_model(model)
    manifest = read_manifest(source)
    columns = {**{c: "text" for c in FIXED_COLUMNS}, **manifest.schema}
    parquet_schema(manifest.schema, info["dim"])  # a clashing attribute fails here, before any work
    out = os.fspath(out)
    facts = {
        "format": FORMAT,
        "source": manifest.source,
        "model": {k: info[k] for k in ("source", "image_size", "class_names")},
        "fingerprint": info["fingerprint"],
        "dim": info["dim"],
        "columns": columns,
        "attributes": manifest.schema,
        "counts": {"photos": len(manifest.photos), "skipped": len(manifest.skipped)},
        "skipped": manifest.skipped,
        "batch_size": batch_size,
        "beam_version": beam.__version__,
        "provenance": provenance(),
    }
    staged = stage_input(manifest, out)
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, staged, out, info, manifest.schema, facts, batch_size, threads)
    return read_summary(out)


# ---------------------------------------------------------------- reading the output back


def read_summary(folder: str) -> dict:
    """``embeddings.json`` of a finished ``vsearch embed`` run."""
    path = FileSystems.join(os.fspath(folder), SUMMARY_FILE)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            summary = json.loads(fh.read().decode())
    except Exception as exc:  # noqa: BLE001  (missing, unreadable or not JSON: one answer)
        raise DataError(
            f"{path}: not the summary of a finished `vsearch embed` run ({type(exc).__name__}: "
            f"{str(exc)[:200]}); run it (again)"
        ) from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        found = summary.get("format") if isinstance(summary, dict) else type(summary).__name__
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r}; run `vsearch embed` again")
    return summary


@dataclass
class Embeddings:
    """A ``vsearch embed`` output read back: catalog photos, their vectors, what failed."""

    photos: list[Photo]  # product, photo id, image, category, attributes
    vectors: np.ndarray  # (len(photos), dim) float32
    summary: dict
    dead_letters: dict[str, str]  # image -> reason


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def load_embeddings(folder: str | os.PathLike, expected_fingerprint: str | None = None) -> Embeddings:
    """The shards listed by ``embeddings.json`` (never a stale shard of an earlier run).

    Raises:
        DataError: no finished run there, a shard is missing or damaged, or the vectors were
            made by a model other than ``expected_fingerprint``'s.
    """
    import pyarrow.parquet as pq

    folder = os.fspath(folder)
    summary = read_summary(folder)
    if expected_fingerprint is not None and summary["fingerprint"] != expected_fingerprint:
        raise DataError(
            f"{folder}: embedded with model {summary['fingerprint']}, but --model is "
            f"{expected_fingerprint}; embed the catalog again with this model"
        )
    dim, attributes = int(summary["dim"]), list(summary["attributes"])
    tables = []
    for name in summary["shards"]:
        path = FileSystems.join(folder, name)
        try:
            with _open(path) as fh:
                tables.append(pq.read_table(fh))
        except Exception as exc:  # noqa: BLE001  (missing or damaged: one answer)
            raise DataError(
                f"{path}: missing or damaged shard ({type(exc).__name__}: {str(exc)[:200]}); run `vsearch embed` again"
            ) from None
    table = pa.concat_tables(tables) if tables else parquet_schema(summary["attributes"], dim).empty_table()
    vectors = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32).reshape(-1, dim)
    photos = [
        Photo(row["product_id"], row["photo_id"], row["image"], row["category"], {a: row[a] for a in attributes})
        for row in table.drop_columns(["vector"]).to_pylist()
    ]
    return Embeddings(photos, vectors, summary, read_dead_letters(folder, summary))


def read_dead_letters(folder: str, summary: dict) -> dict[str, str]:
    name = summary["dead_letters"]["file"]
    if not name:
        return {}
    with _open(FileSystems.join(folder, name)) as fh:
        letters = [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]
    return {d["image"]: d["reason"] for d in letters}


def format_summary(summary: dict, out: str) -> str:
    """What ``vsearch embed`` prints."""
    counts = summary["counts"]
    lines = [
        f"embedded {counts['embedded']} of {counts['photos']} photo(s) into {len(summary['shards'])} shard(s) "
        f"in {out} ({summary['dim']}-d, model {summary['fingerprint']})"
    ]
    if counts["dead_letters"]:
        lines.append(
            f"{counts['dead_letters']} unusable photo(s) listed with their reasons in "
            f"{FileSystems.join(out, summary['dead_letters']['file'])}, e.g.:"
        )
        lines += [f"  {d['image']}: {d['reason']}" for d in summary["dead_letters"]["sample"][:5]]
    if summary.get("skipped"):
        lines.append(f"{len(summary['skipped'])} file(s) of the folder were not photos:")
        lines += [f"  {path}: {why}" for path, why in sorted(summary["skipped"].items())]
    return "\n".join(lines)
