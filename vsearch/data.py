"""Data stage: fetch and curate the catalog photos, validate folders, build tf.data pipelines.

``vsearch data`` downloads the upstream clothing-dataset-small (CC0) or copies a local copy
laid out the same way (``--source DIR``), keeps the seven catalog classes, and writes
``data/clothing/{train,validation}/<class>/``. Every file is checked with Pillow first:
unreadable, truncated, empty and non-image files are listed and left out; files TensorFlow
would decode wrongly (EXIF-rotated, CMYK, 16-bit, alpha, other formats) are normalised to
RGB PNG. Training then reads the folder with ``keras.utils.image_dataset_from_directory``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vsearch.config import CLASS_NAMES
from vsearch.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image, read_bytes

UPSTREAM_URL = "https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip"
SPLITS = ("train", "validation")
DEST_MARKER = ".vsearch-data"  # left in `prepare`'s destination before it writes anything there
# Formats TensorFlow's decode_image reads, and the Pillow modes it decodes to the same RGB.
_TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
_TF_MODES = {"RGB", "L", "P"}


from vsearch.errors import DataError  # noqa: E402  (re-exported)


@dataclass
class SplitReport:
    """What a split folder holds: good files per class, files to normalise, bad files."""

    root: str
    class_names: list[str]
    files: dict[str, list[str]] = field(default_factory=dict)  # usable as-is, per class
    convert: dict[str, str] = field(default_factory=dict)  # path -> why it needs normalising
    bad: dict[str, str] = field(default_factory=dict)  # path -> why it is excluded

    def counts(self) -> dict[str, int]:
        converted = {}
        for path in self.convert:
            cls = Path(path).parent.name
            converted[cls] = converted.get(cls, 0) + 1
        return {c: len(self.files.get(c, [])) + converted.get(c, 0) for c in self.class_names}

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def to_dict(self) -> dict:
        return {"root": self.root, "counts": self.counts(), "converted": dict(self.convert),
                "excluded": dict(self.bad)}


# Bumped when inspect_image's verdicts change, so that remembered checks are not reused.
CHECKS_VERSION = 1


class CheckMemo:
    """Remembered verdicts of :func:`inspect_image`, keyed by the file's bytes.

    A full decode costs ~6 ms per catalog photo (17 s for the 2,758 of the shared data,
    in every stage); hashing the bytes about a thirtieth (0.2 ms). The key is the bytes'
    SHA-256, the extension (it decides ``convert``) and the pixel limit, so a renamed or
    copied file is still known and an edited one is checked again. Only ``ok`` and
    ``convert`` verdicts are kept: a bad file is checked, and reported, every time.
    Stored as JSON at ``path`` (None: in memory only); a damaged file starts empty.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.verdicts: dict[str, list[str]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
                if stored.get("version") == CHECKS_VERSION:
                    self.verdicts = dict(stored["verdicts"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.verdicts = {}

    @staticmethod
    def key(data: bytes, path: Path, max_pixels: int) -> str:
        import hashlib

        return f"{hashlib.sha256(data).hexdigest()}|{path.suffix}|{max_pixels}"

    def get(self, key: str) -> tuple[str, str] | None:
        found = self.verdicts.get(key)
        return (found[0], found[1]) if found else None

    def put(self, key: str, verdict: tuple[str, str]) -> None:
        if verdict[0] != "bad" and self.verdicts.get(key) != list(verdict):
            self.verdicts[key] = list(verdict)
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": CHECKS_VERSION, "verdicts": self.verdicts})
        _write_atomic(self.path, lambda tmp: tmp.write_text(text))  # concurrent stages: the last writer wins
        self._dirty = False


def checks_path(feature_cache_dir: str | os.PathLike | None) -> Path | None:
    """Where the stages remember image checks: beside the feature caches (None: nowhere)."""
    return Path(feature_cache_dir) / "image-checks.json" if feature_cache_dir else None


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                  memo: CheckMemo | None = None) -> tuple[str, str]:
    """Classifies one file as ``ok``, ``convert`` (with why) or ``bad`` (with why).

    ``memo``: remembered verdicts (:class:`CheckMemo`); the file's bytes are read either way.
    """
    path = Path(path)
    try:
        data = read_bytes(path)
    except ImageError as exc:
        return "bad", exc.reason
    if memo is None:
        return _inspect(data, path, max_pixels)
    key = memo.key(data, path, max_pixels)
    verdict = memo.get(key)
    if verdict is None:
        verdict = _inspect(data, path, max_pixels)
        memo.put(key, verdict)
    return verdict


def _inspect(data: bytes, path: Path, max_pixels: int) -> tuple[str, str]:
    from PIL import Image

    try:
        decode_image(data, str(path), max_pixels)  # full decode: catches truncation
    except ImageError as exc:
        return "bad", exc.reason
    with Image.open(io.BytesIO(data)) as img:
        fmt, mode = img.format, img.mode
        orientation = img.getexif().get(0x0112, 1)
        has_transparency = "transparency" in img.info
    if fmt not in _TF_FORMATS:
        return "convert", f"{fmt} is not read by TensorFlow"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "convert", f"extension {path.suffix!r} is not listed by image_dataset_from_directory"
    if mode not in _TF_MODES or has_transparency:
        return "convert", f"pixel mode {mode}{' with transparency' if has_transparency else ''}"
    if orientation not in (None, 1):
        return "convert", f"EXIF orientation {orientation}"
    return "ok", ""


def scan_split(root: str | os.PathLike, class_names: list[str] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, checks: str | os.PathLike | None = None) -> SplitReport:
    """Validates a split folder (one sub-folder per class) and classifies every file.

    Args:
        root: The split folder, e.g. ``data/clothing/train``.
        class_names: Expected classes; default: every sub-folder, sorted.
        checks: JSON file of remembered verdicts (:class:`CheckMemo`), shared by the
            stages; None: every file is decoded.

    Raises:
        DataError: missing folder, fewer than 2 classes, a class folder that is missing or
            holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected one sub-folder per class)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(class_names) if class_names is not None else found
    if len(names) < 2:
        raise DataError(f"{root}: found {len(names)} class folder(s) {names}; need at least 2")
    report = SplitReport(root=str(root), class_names=names)
    memo = CheckMemo(checks) if checks else None
    for cls in names:
        folder = root / cls
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing")
        good = []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            status, why = inspect_image(path, max_pixels, memo)
            if status == "ok":
                good.append(str(path))
            elif status == "convert":
                report.convert[str(path)] = why
            else:
                report.bad[str(path)] = why
        report.files[cls] = good
    if memo is not None:
        memo.save()
    empty = [c for c, n in report.counts().items() if n == 0]
    if empty:
        raise DataError(f"{root}: no usable image in class folder(s) {empty}")
    return report


def _normalised_name(path: Path) -> str:
    return path.name + ".png" if path.suffix.lower() != ".png" else path.name


def _write_atomic(dest: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``dest``, then renames it over ``dest``.

    An interrupted run leaves no half-written file that a later run's up-to-date test
    (modification times) would take for finished."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}-", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; these are ordinary files (copy2 copies the source's)
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_normalised(src: Path, dest: Path) -> None:
    from PIL import Image

    pixels = decode_image(read_bytes(src), str(src))
    _write_atomic(dest, lambda tmp: Image.fromarray(pixels, "RGB").save(tmp, format="PNG"))


def materialise(report: SplitReport, dest: str | os.PathLike, link: bool = True) -> Path:
    """Writes a clean copy of a scanned split: good files linked or copied, others normalised.

    Idempotent: existing files that are at least as new as their source are kept.
    """
    dest = Path(dest)
    for cls in report.class_names:
        out_dir = dest / cls
        out_dir.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for src in map(Path, report.files.get(cls, [])):
            target = out_dir / src.name
            wanted.add(target.name)
            if target.exists() and target.stat().st_mtime >= src.stat().st_mtime:
                continue
            if target.exists() or target.is_symlink():
                target.unlink()
            if link:
                try:
                    os.link(src, target)
                    continue
                except OSError:
                    pass
            _write_atomic(target, lambda tmp, src=src: shutil.copy2(src, tmp))
        for src in (Path(p) for p in report.convert if Path(p).parent.name == cls):
            target = out_dir / _normalised_name(src)
            wanted.add(target.name)
            if not (target.exists() and target.stat().st_mtime >= src.stat().st_mtime):
                _write_normalised(src, target)
        for stale in out_dir.iterdir():
            if stale.name not in wanted and stale.is_file():
                stale.unlink()
    return dest


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
            "train/<class>/ and validation/<class>/ with --source DIR (make data SOURCE=DIR)") from None
    candidates = [p.parent for p in (tmp / "unpacked").rglob("train") if (p.parent / "validation").is_dir()]
    if not candidates:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{url}: archive has no train/ and validation/ folders")
    return candidates[0]


def _check_destination(source: Path | None, dest: Path, class_names: tuple[str, ...]) -> None:
    """Refuses a ``dest`` whose photos :func:`prepare` could destroy.

    ``prepare`` mirrors the source's class folders into ``dest`` and deletes what the
    source no longer has, so ``dest`` must not overlap the source, and class folders with
    files in them must come from an earlier ``prepare`` (its ``report.json``, or the marker
    it leaves first, so an interrupted run can be run again)."""
    if source is not None:
        src, out = source.resolve(), dest.resolve()
        if src == out or src in out.parents or out in src.parents:
            raise DataError(f"--dest {dest} overlaps --source {source}: the catalog is copied into a folder "
                            "of its own (files the source does not have are deleted there); choose another --dest")
    if (dest / "report.json").is_file() or (dest / DEST_MARKER).is_file():
        return
    foreign = [d for split in SPLITS for d in (dest / split / c for c in class_names)
               if d.is_dir() and any(p.is_file() for p in d.iterdir())]
    if foreign:
        raise DataError(f"{dest}: {foreign[0]} holds files, but {dest} was not written by `vsearch data` "
                        "(no report.json), and they would be replaced; choose a new or empty --dest")


def prepare(source: str | os.PathLike | None, dest: str | os.PathLike = "data/clothing",
            class_names: tuple[str, ...] = CLASS_NAMES, url: str = UPSTREAM_URL,
            max_pixels: int = DEFAULT_MAX_PIXELS, checks: str | os.PathLike | None = None) -> dict:
    """Curates the catalog classes from ``source`` (or a download) into ``dest``.

    ``checks``: remembered image checks (see :func:`scan_split`), which the stages then reuse.

    Returns:
        A report: per-split per-class counts, normalised and excluded files. Also written
        to ``dest/report.json``.
    """
    _check_destination(None if source is None else Path(source), Path(dest), class_names)
    Path(dest).mkdir(parents=True, exist_ok=True)
    (Path(dest) / DEST_MARKER).touch()
    downloaded = None
    if source is None:
        downloaded = source = download(url)
    source = Path(source)
    try:
        result = {"source": str(source if downloaded is None else url), "splits": {}}
        for split in SPLITS:
            report = scan_split(source / split, list(class_names), max_pixels, checks)
            materialise(report, Path(dest) / split, link=downloaded is None)
            result["splits"][split] = report.to_dict()
    finally:
        if downloaded is not None:
            shutil.rmtree(downloaded.parents[1] if downloaded.parent.name == "unpacked" else downloaded,
                          ignore_errors=True)
    Path(dest).mkdir(parents=True, exist_ok=True)
    (Path(dest) / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_report(result: dict) -> str:
    """A per-split per-class table plus the files that were normalised or excluded."""
    splits = result["splits"]
    classes = list(next(iter(splits.values()))["counts"])
    lines = ["| split | " + " | ".join(classes) + " | total |",
             "|---|" + "---|" * (len(classes) + 1)]
    for split, rep in splits.items():
        counts = rep["counts"]
        lines.append(f"| {split} | " + " | ".join(str(counts[c]) for c in classes)
                     + f" | {sum(counts.values())} |")
    for split, rep in splits.items():
        for path, why in rep["converted"].items():
            lines.append(f"normalised ({split}): {path}: {why}")
        for path, why in rep["excluded"].items():
            lines.append(f"EXCLUDED ({split}): {path}: {why}")
    return "\n".join(lines)


def clean_split(root: str | os.PathLike, cache_dir: str | os.PathLike,
                class_names: list[str] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                checks: str | os.PathLike | None = None) -> tuple[Path, SplitReport]:
    """Validates a split; if anything needs excluding or normalising, returns a clean mirror.

    The returned folder is safe for ``image_dataset_from_directory``: no file in it can
    stop an epoch halfway. ``checks``: see :func:`scan_split`.
    """
    report = scan_split(root, class_names, max_pixels, checks)
    if not report.bad and not report.convert:
        return Path(root), report
    return materialise(report, Path(cache_dir) / Path(root).name), report


def image_dataset(root: str | os.PathLike, class_names: list[str], image_size: int, batch_size: int,
                  shuffle: bool = False, seed: int | None = None, cache: bool = False):
    """``image_dataset_from_directory`` over a clean split: (float32 0..255 images, int labels).

    ``cache``: keep the decoded images in memory and prefetch, for datasets read several
    times (the training views). The result has ``file_paths`` and ``labels`` (numpy, in
    file order; without ``shuffle``, the labels the batches carry) attributes either way:
    reading the labels from the batches would decode every image, which stages whose
    features are cached never need.
    """
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        str(root), labels="inferred", label_mode="int", class_names=list(class_names),
        color_mode="rgb", batch_size=batch_size, image_size=(image_size, image_size),
        shuffle=shuffle, seed=seed, interpolation="bilinear", verbose=False)
    ds.labels = path_labels(ds.file_paths, root, class_names)
    if not cache:
        return ds
    cached = ds.cache().prefetch(tf.data.AUTOTUNE)
    cached.file_paths, cached.labels = ds.file_paths, ds.labels
    return cached


def path_labels(paths, root: str | os.PathLike, class_names) -> np.ndarray:
    """The labels ``image_dataset_from_directory`` infers: each file's class folder under ``root``."""
    index = {name: i for i, name in enumerate(class_names)}
    return np.asarray([index[Path(os.path.relpath(p, root)).parts[0]] for p in paths], dtype=np.int32)


@dataclass(frozen=True)
class Split:
    """One validated split: its clean root, file list, labels and report."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    report: SplitReport = dataclasses.field(repr=False, compare=False, default=None)


def load_split(root: str | os.PathLike, cache_dir: str | os.PathLike,
               class_names: list[str] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               checks: str | os.PathLike | None = None) -> Split:
    """Validates a split and lists its files and labels in ``image_dataset_from_directory`` order."""
    clean, report = clean_split(root, cache_dir, class_names, max_pixels, checks)
    names = report.class_names
    paths, labels = [], []
    for index, cls in enumerate(names):
        files = sorted(p for p in (clean / cls).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    return Split(clean, paths, np.asarray(labels, dtype=np.int32), names, report)
