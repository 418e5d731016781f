"""The ``vsearch`` command: one sub-command per stage, argparse only, each calling one function of a wing.

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

``parser`` builds the parser and dispatches; one module per command group holds its
commands and their flags (``learn``: data, train, siamese, export; ``evaluate``: eval;
``index``; ``calibrate``; ``embed``; ``search``; ``serve``); ``common`` holds what they
share (the usage error, config and settings flags, loading the model, opening the store).
Every wing is imported inside the command that needs it, so the CLI starts, and serves a
``.tflite`` model, without TensorFlow. Errors a user can fix (a bad path, a bad image, a
bad override) print one line and exit 2.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vsearch.cli.common import UsageError  # noqa: E402
from vsearch.cli.parser import build_parser, main  # noqa: E402

__all__ = ["UsageError", "build_parser", "main"]
