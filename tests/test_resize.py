"""The resize outside TensorFlow against tf.image.resize."""
import numpy as np
import pytest

from vsearch.images import resize_pixels
from vsearch.resize import TOLERANCE, resize_bilinear

SIZE = 32


@pytest.mark.parametrize("size", [SIZE, 224])
@pytest.mark.parametrize("shape", [(48, 40), (31, 77), (32, 32), (7, 5), (1, 1), (1, 300), (400, 533), (711, 400)])
def test_resize_matches_tensorflow(shape, size):
    pixels = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = resize_pixels(pixels, size).numpy()
    resized = resize_bilinear(pixels, size)
    assert resized.shape == (size, size, 3) and resized.dtype == np.float32
    assert np.abs(resized - expected).max() <= TOLERANCE


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


@pytest.mark.parametrize("out", [np.zeros((SIZE, SIZE, 3), np.float64), np.zeros((SIZE + 1, SIZE, 3), np.float32),
                                 np.zeros((SIZE, 2 * SIZE, 3), np.float32)[:, ::2]])
def test_refuses_an_out_array_it_cannot_fill_in_place(out):
    with pytest.raises(ValueError, match="out must be"):
        resize_bilinear(np.zeros((8, 8, 3), np.uint8), SIZE, out=out)
