"""Bilinear resizing to the model's square input outside TensorFlow: ``tf.image.resize``'s numbers.

The SavedModel's graph and ``keras.utils.image_dataset_from_directory`` resize with
``tf.image.resize`` (bilinear, half-pixel centres, no antialiasing). Every path outside a
TensorFlow graph (the TFLite runtime, the searcher, the evaluation's customer photos)
resizes here instead, so that serving with TFLite needs no TensorFlow and all paths
compute the same pixels.

OpenCV's ``INTER_LINEAR`` on float32 is that same sampling (half-pixel centres, edge
pixels repeated, no antialiasing); its weights are computed in a different order, so its
numbers differ from TensorFlow's by at most a few hundredths of a grey level (a test holds
it to 0.02 on 0..255). It is what keeps the TFLite path fast: 0.6-0.9 ms for a 400x533
photo on the shared 2-core machine, against 3.7-5.3 ms for the numpy gather it replaced
(numbers in ``bench/RESULTS.md``).
"""
from __future__ import annotations

import numpy as np

# Differences from tf.image.resize stay below this (0..255 scale); tests/test_resize.py holds it.
TOLERANCE = 0.02


def resize_bilinear(pixels: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels -> (size, size, 3) float32 0..255, as ``tf.image.resize`` computes them.

    Bilinear with half-pixel centres and no antialiasing, like
    :func:`vsearch.images.resize_pixels`, within :data:`TOLERANCE`.

    Args:
        pixels: (H, W, 3) uint8.
        size: Output side.
        out: Optional (size, size, 3) float32 C-contiguous array to write into (a batch slot).
    """
    import cv2

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"resize_bilinear: expected (H, W, 3) uint8 RGB pixels, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"resize_bilinear: empty image {pixels.shape}")
    if size < 1:
        raise ValueError(f"resize_bilinear: size must be >= 1, got {size}")
    if out is not None and (out.shape != (size, size, 3) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"resize_bilinear: out must be a C-contiguous ({size}, {size}, 3) float32 array, "
                         f"got {out.shape} {out.dtype}")
    # float32 in, float32 out: the fractional values tf.image.resize keeps (uint8 would round).
    resized = cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    if out is None:
        return resized
    out[...] = resized
    return out
