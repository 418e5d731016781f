"""Re-rank keypoints stored with the catalog: computed when photos are indexed, read by searches.

A search verifies its short list against the catalog photos' keypoints
(:mod:`vsearch.catalog.rerank`). Computing them on first use means decoding catalog photos
while a customer waits; so they are computed when a photo enters the catalog
(:func:`index_keypoints`, called by :mod:`vsearch.catalog.building` and
:mod:`vsearch.catalog.products`) and kept beside the store (:func:`keypoints_folder`:
``<store>.keypoints/`` for a FAISS file or a Milvus Lite file; a Milvus server keeps none,
and searches compute them on first use).

One folder per keypoint setting (``orb-256-250``: detector, side, keypoints kept), so a
change of settings never reads keypoints found another way. Each write adds a *segment*, one
``.npy`` file of fixed-size records written atomically (:func:`vsearch.artifacts.write_atomic`),
read memory-mapped: a photo's record is its id's hash, the size and modification time of
its file when it was read (a photo whose file changed since is computed again), the
picture size its keypoints were found in, and its keypoints (ORB: 10 KB a photo at 250
keypoints; SIFT's descriptors are whole numbers 0..255 and are kept as bytes, 34 KB).
A later segment's record wins. Past :data:`MAX_SEGMENTS` segments, a write merges the newest
ones (:meth:`KeypointStore.merge`); a rebuilt catalog's keypoints replace them all, which is
also when the records of products removed since go.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from vsearch.catalog.rerank import DETECTORS, Features, catalog_features
from vsearch.config import RerankConfig
from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_PIXELS
from vsearch.stores import parse_spec

MAX_SEGMENTS = 16  # segments of one setting before a write merges them
WORKERS = 4  # photos decoded and described at once while indexing
SUFFIX = ".keypoints"
log = logging.getLogger(__name__)

Stamp = tuple[int, int]  # a photo file's size and modification time (ns)
Entry = tuple[str, Stamp, Features]  # photo id, its file's stamp taken before it was read, its features


def keypoints_folder(spec: str) -> Path | None:
    """Where a store's keypoints are kept: ``<file>.keypoints`` beside a FAISS or Milvus Lite file;
    None for a Milvus server."""
    backend, where = parse_spec(spec)
    if backend == "milvus" and "://" in where:
        return None
    return Path(where + SUFFIX)


def setting(config: RerankConfig) -> str:
    """The settings keypoints depend on, as a folder name: ``orb-256-250``."""
    return f"{config.detector}-{config.side}-{config.features}"


def file_stamp(path: str | os.PathLike) -> Stamp | None:
    """(size, modification time in ns) of a photo's file; None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return int(stat.st_size), int(stat.st_mtime_ns)


