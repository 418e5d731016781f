"""The ``vsearch`` command: one sub-command per stage.

    vsearch data [--source DIR]           curate the catalog photos into data/clothing
    vsearch train [--preset P] [--set K=V]  stage 1, the classifier
    vsearch siamese [--preset P] [--set K=V] stage 2, triplet training + SavedModel export
    vsearch eval [--preset P] [--query PATH] stage 3, metrics and retrieval pictures

Errors a user can fix (a bad path, a bad image, a bad override) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from vsearch.errors import VSearchError  # noqa: E402


class UsageError(VSearchError):
    """A command-line problem the user can fix."""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="config preset: default or smoke")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set fine_tune_epochs=4 --set data.batch_size=64")
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
    from vsearch.data import format_report, prepare

    source = args.source or os.environ.get("VSEARCH_DATA_SOURCE") or None
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    result = prepare(source, args.dest, class_names=classes, url=args.url)
    print(format_report(result))
    print(f"wrote {args.dest} (report: {args.dest}/report.json)")
    return 0


def cmd_train(args) -> int:
    from vsearch.config import ClassifierConfig
    from vsearch.train import train_classifier

    config = _build_config(ClassifierConfig, args, {"backbone_weights": args.backbone_weights,
                                                    "out_dir": args.out})
    train_classifier(config)
    return 0


def cmd_siamese(args) -> int:
    from vsearch.config import SiameseConfig
    from vsearch.siamese import train_siamese

    config = _build_config(SiameseConfig, args, {"out_dir": args.out, "classifier_dir": args.classifier})
    train_siamese(config)
    return 0


def cmd_eval(args) -> int:
    from vsearch.config import EvalConfig
    from vsearch.evaluate import run_eval
    from vsearch.images import load_image

    config = _build_config(EvalConfig, args, {"model_dir": args.model, "reports_dir": args.reports,
                                              "seed": args.seed})
    if args.query:
        load_image(args.query, config.data.max_image_pixels)  # fail fast, before loading models
    run_eval(config, query=args.query)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vsearch import __version__
    from vsearch.config import CLASS_NAMES

    parser = argparse.ArgumentParser(prog="vsearch", description="Visual search for a product catalog.")
    parser.add_argument("--version", action="version", version=f"vsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="download or copy and validate the catalog photos",
                       description="Curate dress/hat/longsleeve/pants/shoes/shorts/t-shirt into "
                                   "DEST/{train,validation}/<class>/, listing bad files.")
    p.add_argument("--source", help="local copy laid out as train/<class>/ and validation/<class>/ "
                                    "(default: $VSEARCH_DATA_SOURCE, else download)")
    p.add_argument("--dest", default="data/clothing", help="output folder (default data/clothing)")
    p.add_argument("--classes", default=",".join(CLASS_NAMES),
                   help="comma-separated class folders to keep (default: the 7 catalog classes)")
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="stage 1: fine-tune the MobileNetV2 classifier",
                       description="Fine-tune MobileNetV2 on the catalog categories; writes "
                                   "saved_models/classifier/.")
    _config_args(p)
    p.add_argument("--backbone-weights", help="imagenet | none | PATH to a weights file")
    p.add_argument("--out", help="artifact folder (out_dir)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("siamese", help="stage 2: triplet training and SavedModel export",
                       description="Train the embedding tower with triplets from the trained classifier's "
                                   "backbone; export saved_models/embedding/ (TensorFlow SavedModel).")
    _config_args(p)
    p.add_argument("--classifier", help="trained classifier folder (classifier_dir)")
    p.add_argument("--out", help="SavedModel output folder (out_dir)")
    p.set_defaults(func=cmd_siamese)

    p = sub.add_parser("eval", help="stage 3: retrieval metrics and pictures",
                       description="Embed the catalog (train split) and the validation queries with the "
                                   "exported model; compare with the baselines; write reports/.")
    _config_args(p)
    p.add_argument("--model", help="exported SavedModel folder (model_dir)")
    p.add_argument("--reports", help="output folder (reports_dir)")
    p.add_argument("--seed", help="seed for the random query and the customer photos")
    p.add_argument("--query", help="any photo to search with in retrieval.png instead of a random one")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vsearch.errors import VSearchError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "url", "") is None:
        from vsearch.data import UPSTREAM_URL

        args.url = UPSTREAM_URL
    try:
        return args.func(args)
    except (VSearchError, UsageError) as exc:
        print(f"vsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
