"""The learning wing's commands: ``vsearch data``, ``train``, ``siamese`` and ``export``."""

from __future__ import annotations

import argparse
import os

from vsearch.cli.common import UsageError, build_config, config_args
from vsearch.config import DATA_DIR


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

    config = build_config(
        ClassifierConfig,
        args,
        {"backbone_weights": args.backbone_weights, "out_dir": args.out, "strategy": args.strategy},
    )
    train_classifier(config)
    return 0


def cmd_siamese(args) -> int:
    from vsearch.config import SiameseConfig
    from vsearch.learn.siamese import train_siamese

    config = build_config(
        SiameseConfig, args, {"out_dir": args.out, "classifier_dir": args.classifier, "strategy": args.strategy}
    )
    train_siamese(config)
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


def strategy_arg(q, batch: str) -> None:
    from vsearch.config import STRATEGIES

    q.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="tf.distribute strategy of fit: mirrored (every visible GPU, or the CPU devices), none "
        "(one device), auto (mirrored when more than one GPU is visible; the default); "
        f"{batch} is the global batch, split across the replicas",
    )


def add_data_parser(sub) -> None:
    from vsearch.config import CLASS_NAMES, DataConfig

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


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="stage 1: fine-tune the MobileNetV2 classifier",
        description="Fine-tune MobileNetV2 on the catalog categories; writes saved_models/classifier/.",
    )
    config_args(p)
    p.add_argument("--backbone-weights", help="imagenet | none | PATH to a weights file")
    p.add_argument("--out", help="artifact folder (out_dir)")
    strategy_arg(p, "data.batch_size")
    p.set_defaults(func=cmd_train)


def add_siamese_parser(sub) -> None:
    p = sub.add_parser(
        "siamese",
        help="stage 2: triplet training and SavedModel export",
        description="Train the embedding tower with triplets from the trained classifier's "
        "backbone; export saved_models/embedding/ (TensorFlow SavedModel).",
    )
    config_args(p)
    p.add_argument("--classifier", help="trained classifier folder (classifier_dir)")
    p.add_argument("--out", help="SavedModel output folder (out_dir)")
    strategy_arg(p, "batch_size (triplets)")
    p.set_defaults(func=cmd_siamese)


def add_export_parser(sub) -> None:
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
