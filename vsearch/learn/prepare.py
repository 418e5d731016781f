"""``vsearch data``: fetch the catalog photos and curate them into ``data/photos``.

Downloads the upstream clothing-dataset-small (CC0) and keeps its seven catalog classes,
or copies a shop's own photos laid out the same way (``--source DIR``) with every category
folder of its ``train/`` (or the ``--classes`` given), and writes
``data/photos/{train,validation}/<class>/`` plus ``report.json``. Every file is checked
first (:mod:`vsearch.learn.photo_checks`): bad files are listed and left out, files TensorFlow would
decode wrongly are normalised to RGB PNG. Training then reads the folder through
:mod:`vsearch.learn.datasets`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from vsearch.artifacts import write_json
from vsearch.config import CLASS_NAMES, DATA_DIR
from vsearch.errors import DataError
from vsearch.images import DEFAULT_MAX_PIXELS
from vsearch.learn.photo_checks import materialise, scan_split

UPSTREAM_URL = "https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip"
SPLITS = ("train", "validation")
DEST_MARKER = ".vsearch-data"  # left in `prepare`'s destination before it writes anything there
# Beside the splits when they come from product manifests (vsearch.learn.product_folders): each
# file's product. A folder source has none: each photo is its own product.
PRODUCTS_FILE = "products.json"


def download(url: str = UPSTREAM_URL, timeout: float = 60.0) -> Path:
    """Downloads and unpacks the upstream archive into a temporary folder; returns its root."""
    tmp = Path(tempfile.mkdtemp(prefix="vsearch-download-"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed URL or file://)
            archive = tmp / "archive.zip"
            with open(archive, "wb") as fh:
                shutil.copyfileobj(response, fh)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "unpacked")
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"could not download {url} ({exc}); without internet, pass a local copy laid out as "
            "train/<class>/ and validation/<class>/ with --source DIR (make data SOURCE=DIR)"
        ) from None
    candidates = [p.parent for p in (tmp / "unpacked").rglob("train") if (p.parent / "validation").is_dir()]
    if not candidates:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{url}: archive has no train/ and validation/ folders")
    return candidates[0]


def check_destination(source: Path | None, dest: Path, class_names: tuple[str, ...]) -> None:
    """Refuses a ``dest`` whose photos :func:`prepare` could destroy.

    ``prepare`` mirrors the source's class folders into ``dest`` and deletes what the
    source no longer has, so ``dest`` must not overlap the source, and class folders with
    files in them must come from an earlier ``prepare`` (its ``report.json``, or the marker
    it leaves first, so an interrupted run can be run again). ``dest``, or a folder above
    it, that is a file is refused before anything is written."""
    existing = next((p for p in (dest, *dest.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        raise DataError(f"--dest {dest}: {existing} is a file, not a folder; choose a folder for the catalog")
    if source is not None:
        src, out = source.resolve(), dest.resolve()
        if src == out or src in out.parents or out in src.parents:
            raise DataError(
                f"--dest {dest} overlaps --source {source}: the catalog is copied into a folder "
                "of its own (files the source does not have are deleted there); choose another --dest"
            )
    if (dest / "report.json").is_file() or (dest / DEST_MARKER).is_file():
        return
    foreign = [
        d
        for split in SPLITS
        for d in (dest / split / c for c in class_names)
        if d.is_dir() and any(p.is_file() for p in d.iterdir())
    ]
    if foreign:
        raise DataError(
            f"{dest}: {foreign[0]} holds files, but {dest} was not written by `vsearch data` "
            "(no report.json), and they would be replaced; choose a new or empty --dest"
        )


def source_classes(source: Path | None, class_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The classes to keep: those given; else the download's seven, or every category folder
    of a local source's ``train/`` (a shop's own categories)."""
    if class_names:
        return tuple(class_names)
    if source is None:
        return CLASS_NAMES
    train = Path(source) / "train"
    if not Path(source).is_dir():
        raise DataError(f"{source}: no such folder (expected train/<category>/ and validation/<category>/)")
    if not train.is_dir():
        raise DataError(f"{source}: no train/ folder (expected train/<category>/ and validation/<category>/)")
    found = tuple(sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if len(found) < 2:
        raise DataError(f"{train}: found {len(found)} category folder(s) {list(found)}; need at least 2")
    return found


def prepare(
    source: str | os.PathLike | None,
    dest: str | os.PathLike = DATA_DIR,
    class_names: tuple[str, ...] | None = None,
    url: str = UPSTREAM_URL,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: str | os.PathLike | None = None,
) -> dict:
    """Curates the catalog classes from ``source`` (or a download) into ``dest``.

    ``class_names``: the category folders to keep (default: :func:`source_classes`).

    ``checks``: remembered image checks (see :func:`vsearch.learn.photo_checks.scan_split`), which the
    stages then reuse.

    Returns:
        A report: per-split per-class counts, normalised and excluded files. Also written
        to ``dest/report.json``.
    """
    class_names = source_classes(None if source is None else Path(source), class_names)
    check_destination(None if source is None else Path(source), Path(dest), class_names)
    Path(dest).mkdir(parents=True, exist_ok=True)
    (Path(dest) / DEST_MARKER).touch()
    (Path(dest) / PRODUCTS_FILE).unlink(missing_ok=True)  # an earlier manifest's products are not these photos'
    downloaded = None
    if source is None:
        downloaded = source = download(url)
    source = Path(source)
    try:
        result: dict[str, Any] = {"source": str(source if downloaded is None else url), "splits": {}}
        for split in SPLITS:
            report = scan_split(source / split, list(class_names), max_pixels, checks)
            materialise(report, Path(dest) / split, link=downloaded is None)
            result["splits"][split] = report.to_dict()
    finally:
        if downloaded is not None:
            shutil.rmtree(
                downloaded.parents[1] if downloaded.parent.name == "unpacked" else downloaded, ignore_errors=True
            )
    write_json(Path(dest) / "report.json", result)
    return result


def format_report(result: dict) -> str:
    """A per-split per-class table plus the files that were normalised or excluded."""
    splits = result["splits"]
    classes = list(next(iter(splits.values()))["counts"])
    lines = ["| split | " + " | ".join(classes) + " | total |", "|---|" + "---|" * (len(classes) + 1)]
    for split, rep in splits.items():
        counts = rep["counts"]
        lines.append(f"| {split} | " + " | ".join(str(counts[c]) for c in classes) + f" | {sum(counts.values())} |")
    for split, rep in splits.items():
        for path, why in rep["converted"].items():
            lines.append(f"normalised ({split}): {path}: {why}")
        for path, why in rep["excluded"].items():
            lines.append(f"EXCLUDED ({split}): {path}: {why}")
    return "\n".join(lines)
