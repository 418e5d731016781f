"""Re-ranking a short list by geometric verification: is the query photo a view of this photo?

The embedding finds the exact item of a customer photo in its top 10 far more often than
first (``experiments/results/rerank.md``). A second look settles the order: keypoints of the
query and of each short-listed catalog photo (ORB or SIFT), Lowe's ratio test on their
matches, then a RANSAC homography; the matches it keeps (inliers) say whether the two photos
show the same printed surface. An unrelated photo keeps a handful by chance, a view of the
same item dozens to hundreds.

The rule has one threshold: walk the short list in the embedding's order and move the first
candidate with at least ``min_inliers`` inliers to the top; everything else keeps its
order. Most queries stop at the first candidate (it is verified), so the typical cost is
one feature extraction and one match. A list with no verified candidate is left as it was,
so a photo of an item that is not in the catalog, or a category query, gets the embedding's
ranking unchanged.

A verified candidate also says *why*: its ``outline``, the catalog photo's corners carried
by the fitted homography into the query photo (:func:`outline`), which the page draws.

Its settings are :class:`vsearch.config.RerankConfig` (a search's ``reranker``, with the
other serving settings). A catalog photo is decoded at the size its keypoints are found at,
never at full size (:func:`catalog_features`: libjpeg's reduced-scale decoding, admitted by
a decode budget when one is given); its features are stored with the catalog at index time
(:mod:`vsearch.catalog.keypoints`) or kept once computed (:class:`FeatureCache`). The loader
passed to :func:`rerank` may return pixels or :class:`Features`, or a list of them for a
product with several photos. Neither detector is mirror-invariant: a mirrored catalog photo
verifies only a mirrored query, so a product's unmirrored photo should be among them.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vsearch.config import RerankConfig
from vsearch.errors import ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image, image_header, read_bytes, to_pixels

DETECTORS = {"orb": 32, "sift": 128}  # detector -> descriptor length (config.RERANK_DETECTORS names them)
KEPT_PHOTOS = 10_000  # catalog photos whose features a FeatureCache keeps by default (about 10 KB each)
CORNERS = ("top left", "top right", "bottom right", "bottom left")  # an outline's order


@dataclass(frozen=True)
class Features:
    """Keypoints of one photo: (N, 2) float32 positions and (N, D) descriptors (uint8 ORB, float32
    SIFT), found in a ``size`` = (width, height) picture (the photo resized to the re-rank's side)."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Verification:
    """What matching a query with one candidate found: its inliers and the homography that kept
    them (3x3, query positions -> candidate positions; None when none was fitted)."""

    inliers: int
    homography: np.ndarray | None = None


def _detector(config: RerankConfig):
    import cv2

    create: Any = cv2.ORB_create if config.detector == "orb" else cv2.SIFT_create  # type: ignore[attr-defined]
    return create(nfeatures=config.features)


def local_features(pixels: np.ndarray, config: RerankConfig = RerankConfig()) -> Features:
    """Keypoints and descriptors of RGB uint8 pixels, the longer side resized to ``config.side``:
    the ``config.features`` strongest."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(pixels, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = config.side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    keypoints, descriptors = _detector(config).detectAndCompute(grey, None)
    if descriptors is None:
        dtype = np.uint8 if config.detector == "orb" else np.float32
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, DETECTORS[config.detector]), dtype), size)
    if len(keypoints) > config.features:  # detectors may return a few more (SIFT: one per orientation)
        keep = np.argsort([-k.response for k in keypoints], kind="stable")[: config.features]
        keypoints, descriptors = [keypoints[i] for i in keep], descriptors[keep]
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return Features(points, descriptors, size)


def verify_pair(query: Features, candidate: Features, config: RerankConfig = RerankConfig()) -> Verification:
    """Matches of ``query`` in ``candidate`` that pass the ratio test and fit one RANSAC homography.

    Fewer ratio-test matches than ``config.min_inliers`` cannot verify, whatever the fit: 0,
    without running RANSAC (its slowest case: few matches, most of them wrong).
    """
    import cv2

    if len(query) < 4 or len(candidate) < 4:  # a homography needs four points
        return Verification(0)
    norm = cv2.NORM_HAMMING if query.descriptors.dtype == np.uint8 else cv2.NORM_L2
    pairs = cv2.BFMatcher(norm).knnMatch(query.descriptors, candidate.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < config.ratio * p[1].distance]
    if len(good) < max(4, config.min_inliers):
        return Verification(0)
    src = query.points[[m.queryIdx for m in good]]
    dst = candidate.points[[m.trainIdx for m in good]]
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, config.reprojection)
    if mask is None:
        return Verification(0)
    return Verification(int(mask.sum()), homography)


def inliers(query: Features, candidate: Features, config: RerankConfig = RerankConfig()) -> int:
    """The inliers of :func:`verify_pair`."""
    return verify_pair(query, candidate, config).inliers


def outline(verification: Verification, query: Features, candidate: Features) -> list[list[float]] | None:
    """Where the candidate photo lies in the query photo: its four corners (:data:`CORNERS`'
    order) carried by the inverse homography, as ``[x, y]`` fractions of the query's width and
    height (outside 0..1 where the catalog photo reaches beyond the customer's frame).

    None without a homography, or when it is no view of a flat photo from its front: a
    corner behind the camera, the corners no longer a convex quadrilateral in their order,
    or turning the other way (a mirror image).
    """
    if verification.homography is None or not all(query.size) or not all(candidate.size):
        return None
    try:
        back = np.linalg.inv(np.asarray(verification.homography, np.float64))
    except np.linalg.LinAlgError:
        return None
    w, h = candidate.size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ back.T
    if not np.all(corners[:, 2] > 1e-9):
        return None
    xy = corners[:, :2] / corners[:, 2:]
    edges = np.roll(xy, -1, axis=0) - xy
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not np.all(turns > 0) or not np.all(np.isfinite(xy)):  # the photo's own corners turn this way (y down)
        return None
    fractions = xy / np.asarray(query.size, np.float64)
    return [[round(float(x), 4), round(float(y), 4)] for x, y in fractions]


def promote_first(counts: Sequence[int], min_inliers: int) -> list[int]:
    """The new order of a short list: the first position with ``min_inliers`` or more moves to the top."""
    order = list(range(len(counts)))
    for i, count in enumerate(counts):
        if count >= min_inliers:
            return [i] + order[:i] + order[i + 1 :]
    return order


# ---------------------------------------------------------------- catalog photos


class DecodeBudget(Protocol):
    """What :func:`catalog_features` needs of a decode budget (:class:`vsearch.web.budget.DecodeBudget`)."""

    capacity: int

    def hold(self, n: int, wait_s: float) -> AbstractContextManager[bool]: ...


class DecodeBusy(ImageError):
    """The decode budget did not admit a catalog photo in time (it may next time)."""


def draft_size(width: int, height: int, side: int) -> int:
    """The shorter side to ask libjpeg for so that the longer one stays >= ``side`` (Pillow's
    ``draft`` keeps both sides >= what it is asked for)."""
    return max(1, math.ceil(side * min(width, height) / max(width, height, 1)))


def catalog_features(
    path: str | os.PathLike,
    config: RerankConfig = RerankConfig(),
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    budget: DecodeBudget | None = None,
    wait_s: float = 0.0,
) -> Features:
    """A catalog photo's :class:`Features`, decoded at the size they are found at, not at full size.

    The header is read first (:func:`vsearch.images.image_header`); a JPEG is then decoded by
    libjpeg at 1/2, 1/4 or 1/8 scale while its longer side stays >= ``config.side`` (other
    formats are decoded whole). With a ``budget``, the file's bytes and that decode's cost are
    admitted first (waiting up to ``wait_s``) and given back when the features are found.

    Raises:
        ImageError: the photo cannot be used (missing, unreadable, over ``max_pixels`` or the
            whole budget); :class:`DecodeBusy` when the budget did not admit it in time.
    """
    source = os.fspath(path)
    try:
        file_bytes = os.stat(source).st_size
    except OSError as exc:
        raise ImageError(source, f"cannot read the file ({exc.strerror or exc})") from None
    header = image_header(source, source)
    if header.pixels > max_pixels:
        raise ImageError(source, f"{header.width}x{header.height} pixels is over the {max_pixels}-pixel limit")
    draft = draft_size(header.width, header.height, config.side)
    if budget is None:
        return local_features(decode_image(read_bytes(source, max_bytes), source, max_pixels, draft_size=draft), config)
    cost = file_bytes + image_header(source, source, draft_size=draft).decoded_bytes
    if cost > budget.capacity:
        raise ImageError(source, f"needs {cost} bytes to decode, over the decode budget of {budget.capacity}")
    with budget.hold(cost, wait_s) as admitted:
        if not admitted:
            raise DecodeBusy(source, f"the decode budget did not admit its {cost} bytes within {wait_s:g} s")
        pixels = decode_image(read_bytes(source, max_bytes), source, max_pixels, draft_size=draft)
        return local_features(pixels, config)


class FeatureCache:
    """Features of catalog photos by key, computed once (least recently used dropped past ``size``).

    ``cache(match)`` computes what it lacks with ``load(match)`` (pixels or :class:`Features`;
    default: :func:`catalog_features` of ``match["path"]``); ``get`` and ``put`` only look and keep.
    """

    def __init__(
        self,
        load: Callable[[dict], np.ndarray | Features] | None = None,
        config: RerankConfig = RerankConfig(),
        size: int = KEPT_PHOTOS,
    ):
        self.load = load or (lambda match: catalog_features(match["path"], config))
        self.config, self.size = config, int(size)
        self._kept: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()  # one cache, many server threads

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def get(self, key: str) -> Features | None:
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        return None

    def put(self, key: str, features: Features) -> Features:
        with self._lock:
            self._kept[key] = features
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return features

    def __call__(self, match: dict) -> Features:
        key = str(match.get("id", match.get("path")))
        kept = self.get(key)
        if kept is not None:
            return kept
        found = self.load(match)  # outside the lock: searches overlap
        return self.put(key, found if isinstance(found, Features) else local_features(found, self.config))


# ---------------------------------------------------------------- a short list


def rerank(
    query,
    shortlist: Sequence[dict],
    load: Callable[[dict], np.ndarray | Features | Sequence[np.ndarray | Features]] | None = None,
    config: RerankConfig = RerankConfig(),
) -> list[dict]:
    """The short list with its first verified candidate moved to the top.

    Args:
        query: The query photo: bytes, a path, RGB uint8 pixels or its :class:`Features`; or a
            match -> the query's :class:`Features` to verify it against (a part of the photo each).
        shortlist: Matches best first (dicts with ``path``, as :mod:`vsearch.stores` returns them).
        load: A match -> its photo's pixels or :class:`Features`, or a list of them (a product's
            photos; the best one counts). Default: :func:`catalog_features` of ``match["path"]``;
            a :class:`FeatureCache` keeps catalog features between queries.
        config: See :class:`RerankConfig`.
    Returns:
        New match dicts, the examined ones with their ``inliers``, the verified one also with
        its ``outline`` (:func:`outline`, fractions of the query photo); beyond
        ``config.depth`` the list is unchanged.
    """
    load = load or FeatureCache(config=config, size=0)
    head, tail = [dict(m) for m in shortlist[: config.depth]], list(shortlist[config.depth :])
    if not head:
        return tail
    fixed = None  # one query for every candidate; None: a function gives each its own
    if not callable(query):
        fixed = query if isinstance(query, Features) else local_features(to_pixels(query), config)
    counts = []
    for match in head:  # in the embedding's order, stopping at the first verified one
        mine = fixed if fixed is not None else query(match)
        found = load(match)
        photos = list(found) if isinstance(found, (list, tuple)) else [found]
        best, shown = Verification(0), None
        for photo in photos:
            theirs = photo if isinstance(photo, Features) else local_features(np.asarray(photo), config)
            checked = verify_pair(mine, theirs, config)
            if checked.inliers > best.inliers:
                best, shown = checked, theirs
        match["inliers"] = best.inliers
        counts.append(best.inliers)
        if best.inliers >= config.min_inliers:
            drawn = outline(best, mine, shown) if shown is not None else None
            if drawn is not None:
                match["outline"] = drawn
            break
    counts += [0] * (len(head) - len(counts))
    return [head[i] for i in promote_first(counts, config.min_inliers)] + tail
