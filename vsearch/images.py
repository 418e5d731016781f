"""THE road from a photo to model input: bytes, a path or an array -> model pixels.

Every photo vsearch embeds outside a TensorFlow graph (catalog indexing, served queries,
evaluation, calibration photos, benchmarks) becomes model input through
:func:`model_input`, in two named steps:

1. :func:`to_pixels`: strict decoding (:func:`decode_image`, Pillow) to upright RGB
   ``uint8`` (EXIF orientation applied, grayscale expanded, alpha composited over white,
   16-bit scaled to 8-bit, CMYK converted), within byte and pixel limits; arrays are checked
   instead of decoded. Any failure to decode one image is that image's :class:`ImageError`.
2. :func:`resize_bilinear`: bilinear to the model's square input, the numbers of
   ``tf.image.resize`` (what ``keras.utils.image_dataset_from_directory`` and the
   SavedModel's graph compute), without TensorFlow.

The choices are arguments, not separate roads: ``upright`` (apply EXIF orientation; the
SavedModel's ``serving_default`` does not) and ``draft`` (let libjpeg decode a large JPEG
at reduced scale: faster, not bit-identical). :func:`image_header` reads a photo's size
and its decoded cost without decoding it, for memory budgets.

The in-graph twins (:func:`tf_decode_rgb`, :func:`tf_decode_and_resize`) are the
SavedModel's contract and the training input; they decode the same way, EXIF aside.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsearch.errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# What Pillow may decode: formats whose header, read when the file is opened, says the size
# they decode at (only the first frame of an animation is decoded). Others are refused before
# a byte of pixels is read: an ICO or ICNS decodes its embedded image to learn its size.
# JPEG opens phones' multi-picture JPEGs too (Pillow's MPO).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
BACKGROUND = 255  # alpha is composited over white, like a product photo's backdrop
# resize_bilinear differs from tf.image.resize by less than this (0..255 scale); tests hold it.
RESIZE_TOLERANCE = 0.02
# Bytes per pixel Pillow keeps for each mode while decoding (RGB and 2-channel modes are
# stored as 4 bytes per pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
# Peak bytes per pixel on the road besides Pillow's own copy: the RGB array (3), the
# conversion temporaries of 16-bit images (up to 8), the resize's 16-bit copy (6).
_ROAD_BYTES = 17
# Palette and alpha images are composited over white through RGBA copies: 9 more bytes a pixel
# at the peak (a server's load test measured 24-26 in all for P, RGBA and LA).
_ALPHA_MODES = ("P", "PA", "RGBA", "LA", "RGBa", "La")
_ALPHA_BYTES = 9


@dataclass(frozen=True)
class ImageHeader:
    """What a photo's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """An upper bound of the memory :func:`model_input` needs for it at its peak."""
        extra = _ALPHA_BYTES if self.mode in _ALPHA_MODES else 0
        return self.pixels * (_MODE_BYTES.get(self.mode, 4) + _ROAD_BYTES + extra)


def read_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Reads a file's bytes with clear errors for missing, empty, huge or non-files."""
    p = Path(path)
    source = os.fsdecode(p)
    try:
        if not p.exists():
            raise ImageError(source, "no such file")
        if not p.is_file():
            raise ImageError(source, "not a regular file")
        size = p.stat().st_size
        if size == 0:
            raise ImageError(source, "file is empty (0 bytes)")
        if size > max_bytes:
            raise ImageError(source, f"file is {size} bytes, over the {max_bytes}-byte limit")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since stat() is still bounded
        if len(data) > max_bytes:
            raise ImageError(source, f"file is over the {max_bytes}-byte limit")
        return data
    except OSError as exc:  # unreadable (permissions, I/O error, vanished mid-read)
        raise ImageError(source, f"cannot read the file ({exc.strerror or exc})") from None


