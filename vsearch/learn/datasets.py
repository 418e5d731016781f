"""The stages' input: validated splits as plain values, and their ``tf.data`` pipelines.

A split is checked first (:func:`vsearch.learn.photo_checks.clean_split`: bad files left out, awkward
ones normalised into a clean mirror), then read with
``keras.utils.image_dataset_from_directory``, so no file can stop an epoch halfway.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsearch.config import DataConfig
from vsearch.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from vsearch.learn.photo_checks import SplitReport, checks_path, clean_split


def image_dataset(
    root: str | os.PathLike,
    class_names: list[str],
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    cache: bool = False,
):
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
        str(root),
        labels="inferred",
        label_mode="int",
        class_names=list(class_names),
        color_mode="rgb",
        batch_size=batch_size,
        image_size=(image_size, image_size),
        shuffle=shuffle,
        seed=seed,
        interpolation="bilinear",
        verbose=False,
    )
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
    report: SplitReport = dataclasses.field(repr=False, compare=False)


def load_split(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    class_names: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: str | os.PathLike | None = None,
) -> Split:
    """Validates a split and lists its files and labels in ``image_dataset_from_directory`` order."""
    clean, report = clean_split(root, cache_dir, class_names, max_pixels, checks)
    names = report.class_names
    paths, labels = [], []
    for index, cls in enumerate(names):
        files = sorted(p for p in (clean / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    return Split(clean, paths, np.asarray(labels, dtype=np.int32), names, report)


def load_splits(
    data: DataConfig, cache_dir: str | os.PathLike, log: Callable[[str], None] = print
) -> tuple[Split, Split]:
    """The training stages' train and validation splits, validated; what was left out is logged.

    The classes are the train folder's sub-folders; validation must hold the same ones.
    ``cache_dir``: where clean mirrors go when a split needs one.
    """
    root, checks = Path(data.data_dir), checks_path(data.feature_cache_dir)
    train = load_split(root / "train", cache_dir, None, data.max_image_pixels, checks)
    validation = load_split(root / "validation", cache_dir, train.class_names, data.max_image_pixels, checks)
    for name, split in (("train", train), ("validation", validation)):
        for path, why in split.report.bad.items():
            log(f"  excluded ({name}): {path}: {why}")
        for path, why in split.report.convert.items():
            log(f"  normalised ({name}): {path}: {why}")
    return train, validation
