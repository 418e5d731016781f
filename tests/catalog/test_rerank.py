"""vsearch.catalog.rerank: geometric verification of a short list, on tiny synthetic photos."""

import contextlib

import numpy as np
import pytest

from vsearch.catalog.rerank import (
    CORNERS,
    DecodeBusy,
    FeatureCache,
    Features,
    RerankConfig,
    Verification,
    catalog_features,
    inliers,
    local_features,
    outline,
    promote_first,
    rerank,
    verify_pair,
)
from vsearch.images import encode_png

cv2 = pytest.importorskip("cv2")


def textured(seed: int, size: int = 192) -> np.ndarray:
    """A busy RGB picture (random rectangles and circles) ORB finds corners in."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, 20)), colour, -1)
    return img


def warped(img: np.ndarray, angle: float = 12.0, scale: float = 0.85) -> np.ndarray:
    """The same picture rotated, shrunk and moved, on a grey background (a customer photo's geometry)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (9, -6)
    return cv2.warpAffine(img, m, (w + 20, h + 10), borderValue=(200, 200, 200))


@pytest.fixture(scope="module")
def photos():
    original = textured(1)
    return {"original": original, "warped": warped(original), "other": textured(2)}


@pytest.mark.parametrize("detector", ["orb", "sift"])
def test_a_warped_copy_keeps_more_inliers_than_an_unrelated_photo(photos, detector):
    config = RerankConfig(detector=detector)
    query = local_features(photos["warped"], config)
    same = inliers(query, local_features(photos["original"], config), config)
    other = inliers(query, local_features(photos["other"], config), config)
    assert same >= config.min_inliers > other
    assert same > 3 * max(other, 1)


def test_features_are_positions_and_descriptors(photos):
    f = local_features(photos["original"])
    assert len(f) > 50
    assert f.points.shape == (len(f), 2) and f.points.dtype == np.float32
    assert f.descriptors.shape == (len(f), 32) and f.descriptors.dtype == np.uint8
    assert f.points[:, 0].max() <= RerankConfig().side  # found on the resized photo


def test_a_blank_photo_has_no_features_and_no_inliers(photos):
    blank = local_features(np.full((64, 80, 3), 128, np.uint8))
    assert len(blank) == 0 and blank.descriptors.shape == (0, 32)
    assert inliers(blank, local_features(photos["original"])) == 0


def test_promote_first_moves_only_the_first_verified_candidate():
    assert promote_first([0, 3, 25, 40], 20) == [2, 0, 1, 3]
    assert promote_first([30, 0, 50], 20) == [0, 1, 2]
    assert promote_first([1, 2, 3], 20) == [0, 1, 2]
    assert promote_first([], 20) == []


def test_rerank_puts_the_verified_photo_first_and_leaves_the_rest(photos):
    shortlist = [{"id": "a", "path": "other"}, {"id": "b", "path": "original"}, {"id": "c", "path": "other"}]
    out = rerank(photos["warped"], shortlist, lambda m: photos[m["path"]], RerankConfig(depth=2))
    assert [m["id"] for m in out] == ["b", "a", "c"]
    assert out[0]["inliers"] >= RerankConfig().min_inliers > out[1]["inliers"]
    assert "inliers" not in out[2]  # beyond the depth: not examined
    assert "inliers" not in shortlist[1]  # the caller's matches are not modified


def test_rerank_leaves_a_list_with_nothing_verified_unchanged(photos):
    shortlist = [{"id": "a", "path": "other"}, {"id": "b", "path": "other"}]
    out = rerank(encode_png(photos["original"]), shortlist, lambda m: photos[m["path"]])
    assert [m["id"] for m in out] == ["a", "b"]
    assert rerank(photos["original"], [], lambda m: photos[m["path"]]) == []


def test_a_product_with_several_photos_counts_its_best_one(photos):
    shortlist = [{"id": "a", "photos": ["other"]}, {"id": "b", "photos": ["other", "original"]}]
    out = rerank(photos["warped"], shortlist, lambda m: [photos[p] for p in m["photos"]])
    assert [m["id"] for m in out] == ["b", "a"]
    assert out[0]["inliers"] >= RerankConfig().min_inliers
    empty = rerank(photos["warped"], shortlist[:1], lambda m: [])
    assert empty[0]["inliers"] == 0


def test_rerank_stops_at_the_first_verified_candidate(photos):
    loaded = []

    def load(match):
        loaded.append(match["id"])
        return photos[match["path"]]

    shortlist = [{"id": "a", "path": "original"}, {"id": "b", "path": "other"}]
    out = rerank(photos["warped"], shortlist, load)
    assert loaded == ["a"] and [m["id"] for m in out] == ["a", "b"]
    assert "inliers" not in out[1]


def test_feature_cache_describes_each_photo_once(photos):
    calls = []
    cache = FeatureCache(lambda m: calls.append(m["id"]) or photos[m["path"]], size=1)
    first = cache({"id": "x", "path": "original"})
    assert isinstance(first, Features) and cache({"id": "x", "path": "original"}) is first
    cache({"id": "y", "path": "other"})  # pushes x out (size 1)
    cache({"id": "x", "path": "original"})
    assert calls == ["x", "y", "x"]


@pytest.mark.parametrize(
    "bad",
    [{"depth": 0}, {"min_inliers": 0}, {"side": 16}, {"ratio": 1.5}, {"reprojection": 0.0}, {"detector": "akaze"}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="rerank"):
        RerankConfig(**bad)


# ---------------------------------------------------------------- why a match was verified: its outline


def perspective(img: np.ndarray, canvas=(300, 260), corners=((40, 30), (250, 55), (230, 230), (25, 200))):
    """``img`` seen at an angle on a grey canvas: its corners moved to ``corners`` (the known answer)."""
    h, w = img.shape[:2]
    source = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    homography = cv2.getPerspectiveTransform(source, np.float32(corners))
    return cv2.warpPerspective(img, homography, canvas, borderValue=(200, 200, 200))


@pytest.mark.parametrize("detector", ["orb", "sift"])
def test_the_outline_is_where_the_catalog_photo_lies_in_the_query(photos, detector):
    config = RerankConfig(detector=detector)
    corners = ((40, 30), (250, 55), (230, 230), (25, 200))
    query = perspective(photos["original"], corners=corners)
    mine, theirs = local_features(query, config), local_features(photos["original"], config)
    checked = verify_pair(mine, theirs, config)
    assert checked.inliers >= config.min_inliers and checked.homography.shape == (3, 3)
    drawn = outline(checked, mine, theirs)
    assert len(drawn) == len(CORNERS) == 4
    found = np.array(drawn) * (300, 260)  # fractions of the query photo -> its pixels
    assert np.abs(found - np.array(corners)).max() < 5  # within a few pixels of the known corners


def test_no_outline_without_a_homography_or_for_no_view_of_a_flat_photo(photos):
    config = RerankConfig(side=256)
    mine = local_features(photos["warped"], config)
    theirs = local_features(photos["original"], config)
    assert outline(Verification(0), mine, theirs) is None
    assert mine.size == (256, 244) and theirs.size == (256, 256)  # the frames the keypoints were found in
    tall = round(256 / 244, 4)  # the catalog frame reaches past the query's bottom edge
    assert outline(Verification(50, np.eye(3)), mine, theirs) == [[0, 0], [1, 0], [1, tall], [0, tall]]
    mirror = np.array([[-1, 0, 256], [0, 1, 0], [0, 0, 1]], np.float64)  # convex, but the corners turn the other way
    assert outline(Verification(50, mirror), mine, theirs) is None
    behind = np.linalg.inv([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]])  # the far corners behind the camera
    assert outline(Verification(50, behind), mine, theirs) is None
    twisted = cv2.getPerspectiveTransform(
        np.float32([[0, 0], [256, 0], [256, 256], [0, 256]]), np.float32([[0, 0], [256, 256], [256, 0], [0, 256]])
    )  # two corners swapped: a bow tie
    assert outline(Verification(50, np.linalg.inv(twisted)), mine, theirs) is None


def test_rerank_gives_the_verified_match_its_outline_and_no_other(photos):
    query = perspective(photos["original"])
    shortlist = [{"id": "a", "path": "other"}, {"id": "b", "path": "original"}, {"id": "c", "path": "other"}]
    out = rerank(query, shortlist, lambda m: photos[m["path"]], RerankConfig(depth=3))
    assert [m["id"] for m in out] == ["b", "a", "c"]
    assert len(out[0]["outline"]) == 4 and all(0 <= v <= 1 for corner in out[0]["outline"] for v in corner)
    assert "outline" not in out[1] and "outline" not in out[2]


# ---------------------------------------------------------------- catalog photos, decoded small


def test_a_catalog_jpeg_is_decoded_at_the_size_its_keypoints_are_found_at(tmp_path, photos, monkeypatch):
    from PIL import Image

    from vsearch.catalog import rerank as module

    big = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(photos["original"], (2400, 1600))).save(big, quality=90)
    decoded = []
    real = module.decode_image
    monkeypatch.setattr(module, "decode_image", lambda *a, **k: decoded.append(real(*a, **k)) or decoded[-1])
    found = catalog_features(big, RerankConfig(side=256))
    assert found.size == (256, 171) and len(found) > 50
    assert decoded[0].shape == (200, 300, 3)  # libjpeg at 1/8: the longer side still >= 256, not 2400


