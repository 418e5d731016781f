"""What the benchmarks and experiments share: the results file, the command line, sample photos.

Every script is a module run from the repository root (``python -m bench.embed``,
``python -m experiments.robustness``), so the scripts import this one as ``bench.common``
without touching ``sys.path``; the package itself is the installed ``vsearch``.

A run rewrites one results file (:func:`publish`): a title, then the date, commit and
machine (:func:`vsearch.artifacts.provenance`) and the exact command, then the tables.
Earlier results are in git's history of that file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def use_local_weights() -> None:
    """Points Keras at the ImageNet weights `make` links into .cache/keras, when they are there."""
    if (ROOT / ".cache" / "keras").is_dir():
        os.environ.setdefault("KERAS_HOME", str(ROOT / ".cache" / "keras"))


def command() -> str:
    """The command line that started this run, as ``python -m <module> ARGS``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return " ".join(["python -m", module, *(shlex.quote(a) for a in sys.argv[1:])])


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when it is inside it (no home folders in results)."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return os.fspath(path)


def output_args(parser: argparse.ArgumentParser, name: str, folder: str = "bench") -> None:
    """``--out`` (default ``<folder>/results/<name>.md``) and ``--no-write``."""
    default = ROOT / folder / "results" / f"{name}.md"
    parser.add_argument("--out", default=str(default), help=f"results file to rewrite (default {shown(default)})")
    parser.add_argument("--no-write", action="store_true", help="print the results only")


def refuse_uncommitted() -> None:
    """Exits when tracked files differ from the commit: a results file names the code that made it."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    if status:
        raise SystemExit(
            f"{ROOT}: uncommitted changes ({len(status.splitlines())} tracked file(s)); a results file must come "
            "from committed code: commit first, or pass --no-write (or run from a clean `git worktree`)"
        )


def publish(args: argparse.Namespace, title: str, lines: list[str]) -> str:
    """Prints the results and, unless ``--no-write``, rewrites ``--out`` with them.

    Args:
        args: Parsed arguments with ``out`` and ``no_write`` (:func:`output_args`).
        title: The results' heading.
        lines: Markdown lines: what was measured, then the tables.
    Returns:
        The text.
    """
    from vsearch.artifacts import provenance, write_atomic

    info = provenance()
    text = (
        "\n".join(
            [
                f"# {title}",
                "",
                f"- date: {info['date']}",
                f"- commit: {info['commit']}",
                f"- machine: {info['machine']}",
                f"- command: `{command()}`",
                "",
                *lines,
            ]
        ).rstrip()
        + "\n"
    )
    print(text)
    if not args.no_write:
        refuse_uncommitted()
        write_atomic(args.out, text)
        print(f"wrote {shown(args.out)}", file=sys.stderr)
    return text


def sample_images(folder: str | os.PathLike, count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``count`` image files under ``folder`` (any depth), sorted."""
    from vsearch.images import IMAGE_EXTENSIONS

    found = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise SystemExit(f"{folder}: no images (run `make data` first)")
    chosen = np.random.default_rng(seed).choice(len(found), size=min(count, len(found)), replace=False)
    return [found[i] for i in sorted(chosen)]
