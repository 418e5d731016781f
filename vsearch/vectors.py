"""Checks and normalisation of pixel batches and vectors, shared by every model runtime."""

from __future__ import annotations

import numpy as np

from vsearch.errors import ImageError


def check_batch(pixels, size: int) -> np.ndarray:
    """A non-empty (N, size, size, 3) batch of finite values as float32, else ImageError."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise ImageError("<pixels>", f"expected a batch of shape (N, {size}, {size}, 3), got {pixels.shape}")
    if len(pixels) == 0:
        raise ImageError("<pixels>", "empty batch: no image to embed")
    if not np.all(np.isfinite(pixels)):
        raise ImageError("<pixels>", "pixels contain NaN or infinity")
    return pixels


def unit_rows(vectors) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
