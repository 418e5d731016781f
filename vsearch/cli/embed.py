"""``vsearch embed``: a catalog embedded on Apache Beam into Parquet shards (the ``beam`` extra)."""

from __future__ import annotations

from vsearch.cli.common import DEFAULT_MODEL, UsageError


def cmd_embed(args) -> int:
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    pipeline = beam_pipeline()
    summary = pipeline.embed_catalog(args.manifest, args.model, args.out, args.batch_size, args.threads, args.beam_args)
    print(pipeline.format_summary(summary, args.out))
    return 0


def beam_pipeline():
    """vsearch.catalog.pipeline, or how to install what it needs."""
    try:
        from vsearch.catalog import pipeline
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("apache_beam", "pyarrow"):
            raise UsageError(
                f"this command needs Apache Beam and pyarrow ({exc.name} is missing): pip install 'vsearch[beam]'"
            ) from None
        raise
    return pipeline


def add_embed_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed a catalog on Apache Beam into Parquet shards (pip install 'vsearch[beam]')",
        description="Read a manifest (CSV, JSON Lines or Parquet: product_id, image, category, "
        "attributes) or a <category>/<photo> folder, embed every photo with "
        "RunInference, and write Parquet shards, dead_letters.jsonl and embeddings.json "
        "to --out. Everything after -- goes to Beam's PipelineOptions, e.g. "
        "-- --runner DirectRunner --direct_num_workers 2 --direct_running_mode "
        "multi_processing.",
    )
    p.add_argument("manifest", help="manifest file (.csv, .jsonl, .parquet) or catalog folder")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"SavedModel folder or .tflite, a local path on every worker (default {DEFAULT_MODEL})",
    )
    p.add_argument("--out", required=True, help="output folder (local, or gs://... with Beam's GCP extra)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per model call (default 32)")
    p.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    p.set_defaults(func=cmd_embed, beam_args=[])
