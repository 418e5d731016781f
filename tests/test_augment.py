import numpy as np
import tensorflow as tf

from vsearch import augment


def test_customer_view_is_seeded_and_in_range():
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (48, 48, 3)), tf.float32)
    a = augment.customer_view(image, tf.constant([1, 2], tf.int64)).numpy()
    b = augment.customer_view(image, tf.constant([1, 2], tf.int64)).numpy()
    c = augment.customer_view(image, tf.constant([1, 3], tf.int64)).numpy()
    assert a.shape == (48, 48, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255.0 + 1e-3
    assert np.abs(a - image.numpy()).mean() > 1.0


def test_customer_photo_is_seeded_jpeg_like():
    pixels = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    a = augment.customer_photo(pixels, np.random.default_rng(5))
    b = augment.customer_photo(pixels, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3
    assert np.array_equal(a, b)


def test_classifier_augmentation_keeps_shape():
    layer = augment.classifier_augmentation(seed=1)
    x = np.full((2, 32, 32, 3), 100.0, np.float32)
    assert tuple(layer(x, training=True).shape) == (2, 32, 32, 3)
