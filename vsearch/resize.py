"""Bilinear resizing to the model's square input in numpy: the numbers of ``tf.image.resize``.

The SavedModel's graph and ``keras.utils.image_dataset_from_directory`` resize with
``tf.image.resize`` (bilinear, half-pixel centres, no antialiasing). Every path outside a
TensorFlow graph (the TFLite runtime, the searcher, the evaluation's customer photos)
resizes here instead, so that serving with TFLite needs no TensorFlow and all paths
compute the same pixels (a test holds it to ``tf.image.resize`` within 1e-4).
"""
from __future__ import annotations

import functools
import threading

import numpy as np


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TensorFlow's half-pixel-centre bilinear weights (resize_bilinear_op.cc), in float32 as there.
    scale = np.float32(in_size / out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.intp)
    return lower, upper, (source - floor).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _resize_plan(height: int, width: int, size: int):
    # Catalog photos share a handful of sizes: the gather indices are computed once per size.
    y_low, y_high, y_lerp = _axis_weights(height, size)
    x_low, x_high, x_lerp = _axis_weights(width, size)
    channel = np.arange(3)
    # Columns of the (H, W * 3) view: pixel x, channel c is column 3x + c.
    left = (x_low[:, None] * 3 + channel).ravel()
    right = (x_high[:, None] * 3 + channel).ravel()
    return np.concatenate([y_low, y_high]), left, right, np.repeat(x_lerp, 3), y_lerp[:, None]


_scratch = threading.local()


def _scratch_buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    # Per-thread buffers reused across calls: fresh multi-megabyte arrays come from mmap and
    # are page-faulted in on every call, which cost more than the resize itself (2.8 vs 1.1 ms).
    size = int(np.prod(shape))
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = np.empty(size, dtype)
        setattr(_scratch, name, buffer)
    return buffer[:size].reshape(shape)


def resize_bilinear(pixels: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels -> (size, size, 3) float32, the same numbers as ``tf.image.resize``.

    Bilinear with half-pixel centres and no antialiasing, like
    :func:`vsearch.images.resize_pixels` (same weights, same float32 operations in the same
    order: across each row, then down), in numpy so that the TFLite path needs no
    TensorFlow. Only the rows and columns the output samples are gathered and converted.

    Args:
        pixels: (H, W, 3) uint8.
        size: Output side.
        out: Optional (size, size, 3) float32 C-contiguous array to write into (a batch slot).
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"resize_bilinear: expected (H, W, 3) uint8 RGB pixels, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"resize_bilinear: empty image {pixels.shape}")
    height, width = pixels.shape[:2]
    rows, left, right, x_lerp, y_lerp = _resize_plan(height, width, size)
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * 3)
    # mode="clip" (indices are in range anyway): with the default "raise", take buffers `out`.
    sampled = np.take(flat, rows, axis=0, out=_scratch_buffer("rows", (2 * size, width * 3), np.uint8), mode="clip")
    gathered = _scratch_buffer("gathered", (2 * size, size * 3), np.uint8)
    across = _scratch_buffer("across", (2 * size, size * 3), np.float32)
    step = _scratch_buffer("step", (2 * size, size * 3), np.float32)
    np.copyto(across, np.take(sampled, left, axis=1, out=gathered, mode="clip"))
    np.copyto(step, np.take(sampled, right, axis=1, out=gathered, mode="clip"))
    step -= across
    step *= x_lerp
    across += step  # row value = left + (right - left) * x_lerp
    top, bottom = across[:size], across[size:]
    bottom -= top
    bottom *= y_lerp
    if out is None:
        out = np.empty((size, size, 3), np.float32)
    np.add(top, bottom, out=out.reshape(size, size * 3))  # top + (bottom - top) * y_lerp
    return out
