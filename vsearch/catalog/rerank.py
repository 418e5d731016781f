"""Re-ranking a short list by geometric verification: is the query photo a view of this photo?

The embedding finds the exact item of a customer photo in its top 10 far more often than
first (``experiments/results/rerank.md``). A second look settles the order: ORB keypoints of
the query and of each short-listed catalog photo, Lowe's ratio test on their Hamming
matches, then a RANSAC homography; the matches it keeps (inliers) say whether the two
photos show the same printed surface. An unrelated photo keeps a handful by chance, a view
of the same item dozens to hundreds.

The rule has one threshold: walk the short list in the embedding's order and move the first
candidate with at least ``min_inliers`` inliers to the top; everything else keeps its
order. Most queries stop at the first candidate (it is verified), so the typical cost is
one feature extraction and one match. A list with no verified candidate is left as it was,
so a photo of an item that is not in the catalog, or a category query, gets the embedding's
ranking unchanged.

Catalog photos' features can be computed once and kept (:class:`FeatureCache`); the loader
passed to :func:`rerank` may return pixels or :class:`Features`, or a list of them for a
product with several photos. ORB is not mirror-invariant: a mirrored catalog photo
verifies only a mirrored query, so a product's unmirrored photo should be among them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vsearch.images import load_image, to_pixels

DETECTORS = {"orb": 32, "sift": 128}  # detector -> descriptor length
KEPT_PHOTOS = 10_000  # catalog photos whose features a FeatureCache keeps by default (about 20 KB each)


@dataclass(frozen=True)
class RerankConfig:
    """How the short list is verified (the defaults: ``experiments/rerank.py`` chose the rule and
    threshold; ``experiments/served.py`` compares 250 keypoints with 500: the same customer R@1
    within a photo, fewer unrelated products verified, half the cost when all 10 are compared).

    Attributes:
        depth: Candidates examined, best first by the embedding.
        min_inliers: Inliers that verify a candidate (unrelated photos keep about 0-8).
        side: Longer side, in pixels, photos are resized to before keypoint detection.
        detector: ``orb`` (binary descriptors, fast) or ``sift`` (float descriptors, slower).
        features: Keypoints kept per photo.
        ratio: Lowe's ratio test: best match distance below this share of the second best.
        reprojection: RANSAC reprojection threshold, in pixels at ``side``.
    """

    depth: int = 10
    min_inliers: int = 12
    side: int = 256
    detector: str = "orb"
    features: int = 250
    ratio: float = 0.8
    reprojection: float = 5.0

    def __post_init__(self):
        for name in ("depth", "min_inliers", "side", "features"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"rerank {name} must be >= 1, got {getattr(self, name)}")
        if self.detector not in DETECTORS:
            raise ValueError(f"rerank detector must be one of {sorted(DETECTORS)}, got {self.detector!r}")
        if self.side < 32:
            raise ValueError(f"rerank side must be >= 32 pixels to find keypoints, got {self.side}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"rerank ratio must be in (0, 1], got {self.ratio}")
        if self.reprojection <= 0:
            raise ValueError(f"rerank reprojection must be > 0, got {self.reprojection}")


@dataclass(frozen=True)
class Features:
    """Keypoints of one photo: (N, 2) float32 positions and (N, D) descriptors (uint8 ORB, float32 SIFT)."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def local_features(pixels: np.ndarray, config: RerankConfig = RerankConfig()) -> Features:
    """Keypoints and descriptors of RGB uint8 pixels, the longer side resized to ``config.side``."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(pixels, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = config.side / max(h, w)
    grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    detector = (cv2.ORB_create if config.detector == "orb" else cv2.SIFT_create)(nfeatures=config.features)
    keypoints, descriptors = detector.detectAndCompute(grey, None)
    if descriptors is None:
        dtype = np.uint8 if config.detector == "orb" else np.float32
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, DETECTORS[config.detector]), dtype))
    return Features(np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors)


def inliers(query: Features, candidate: Features, config: RerankConfig = RerankConfig()) -> int:
    """Matches of ``query`` in ``candidate`` that pass the ratio test and fit one RANSAC homography.

    Fewer ratio-test matches than ``config.min_inliers`` cannot verify, whatever the fit: 0,
    without running RANSAC (its slowest case: few matches, most of them wrong).
    """
    import cv2

    if len(query) < 4 or len(candidate) < 4:  # a homography needs four points
        return 0
    norm = cv2.NORM_HAMMING if query.descriptors.dtype == np.uint8 else cv2.NORM_L2
    pairs = cv2.BFMatcher(norm).knnMatch(query.descriptors, candidate.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < config.ratio * p[1].distance]
    if len(good) < max(4, config.min_inliers):
        return 0
    src = query.points[[m.queryIdx for m in good]]
    dst = candidate.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, config.reprojection)
    return 0 if mask is None else int(mask.sum())


def promote_first(counts: Sequence[int], min_inliers: int) -> list[int]:
    """The new order of a short list: the first position with ``min_inliers`` or more moves to the top."""
    order = list(range(len(counts)))
    for i, count in enumerate(counts):
        if count >= min_inliers:
            return [i] + order[:i] + order[i + 1 :]
    return order


class FeatureCache:
    """Features of catalog photos by key, computed once (least recently used dropped past ``size``)."""

    def __init__(
        self,
        load: Callable[[dict], np.ndarray] | None = None,
        config: RerankConfig = RerankConfig(),
        size: int = KEPT_PHOTOS,
    ):
        self.load = load or (lambda match: load_image(match["path"]))
        self.config, self.size = config, int(size)
        self._kept: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()  # one cache, many server threads

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def __call__(self, match: dict) -> Features:
        key = str(match.get("id", match.get("path")))
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        features = local_features(self.load(match), self.config)  # outside the lock: searches overlap
        with self._lock:
            self._kept[key] = features
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return features


def rerank(
    query,
    shortlist: Sequence[dict],
    load: Callable[[dict], np.ndarray | Features] | None = None,
    config: RerankConfig = RerankConfig(),
) -> list[dict]:
    """The short list with its first verified candidate moved to the top.

    Args:
        query: The query photo: bytes, a path, RGB uint8 pixels or its :class:`Features`.
        shortlist: Matches best first (dicts with ``path``, as :mod:`vsearch.stores` returns them).
        load: A match -> its photo's pixels or :class:`Features`, or a list of them (a product's
            photos; the best one counts). Default: decode ``match["path"]``; a
            :class:`FeatureCache` keeps catalog features between queries.
        config: See :class:`RerankConfig`.
    Returns:
        New match dicts, the examined ones with their ``inliers``; beyond ``config.depth``
        the list is unchanged.
    """
    load = load or FeatureCache(config=config, size=0)
    head, tail = [dict(m) for m in shortlist[: config.depth]], list(shortlist[config.depth :])
    if not head:
        return tail
    mine = query if isinstance(query, Features) else local_features(to_pixels(query), config)
    counts = []
    for match in head:  # in the embedding's order, stopping at the first verified one
        found = load(match)
        photos = found if isinstance(found, (list, tuple)) else [found]
        match["inliers"] = max(
            (inliers(mine, f if isinstance(f, Features) else local_features(f, config), config) for f in photos),
            default=0,
        )
        counts.append(match["inliers"])
        if counts[-1] >= config.min_inliers:
            break
    counts += [0] * (len(head) - len(counts))
    return [head[i] for i in promote_first(counts, config.min_inliers)] + tail
