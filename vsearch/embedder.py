"""Embedders: one small interface over every way of turning photos into vectors.

``Embedder`` is what the index, the evaluation and the search use. Implementations:
:class:`SavedModelEmbedder` (the exported model, through its signatures),
:class:`KerasEmbedder` (any in-memory Keras model taking 0..255 pixels: the baselines) and
:class:`vsearch.tflite.TFLiteEmbedder` (the model converted by ``vsearch export``, for fast
CPU inference). :func:`load_embedder` picks the right one for a path. A distributed batch
job is another implementation of the same two methods.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from vsearch.errors import ImageError
from vsearch.images import DEFAULT_MAX_PIXELS, decode_image, read_bytes


class Embedder(Protocol):
    """Photos -> unit vectors."""

    image_size: int
    dim: int

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Encoded images (JPEG/PNG/GIF/BMP) -> (N, dim) float32."""

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 RGB 0..255 -> (N, dim) float32."""


class SavedModelEmbedder:
    """The exported SavedModel, loaded with plain ``tf.saved_model.load``."""

    def __init__(self, model_dir: str | os.PathLike):
        import tensorflow as tf

        from vsearch.export import read_metadata

        self.model_dir = Path(model_dir)
        self.metadata = read_metadata(model_dir)
        self._loaded = tf.saved_model.load(str(model_dir))
        self._bytes = self._loaded.signatures["serving_default"]
        self._pixels = self._loaded.signatures["embed_pixels"]
        self.image_size = int(self.metadata["image_size"])
        self.dim = int(self.metadata["embedding_dim"])
        self.fingerprint = self.metadata.get("fingerprint", "")
        self.name = "exported embedding"

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        import tensorflow as tf

        try:
            out = self._bytes(image_bytes=tf.constant(list(blobs), dtype=tf.string))
        except tf.errors.InvalidArgumentError as exc:
            raise ImageError("<bytes>", f"the model could not decode an image ({exc.message.splitlines()[0]})") from None
        return out["embedding"].numpy()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._pixels(images=tf.constant(np.asarray(pixels, np.float32)))["embedding"].numpy()


class KerasEmbedder:
    """Any Keras model taking (S, S, 3) pixels 0..255, decoding bytes like the export does."""

    def __init__(self, model, name: str = "keras model", normalize: bool = True):
        import tensorflow as tf

        from vsearch.images import tf_decode_and_resize

        self.model = model
        self.name = name
        self.image_size = int(model.input.shape[1])
        self.dim = int(model.output.shape[-1])
        self._normalize = normalize
        size = self.image_size
        self._run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._decode = tf.function(
            lambda b: tf.map_fn(lambda x: tf_decode_and_resize(x, size), b,
                                fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)))

    def _finish(self, out) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if self._normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        import tensorflow as tf

        try:
            pixels = self._decode(tf.constant(list(blobs), dtype=tf.string))
        except tf.errors.InvalidArgumentError as exc:
            raise ImageError("<bytes>", f"could not decode an image ({exc.message.splitlines()[0]})") from None
        return self._finish(self._run(pixels))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._finish(self._run(np.asarray(pixels, np.float32)))


def load_embedder(path: str | os.PathLike, num_threads: int | None = None):
    """The embedder for an exported model: a SavedModel folder or a ``.tflite`` file.

    Args:
        path: ``saved_models/embedding`` (SavedModel) or ``saved_models/embedding.tflite``.
        num_threads: TFLite only: decoding and inference threads (default: every core).
    Raises:
        DataError: the path is neither.
    """
    from vsearch.errors import DataError

    p = Path(path)
    if p.is_dir():
        return SavedModelEmbedder(p)
    if p.suffix == ".tflite":
        from vsearch.tflite import TFLiteEmbedder

        return TFLiteEmbedder(p, num_threads=num_threads)
    what = "no such file or folder" if not p.exists() else "not a SavedModel folder or a .tflite file"
    raise DataError(f"{p}: {what}; expected an exported SavedModel folder (`vsearch siamese`) "
                    "or a .tflite file (`vsearch export --format tflite`)")


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def embed_files(embedder: Embedder, paths: Sequence[str | os.PathLike], batch_size: int = 32,
                progress: bool | str = False) -> np.ndarray:
    """Embeds image files through ``embed_bytes``, batched, with an optional progress bar.

    Files must be readable images (validate first, e.g. with :func:`vsearch.data.scan_split`).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc=progress if isinstance(progress, str) else "embedding",
               unit="img", disable=not progress, leave=False)
    out = []
    for chunk in _batches(list(paths), batch_size):
        out.append(embedder.embed_bytes([read_bytes(p) for p in chunk]))
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def embed_arrays(embedder: Embedder, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Embeds decoded RGB uint8 images of any size through ``embed_pixels``.

    Resized outside TensorFlow (:func:`vsearch.resize.resize_bilinear`, the numbers of
    ``tf.image.resize``): a TFLite embedder then runs without TensorFlow.
    """
    from vsearch.resize import resize_bilinear

    out = []
    for chunk in _batches(list(images), batch_size):
        pixels = np.stack([resize_bilinear(img, embedder.image_size) for img in chunk])
        out.append(embedder.embed_pixels(pixels))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def embed_photo(embedder: Embedder, path: str | os.PathLike,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """A user's photo: strict decode (EXIF upright, any mode to RGB) -> (pixels, embedding)."""
    pixels = decode_image(read_bytes(path), str(path), max_pixels)
    return pixels, embed_arrays(embedder, [pixels])[0]


