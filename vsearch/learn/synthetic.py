"""A tiny synthetic catalog: solid-colour "products" with a shape, for smoke runs and tests.

Classes differ by colour, items within a class by the position of a square, so both
class retrieval and item matching are learnable in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


def product_photo(colour: tuple[int, int, int], index: int, size: tuple[int, int] = (40, 48)):
    """One synthetic photo (a Pillow image): noisy colour, a contrasting square placed by ``index``."""
    from PIL import Image

    rng = np.random.default_rng(index)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = colour
    arr = np.clip(arr.astype(int) + rng.integers(-25, 25, arr.shape), 0, 255).astype(np.uint8)
    x, y = (index * 7) % (size[0] - 12), (index * 5) % (size[1] - 12)
    arr[y : y + 12, x : x + 12] = 255 - np.asarray(colour, np.uint8)
    return Image.fromarray(arr, "RGB")


def make_catalog(
    root: str | Path,
    splits: tuple[tuple[str, int], ...] = (("train", 6), ("validation", 3)),
    colours: dict[str, tuple[int, int, int]] = COLOURS,
) -> Path:
    """Writes ``root/{train,validation}/<class>/*.jpg|png``; returns ``root``."""
    root = Path(root)
    for split, count in splits:
        for c, (name, colour) in enumerate(colours.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                index = c * 100 + i + (50 if split == "validation" else 0)
                ext = "png" if i % 3 == 2 else "jpg"
                product_photo(colour, index).save(folder / f"{name}_{i}.{ext}")
    return root
