"""Image distortions: training views (OpenCV + numpy) and customer-photo queries (Pillow).

A customer's photo of a catalog item differs from the catalog photo by crop, angle, light,
background, blur and compression. Training simulates that with :func:`customer_view`;
the classifier trains on the milder :func:`classifier_view`. Both are plain functions of
(pixels, random generator), seeded per image (:func:`view_batch`), so a view can be cached
and reproduced. Evaluation simulates customer photos with :func:`customer_photo`, an
independent Pillow implementation with its own parameters, so the evaluation does not
simply replay the training distribution.

Why not Keras preprocessing layers or ``tf.image`` ops: the three projective warps of
RandomRotation / RandomZoom / RandomTranslation (``ImageProjectiveTransformV3``) are slow on
a CPU and made up almost all of those layers' cost; one fused OpenCV affine warp does the
same geometry for a small fraction of it. These views are computed once per training image
and view.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np

# View v of catalog image i uses the generator seeded with (CUSTOMER_VIEW_SEED + v, i).
CUSTOMER_VIEW_SEED = 1000
# Bumped whenever a view function's output changes, so that cached features of old views
# are never read as new ones (vsearch.learn.features.extract_cached keys on it).
VIEWS_VERSION = 2

ViewFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _about_centre(size: int, linear: np.ndarray, shift=(0.0, 0.0)) -> np.ndarray:
    """The 2x3 forward affine map ``x -> c + linear (x - c) + shift`` on a square image."""
    c = (size - 1) / 2.0
    centre = np.array([c, c])
    return np.hstack([linear, (centre - linear @ centre + np.asarray(shift))[:, None]])


def _warp(image: np.ndarray, matrix: np.ndarray, border: int, fill=(0.0, 0.0, 0.0)) -> np.ndarray:
    import cv2

    size = image.shape[0]
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=border,
        borderValue=tuple(float(v) for v in fill),
    )


def _channel_means(image: np.ndarray) -> np.ndarray:
    """Per-channel means of an (H, W, 3) float32 image (cv2.mean: 40x numpy's strided mean)."""
    import cv2

    return np.asarray(cv2.mean(image)[:3], dtype=np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.shape[0] < 2:
        raise ValueError(f"expected a square (S, S, 3) image, got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def classifier_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mildly augmented copy of a square float32 (S, S, 3) image in 0..255.

    Horizontal flip (p 0.5), rotation up to 18 degrees, zoom from 10% out to 33% in,
    translation up to 8% per axis, all as one affine warp with reflected borders; then
    contrast x0.8..1.2 about each channel's mean and brightness +-15% of the range.
    (The ranges of the Keras layers it replaced: RandomFlip, RandomRotation(0.05),
    RandomZoom((-0.25, 0.1)), RandomTranslation(0.08, 0.08), RandomContrast(0.2),
    RandomBrightness(0.15).)
    """
    import cv2

    image = _check_image(image)
    size = image.shape[0]
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = rng.uniform(-0.05, 0.05) * 2 * math.pi
    scale = 1.0 / (1.0 + rng.uniform(-0.25, 0.1))  # > 1 zooms in
    shift = rng.uniform(-0.08, 0.08, 2) * size
    cos, sin = math.cos(angle), math.sin(angle)
    linear = scale * np.array([[cos, -sin], [sin, cos]]) @ np.diag([flip, 1.0])
    out = _warp(image, _about_centre(size, linear, shift), cv2.BORDER_REFLECT)
    contrast = rng.uniform(0.8, 1.2)
    offset = (1 - contrast) * _channel_means(out) + rng.uniform(-0.15, 0.15) * 255.0
    return _recolour(out, _colour_matrix(contrast, offset))


def _crop_box(size: int, rng: np.random.Generator, min_area: float) -> tuple[float, float, float, float]:
    """A random crop (x0, y0, width, height) of min_area..100% of the area, aspect 3:4..4:3."""
    area = rng.uniform(min_area, 1.0) * size * size
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))
    width = min(float(size), math.sqrt(area * aspect))
    height = min(float(size), math.sqrt(area / aspect))
    return rng.uniform(0, size - width), rng.uniform(0, size - height), width, height


# RGB -> YIQ: luma and two chroma axes; rotating the chroma plane shifts the hue, scaling it the saturation.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INVERSE = np.linalg.inv(_YIQ)


def _colour_matrix(gain: float, offset, hue_turns: float = 0.0, saturation: float = 1.0) -> np.ndarray:
    """The 3x4 affine colour map ``x -> C (gain x + offset)``, C the hue/saturation change in YIQ."""
    angle = hue_turns * 2 * math.pi
    chroma = saturation * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotate = _YIQ_INVERSE @ np.block([[np.ones((1, 1)), np.zeros((1, 2))], [np.zeros((2, 1)), chroma]]) @ _YIQ
    return np.hstack([rotate * gain, (rotate @ np.broadcast_to(np.asarray(offset, float), (3,)))[:, None]])


def _recolour(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies a 3x4 affine colour map to a float32 (H, W, 3) image and clips to 0..255."""
    import cv2

    out = cv2.transform(image, matrix.astype(np.float32))
    return np.clip(out, 0.0, 255.0, out=out)


def _jitter_colour(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Brightness, contrast (about the mean), hue and saturation jitter of a 0..255 float32 image."""
    brightness = rng.uniform(-0.2 * s, 0.2 * s) * 255.0
    contrast = rng.uniform(1 - 0.3 * s, 1 + 0.3 * s)
    mean = _channel_means(image)
    out = _recolour(image, _colour_matrix(contrast, (1 - contrast) * mean + brightness))
    return _recolour(
        out, _colour_matrix(1.0, 0.0, rng.uniform(-0.04 * s, 0.04 * s), rng.uniform(1 - 0.4 * s, 1 + 0.4 * s))
    )


def customer_view(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """One random customer-photo view of a square float32 (S, S, 3) image in 0..255.

    Random resized crop (30-100% of the area) and flip, rotation up to about 25 degrees
    on a plain light background (p 0.5), the item shrunk onto that background (p 0.3),
    colour jitter, Gaussian blur (p 0.35) and JPEG compression at quality 30-95; each
    drawn from ``rng``. ``strength`` scales the crop, rotation, shrink, colour and blur
    (0: what is left is the flip, a crop to a 3:4..4:3 box and the JPEG step).
    """
    import cv2

    image = _check_image(image)
    size = image.shape[0]
    s = strength

    # Crop + resize back to the full size + flip, as one warp (the crop box never leaves the image).
    x0, y0, width, height = _crop_box(size, rng, 1.0 - 0.7 * s)
    flip = rng.random() < 0.5
    sx, sy = size / width, size / height
    matrix = np.array([[sx, 0.0, -x0 * sx + 0.5 * sx - 0.5], [0.0, sy, -y0 * sy + 0.5 * sy - 0.5]])
    if flip:
        matrix = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    out = _warp(image, matrix, cv2.BORDER_REPLICATE)

    fill = np.clip(rng.uniform(150.0, 255.0) + rng.uniform(-20.0, 20.0, 3), 0.0, 255.0)
    if rng.random() < 0.5:
        angle = rng.uniform(-0.45 * s, 0.45 * s)
        cos, sin = math.cos(angle), math.sin(angle)
        out = _warp(out, _about_centre(size, np.array([[cos, -sin], [sin, cos]])), cv2.BORDER_CONSTANT, fill)
    if rng.random() < 0.3 * s:
        inner = max(1, int(size * rng.uniform(0.55, 0.95)))
        small = cv2.resize(out, (inner, inner), interpolation=cv2.INTER_AREA)
        top, left = (rng.uniform(0.0, 1.0, 2) * (size - inner)).astype(int)
        out = np.empty_like(out)
        out[...] = fill.astype(np.float32)
        out[top : top + inner, left : left + inner] = small

    out = _jitter_colour(out, rng, s)
    if rng.random() < 0.35 * s:
        out = cv2.GaussianBlur(out, (9, 9), rng.uniform(0.5, 2.0), borderType=cv2.BORDER_REFLECT)
    quality = int(rng.integers(30, 96))
    bgr = np.ascontiguousarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)[..., ::-1])  # OpenCV's order
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if decoded is None:  # pragma: no cover - OpenCV decodes what it just encoded
        raise RuntimeError("JPEG decoding failed")
    return decoded[..., ::-1].astype(np.float32)


def view_batch(view: ViewFn, images: np.ndarray, seed: int, start: int = 0) -> np.ndarray:
    """Applies ``view`` to each image of a batch; image ``start + j`` draws from rng(seed, start + j).

    Seeding per image (not per batch) makes a view independent of the batch size, so the
    cached features of view ``seed`` are the same however they were batched.
    """
    images = np.asarray(images, dtype=np.float32)
    out = np.empty_like(images)
    for j, image in enumerate(images):
        out[j] = view(image, np.random.default_rng([int(seed), int(start) + j]))
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
    img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=background)
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
