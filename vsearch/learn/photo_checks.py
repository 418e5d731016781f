"""File validation: which photos of a split folder can be used, and a clean mirror of it.

Every file is decoded with Pillow (:func:`vsearch.images.decode_image`) before any stage
reads it: unreadable, truncated, empty and non-image files are listed and left out; files
TensorFlow would decode wrongly (EXIF-rotated, CMYK, 16-bit, alpha, other formats) are
listed to be normalised to RGB PNG. :func:`materialise` writes the clean mirror that
``vsearch data`` leaves in ``data/photos`` and the stages use when a folder needs one.
Verdicts are remembered by the files' bytes (:class:`CheckMemo`), so later stages do not
decode every photo again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vsearch.artifacts import printable, write_atomic, write_json
from vsearch.errors import DataError
from vsearch.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image, read_bytes

# Formats TensorFlow's decode_image reads, and the Pillow modes it decodes to the same RGB.
_TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
_TF_MODES = {"RGB", "L", "P"}
# Bumped when inspect_image's verdicts change, so that remembered checks are not reused.
CHECKS_VERSION = 1
# Beside a mirror's class folders: the SHA-256 of the source each of its files was made from.
SOURCES_FILE = ".vsearch-sources.json"


@dataclass
class SplitReport:
    """What a split folder holds: good files per class, files to normalise, bad files."""

    root: str
    class_names: list[str]
    files: dict[str, list[str]] = field(default_factory=dict)  # usable as-is, per class
    convert: dict[str, str] = field(default_factory=dict)  # path -> why it needs normalising
    bad: dict[str, str] = field(default_factory=dict)  # path -> why it is excluded

    def counts(self) -> dict[str, int]:
        converted: dict[str, int] = {}
        for path in self.convert:
            cls = Path(path).parent.name
            converted[cls] = converted.get(cls, 0) + 1
        return {c: len(self.files.get(c, [])) + converted.get(c, 0) for c in self.class_names}

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def to_dict(self) -> dict:
        return {"root": self.root, "counts": self.counts(), "converted": dict(self.convert), "excluded": dict(self.bad)}


class CheckMemo:
    """Remembered verdicts of :func:`inspect_image`, keyed by the file's bytes.

    A full decode costs about thirty times as much as hashing the bytes (the README's Data
    section), and every stage checks every photo. The key is the bytes' SHA-256, the
    extension (it decides ``convert``) and the pixel limit, so a renamed or copied file is
    still known and an edited one is checked again. Only ``ok`` and ``convert`` verdicts
    are kept: a bad file is checked, and reported, every time. Stored as JSON at ``path``
    (None: in memory only); a damaged file starts empty.
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
        # Compact (thousands of entries); concurrent stages: the last writer wins.
        write_atomic(self.path, json.dumps({"version": CHECKS_VERSION, "verdicts": self.verdicts}))
        self._dirty = False


def checks_path(feature_cache_dir: str | os.PathLike | None) -> Path | None:
    """Where the stages remember image checks: beside the feature caches (None: nowhere)."""
    return Path(feature_cache_dir) / "image-checks.json" if feature_cache_dir else None


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, memo: CheckMemo | None = None) -> tuple[str, str]:
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


def scan_split(
    root: str | os.PathLike,
    class_names: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: str | os.PathLike | None = None,
) -> SplitReport:
    """Validates a split folder (one sub-folder per class) and classifies every file.

    Args:
        root: The split folder, e.g. ``data/photos/train``.
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
            if printable(path) != str(path):  # tf.data could not even name it
                report.bad[printable(path)] = "file name is not valid UTF-8; rename the file"
                continue
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


def _write_normalised(src: Path, dest: Path) -> None:
    from PIL import Image

    pixels = decode_image(read_bytes(src), str(src))
    write_atomic(dest, lambda tmp: Image.fromarray(pixels, "RGB").save(tmp, format="PNG"))


def _copy(src: Path, dest: Path) -> None:
    shutil.copy2(src, dest)


def _write_copy(src: Path, dest: Path, link: bool) -> None:
    dest.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    write_atomic(dest, lambda tmp: _copy(src, tmp))


def _read_sources(dest: Path) -> dict[str, str]:
    try:
        sources = json.loads((dest / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}


def materialise(report: SplitReport, dest: str | os.PathLike, link: bool = True) -> Path:
    """Writes a clean copy of a scanned split: good files linked or copied, others normalised.

    Idempotent: a file made from a source with the same bytes is kept. Freshness is decided
    by content (the source's SHA-256, recorded in ``dest/.vsearch-sources.json``), not by
    modification times, which backup restores, ``cp -p`` and ``rsync -a`` set to older values.
    """
    dest = Path(dest)
    made_from = _read_sources(dest)
    sources: dict[str, str] = {}
    for cls in report.class_names:
        out_dir = dest / cls
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(Path(p), Path(p).name, False) for p in report.files.get(cls, [])]
        jobs += [(Path(p), _normalised_name(Path(p)), True) for p in report.convert if Path(p).parent.name == cls]
        for src, name, normalise in jobs:
            target, key = out_dir / name, f"{cls}/{name}"
            sources[key] = hashlib.sha256(src.read_bytes()).hexdigest()
            if made_from.get(key) == sources[key] and target.is_file():
                continue
            if normalise:
                _write_normalised(src, target)
            else:
                _write_copy(src, target, link)
        wanted = {name for _, name, _ in jobs}
        for stale in out_dir.iterdir():
            if stale.name not in wanted and stale.is_file():
                stale.unlink()
    if sources != made_from:  # written last: an interrupted run's files are made again
        write_json(dest / SOURCES_FILE, sources)
    return dest


def clean_split(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    class_names: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: str | os.PathLike | None = None,
) -> tuple[Path, SplitReport]:
    """Validates a split; if anything needs excluding or normalising, returns a clean mirror.

    The returned folder is safe for ``image_dataset_from_directory``: no file in it can
    stop an epoch halfway. ``checks``: see :func:`scan_split`.
    """
    report = scan_split(root, class_names, max_pixels, checks)
    if not report.bad and not report.convert:
        return Path(root), report
    return materialise(report, Path(cache_dir) / Path(root).name), report
