"""Where the product may be in a customer's photo: parts of it searched beside the whole photo.

A real customer photo shows the product among other things (a shelf, a hand, the next
product). A search with regions (``SearchConfig.regions``, a search's ``regions``) embeds the
whole photo and parts of it in one model call and scores each product by its best part, so
that a part can lift only a product it shows; the category prior and the re-rank work on
those scores, and each short-listed product is verified against the part that scored it.
The region sets:

- ``none`` (the default): the whole photo only;
- ``centre``: the whole photo and its centre, 80% of each side (a customer frames the product
  roughly in the middle). On real in-store photos it gave the most R@1 of the centres and
  grids tried (``experiments/regions.py``) and lifts the served R@1 with each model measured
  (``experiments/regions_served.py``); it costs a second model input, which is why it is
  not the default.

The answer says which part gave its first product (``region``, fractions of the whole
photo; None for the whole photo). A search in a box the customer drew searches that part
only: no regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vsearch.catalog.rerank import Features, local_features
from vsearch.config import RerankConfig
from vsearch.images import Box, crop, resize_bilinear

# The parts of the photo each region set searches beside the whole photo, as fractions
# (x0, y0, x1, y1); vsearch.config.REGION_SETS names them.
REGION_BOXES: dict[str, tuple[Box, ...]] = {
    "none": (),
    "centre": ((0.1, 0.1, 0.9, 0.9),),
}
PART = "_part"  # a match's key, inside a search, for the index of the part that scored it


@dataclass(frozen=True)
class Query:
    """A photo as a search sees it: the model inputs of the parts searched, the first the whole
    photo (or the customer's box).

    Attributes:
        inputs: (n, S, S, 3) float32 model inputs, one per part.
        boxes: Each part as fractions of the whole upright photo; None: the whole photo.
        box: The customer's box, when the search is in one (then it is the only part).
    """

    inputs: np.ndarray
    boxes: tuple[Box | None, ...]
    box: Box | None = None

    def region(self, index: int) -> Box | None:
        """The part ``index`` as an answer's ``region``: None for the whole photo and for the customer's box."""
        return None if self.box is not None else self.boxes[index]


def region_inputs(pixels: np.ndarray, size: int, boxes: Sequence[Box]) -> np.ndarray:
    """(1 + len(boxes), size, size, 3) float32 model inputs: the whole photo, then each box of it,
    cut from the full-resolution pixels before resizing (the road's step 2 for each)."""
    out = np.empty((1 + len(boxes), size, size, 3), np.float32)
    resize_bilinear(pixels, size, out=out[0])
    for slot, box in zip(out[1:], boxes):
        resize_bilinear(crop(pixels, box), size, out=slot)
    return out


def best_per_product(lists: Sequence[Sequence[dict]], k: int) -> list[dict]:
    """Each part's ranked matches -> the top ``k`` products by their best score over the parts.

    Each product keeps the match (its photo, its score) of the part that scored it highest,
    with that part's index under :data:`PART` (the first part on ties: the whole photo wins).
    When every part's list holds its top ``k``, so does the answer: a product outside a part's
    list scores below ``k`` products there, and each of those scores at least as much overall.
    """
    best: dict[str, dict] = {}
    for index, matches in enumerate(lists):
        for match in matches:
            kept = best.get(match["product_id"])
            if kept is None or match["score"] > kept["score"]:
                best[match["product_id"]] = {**match, PART: index}
    return sorted(best.values(), key=lambda m: -m["score"])[:k]


class PartFeatures:
    """The re-rank's query for each candidate (:func:`vsearch.catalog.rerank.rerank`): the
    keypoints of the part of the photo that scored it (its :data:`PART`), found when first needed.

    Args:
        query: Pixels or :class:`~vsearch.catalog.rerank.Features` of the photo, or of each of its
            parts (a list, or (n, S, S, 3) model inputs).
        config: The re-rank's settings (:class:`~vsearch.config.RerankConfig`).
    """

    def __init__(self, query, config: RerankConfig):
        single = isinstance(query, Features) or (isinstance(query, np.ndarray) and query.ndim == 3)
        self.parts = [query] if single else list(query)
        self.config = config
        self.found: dict[int, Features] = {}

    def __call__(self, match: dict) -> Features:
        index = match.get(PART, 0) if len(self.parts) > 1 else 0
        if index not in self.found:
            part = self.parts[index]
            self.found[index] = (
                part
                if isinstance(part, Features)
                else local_features(np.clip(part, 0, 255).astype(np.uint8), self.config)
            )
        return self.found[index]
