"""``vsearch serve``: the upload page and the JSON API, with uvicorn."""

from __future__ import annotations

import argparse
import os

from vsearch.cli.common import (
    DEFAULT_MEDIA,
    DEFAULT_MODEL,
    DEFAULT_TFLITE,
    UsageError,
    category_prior_arg,
    serving_settings,
    settings_args,
    store_arg,
)


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

    config = serving_settings(
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


def add_serve_parser(sub) -> None:
    from vsearch.config import ServerConfig

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
