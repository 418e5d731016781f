"""Image distortions: training augmentation (TensorFlow) and customer-photo queries (Pillow).

A customer's photo of a catalog item differs from the catalog photo by crop, angle, light,
background, blur and compression. Training simulates that in-graph with
:func:`customer_view` (stateless, seeded per image). Evaluation simulates it with
:func:`customer_photo`, an independent Pillow implementation with its own parameters,
so the evaluation does not simply replay the training distribution.
"""
from __future__ import annotations

import io
import math

import numpy as np


def classifier_augmentation(seed: int | None = None):
    """Mild Keras preprocessing layers for category training (0..255 float images)."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom((-0.25, 0.1), fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", seed=seed),
        keras.layers.RandomContrast(0.2, seed=seed),
        keras.layers.RandomBrightness(0.15, value_range=(0.0, 255.0), seed=seed),
    ], name="classifier_augmentation")


# --- in-graph customer-photo views -------------------------------------------------------

CUSTOMER_VIEW_SEED = 1000  # view v of a catalog image uses seed (CUSTOMER_VIEW_SEED + v, index)

def _uniform(seed, low, high, shape=()):
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _rotate(image, radians, fill):
    """Rotates an (H, W, 3) float image about its centre, filling with a constant colour."""
    import tensorflow as tf

    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples input at R^-1 (x - c) + c.
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy,
                          -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None] - fill, transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0] + fill


def _blur(image, sigma):
    import tensorflow as tf

    radius = 4
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    out = tf.nn.depthwise_conv2d(padded, kx, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "VALID")
    return out[0]


def customer_view(image, seed, strength: float = 1.0):
    """One random customer-photo view of a square float32 (S, S, 3) image in 0..255.

    Random resized crop, flip, rotation, placement on a plain background, colour jitter,
    blur and JPEG compression; each with its own probability. Deterministic for a given
    ``seed`` (a shape-[2] int tensor), so views can be cached and reproduced.
    """
    import tensorflow as tf

    size = tf.shape(image)[0]
    seeds = tf.random.split(tf.cast(seed, tf.int64), 16)
    s = strength

    # Crop: 30-100% of the area, aspect 3:4..4:3.
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=1.0 - 0.7 * s, aspect_ratio_range=(0.75, 1.33),
        area_range=(1.0 - 0.7 * s, 1.0), max_attempts=20, use_image_if_no_bounding_boxes=True)
    out = tf.image.resize(tf.slice(image, begin, crop_size), (size, size))
    out = tf.cond(_uniform(seeds[1], 0.0, 1.0) < 0.5, lambda: out[:, ::-1, :], lambda: out)

    fill = _uniform(seeds[2], 150.0, 255.0) * tf.ones([3]) + _uniform(seeds[3], -20.0, 20.0, [3])

    def rotated():
        return _rotate(out, _uniform(seeds[4], -0.45 * s, 0.45 * s), fill)  # about +-25 degrees

    out = tf.cond(_uniform(seeds[5], 0.0, 1.0) < 0.5, rotated, lambda: out)

    def padded():
        scale = _uniform(seeds[6], 0.55, 0.95)
        inner = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
        small = tf.image.resize(out, (inner, inner))
        offset = tf.cast(_uniform(seeds[7], 0.0, 1.0, [2]) * tf.cast(size - inner, tf.float32), tf.int32)
        canvas = tf.ones([size, size, 3]) * fill
        pad = tf.image.pad_to_bounding_box(small - fill, offset[0], offset[1], size, size)
        return canvas + pad

    out = tf.cond(_uniform(seeds[8], 0.0, 1.0) < 0.3 * s, padded, lambda: out)

    out = out / 255.0
    out = tf.image.stateless_random_brightness(out, 0.2 * s, seeds[9])
    out = tf.image.stateless_random_contrast(out, 1 - 0.3 * s, 1 + 0.3 * s, seeds[10])
    out = tf.image.stateless_random_saturation(tf.clip_by_value(out, 0, 1), 1 - 0.4 * s, 1 + 0.4 * s, seeds[11])
    out = tf.image.stateless_random_hue(out, 0.04 * s, seeds[12])
    out = tf.clip_by_value(out, 0.0, 1.0) * 255.0

    out = tf.cond(_uniform(seeds[13], 0.0, 1.0) < 0.35 * s,
                  lambda: _blur(out, _uniform(seeds[14], 0.5, 2.0)), lambda: out)
    out = tf.image.stateless_random_jpeg_quality(out / 255.0, 30, 95, seeds[15]) * 255.0
    out.set_shape(image.shape)
    return out


# --- Pillow customer photos for evaluation -------------------------------------------------

def customer_photo(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simulated customer photo of a catalog image, for evaluation queries.

    Random resized crop, rotation, colour jitter, blur, JPEG re-encoding and padding on a
    plain background, drawn from ``rng``. Independent of :func:`customer_view`.

    Args:
        pixels: RGB uint8 (H, W, 3).
        rng: The random generator; seed it per image for reproducible queries.
    Returns:
        RGB uint8 pixels (size may differ from the input).
    """
    from PIL import Image, ImageEnhance, ImageFilter

    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")
    w, h = img.size
    area = rng.uniform(0.45, 0.95)
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    cw = int(min(w, round(math.sqrt(area * w * h * aspect))))
    ch = int(min(h, round(math.sqrt(area * w * h / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))

    background = tuple(int(v) for v in np.clip(rng.uniform(170, 250) + rng.uniform(-15, 15, 3), 0, 255))
    img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, expand=True, fillcolor=background)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.8))))
    if rng.random() < 0.5:
        pad = int(rng.uniform(0.05, 0.25) * max(img.size))
        canvas = Image.new("RGB", (img.size[0] + 2 * pad, img.size[1] + 2 * pad), background)
        canvas.paste(img, (int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))))
        img = canvas
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(35, 90)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))
