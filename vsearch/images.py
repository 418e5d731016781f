"""Reading images: a strict Python path (Pillow) and the in-graph path (TensorFlow).

Both produce RGB ``uint8`` pixels the same way: EXIF orientation applied (Pillow path),
grayscale expanded to RGB, alpha composited over white, 16-bit scaled to 8-bit, CMYK
converted. Resizing to the model's square input always uses :func:`resize_pixels`, the
same ``tf.image.resize`` call ``keras.utils.image_dataset_from_directory`` uses, so a
photo embedded from Python and the same photo sent as bytes to the SavedModel agree.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
BACKGROUND = 255  # alpha is composited over white, like a product photo's backdrop


from vsearch.errors import ImageError  # noqa: E402  (re-exported)


def read_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Reads a file's bytes with clear errors for missing, empty, huge or non-files."""
    p = Path(path)
    try:
        if not p.exists():
            raise ImageError(str(p), "no such file")
        if not p.is_file():
            raise ImageError(str(p), "not a regular file")
        size = p.stat().st_size
        if size == 0:
            raise ImageError(str(p), "file is empty (0 bytes)")
        if size > max_bytes:
            raise ImageError(str(p), f"file is {size} bytes, over the {max_bytes}-byte limit")
        return p.read_bytes()
    except OSError as exc:  # unreadable (permissions, I/O error, vanished mid-read)
        raise ImageError(str(p), f"cannot read the file ({exc.strerror or exc})") from None


def _to_rgb(img, source: str) -> np.ndarray:
    """Converts any Pillow mode to an RGB uint8 array."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageError(source, f"unsupported pixel layout {arr.shape} (mode {mode})")
    return arr


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                 upright: bool = True, draft_size: int | None = None) -> np.ndarray:
    """Decodes encoded image bytes to an upright RGB ``uint8`` array of shape (H, W, 3).

    Args:
        data: Encoded image.
        source: Name for error messages.
        max_pixels: Larger images are refused.
        upright: Apply the EXIF orientation. ``False`` reads the pixels as stored, like
            ``tf.io.decode_image`` (what the SavedModel's ``serving_default`` does).
        draft_size: Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while both sides stay
            >= ``draft_size`` (Pillow's ``draft``); other formats are unaffected.

    Raises:
        ImageError: empty, not an image, truncated/corrupt, or more than ``max_pixels``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(source, "empty image data (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(source, f"{width}x{height} pixels is over the {max_pixels}-pixel limit")
            if width < 1 or height < 1:
                raise ImageError(source, f"degenerate size {width}x{height}")
            if draft_size:
                img.draft(None, (draft_size, draft_size))
            img.load()
            if upright:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img, source)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(source, "not a recognised image format (JPEG, PNG, GIF, BMP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, f"corrupt or truncated image ({exc})") from None


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Reads and decodes an image file (see :func:`decode_image`)."""
    return decode_image(read_bytes(path, max_bytes), str(path), max_pixels)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless re-encoding of RGB pixels, for feeding normalised photos as bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def resize_pixels(pixels, size: int):
    """Resizes (H, W, 3) or (N, H, W, 3) pixels to (size, size) as float32 0..255.

    The same bilinear ``tf.image.resize`` as ``image_dataset_from_directory``.
    """
    import tensorflow as tf

    return tf.image.resize(tf.cast(pixels, tf.float32), (size, size), method="bilinear")


def tf_decode_rgb(image_bytes):
    """In-graph decoding of one encoded image to RGB uint8 (H, W, 3).

    Grayscale is expanded, alpha (gray+alpha or RGBA) composited over white. Empty or
    undecodable input raises ``InvalidArgumentError`` with a readable message.
    """
    import tensorflow as tf

    tf.debugging.assert_greater(
        tf.strings.length(image_bytes), 0, message="image_bytes: empty string, expected an encoded image")
    image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False, dtype=tf.uint8)
    channels = tf.shape(image)[-1]

    def composite(rgb, alpha):
        a = tf.cast(alpha, tf.float32) / 255.0
        out = tf.cast(rgb, tf.float32) * a + float(BACKGROUND) * (1.0 - a)
        return tf.cast(tf.round(out), tf.uint8)

    def gray():
        return tf.image.grayscale_to_rgb(image[..., :1])

    def gray_alpha():
        return composite(tf.image.grayscale_to_rgb(image[..., :1]), image[..., 1:2])

    def rgb():
        return image[..., :3]

    def rgba():
        return composite(image[..., :3], image[..., 3:4])

    index = tf.clip_by_value(channels - 1, 0, 3)
    out = tf.switch_case(index, [gray, gray_alpha, rgb, rgba])
    out.set_shape([None, None, 3])
    return out


def tf_decode_and_resize(image_bytes, size: int):
    """In-graph: encoded bytes -> float32 (size, size, 3) pixels 0..255."""
    return resize_pixels(tf_decode_rgb(image_bytes), size)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside ``folder``, sorted."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
