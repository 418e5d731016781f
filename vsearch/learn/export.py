"""Export: the embedding tower as a TensorFlow SavedModel that needs no vsearch to load.

The contract other code relies on (``tf.saved_model.load`` or TF Serving):

* ``serving_default``: ``image_bytes`` (tf.string [None], encoded JPEG, PNG, GIF, BMP or
  still WebP) -> ``embedding`` (float32 [None, D], unit L2 norm). Decoding (grayscale
  expanded, alpha over white), resizing and preprocessing run in the graph, as in training.
* ``embed_pixels``: ``images`` (float32 [None, S, S, 3], RGB 0..255) -> ``embedding``.
* ``assets.extra/vsearch.json``: image size, embedding dimension, class names, backbone,
  training config, metrics, package version, and a fingerprint of the weights.

Both signatures refuse an empty batch, and ``embed_pixels`` NaN or infinite pixels, with an
``InvalidArgumentError`` naming the input; ``serving_default`` decodes only the formats whose
size it reads before decoding, up to ``max_pixels`` (:mod:`vsearch.graph_headers`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vsearch.artifacts import METADATA_FILE, replace_dir, write_json


def weights_fingerprint(model) -> str:
    """A short hash of a model's weights: indexes record it to refuse a different model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight, dtype=np.float32)).tobytes())
    return digest.hexdigest()[:16]


def export_embedding(tower, out_dir: str | os.PathLike, metadata: dict, max_pixels: int | None = None) -> Path:
    """Writes the SavedModel with both signatures and its metadata; replaces ``out_dir`` atomically.

    Args:
        tower: Keras model, pixels (S, S, 3) 0..255 -> unit embedding (D,).
        out_dir: Destination folder.
        metadata: Extra JSON-able facts (class names, config, metrics...).
        max_pixels: ``serving_default`` refuses larger images from their header, before
            decoding them (default :data:`vsearch.images.DEFAULT_MAX_PIXELS`).
    Returns:
        The output folder.
    """
    import keras
    import tensorflow as tf

    from vsearch import __version__
    from vsearch.images import DEFAULT_MAX_PIXELS, tf_decode_and_resize

    size = int(tower.input.shape[1])
    dim = int(tower.output.shape[-1])
    max_pixels = int(max_pixels or DEFAULT_MAX_PIXELS)

    def embed_pixels(images):
        with tf.control_dependencies(pixel_checks(images)):
            return {"embedding": tower(tf.identity(images), training=False)}

    def serve_bytes(image_bytes):
        with tf.control_dependencies([not_empty(image_bytes, "image_bytes", "encoded image")]):
            images = tf.map_fn(
                lambda b: tf_decode_and_resize(b, size, max_pixels),
                image_bytes,
                fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32),
            )
        return {"embedding": tower(images, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(tower)
    archive.add_endpoint(
        "serving_default", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "embed_pixels", embed_pixels, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    )

    info = {
        "format": "vsearch-embedding/1",
        "image_size": size,
        "embedding_dim": dim,
        "input_range": [0, 255],
        "max_pixels": max_pixels,
        "signatures": {
            "serving_default": {
                "inputs": {"image_bytes": "string[None]"},
                "outputs": {"embedding": f"float32[None,{dim}]"},
            },
            "embed_pixels": {
                "inputs": {"images": f"float32[None,{size},{size},3]"},
                "outputs": {"embedding": f"float32[None,{dim}]"},
            },
        },
        "fingerprint": weights_fingerprint(tower),
        "vsearch_version": __version__,
        **metadata,
    }

    def fill(staging: Path) -> None:
        archive.write_out(str(staging), verbose=False)
        write_json(staging / METADATA_FILE, info, default=_jsonable)

    out = replace_dir(out_dir, fill)
    return out


def not_empty(batch, name: str, what: str):
    """In-graph: an empty batch fails with a message naming the input, not deep in the model."""
    import tensorflow as tf

    return tf.debugging.Assert(tf.shape(batch)[0] > 0, [f"{name}: empty batch, expected at least one {what}"])


def pixel_checks(images) -> list:
    """In-graph checks of the ``embed_pixels`` batch: not empty, every value finite (a NaN
    pixel would otherwise come back as a NaN embedding)."""
    import tensorflow as tf

    finite = tf.reduce_all(tf.math.is_finite(images))
    return [
        not_empty(images, "images", "image"),
        tf.debugging.Assert(finite, ["images: the pixels contain NaN or infinity, expected RGB values 0..255"]),
    ]


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