class FakeBudget:
    """A decode budget that records what it was asked for and admits only what it is told to."""

    def __init__(self, capacity: int, admit: bool = True):
        self.capacity, self.admit, self.asked = capacity, admit, []

    @contextlib.contextmanager
    def hold(self, n: int, wait_s: float):
        self.asked.append((n, wait_s))
        yield self.admit


def test_a_catalog_photo_takes_its_decode_from_the_budget(tmp_path, photos):
    from PIL import Image

    from vsearch.errors import ImageError
    from vsearch.images import image_header

    big = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(photos["original"], (2400, 1600))).save(big, quality=90)
    budget = FakeBudget(10**9)
    catalog_features(big, RerankConfig(side=256), budget=budget, wait_s=0.5)
    drafted = image_header(str(big), draft_size=171)
    assert budget.asked == [(big.stat().st_size + drafted.decoded_bytes, 0.5)]
    assert drafted.decoded_bytes < image_header(str(big)).decoded_bytes / 10  # the drafted decode, not the full one
    with pytest.raises(DecodeBusy, match="did not admit"):
        catalog_features(big, RerankConfig(side=256), budget=FakeBudget(10**9, admit=False))
    with pytest.raises(ImageError, match="over the decode budget"):
        catalog_features(big, RerankConfig(side=256), budget=FakeBudget(1000))
    with pytest.raises(ImageError, match="no such file|cannot read"):
        catalog_features(tmp_path / "gone.jpg", budget=budget)
