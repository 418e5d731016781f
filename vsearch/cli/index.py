"""``vsearch index build|add|upsert|remove|info|compact``: the catalog of products in its store."""

from __future__ import annotations

from vsearch.cli.calibrate import calibrate, calibration_args, check_calibration_args, warn_stale_calibration
from vsearch.cli.common import (
    DEFAULT_MODEL,
    UsageError,
    check_output_file,
    describe,
    embed_kwargs,
    embedder_of,
    store_arg,
    store_of,
)
from vsearch.cli.embed import beam_pipeline


def cmd_index(args) -> int:
    {
        "build": index_build,
        "add": index_add,
        "upsert": index_add,
        "remove": index_remove,
        "info": index_info,
        "compact": index_compact,
    }[args.action](args)
    return 0


def index_build(args) -> None:
    """``vsearch index build``: a new catalog from a manifest, a folder, or ``vsearch embed``'s shards."""
    from vsearch.catalog.building import build_catalog
    from vsearch.stores import parse_spec

    kwargs = embed_kwargs(args)
    backend, where = parse_spec(args.store)
    if backend == "faiss":
        check_output_file(where, "--store")  # before the embedding work, not after it
    if args.calibrate:
        check_calibration_args(args)
    if args.from_embeddings:
        store, report = catalog_from_embeddings(args)
    elif not args.catalog:
        raise UsageError(
            "give a manifest (.csv, .jsonl, .parquet) or a catalog folder, or --from-embeddings DIR "
            "(the output of `vsearch embed`)"
        )
    else:
        args.model = args.model or DEFAULT_MODEL
        store, report = build_catalog(embedder_of(args), args.catalog, args.store, args.kind, **kwargs)
    print(report.format())
    if args.calibrate:
        calibrate(store, embedder_of(args), args)
    print(f"wrote {describe(store)}")


def index_add(args) -> None:
    """``vsearch index add`` (new products only) and ``vsearch index upsert`` (new or replaced)."""
    from vsearch.catalog.building import add_products

    kwargs = embed_kwargs(args)
    embedder = embedder_of(args)
    store = store_of(args, embedder)
    report = add_products(store, embedder, args.paths, args.category, replace=args.action == "upsert", **kwargs)
    print(report.format())
    print(f"wrote {describe(store)}")
    warn_stale_calibration(store)


def index_remove(args) -> None:
    store = store_of(args)
    unknown = [i for i in args.ids if store.get(i) is None]
    if unknown:
        raise UsageError(f"{len(unknown)} product id(s) not in {store.spec}: {unknown[:5]}; nothing removed")
    removed = store.delete(args.ids)
    print(f"removed {removed} product(s); {describe(store)}")
    warn_stale_calibration(store)


def index_info(args) -> None:
    store = store_of(args)
    counts: dict[str, list[int]] = {}
    for product in store.products():
        count = counts.setdefault(product.category, [0, 0])
        count[0] += 1
        count[1] += len(product.photos)
    print(f"{describe(store)}, model {store.fingerprint}")
    for name, (products, photos) in sorted(counts.items()):
        print(f"  {name or '(no category)'}: {products} products, {photos} photos")
    if store.schema:
        print("  attributes: " + ", ".join(f"{k} ({v})" for k, v in store.schema.items()))
    if store.calibration:
        from vsearch.catalog.calibration import format_calibration

        print("  " + format_calibration(store.calibration).replace("\n", "\n  "))


def index_compact(args) -> None:
    store = store_of(args)
    compact = getattr(store, "compact", None)
    if compact is None:
        print(f"{store.spec}: nothing to compact (the store keeps its own files)")
    else:
        compact()
        print(f"compacted {describe(store)}")
    if args.media:
        from vsearch.catalog.products import collect_media

        print(f"{len(collect_media(store, args.media))} unused media files removed from {args.media}")


def catalog_from_embeddings(args):
    """``index build --from-embeddings DIR``: the shards of ``vsearch embed``, without re-embedding."""
    from vsearch.catalog.building import catalog_from_vectors

    if args.catalog:
        raise UsageError("--from-embeddings takes the catalog from the embeddings; give no manifest or folder")
    pipeline = beam_pipeline()
    expected = pipeline.describe_model(args.model)["fingerprint"] if args.model else None
    done = pipeline.load_embeddings(args.from_embeddings, expected_fingerprint=expected)
    store, report = catalog_from_vectors(
        done.photos, done.vectors, done.summary["fingerprint"], done.summary["model"], args.store, args.kind
    )
    report.skipped.update(done.dead_letters)
    return store, report


def model_args(q) -> None:
    q.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
    q.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    q.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
    q.add_argument("--workers", type=int, default=4, help="decoding threads")


def add_index_parser(sub) -> None:
    p = sub.add_parser(
        "index",
        help="build or change the catalog (products, photos, attributes)",
        description="The catalog store: the FAISS file (default, a snapshot plus an append-only "
        "log) or Milvus. It refuses a model other than the one that built it.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = actions.add_parser("build", help="embed a manifest or a folder of photos into a new catalog")
    q.add_argument(
        "catalog",
        nargs="?",
        help="manifest (.csv, .jsonl, .parquet: product_id, image, category, "
        "attributes) or a folder with one sub-folder per category",
    )
    q.add_argument(
        "--from-embeddings",
        metavar="DIR",
        help="instead: the output of `vsearch embed` (no re-embedding; with --model, a different model is refused)",
    )
    store_arg(q)
    q.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "exact", "hnsw"),
        help="faiss: exact search, HNSW, or auto (HNSW above 20,000 photos)",
    )
    model_args(q)
    q.set_defaults(model=None)  # --from-embeddings checks the model only when one is given
    q.add_argument("--calibrate", action="store_true", help="also calibrate the answers (as `vsearch calibrate` does)")
    calibration_args(q)
    for action, what in (
        ("add", "add new products (a product already there is refused)"),
        ("upsert", "add products, or replace a product's photos and attributes"),
    ):
        q = actions.add_parser(action, help=f"{what}, without re-embedding the rest")
        q.add_argument("paths", nargs="+", help="manifests, image files or <category>/<photo> folders")
        q.add_argument("--category", help="category of photos given as files or folders (default: their folder)")
        store_arg(q)
        model_args(q)
    q = actions.add_parser("remove", help="remove products (all their photos) by product id")
    q.add_argument("ids", nargs="+")
    store_arg(q)
    q = actions.add_parser("info", help="size, categories, attributes and model of a catalog")
    store_arg(q)
    q = actions.add_parser("compact", help="faiss: fold the log of changes into a new snapshot")
    store_arg(q)
    q.add_argument("--media", help="also remove uploaded photos (under this --media folder) no product uses")
    p.set_defaults(func=cmd_index)
