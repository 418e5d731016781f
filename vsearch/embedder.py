"""Embedders and THE batching loop: photos -> unit vectors.

:func:`embed_images` is the one place photos are batched for a model: it takes paths,
encoded bytes or pixel arrays, sends each through the road of :mod:`vsearch.images`
(decoding in a thread pool, into a batch array), runs the model on each batch while the
next one decodes, and returns the vectors, the indices that worked and the files that did
not with the reason. The catalog index, the searcher, ``vsearch eval``, the notebook and
the benchmarks all call it.

An :class:`Embedder` is only the model call, ``embed_pixels``: (N, S, S, 3) float32 RGB
0..255 -> (N, D) float32. Implementations: :class:`SavedModelEmbedder` (the exported
model), :class:`KerasEmbedder` (any in-memory Keras model: the baselines) and
:class:`vsearch.litert.TFLiteEmbedder` (the LiteRT conversion, no TensorFlow).
:func:`load_embedder` picks one for a path.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from vsearch.artifacts import read_metadata
from vsearch.errors import ConfigError, DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, model_input
from vsearch.vectors import check_batch, unit_rows

PROGRESS_EVERY_S = 10.0  # without a terminal, a plain progress line this often


class Embedder(Protocol):
    """The model call: pixels -> vectors."""

    image_size: int
    dim: int
    fingerprint: str
    name: str

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 RGB 0..255 -> (N, dim) float32."""


