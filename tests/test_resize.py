"""The numpy bilinear resize against tf.image.resize."""
import numpy as np
import pytest

from vsearch.images import resize_pixels
from vsearch.resize import resize_bilinear

SIZE = 32


@pytest.mark.parametrize("shape", [(48, 40), (31, 77), (32, 32), (7, 5), (1, 1), (400, 533)])
def test_resize_matches_tensorflow(shape):
    pixels = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = resize_pixels(pixels, SIZE).numpy()
    assert np.abs(resize_bilinear(pixels, SIZE) - expected).max() <= 1e-4


def test_writes_into_a_batch_slot_and_reuses_nothing_between_calls():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (50, 60, 3), dtype=np.uint8) for _ in range(2))
    batch = np.zeros((2, SIZE, SIZE, 3), np.float32)
    resize_bilinear(a, SIZE, out=batch[0])
    resize_bilinear(b, SIZE, out=batch[1])
    assert np.array_equal(batch[0], resize_bilinear(a, SIZE))  # b's call did not overwrite a's slot
    assert np.array_equal(batch[1], resize_bilinear(b, SIZE))
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize("pixels", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                    np.zeros((8, 8, 4), np.uint8)])
def test_refuses_anything_but_rgb_uint8(pixels):
    with pytest.raises(ValueError, match="uint8 RGB"):
        resize_bilinear(pixels, SIZE)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3)])
def test_refuses_an_empty_image(shape):
    with pytest.raises(ValueError, match="empty image"):
        resize_bilinear(np.zeros(shape, np.uint8), SIZE)