def _key(photo_id: str) -> bytes:
    return hashlib.blake2b(str(photo_id).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def record_dtype(config: RerankConfig) -> np.dtype:
    """One photo's record: up to ``config.features`` keypoints, padded."""
    n, d = config.features, DETECTORS[config.detector]
    return np.dtype(
        [
            ("key", "S16"),
            ("size", "<i8"),
            ("mtime", "<i8"),
            ("frame", "<i4", (2,)),
            ("count", "<i4"),
            ("points", "<f4", (n, 2)),
            ("descriptors", "u1", (n, d)),
        ]
    )


class KeypointStore:
    """The keypoints of one catalog under one setting, in ``folder`` (see the module doc).

    Thread-safe. ``get`` answers from the segments read so far, and looks for new segments
    when it does not know a photo or its file changed (another process indexed it: listing a
    folder of at most :data:`MAX_SEGMENTS` files); ``add`` writes a segment.
    """

    def __init__(self, folder: str | os.PathLike, config: RerankConfig = RerankConfig()):
        self.root, self.config = Path(folder), config
        self.folder = self.root / setting(config)
        self.dtype = record_dtype(config)
        self._segments: dict[str, np.ndarray] = {}  # file name -> its records (memory-mapped)
        self._index: dict[bytes, tuple[str, int]] = {}  # key -> (segment, row), the latest segment's
        self._lock = threading.RLock()

    @classmethod
    def beside(cls, store, config: RerankConfig = RerankConfig()) -> KeypointStore | None:
        """The keypoints kept beside ``store`` (None for a store that keeps none)."""
        folder = keypoints_folder(store.spec)
        return cls(folder, config) if folder is not None else None

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._index)

    # ------------------------------------------------------------ reading

    def get(self, photo_id: str, path: str | os.PathLike, stamp: Stamp | None = None) -> Features | None:
        """The stored features of a photo whose file is still the one they were found in
        (``stamp``: its :func:`file_stamp`, if the caller has just taken it)."""
        stamp = stamp or file_stamp(path)
        if stamp is None:
            return None
        key = _key(photo_id)
        with self._lock:
            record = self._record(key)
            if record is None or (int(record["size"]), int(record["mtime"])) != stamp:
                self._refresh()  # a newer segment may have it
                record = self._record(key)
        if record is None or (int(record["size"]), int(record["mtime"])) != stamp:
            return None
        return self._features(record)

    def _record(self, key: bytes):
        found = self._index.get(key)
        return self._segments[found[0]][found[1]] if found is not None else None

    def _features(self, record) -> Features:
        count = int(record["count"])
        points = np.array(record["points"][:count], np.float32)
        descriptors = np.array(record["descriptors"][:count])
        if self.config.detector != "orb":
            descriptors = descriptors.astype(np.float32)
        return Features(points, descriptors, (int(record["frame"][0]), int(record["frame"][1])))

    def _refresh(self) -> None:
        """Reads the segments written since the last look (all of them again after a merge)."""
        names = self._names()
        if set(self._segments) - set(names):  # merged away: start again from what is there
            self._segments, self._index = {}, {}
        for name in names:
            if name in self._segments:
                continue
            try:
                records = np.load(self.folder / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:  # vanished in a merge, or damaged: its photos are computed again
                log.warning("%s: cannot read keypoints (%s)", self.folder / name, exc)
                continue
            if records.dtype != self.dtype or records.ndim != 1:
                log.warning("%s: not keypoints of %s; ignored", self.folder / name, self.folder.name)
                continue
            self._segments[name] = records
            for row, key in enumerate(records["key"]):
                self._index[bytes(key)] = (name, row)

    def _names(self) -> list[str]:
        """Segment file names, oldest first (their names start with the time they were written)."""
        try:
            return sorted(p.name for p in self.folder.iterdir() if p.suffix == ".npy" and not p.name.startswith("."))
        except OSError:
            return []

    # ------------------------------------------------------------ writing

    def records(self, entries: Iterable[Entry]) -> np.ndarray:
        """Entries as one array of records."""
        rows = []
        for photo_id, stamp, features in entries:
            record = np.zeros((), self.dtype)
            n = min(len(features), self.config.features)
            record["key"], record["size"], record["mtime"] = _key(photo_id), stamp[0], stamp[1]
            record["frame"], record["count"] = features.size, n
            record["points"][:n] = features.points[:n]
            record["descriptors"][:n] = np.clip(np.rint(features.descriptors[:n]), 0, 255)
            rows.append(record)
        return np.array(rows, self.dtype) if rows else np.zeros(0, self.dtype)

    def add(self, entries: Iterable[Entry], replace: bool = False) -> int:
        """Writes a segment of ``entries`` (``replace``: and removes every other one); merges
        the segments when there are too many. Returns the photos written.

        Raises:
            OSError: the folder cannot be written.
        """
        from vsearch.artifacts import file_lock, write_atomic

        records = self.records(entries)
        if not len(records) and not replace:
            return 0
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npy"
        with file_lock(self.folder, timeout=60.0) if replace else nullcontext():
            write_atomic(self.folder / name, lambda tmp: _save(tmp, records))
            if replace:
                for old in self._names():
                    if old != name:
                        (self.folder / old).unlink(missing_ok=True)
        if len(self._names()) > MAX_SEGMENTS:
            self.merge()
        return len(records)

    def merge(self) -> int:
        """Merges the newest segments into one, each photo keeping its latest record. Returns the
        segments merged.

        Size-tiered: the newest segments that together hold no more records than the one
        before them (the catalog's bulk, from a build or an earlier merge, is not rewritten
        for every few photos added); all of them when no such run exists.
        """
        from vsearch.artifacts import file_lock, write_atomic

        with file_lock(self.folder, timeout=60.0):
            names = self._names()
            sizes = [_records_in(self.folder / name) for name in names]
            start = 0
            for i in range(len(names) - 3, -1, -1):  # the latest segment with at least two newer, smaller together
                if sizes[i] >= sum(sizes[i + 1 :]):
                    start = i + 1
                    break
            chosen = names[start:]
            if len(chosen) < 2:
                return 0
            latest: dict[bytes, np.ndarray] = {}
            for name in chosen:
                try:
                    segment = np.load(self.folder / name, allow_pickle=False)
                except (OSError, ValueError):
                    continue
                if segment.dtype == self.dtype:
                    for record in segment:
                        latest[bytes(record["key"])] = record
            kept = np.array(list(latest.values()), self.dtype) if latest else np.zeros(0, self.dtype)
            # named after the newest merged segment: the older ones stay older, later writes newer
            merged = f"{chosen[-1][:20]}-{uuid.uuid4().hex[:8]}-merged.npy"
            write_atomic(self.folder / merged, lambda tmp: _save(tmp, kept))
            for name in chosen:
                if name != merged:
                    (self.folder / name).unlink(missing_ok=True)
        return len(chosen)


def _records_in(path: Path) -> int:
    try:
        return len(np.load(path, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError):
        return 0


def _save(path: Path, records: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a bare path
        np.save(fh, records, allow_pickle=False)


# ---------------------------------------------------------------- at index time


def index_keypoints(
    store,
    photos: Sequence,
    config: RerankConfig | None = RerankConfig(),
    replace: bool = False,
    max_pixels: int | None = None,
) -> dict[str, str]:
    """Computes and stores the keypoints of ``photos`` (:class:`vsearch.catalog.manifest.Photo`)
    beside ``store``: the step of indexing that spares searches from decoding catalog photos.

    Args:
        store: The store the photos were written to (its keypoints folder: :func:`keypoints_folder`).
        photos: The photos written.
        config: The re-rank's settings (None: store none).
        replace: The store was rebuilt: drop the keypoints kept before.
        max_pixels: Larger photos are left to searches (they refuse them too).
    Returns:
        Photo path -> why its keypoints were not stored (an unreadable file; the folder not
        writable): searches compute those on first use.
    """
    if config is None:
        return {}
    keypoints = KeypointStore.beside(store, config)
    if keypoints is None:
        return {}
    limit = int(max_pixels) if max_pixels is not None else DEFAULT_MAX_PIXELS

    def one(photo) -> Entry | str | None:
        stamp = file_stamp(photo.image) if "://" not in photo.image else None
        if stamp is None:  # remote, or gone since it was embedded: searches will say
            return None
        try:
            return photo.photo_id, stamp, catalog_features(photo.image, config, max_pixels=limit)
        except ImageError as exc:
            return exc.reason

    entries: list[Entry] = []
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # Pillow and OpenCV release the GIL
        for photo, done in zip(photos, pool.map(one, photos)):
            if isinstance(done, str):
                failed[photo.image] = done
            elif done is not None:
                entries.append(done)
    try:
        keypoints.add(entries, replace=replace)
    except (OSError, DataError) as exc:  # a read-only folder, its lock held too long
        log.warning("%s: cannot store re-rank keypoints (%s); searches compute them", keypoints.folder, exc)
        failed.update({photo.image: f"keypoints not stored ({exc})" for photo in photos if "://" not in photo.image})
    return failed