def image_header(
    data: bytes | str | os.PathLike, source: str = "<bytes>", draft_size: int | None = None
) -> ImageHeader:
    """Format, size and mode from the header alone (Pillow reads no pixel data; only
    :data:`FORMATS` are opened).

    Args:
        data: Encoded bytes, or a file's path (only its header is read).
        source: Name for error messages.
        draft_size: The size and mode :func:`decode_image` with this ``draft_size`` would
            decode at (a JPEG at reduced scale), not the stored ones.
    Raises:
        ImageError: empty, unreadable or not a recognised image.
    """
    from PIL import Image

    opened: str | os.PathLike | io.BytesIO
    if isinstance(data, (str, os.PathLike)):
        opened = data
    elif not data:
        raise ImageError(source, "empty image data (0 bytes)")
    else:
        opened = io.BytesIO(data)
    try:
        with Image.open(opened, formats=FORMATS) as img:
            if draft_size:
                img.draft(None, (draft_size, draft_size))
            return ImageHeader(str(img.format), int(img.size[0]), int(img.size[1]), str(img.mode))
    except Exception as exc:  # noqa: BLE001  (any failure of one image is that image's error)
        if isinstance(exc, OSError) and exc.errno is not None:  # the file system's, not the format's
            raise ImageError(source, f"cannot read the file ({exc.strerror or exc})") from None
        raise _image_error(source, exc) from None


def _image_error(source: str, exc: BaseException) -> ImageError:
    """The one message for each way Pillow (or a plugin) can fail on one image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(source, "not a recognised image format (JPEG, PNG, GIF, BMP, WebP or TIFF)")
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(source, f"decompression bomb refused ({exc})")
    if isinstance(exc, MemoryError):
        return ImageError(source, "too large to decode in the memory available")
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return ImageError(source, f"corrupt or truncated image ({detail})")


def _sixteen_to_eight(arr: np.ndarray, peak: int) -> np.ndarray:
    """Integer scaling of 16/32-bit gray to 8 bits, rounded (no float64 copy of a big image)."""
    scaled: np.ndarray = arr.astype(np.uint32 if peak <= 65535 else np.uint64)
    scaled *= 255
    scaled += peak // 2
    scaled //= peak
    return scaled.astype(np.uint8)


def _to_rgb(img, source: str) -> np.ndarray:
    """Converts any Pillow mode to an RGB uint8 array."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype.kind == "i":
            arr = np.clip(arr, 0, None)
        peak = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        gray = _sixteen_to_eight(np.minimum(arr, peak), peak)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "P" and "transparency" not in img.info:
        img, mode = img.convert("RGB"), "RGB"  # an opaque palette: no RGBA copy needed
    if mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ImageError(source, f"unsupported pixel layout {arr.shape} {arr.dtype} (mode {mode})")
    return arr


