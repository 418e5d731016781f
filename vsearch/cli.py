"""The ``vsearch`` command: one sub-command per stage.

    vsearch data [--source DIR]           curate the catalog photos into data/photos
    vsearch train [--preset P] [--set K=V]  stage 1, the classifier
    vsearch siamese [--preset P] [--set K=V] stage 2, triplet training + SavedModel export
    vsearch eval [--preset P] [--query PATH] stage 3, metrics and retrieval pictures
    vsearch eval --queries Q.csv --catalog C.csv  real labelled photos against a catalog: R@1/5/10
    vsearch export --format tflite [--quantize none|dynamic|int8]  the model for fast CPU inference
    vsearch index build|add|upsert|remove|info|compact [--store SPEC]  the catalog of products
    vsearch calibrate [--target-precision 0.95]  what a search answer means, kept with the catalog
    vsearch embed MANIFEST --out DIR [-- BEAM OPTIONS]  embed a catalog on Apache Beam into Parquet shards
    vsearch search PHOTO [-k 5] [--box X0,Y0,X1,Y1] [--where 'price<=50']  a photo (or a part) -> products
    vsearch serve [--port 8000] [--preset P] [--set K=V]  the upload page and JSON API

Errors a user can fix (a bad path, a bad image, a bad override) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from vsearch.config import DATA_DIR  # noqa: E402
from vsearch.errors import VSearchError  # noqa: E402


class UsageError(VSearchError):
    """A command-line problem the user can fix."""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="config preset: default or smoke")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set fine_tune_epochs=4 --set data.batch_size=64",
    )
    parser.add_argument("--data-dir", help="data root with train/ and validation/ (data.data_dir)")
    parser.add_argument("--config", help="a config.json written by an earlier run")


def _build_config(cls, args, extra: dict[str, str] | None = None):
    from vsearch import config as c

    cfg = c.load_json(cls, args.config) if args.config else c.preset(cls, args.preset)
    overrides = c.parse_overrides(args.overrides)
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return c.apply_overrides(cfg, overrides)


def cmd_data(args) -> int:
    from vsearch.learn.photo_checks import checks_path
    from vsearch.learn.prepare import format_report, prepare

    checks = checks_path(args.feature_cache_dir)
    if args.catalog or args.photos:
        from vsearch.learn.product_folders import prepare_products

        if args.source or args.classes:
            raise UsageError(
                "--source and --classes read a folder; --catalog/--photos read product manifests: not both"
            )
        result = prepare_products(
            args.catalog, args.photos, args.dest, args.validation, args.holdout, args.seed, checks=checks
        )
    elif args.validation:
        raise UsageError("--validation goes with --catalog/--photos (a folder source has its own validation/)")
    else:
        source = args.source or os.environ.get("VSEARCH_DATA_SOURCE") or None
        classes = tuple(c.strip() for c in (args.classes or "").split(",") if c.strip()) or None
        result = prepare(source, args.dest, class_names=classes, url=args.url, checks=checks)
    print(format_report(result))
    print(f"wrote {args.dest} (report: {args.dest}/report.json)")
    return 0


def cmd_train(args) -> int:
    from vsearch.config import ClassifierConfig
    from vsearch.learn.classifier import train_classifier

    config = _build_config(
        ClassifierConfig,
        args,
        {"backbone_weights": args.backbone_weights, "out_dir": args.out, "strategy": args.strategy},
    )
    train_classifier(config)
    return 0


def cmd_siamese(args) -> int:
    from vsearch.config import SiameseConfig
    from vsearch.learn.siamese import train_siamese

    config = _build_config(
        SiameseConfig, args, {"out_dir": args.out, "classifier_dir": args.classifier, "strategy": args.strategy}
    )
    train_siamese(config)
    return 0


def cmd_eval(args) -> int:
    from vsearch.config import EvalConfig
    from vsearch.images import load_image
    from vsearch.learn.evaluate import run_eval

    if args.queries or args.catalog or args.out or args.no_baseline:
        return _eval_queries(args)
    config = _build_config(
        EvalConfig,
        args,
        {
            "model_dir": args.model,
            "reports_dir": args.reports,
            "seed": args.seed,
            "num_threads": args.threads,
            "reference_dir": args.reference,
        },
    )
    if args.query:
        load_image(args.query, config.data.max_image_pixels)  # fail fast, before loading models
    run_eval(config, query=args.query)
    return 0


def _eval_queries(args) -> int:
    """``vsearch eval --queries Q --catalog C``: real labelled photos against a catalog manifest."""
    from vsearch.config import EvalConfig
    from vsearch.learn.query_eval import default_report, run_query_eval

    if not (args.queries and args.catalog):
        raise UsageError(
            "--queries QUERIES and --catalog CATALOG go together (both manifests); --out and "
            "--no-baseline belong to them"
        )
    stray = [
        flag
        for flag, value in (("--query", args.query), ("--seed", args.seed), ("--reference", args.reference))
        if value
    ]
    if stray:
        raise UsageError(f"{', '.join(stray)}: for the stage-3 evaluation, not with --queries")
    extra = {"model_dir": args.model, "reports_dir": args.reports, "num_threads": args.threads}
    if args.no_baseline:
        extra["baselines"] = "false"
    config = _build_config(EvalConfig, args, extra)
    run_query_eval(
        config, args.catalog, args.queries, args.out or default_report(config.reports_dir, args.catalog, args.queries)
    )
    return 0


def cmd_export(args) -> int:
    from vsearch.learn.litert_export import check_quantization, export_tflite

    if args.format != "tflite":
        raise UsageError(
            f"--format must be tflite (the SavedModel itself is written by `vsearch siamese`), got {args.format!r}"
        )
    check_quantization(args.quantize)
    if args.calibration and args.quantize != "int8":
        raise UsageError(f"--calibration is only used by --quantize int8, not {args.quantize!r}")
    export_tflite(args.model, args.out, args.quantize, args.calibration, args.calibration_images)
    return 0


DEFAULT_MODEL = "saved_models/embedding"
DEFAULT_TFLITE = "saved_models/embedding.tflite"  # `vsearch export --format tflite`, float32
DEFAULT_MEDIA = "saved_models/media"


def _load_embedder(args):
    from vsearch.embedder import load_embedder

    return load_embedder(args.model, num_threads=getattr(args, "threads", None))


def _log_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _embed_kwargs(args) -> dict:
    kwargs = {"batch_size": getattr(args, "batch_size", 32), "workers": getattr(args, "workers", 4), "progress": True}
    for flag, value in (("--batch-size", kwargs["batch_size"]), ("--workers", kwargs["workers"])):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    return kwargs


def _open_store(args, embedder=None):
    from vsearch.stores import open_store

    return open_store(args.store, expected_fingerprint=getattr(embedder, "fingerprint", None))


def _describe(store) -> str:
    from vsearch.stores import engine

    products, photos = store.count()
    kind = getattr(store, "kind", None)
    road = ", ".join(f"{key} {value}" for key, value in engine(store).items() if key != "backend")
    return (
        f"{store.spec}: {products} products, {photos} photos, {store.dim}-d"
        + (f", {kind} index" if kind else "")
        + (f" ({road})" if road else "")
    )


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

    embed_kwargs = _embed_kwargs(args)
    backend, where = parse_spec(args.store)
    if backend == "faiss":
        _check_output_file(where, "--store")  # before the embedding work, not after it
    if args.calibrate:
        _check_calibration_args(args)
    if args.from_embeddings:
        store, report = _catalog_from_embeddings(args)
    elif not args.catalog:
        raise UsageError(
            "give a manifest (.csv, .jsonl, .parquet) or a catalog folder, or --from-embeddings DIR "
            "(the output of `vsearch embed`)"
        )
    else:
        args.model = args.model or DEFAULT_MODEL
        store, report = build_catalog(_load_embedder(args), args.catalog, args.store, args.kind, **embed_kwargs)
    print(report.format())
    if args.calibrate:
        _calibrate(store, _load_embedder(args), args)
    print(f"wrote {_describe(store)}")


def index_add(args) -> None:
    """``vsearch index add`` (new products only) and ``vsearch index upsert`` (new or replaced)."""
    from vsearch.catalog.building import add_products

    embed_kwargs = _embed_kwargs(args)
    embedder = _load_embedder(args)
    store = _open_store(args, embedder)
    report = add_products(store, embedder, args.paths, args.category, replace=args.action == "upsert", **embed_kwargs)
    print(report.format())
    print(f"wrote {_describe(store)}")
    _warn_stale_calibration(store)


def index_remove(args) -> None:
    store = _open_store(args)
    unknown = [i for i in args.ids if store.get(i) is None]
    if unknown:
        raise UsageError(f"{len(unknown)} product id(s) not in {store.spec}: {unknown[:5]}; nothing removed")
    removed = store.delete(args.ids)
    print(f"removed {removed} product(s); {_describe(store)}")
    _warn_stale_calibration(store)


def index_info(args) -> None:
    store = _open_store(args)
    counts: dict[str, list[int]] = {}
    for product in store.products():
        count = counts.setdefault(product.category, [0, 0])
        count[0] += 1
        count[1] += len(product.photos)
    print(f"{_describe(store)}, model {store.fingerprint}")
    for name, (products, photos) in sorted(counts.items()):
        print(f"  {name or '(no category)'}: {products} products, {photos} photos")
    if store.schema:
        print("  attributes: " + ", ".join(f"{k} ({v})" for k, v in store.schema.items()))
    if store.calibration:
        from vsearch.catalog.calibration import format_calibration

        print("  " + format_calibration(store.calibration).replace("\n", "\n  "))


def index_compact(args) -> None:
    store = _open_store(args)
    compact = getattr(store, "compact", None)
    if compact is None:
        print(f"{store.spec}: nothing to compact (the store keeps its own files)")
    else:
        compact()
        print(f"compacted {_describe(store)}")
    if args.media:
        from vsearch.catalog.products import collect_media

        print(f"{len(collect_media(store, args.media))} unused media files removed from {args.media}")


def _warn_stale_calibration(store) -> None:
    """A calibration kept through an add or remove describes the catalog as it was."""
    if store.calibration:
        _log_err(
            f"note: {store.spec} keeps the calibration fitted before this change; run `vsearch calibrate "
            f"--store {store.spec}` again after large changes"
        )


def _check_calibration_args(args) -> None:
    if not 0 < args.target_precision < 1:
        raise UsageError(f"--target-precision must be between 0 and 1, got {args.target_precision}")
    if not 0 < args.wrong_none < 1:
        raise UsageError(f"--wrong-none must be between 0 and 1, got {args.wrong_none}")
    if args.photos < 1:
        raise UsageError(f"--photos must be >= 1, got {args.photos}")
    if not args.model:
        raise UsageError("--calibrate needs --model: it searches customer photos made from the catalog")


def _calibrate(store, embedder, args) -> None:
    """Calibrates ``store``'s answers and keeps the calibration in it (``vsearch calibrate``,
    ``index build --calibrate``); writes to the store meanwhile are kept."""
    from vsearch.catalog.calibration import calibrate_catalog, format_calibration

    calibration = calibrate_catalog(
        store,
        embedder,
        args.target_precision,
        args.photos,
        args.seed,
        getattr(args, "batch_size", 32),
        log=_log_err,
        wrong_none=args.wrong_none,
    )
    store.set_calibration(calibration)
    print(format_calibration(calibration))


def cmd_calibrate(args) -> int:
    _check_calibration_args(args)
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:  # before the model loads: its output is the one line
            raise UsageError(f"{flag} must be >= 1, got {value}")
    embedder = _load_embedder(args)
    store = _open_store(args, embedder)
    _calibrate(store, embedder, args)
    print(f"wrote the calibration into {store.spec}")
    return 0


def _catalog_from_embeddings(args):
    """``index build --from-embeddings DIR``: the shards of ``vsearch embed``, without re-embedding."""
    from vsearch.catalog.building import catalog_from_vectors

    if args.catalog:
        raise UsageError("--from-embeddings takes the catalog from the embeddings; give no manifest or folder")
    pipeline = _pipeline()
    expected = pipeline.describe_model(args.model)["fingerprint"] if args.model else None
    done = pipeline.load_embeddings(args.from_embeddings, expected_fingerprint=expected)
    store, report = catalog_from_vectors(
        done.photos, done.vectors, done.summary["fingerprint"], done.summary["model"], args.store, args.kind
    )
    report.skipped.update(done.dead_letters)
    return store, report


def _pipeline():
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


def cmd_embed(args) -> int:
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    pipeline = _pipeline()
    summary = pipeline.embed_catalog(args.manifest, args.model, args.out, args.batch_size, args.threads, args.beam_args)
    print(pipeline.format_summary(summary, args.out))
    return 0


def _check_output_file(path: str, flag: str) -> None:
    """A file about to be written: not a folder, and its folder exists or can be made."""
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot create it there ({parent} is not a writable folder)")


def cmd_search(args) -> int:
    import json

    from vsearch.catalog.search import Searcher
    from vsearch.config import SearchConfig
    from vsearch.embedder import load_embedder
    from vsearch.images import crop, load_image, parse_box
    from vsearch.stores.filters import parse_where

    # fail fast, before loading the model
    config = _settings(
        SearchConfig,
        args,
        {
            "-k": ("k", args.k),
            "--category": ("category", args.category),
            "--category-prior": ("category_prior", args.category_prior),
            "--rerank": ("rerank", args.rerank),
        },
    )
    box = parse_box(args.box, "--box") if args.box is not None else None
    pixels = load_image(args.photo, config.max_pixels, config.max_bytes)
    if args.plot:
        _check_output_file(args.plot, "--plot")
    store = _open_store(args)
    where = parse_where(args.where, store.schema)
    searcher = Searcher(load_embedder(args.model, num_threads=args.threads), store, config)
    result = searcher.search(pixels, source=args.photo, box=box, where=where)
    if args.json:
        print(json.dumps({"query": args.photo, "box": list(box) if box else None, **result.to_dict()}, indent=2))
    else:
        if box:
            print(f"the part of the photo in the box {','.join(f'{v:g}' for v in box)}")
        if where:
            print(f"products where {where.describe()}")
        if result.match:
            print(
                {
                    "exact": f"This is it ({result.match['confidence']:.2f})",
                    "similar": "Similar items",
                    "none": "Not in the catalog",
                }[result.match["verdict"]]
            )
        cat = result.category
        if cat["predicted"]:
            print(
                f"category {cat['mode']}: {cat['predicted']}"
                + (f" (vote {cat['confidence']:.2f}, favoured)" if cat["confidence"] is not None else "")
            )
        for rank, m in enumerate(result.matches, 1):
            verified = "  verified" if m.get("inliers", 0) >= searcher.rerank_config.min_inliers else ""
            print(f"{rank:>3}. {m['score']:.3f}  {m.get('category') or '-':<12} {_product_line(m)}{verified}")
        if not result.matches:
            print("no product matches" + (f" {where.describe()}" if where else ""))
    if args.plot:
        from vsearch.catalog.search import thumbnails
        from vsearch.learn import plots

        found = result.matches
        query = crop(pixels, box) if box else pixels  # the part that was searched
        fig = plots.retrieval(
            query,
            None,
            thumbnails(found),
            [x["attributes"].get("title") or x.get("category", "") for x in found],
            [x["score"] for x in found],
            title=f"vsearch: {args.photo}",
        )
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        fig.savefig(args.plot, dpi=80, bbox_inches="tight")
        print(f"wrote {args.plot}")
    return 0


def _product_line(match: dict) -> str:
    """A product as one line: its id, title, the other attributes, and the photo that matched."""
    attributes = dict(match.get("attributes") or {})
    title = attributes.pop("title", None)
    shown = ", ".join(f"{k}={v}" for k, v in attributes.items() if v is not None and k != "url")
    photo_id = str(match.get("photo_id") or match["product_id"])
    photo = f" (photo {photo_id.rsplit('/', 1)[-1]})" if photo_id != match["product_id"] else ""
    return match["product_id"] + (f"  {title}" if title else "") + (f"  [{shown}]" if shown else "") + photo


def serving_model(model: str | None) -> str:
    """``--model`` of ``vsearch serve``; by default the float32 LiteRT export when there is one.

    It answers a query several times faster than the SavedModel on a CPU and shares its
    fingerprint (its vectors are the SavedModel's to within float rounding), so the same
    catalog serves both.
    """
    if model:
        return model
    return DEFAULT_TFLITE if os.path.isfile(DEFAULT_TFLITE) else DEFAULT_MODEL


def cmd_serve(args) -> int:
    from vsearch.config import ServerConfig
    from vsearch.web.admin import admin_token
    from vsearch.web.server import run

    config = _settings(
        ServerConfig,
        args,
        {
            "--host": ("host", args.host),
            "--port": ("port", args.port),
            "--max-upload-mb": ("max_upload_mb", args.max_upload_mb),
            "--decode-budget-mb": ("decode_budget_mb", args.decode_budget_mb),
            "--reload-interval": ("reload_interval_s", args.reload_interval),
            "--rerank": ("search.rerank", args.rerank),
            "--category-prior": ("search.category_prior", args.category_prior),
        },
    )
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    run(
        serving_model(args.model),
        args.store,
        config,
        num_threads=args.threads,
        admin_token=admin_token(args.admin_token_file),
        media_dir=args.media,
    )
    return 0


def _settings(cls, args, flags: dict[str, tuple[str, object]]):
    """A serving command's settings (:class:`~vsearch.config.SearchConfig`, :class:`~vsearch.config.ServerConfig`):
    ``--config FILE`` or ``--preset``, then ``--set KEY=VALUE``, then the shorthand flags given.

    ``flags``: flag -> (its key, its value; None when not given). A shorthand sets one field,
    as ``--set`` would (``--port 9000`` is ``--set port=9000``). Every value is checked by
    the config's dataclass; a bad one is a ConfigError naming its key, or its flag.
    """
    import re

    from vsearch import config as c

    settings = c.load_json(cls, args.config) if args.config else c.preset(cls, args.preset)
    settings = c.apply_overrides(settings, c.parse_overrides(args.overrides))
    given = {flag: (key, value) for flag, (key, value) in flags.items() if value is not None}
    try:
        return c.apply_overrides(settings, dict(given.values()))
    except c.ConfigError as exc:
        message = str(exc)
        for flag, (key, _) in given.items():
            if re.match(re.escape(key) + "[ :]", message):  # "port must be 1..65535" -> "--port must be ..."
                raise UsageError(flag + message[len(key) :]) from None
        raise


def settings_args(p, example: str) -> None:
    """``--preset``, ``--set`` and ``--config`` of a serving command (see :func:`_settings`)."""
    p.add_argument(
        "--preset",
        default="default",
        help="settings preset: default, smoke (small limits, for tests) or cosine (no category prior, no re-rank)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting, e.g. {example} (the flags below set some of them too; docs/serving.md)",
    )
    p.add_argument("--config", metavar="FILE", help="a JSON file of settings (any of them; the rest keep the defaults)")


def category_prior_arg(p, default: float) -> None:
    p.add_argument(
        "--category-prior",
        type=float,
        default=None,
        metavar="W",
        help="with --category auto: rank by cosine + W x the product's category's share of the vote of the "
        f"10 nearest (default {default:g}; larger favours the likely category more, experiments/served.py)",
    )


def strategy_arg(q, batch: str) -> None:
    from vsearch.config import STRATEGIES

    q.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="tf.distribute strategy of fit: mirrored (every visible GPU, or the CPU devices), none "
        "(one device), auto (mirrored when more than one GPU is visible; the default); "
        f"{batch} is the global batch, split across the replicas",
    )


def store_arg(q) -> None:
    from vsearch.stores import DEFAULT_STORE

    q.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="SPEC",
        help=f"the catalog: faiss:FILE (a bare path too), milvus:FILE.db or milvus:http://HOST:19530 "
        f"(default {DEFAULT_STORE})",
    )


def build_parser() -> argparse.ArgumentParser:
    from vsearch import __version__
    from vsearch.config import CLASS_NAMES, DataConfig, SearchConfig, ServerConfig

    parser = argparse.ArgumentParser(prog="vsearch", description="Visual search for a product catalog.")
    parser.add_argument("--version", action="version", version=f"vsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "data",
        help="download or copy and validate the catalog photos",
        description="Curate the catalog's photos into DEST/{train,validation}/<category>/, "
        "listing bad files: a shop's own folder (--source) with its own categories, "
        "product manifests with several photos per product (--catalog, --photos), "
        "or the clothing download's seven.",
    )
    p.add_argument(
        "--source",
        help="local copy laid out as train/<class>/ and validation/<class>/ "
        "(default: $VSEARCH_DATA_SOURCE, else download)",
    )
    p.add_argument("--dest", default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated category folders to keep (default: every folder of --source's train/; "
        f"for the download, {','.join(CLASS_NAMES)})",
    )
    p.add_argument(
        "--feature-cache-dir",
        default=DataConfig().feature_cache_dir,
        help="where the image checks are remembered for the stages, as their "
        "data.feature_cache_dir (default %(default)s; empty: nowhere)",
    )
    p.add_argument(
        "--catalog",
        help="product manifest of the shop's catalog photos (product_id, image, category): "
        "written as DEST/{train,validation}/<category>/ links and DEST/products.json",
    )
    p.add_argument("--photos", help="product manifest of other photos of the products (e.g. customers' phone photos)")
    p.add_argument(
        "--validation",
        help="product manifest of the validation photos (default: a per-product holdout of --photos, see --holdout)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="without --validation: share of each product's --photos held out for validation (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=DataConfig().seed, help="the holdout's seed (default %(default)s)")
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "train",
        help="stage 1: fine-tune the MobileNetV2 classifier",
        description="Fine-tune MobileNetV2 on the catalog categories; writes saved_models/classifier/.",
    )
    _config_args(p)
    p.add_argument("--backbone-weights", help="imagenet | none | PATH to a weights file")
    p.add_argument("--out", help="artifact folder (out_dir)")
    strategy_arg(p, "data.batch_size")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "siamese",
        help="stage 2: triplet training and SavedModel export",
        description="Train the embedding tower with triplets from the trained classifier's "
        "backbone; export saved_models/embedding/ (TensorFlow SavedModel).",
    )
    _config_args(p)
    p.add_argument("--classifier", help="trained classifier folder (classifier_dir)")
    p.add_argument("--out", help="SavedModel output folder (out_dir)")
    strategy_arg(p, "batch_size (triplets)")
    p.set_defaults(func=cmd_siamese)

    p = sub.add_parser(
        "eval",
        help="stage 3: retrieval metrics and pictures",
        description="Embed the catalog (train split) and the validation queries with the "
        "exported model; compare with the baselines; write reports/.",
    )
    _config_args(p)
    p.add_argument("--model", help="exported SavedModel folder (model_dir)")
    p.add_argument("--reports", help="output folder (reports_dir)")
    p.add_argument("--seed", help="seed for the random query and the customer photos")
    p.add_argument("--query", help="any photo to search with in retrieval.png instead of a random one")
    p.add_argument("--threads", type=int, help="a .tflite --model: decoding and inference threads (num_threads)")
    p.add_argument(
        "--reference",
        help="a .tflite --model: the SavedModel to measure parity against (default: the one it was converted from)",
    )
    real = p.add_argument_group(
        "real photos",
        "labelled customer photos against a catalog, both manifests (product_id, image, category, ...): "
        "R@1/5/10 and top-1 category of the served defaults, the plain cosine and frozen ImageNet features",
    )
    real.add_argument("--queries", metavar="MANIFEST", help="the labelled query photos, one per row")
    real.add_argument(
        "--catalog", metavar="MANIFEST", help="the catalog to search (a manifest or a <category>/ folder)"
    )
    real.add_argument(
        "--out", help="the markdown report, JSON beside it (default REPORTS/real-<queries>-in-<catalog>.md)"
    )
    real.add_argument("--no-baseline", action="store_true", help="leave out the frozen ImageNet road")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export",
        help="convert the exported model to TFLite for fast CPU inference",
        description="Convert the SavedModel's embed_pixels signature to a TFLite (LiteRT) "
        "flatbuffer plus a metadata sidecar FILE.json; int8 is calibrated on "
        "catalog photos and keeps float32 input and output.",
    )
    p.add_argument("--format", default="tflite", help="output format: tflite (default)")
    p.add_argument("--quantize", default="none", help="none (float32, default) | dynamic | int8")
    p.add_argument(
        "--model", default="saved_models/embedding", help="exported SavedModel folder (default saved_models/embedding)"
    )
    p.add_argument("--out", help="output file (default: next to the model, embedding[-QUANTIZE].tflite)")
    p.add_argument(
        "--calibration",
        help="int8: folder of catalog photos to calibrate on, searched recursively (default data/photos/train)",
    )
    p.add_argument(
        "--calibration-images", type=int, default=300, help="int8: how many of them, a seeded sample (default 300)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "index",
        help="build or change the catalog (products, photos, attributes)",
        description="The catalog store: the FAISS file (default, a snapshot plus an append-only "
        "log) or Milvus. It refuses a model other than the one that built it.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def model_args(q):
        q.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
        q.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
        q.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
        q.add_argument("--workers", type=int, default=4, help="decoding threads")

    def calibration_args(q):
        from vsearch.catalog.calibration import DEFAULT_PHOTOS, DEFAULT_SEED, DEFAULT_TARGET, DEFAULT_WRONG_NONE

        q.add_argument(
            "--target-precision",
            type=float,
            default=DEFAULT_TARGET,
            help="precision of 'exact' answers (default %(default)s)",
        )
        q.add_argument(
            "--wrong-none",
            type=float,
            default=DEFAULT_WRONG_NONE,
            help="the most in-catalog photos 'none' (not in the catalog) may be said to (default %(default)s)",
        )
        q.add_argument(
            "--photos",
            type=int,
            default=DEFAULT_PHOTOS,
            help="simulated customer photos per seed; three seeds: fit, thresholds, check (default %(default)s)",
        )
        q.add_argument(
            "--seed",
            type=int,
            default=DEFAULT_SEED,
            help="first of the three seeds of the customer photos (default %(default)s)",
        )

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

    p = sub.add_parser(
        "calibrate",
        help="learn what a search answer means: exact item, similar, not in the catalog",
        description="Search simulated customer photos of the catalog's own items, with their item "
        "in the index and left out; fit calibrated probabilities (Platt or isotonic, per "
        "category) and the thresholds for the target precision; store them in the index, "
        "so every search result carries match: {verdict, confidence}.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
    store_arg(p)
    p.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
    calibration_args(p)
    p.set_defaults(func=cmd_calibrate)

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

    p = sub.add_parser(
        "search",
        help="find the catalog's products in a photo",
        description="Embed a photo and print the top-k products (each once, by its best photo). "
        "Its settings are a SearchConfig (vsearch/config.py): --preset, --config and --set KEY=VALUE, "
        "with -k, --category, --category-prior and --rerank as shorthands.",
    )
    p.add_argument("photo")
    settings_args(p, "--set category_prior=0.05 --set reranker.depth=20 --set max_pixels=20000000")
    p.add_argument("-k", type=int, default=None, help=f"number of matches (default {SearchConfig.k})")
    p.add_argument(
        "--category",
        default=None,
        help="auto (default: cosine plus a soft prior for the category the nearest products vote for) "
        "| any (cosine only) | a category name",
    )
    category_prior_arg(p, SearchConfig.category_prior)
    p.add_argument(
        "--box",
        metavar="X0,Y0,X1,Y1",
        help="search only this part of the photo: fractions 0..1 of the upright photo's width and "
        "height, e.g. 0.5,0.6,1,1 for the lower right",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FILTER",
        help="attribute filter, repeatable (ANDed): 'price<=50', 'brand in (acme,zeta)', "
        "'in_stock=true', 'colour!=red'",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
    store_arg(p)
    p.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    p.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="verify the first 10 products with local features (ORB + RANSAC) and move the first that "
        "shows the same surface as the photo to the top: the exact item first more often, for a "
        "few ms per search (default: on; --no-rerank: the embedding's order, docs/serving.md)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="also save the query and its matches as a PNG")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "serve",
        help="the upload web page and JSON API",
        description="Serve the upload page at / and the JSON API (/api/search, /api/products/ID "
        "(PUT and DELETE with the admin token), /api/items/ID, /healthz, /metrics; docs "
        "at /docs) with uvicorn. Its settings are a ServerConfig (vsearch/config.py; its searches' "
        "are search.*): --preset, --config and --set KEY=VALUE, with --host, --port, --max-upload-mb, "
        "--decode-budget-mb, --reload-interval, --rerank and --category-prior as shorthands.",
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"SavedModel folder or .tflite (default {DEFAULT_TFLITE} when it exists, else {DEFAULT_MODEL})",
    )
    store_arg(p)
    settings_args(p, "--set search.category_prior=0.05 --set decode_wait_s=2 --set docs=false")
    served = ServerConfig()
    p.add_argument("--host", help=f"address to bind (default {served.host}: this machine only)")
    p.add_argument("--port", type=int, help=f"port (default {served.port})")
    p.add_argument(
        "--max-upload-mb", type=float, help=f"largest accepted photo in MB (default {served.max_upload_mb:g})"
    )
    p.add_argument(
        "--decode-budget-mb",
        type=float,
        help="memory for decoding photos at once, across requests, in MB; a photo that does not "
        f"fit waits briefly, then gets 503 (default {served.decode_budget_mb:g})",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        metavar="SECONDS",
        help="how often to take in other writers' changes to the catalog "
        f"(default {served.reload_interval_s:g}; 0: never)",
    )
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="file holding the token that PUT/DELETE /api/products need (Authorization: Bearer); "
        "default: $VSEARCH_ADMIN_TOKEN; without either, catalog writes are disabled",
    )
    p.add_argument(
        "--media",
        default=DEFAULT_MEDIA,
        metavar="DIR",
        help=f"where photos uploaded through the API are kept (default {DEFAULT_MEDIA})",
    )
    p.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether searches re-rank their short list when a request does not say (rerank field; "
        "default: on; see search --rerank)",
    )
    category_prior_arg(p, served.search.category_prior)
    p.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vsearch.errors import VSearchError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    beam_args: list[str] = []
    if argv[:1] == ["embed"] and "--" in argv:  # the rest is Beam's, untouched by argparse
        argv, beam_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    if beam_args:
        args.beam_args = beam_args
    if getattr(args, "url", "") is None:
        from vsearch.learn.prepare import UPSTREAM_URL

        args.url = UPSTREAM_URL
    try:
        return args.func(args)
    except (VSearchError, UsageError) as exc:
        print(f"vsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command had to write or read: permissions, space, a folder in the way
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        print(f"vsearch {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
