import numpy as np
import pytest

from vsearch import augment


def _image(size=48, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("view", [augment.customer_view, augment.classifier_view])
def test_views_are_seeded_and_in_range(view):
    image = _image()
    a = view(image, np.random.default_rng([1, 2]))
    b = view(image, np.random.default_rng([1, 2]))
    c = view(image, np.random.default_rng([1, 3]))
    assert a.shape == (48, 48, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255.0
    assert np.abs(a - image).mean() > 1.0
    assert np.array_equal(image, _image())  # the input is not modified


def test_classifier_view_flips_about_half_the_time():
    # Dark left half, bright right half: a flipped view is brighter on the left. Rotation,
    # zoom and shifts are too small to swap the halves on their own.
    image = np.zeros((64, 64, 3), np.float32)
    image[:, 32:] = 200.0
    flipped = [
        view[:, :32].mean() > view[:, 32:].mean()
        for view in (augment.classifier_view(image, np.random.default_rng([0, i])) for i in range(60))
    ]
    assert 15 <= sum(flipped) <= 45


def test_customer_view_can_place_the_item_on_a_plain_background():
    # Over many seeds some views shrink the image onto a uniform light background: its
    # corners then hold (JPEG-compressed) copies of one colour, far from the black input.
    image = np.zeros((64, 64, 3), np.float32)
    corners = [augment.customer_view(image, np.random.default_rng([5, i]))[:3, :3].mean() for i in range(40)]
    assert max(corners) > 100 and min(corners) < 60


def test_colour_matrix_keeps_greys_grey_and_identity_is_identity():
    assert np.allclose(augment._colour_matrix(1.0, 0.0), np.hstack([np.eye(3), np.zeros((3, 1))]), atol=1e-12)
    grey = np.full((4, 4, 3), 120.0, np.float32)
    out = augment._recolour(grey, augment._colour_matrix(1.0, 0.0, hue_turns=0.04, saturation=1.4))
    assert np.allclose(out, 120.0, atol=1e-3)  # hue and saturation act on colour only
    out = augment._recolour(grey, augment._colour_matrix(1.2, 10.0))
    assert np.allclose(out, 1.2 * 120 + 10, atol=1e-3)


def test_view_batch_does_not_depend_on_batching():
    images = np.stack([_image(32, seed) for seed in range(5)])
    whole = augment.view_batch(augment.customer_view, images, seed=3)
    parts = np.concatenate(
        [
            augment.view_batch(augment.customer_view, images[:2], seed=3, start=0),
            augment.view_batch(augment.customer_view, images[2:], seed=3, start=2),
        ]
    )
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, augment.view_batch(augment.customer_view, images, seed=4))


@pytest.mark.parametrize("shape", [(32, 48, 3), (32, 32), (32, 32, 4), (1, 1, 3)])
def test_views_refuse_what_is_not_a_square_rgb_image(shape):
    with pytest.raises(ValueError, match="square"):
        augment.classifier_view(np.zeros(shape, np.float32), np.random.default_rng(0))


def test_customer_photo_is_seeded_jpeg_like():
    pixels = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    a = augment.customer_photo(pixels, np.random.default_rng(5))
    b = augment.customer_photo(pixels, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3
    assert np.array_equal(a, b)