def decode_image(
    data: bytes,
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    upright: bool = True,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decodes encoded image bytes to an RGB ``uint8`` array of shape (H, W, 3).

    Args:
        data: Encoded image.
        source: Name for error messages.
        max_pixels: Larger images are refused before their pixels are decoded.
        upright: Apply the EXIF orientation. ``False`` reads the pixels as stored, like
            ``tf.io.decode_image`` (what the SavedModel's ``serving_default`` does).
        draft_size: Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while both sides stay
            >= ``draft_size`` (Pillow's ``draft``); other formats are unaffected.

    Raises:
        ImageError: for every way one image can fail (empty, not an image, truncated,
            corrupt, damaged metadata, over ``max_pixels``, a plugin's own error).
    """
    from PIL import Image, ImageOps

    if not data:
        raise ImageError(source, "empty image data (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(source, f"degenerate size {width}x{height}")
            if width * height > max_pixels:
                raise ImageError(source, f"{width}x{height} pixels is over the {max_pixels}-pixel limit")
            if draft_size:
                img.draft(None, (draft_size, draft_size))
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img) if upright else img, source)
    except Exception as exc:  # noqa: BLE001  (any failure of one image is that image's error)
        raise _image_error(source, exc) from None


def load_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Reads and decodes an image file to upright RGB uint8 (see :func:`decode_image`)."""
    return decode_image(read_bytes(path, max_bytes), os.fsdecode(path), max_pixels)


def check_pixels(image, source: str = "<pixels>") -> np.ndarray:
    """An (H, W, 3) array of RGB values in 0..255 as ``uint8``; anything else is an ImageError.

    Floats in 0..1 are refused rather than read as near-black (a common slip); NaN and
    infinity are refused.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ImageError(source, f"expected (H, W, 3) RGB pixels, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ImageError(source, f"empty image {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    if not np.issubdtype(pixels.dtype, np.number) or np.issubdtype(pixels.dtype, np.complexfloating):
        raise ImageError(source, f"expected numeric RGB pixels, got {pixels.dtype}")
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise ImageError(source, "pixels contain NaN or infinity")
    low, high = pixels.min(), pixels.max()
    if np.issubdtype(pixels.dtype, np.floating) and high <= 1.0:
        raise ImageError(
            source,
            f"{pixels.dtype} pixels in {low:g}..{high:g} look like 0..1 floats; the model "
            "takes RGB in 0..255 (multiply by 255, or pass uint8)",
        )
    if not (0 <= low and high <= 255):
        raise ImageError(source, f"expected RGB pixels in 0..255, got {pixels.dtype} in {low}..{high}")
    return np.round(pixels).astype(np.uint8)


Box = tuple[float, float, float, float]


def parse_box(box, source: str = "box") -> Box:
    """A part of a photo: ``x0,y0,x1,y1`` as fractions 0..1 of the upright photo's width and height.

    Takes the text ``"0.1,0.2,0.6,0.9"`` or four numbers. Raises ImageError for anything
    that is not four finite numbers with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``.
    """
    import math

    parts = box.split(",") if isinstance(box, str) else box
    try:
        values = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise ImageError(source, f"expected x0,y0,x1,y1 as four numbers, got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ImageError(source, f"expected x0,y0,x1,y1 as four finite numbers, got {box!r}")
    x0, y0, x1, y1 = values
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ImageError(
            source,
            f"{box!r} is not a box inside the photo: need 0 <= x0 < x1 <= 1 and "
            "0 <= y0 < y1 <= 1 (fractions of the width and height)",
        )
    return values


def crop(pixels: np.ndarray, box: Box) -> np.ndarray:
    """The part of (H, W, 3) pixels inside ``box`` (see :func:`parse_box`), at least one pixel."""
    height, width = pixels.shape[:2]
    x0, x1 = int(box[0] * width), max(int(round(box[2] * width)), int(box[0] * width) + 1)
    y0, y1 = int(box[1] * height), max(int(round(box[3] * height)), int(box[1] * height) + 1)
    return np.ascontiguousarray(pixels[y0 : min(y1, height), x0 : min(x1, width)])


def to_pixels(
    image,
    source: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    upright: bool = True,
    draft_size: int | None = None,
    box: Box | None = None,
) -> np.ndarray:
    """Step 1 of the road: bytes, a path or an (H, W, 3) array -> RGB ``uint8`` pixels.

    Args:
        image: Encoded bytes, a file path, or pixels (checked by :func:`check_pixels`).
        source: Name for error messages (default: the path, or ``<bytes>``/``<pixels>``).
        max_pixels / max_bytes: Limits for decoded size and encoded size.
        upright / draft_size: See :func:`decode_image` (no draft with a ``box``: the part
            keeps the photo's full resolution).
        box: Only this part of the (upright) photo, see :func:`parse_box`.
    Raises:
        ImageError: the image cannot be used; the message names ``source`` and why.
    """
    if box is not None:
        box = parse_box(box)
        return crop(to_pixels(image, source, max_pixels, max_bytes, upright, None), box)
    if isinstance(image, (str, os.PathLike)):
        source = source or os.fsdecode(image)
        image = read_bytes(image, max_bytes)
    if isinstance(image, (bytes, bytearray, memoryview)):
        source = source or "<bytes>"
        if len(image) > max_bytes:
            raise ImageError(source, f"{len(image)} bytes is over the {max_bytes}-byte limit")
        return decode_image(bytes(image), source, max_pixels, upright, draft_size)
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        pixels = check_pixels(image, source or "<pixels>")
        if pixels.shape[0] * pixels.shape[1] > max_pixels:
            raise ImageError(
                source or "<pixels>", f"{pixels.shape[1]}x{pixels.shape[0]} pixels is over the {max_pixels}-pixel limit"
            )
        return pixels
    raise ImageError(
        source or "<input>", f"expected image bytes, a file path or an RGB array, got {type(image).__name__}"
    )


def resize_bilinear(pixels: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Step 2 of the road: (H, W, 3) uint8 -> (size, size, 3) float32 0..255, as ``tf.image.resize``.

    Bilinear with half-pixel centres and no antialiasing, within :data:`RESIZE_TOLERANCE`
    of :func:`resize_pixels`. OpenCV's ``INTER_LINEAR`` is that same sampling; it runs on a
    16-bit copy scaled by 256, which keeps the fractional values ``tf.image.resize``
    returns (to 1/256 of a grey level) at half the memory of a float32 copy.

    Args:
        pixels: (H, W, 3) uint8.
        size: Output side.
        out: Optional (size, size, 3) float32 C-contiguous array to write into (a batch slot).
    """
    import cv2

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"resize_bilinear: expected (H, W, 3) uint8 RGB pixels, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"resize_bilinear: empty image {pixels.shape}")
    if size < 1:
        raise ValueError(f"resize_bilinear: size must be >= 1, got {size}")
    if out is not None and (out.shape != (size, size, 3) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(
            f"resize_bilinear: out must be a C-contiguous ({size}, {size}, 3) float32 array, "
            f"got {out.shape} {out.dtype}"
        )
    wide = pixels.astype(np.uint16) << 8
    resized = cv2.resize(wide, (size, size), interpolation=cv2.INTER_LINEAR)
    if out is None:
        out = np.empty((size, size, 3), np.float32)
    np.multiply(resized, np.float32(1 / 256), out=out, casting="unsafe")
    return out


def model_input(
    image,
    size: int,
    source: str | None = None,
    upright: bool = True,
    draft: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    out: np.ndarray | None = None,
    box: Box | None = None,
) -> np.ndarray:
    """The whole road: bytes / path / array -> (size, size, 3) float32 RGB 0..255.

    Args:
        image: See :func:`to_pixels`.
        size: The model's input side.
        upright: Apply EXIF orientation (the served default).
        draft: Decode large JPEGs at reduced scale, still >= ``size`` per side.
        out: Optional batch slot to write into (see :func:`resize_bilinear`).
        box: Only this part of the photo (see :func:`parse_box`), cut before resizing.
    Raises:
        ImageError: the image cannot be used.
    """
    pixels = to_pixels(image, source, max_pixels, max_bytes, upright, size if draft else None, box)
    return resize_bilinear(pixels, size, out)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless re-encoding of RGB pixels, for feeding normalised photos as bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---------------------------------------------------------------- in the TensorFlow graph


def resize_pixels(pixels, size: int):
    """Resizes (H, W, 3) or (N, H, W, 3) pixels to (size, size) as float32 0..255, in TensorFlow.

    The same bilinear ``tf.image.resize`` as ``image_dataset_from_directory``.
    """
    import tensorflow as tf

    return tf.image.resize(tf.cast(pixels, tf.float32), (size, size), method="bilinear")


def tf_decode_rgb(image_bytes, max_pixels: int | None = None):
    """In-graph decoding of one encoded image to RGB uint8 (H, W, 3).

    Grayscale is expanded, alpha (gray+alpha or RGBA) composited over white. Empty or
    undecodable input raises ``InvalidArgumentError`` with a readable message. With
    ``max_pixels``, only the formats whose size the graph reads before decoding are decoded
    (:func:`vsearch.graph_headers.tf_header_checks`: JPEG, PNG, GIF with every frame counted,
    BMP, still WebP), and only up to ``max_pixels``; the rest is refused before decoding.
    """
    import tensorflow as tf

    from vsearch.graph_headers import tf_header_checks

    checks = [
        tf.debugging.assert_greater(
            tf.strings.length(image_bytes), 0, message="image_bytes: empty string, expected an encoded image"
        )
    ]
    if max_pixels is not None:
        with tf.control_dependencies(checks):
            checks += tf_header_checks(image_bytes, max_pixels)
    with tf.control_dependencies(checks):
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


def tf_decode_and_resize(image_bytes, size: int, max_pixels: int | None = None):
    """In-graph: encoded bytes -> float32 (size, size, 3) pixels 0..255 (see :func:`tf_decode_rgb`)."""
    return resize_pixels(tf_decode_rgb(image_bytes, max_pixels), size)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside ``folder``, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