def require_tensorflow(what: str):
    """TensorFlow, or a ConfigError that says which extra brings it (serving a .tflite needs none)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ConfigError(
            f"{what} needs TensorFlow: pip install 'vsearch[train]' (or serve the .tflite export, which does not)"
        ) from None
    return tf


class SavedModelEmbedder:
    """The exported SavedModel, loaded with plain ``tf.saved_model.load``."""

    def __init__(self, model_dir: str | os.PathLike):
        tf = require_tensorflow("a SavedModel")

        self.model_dir = Path(model_dir)
        self.metadata = read_metadata(model_dir)
        self._loaded = tf.saved_model.load(str(model_dir))
        self._pixels = self._loaded.signatures["embed_pixels"]
        self.image_size = int(self.metadata["image_size"])
        self.dim = int(self.metadata["embedding_dim"])
        self.fingerprint = self.metadata.get("fingerprint", "")
        self.name = "exported embedding"

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        pixels = check_batch(pixels, self.image_size)
        return self._pixels(images=tf.constant(pixels))["embedding"].numpy()

    def serving_default(self, blobs: Sequence[bytes]) -> np.ndarray:
        """The SavedModel's own ``serving_default``: decoding inside the graph (the external contract).

        Not the road vsearch serves (no EXIF orientation, TensorFlow's JPEG decoder); used to
        measure the parity of what TF Serving clients get.
        """
        import tensorflow as tf

        try:
            out = self._loaded.signatures["serving_default"](image_bytes=tf.constant(list(blobs), dtype=tf.string))
        except tf.errors.InvalidArgumentError as exc:
            raise ImageError("<bytes>", f"the model could not decode an image ({graph_error(exc.message)})") from None
        return out["embedding"].numpy()


def graph_error(message: str) -> str:
    """The line of a TensorFlow graph error that says what was wrong (not the node trace)."""
    import re

    ours = re.search(r"image_bytes: ([^\]]+)\]", message)
    if ours:
        return ours.group(1)
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip() and not line.startswith((" ", "\t")) and not line.startswith(("Graph execution", "Detected at"))
    ]
    return lines[-1][:300] if lines else message.strip()[:300]


class KerasEmbedder:
    """Any Keras model taking (S, S, 3) pixels 0..255 (the baselines, the classifier)."""

    def __init__(self, model, name: str = "keras model", normalize: bool = True):
        import tensorflow as tf

        self.model = model
        self.name = name
        self.image_size = int(model.input.shape[1])
        self.dim = int(model.output.shape[-1])
        self.fingerprint = ""
        self.metadata: dict = {}
        self._normalize = normalize
        self._run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = np.asarray(self._run(check_batch(pixels, self.image_size)), dtype=np.float32)
        return unit_rows(out) if self._normalize else out


def load_embedder(path: str | os.PathLike, num_threads: int | None = None):
    """The embedder for an exported model: a SavedModel folder or a ``.tflite`` file.

    Args:
        path: ``saved_models/embedding`` (SavedModel) or ``saved_models/embedding.tflite``.
        num_threads: TFLite only: inference threads (default: every core).
    Raises:
        DataError: the path is neither.
    """
    p = Path(path)
    if p.is_dir():
        return SavedModelEmbedder(p)
    if p.suffix == ".tflite":
        from vsearch.litert import TFLiteEmbedder

        return TFLiteEmbedder(p, num_threads=num_threads)
    what = "no such file or folder" if not p.exists() else "not a SavedModel folder or a .tflite file"
    raise DataError(
        f"{p}: {what}; expected an exported SavedModel folder (`vsearch siamese`) "
        "or a .tflite file (`vsearch export --format tflite`)"
    )


@dataclass
class Embedded:
    """What :func:`embed_images` made: vectors of the usable images, and why the others failed."""

    vectors: np.ndarray  # (len(good), dim) float32
    good: list[int] = field(default_factory=list)  # indices into the input of the rows of `vectors`
    bad: dict[str, str] = field(default_factory=dict)  # source (path or <image i>) -> reason


def _source(image, index: int) -> str:
    return os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else f"<image {index}>"


class _Progress:
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a plain line every few seconds."""

    def __init__(self, total: int, label: str | bool):
        self.total, self.done = total, 0
        self.label = label if isinstance(label, str) else "embedding"
        self.enabled = bool(label)
        self._bar = None
        self._last = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.label, unit="img", leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (time.monotonic() - self._last >= PROGRESS_EVERY_S or self.done == self.total):
            self._last = time.monotonic()
            print(f"{self.label}: {self.done}/{self.total} images", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def embed_images(
    embedder: Embedder,
    images: Sequence,
    batch_size: int = 32,
    workers: int = 4,
    upright: bool = True,
    draft: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool | str = False,
) -> Embedded:
    """Embeds photos through the road; an unusable photo is reported, never fatal.

    Args:
        embedder: The model call (:class:`Embedder`).
        images: Paths, encoded bytes or (H, W, 3) pixel arrays (may be mixed).
        batch_size: Images per model call.
        workers: Decoding threads (Pillow, OpenCV and numpy release the GIL).
        upright / draft / max_pixels / max_bytes: The road's choices (:func:`vsearch.images.model_input`).
        progress: A label (or True) to report progress.
    Returns:
        :class:`Embedded`: ``vectors[j]`` is the vector of ``images[good[j]]``.
    Raises:
        ValueError: ``batch_size`` or ``workers`` below 1.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"embed_images: batch_size and workers must be >= 1, got {batch_size} and {workers}")
    images = list(images)
    size = embedder.image_size
    bar = _Progress(len(images), progress)
    vectors, good, bad = [], [], {}

    def load(index: int, out: np.ndarray) -> str | None:
        """Fills ``out`` with image ``index``'s model input; returns why it failed, or None."""
        try:
            model_input(
                images[index], size, _source(images[index], index), upright, draft, max_pixels, max_bytes, out=out
            )
            return None
        except ImageError as exc:
            return exc.reason

    def decode_batch(pool, start: int):
        stop = min(start + batch_size, len(images))
        batch = np.empty((stop - start, size, size, 3), np.float32)
        indices = range(start, stop)
        if pool is None:
            return indices, batch, [load(i, batch[i - start]) for i in indices]
        return indices, batch, [pool.submit(load, i, batch[i - start]) for i in indices]

    pool = ThreadPoolExecutor(min(workers, max(len(images), 1))) if workers > 1 and len(images) > 1 else None
    try:
        pending = decode_batch(pool, 0) if images else None
        while pending is not None:
            indices, batch, outcomes = pending
            reasons = [o if pool is None else o.result() for o in outcomes]
            nxt = indices.stop
            pending = decode_batch(pool, nxt) if nxt < len(images) else None  # decodes while the model runs
            ok = [j for j, why in enumerate(reasons) if why is None]
            for j, why in enumerate(reasons):
                if why is not None:
                    bad[_source(images[indices[j]], indices[j])] = why
            if ok:
                rows = batch if len(ok) == len(batch) else batch[ok]
                vectors.append(np.asarray(embedder.embed_pixels(rows), dtype=np.float32))
                good += [indices[j] for j in ok]
            bar.update(len(indices))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    out = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    return Embedded(out, good, bad)


def embed_one(
    embedder: Embedder,
    image,
    source: str | None = None,
    upright: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """One photo (bytes, path or pixels) -> its vector, through the road, without a thread hop.

    Raises:
        ImageError: the photo cannot be used.
    """
    pixels = model_input(image, embedder.image_size, source, upright, False, max_pixels, max_bytes)
    return np.asarray(embedder.embed_pixels(pixels[None]), dtype=np.float32)[0]
