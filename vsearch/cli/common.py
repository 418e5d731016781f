"""What the commands share: the usage error, config and settings flags, the model and the store.

Each helper imports its wing lazily, so ``vsearch --help`` and a ``.tflite`` model's
``vsearch serve`` start without TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys

from vsearch.errors import VSearchError

DEFAULT_MODEL = "saved_models/embedding"
DEFAULT_TFLITE = "saved_models/embedding.tflite"  # `vsearch export --format tflite`, float32
DEFAULT_MEDIA = "saved_models/media"


class UsageError(VSearchError):
    """A command-line problem the user can fix."""


def log_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset``, ``--set``, ``--data-dir`` and ``--config`` of a learning stage (see :func:`build_config`)."""
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


def build_config(cls, args, extra: dict[str, str] | None = None):
    """A learning stage's config: ``--config`` or ``--preset``, then ``--set``, ``--data-dir`` and ``extra``."""
    from vsearch import config as c

    cfg = c.load_json(cls, args.config) if args.config else c.preset(cls, args.preset)
    overrides = c.parse_overrides(args.overrides)
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return c.apply_overrides(cfg, overrides)


def serving_settings(cls, args, flags: dict[str, tuple[str, object]]):
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


def settings_args(p, example: str, shorthands: bool = True) -> None:
    """``--preset``, ``--set`` and ``--config`` of a serving command (see :func:`serving_settings`);
    ``shorthands``: whether the command has flags that set some of them too."""
    p.add_argument(
        "--preset",
        default="default",
        help="settings preset: default, smoke (small limits, for tests), cosine (no category prior, no re-rank) "
        "or thorough (the photo's centre searched too)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting, e.g. {example} "
        + ("(the flags below set some of them too; docs/serving.md)" if shorthands else "(docs/serving.md)"),
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


def store_arg(q) -> None:
    from vsearch.stores import DEFAULT_STORE

    q.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="SPEC",
        help=f"the catalog: faiss:FILE (a bare path too), milvus:FILE.db or milvus:http://HOST:19530 "
        f"(default {DEFAULT_STORE})",
    )


def embedder_of(args):
    """The model of ``--model`` (and ``--threads`` where the command has it)."""
    from vsearch.embedder import load_embedder

    return load_embedder(args.model, num_threads=getattr(args, "threads", None))


def store_of(args, embedder=None):
    """The catalog of ``--store``; with ``embedder``, one built by another model is refused."""
    from vsearch.stores import open_store

    return open_store(args.store, expected_fingerprint=getattr(embedder, "fingerprint", None))


def embed_kwargs(args) -> dict:
    """``--batch-size`` and ``--workers`` of a command that embeds photos, checked."""
    kwargs = {"batch_size": getattr(args, "batch_size", 32), "workers": getattr(args, "workers", 4), "progress": True}
    for flag, value in (("--batch-size", kwargs["batch_size"]), ("--workers", kwargs["workers"])):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    return kwargs


def describe(store) -> str:
    """A catalog as one line: its spec, size, dimension and index."""
    from vsearch.stores import engine

    products, photos = store.count()
    kind = getattr(store, "kind", None)
    road = ", ".join(f"{key} {value}" for key, value in engine(store).items() if key != "backend")
    return (
        f"{store.spec}: {products} products, {photos} photos, {store.dim}-d"
        + (f", {kind} index" if kind else "")
        + (f" ({road})" if road else "")
    )


def check_output_file(path: str, flag: str) -> None:
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
