"""The ``vsearch`` parser and its dispatch: errors a user can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys

from vsearch.cli.calibrate import add_calibrate_parser
from vsearch.cli.common import UsageError
from vsearch.cli.embed import add_embed_parser
from vsearch.cli.evaluate import add_eval_parser
from vsearch.cli.index import add_index_parser
from vsearch.cli.learn import add_data_parser, add_export_parser, add_siamese_parser, add_train_parser
from vsearch.cli.search import add_search_parser
from vsearch.cli.serve import add_serve_parser
from vsearch.errors import VSearchError


def build_parser() -> argparse.ArgumentParser:
    from vsearch import __version__

    parser = argparse.ArgumentParser(prog="vsearch", description="Visual search for a product catalog.")
    parser.add_argument("--version", action="version", version=f"vsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        add_data_parser,
        add_train_parser,
        add_siamese_parser,
        add_eval_parser,
        add_export_parser,
        add_index_parser,
        add_calibrate_parser,
        add_embed_parser,
        add_search_parser,
        add_serve_parser,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
