"""What the SavedModel's graph reads before decoding (vsearch.graph_headers): formats, sizes, GIF frames."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vsearch import graph_headers as gh
from vsearch import images

# GIF image data: LZW minimum code size 2, then sub-blocks
ONE_PIXEL = b"\x02\x02\x44\x01\x00"  # clear, colour 0, end
NO_PIXELS = b"\x02\x01\x2c\x00"  # clear, end: a frame declared, almost nothing sent
# An 8 x 8 JPEG XL codestream (grey 200, lossless), which TensorFlow 2.21 decodes.
JPEG_XL = bytes.fromhex("ff0a414024080401003c004b188b15805dd4ff001892ae9a4002")


def crafted_gif(screen=(1, 1), frames=((1, 1, ONE_PIXEL),)) -> bytes:
    """A GIF of ``frames`` (width, height, image data), each with a two-colour local table."""
    out = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)
    for width, height, data in frames:
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0x80) + b"\xc8\x0a\x0a\xff\xff\xff" + data
    return out + b"\x3b"


def animated(fmt: str, frames: int, size=(40, 30), **kwargs) -> bytes:
    """Frames of noise (no two alike: every frame is written whole)."""
    rng = np.random.default_rng(frames)
    shots = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    shots[0].save(buf, format=fmt, save_all=True, append_images=shots[1:], **kwargs)
    return buf.getvalue()


def header(data: bytes) -> tuple[int, int]:
    kind, pixels = gh.tf_image_header(tf.constant(data))
    return int(kind), int(pixels)


@pytest.mark.parametrize(
    "fmt, mode",
    [("JPEG", "RGB"), ("PNG", "L"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("WEBP-lossless", "RGBA")],
)
def test_header_pixels_in_the_graph(fmt, mode):
    buf = io.BytesIO()
    img = Image.new(mode, (301, 77))
    if fmt == "WEBP-lossless":
        img.save(buf, format="WEBP", lossless=True)
    else:
        img.save(buf, format=fmt)
    assert int(gh.tf_header_pixels(tf.constant(buf.getvalue()))) == 301 * 77
    if fmt == "WEBP":  # the extended layout (VP8X): written when there is metadata
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 1
        img.save(buf, format="WEBP", exif=exif)
        assert header(buf.getvalue()) == (gh.WEBP, 301 * 77)


def test_a_gif_counts_its_frames_not_its_logical_screen():
    """giflib decodes each frame at its own descriptor's size: a 1x1 screen hid a 64-Mpx frame."""
    assert header(crafted_gif()) == (gh.GIF, 1)
    assert header(crafted_gif((1, 1), [(8000, 8000, NO_PIXELS)])) == (gh.GIF, 64_000_000)
    assert header(crafted_gif((1, 1), [(1, 1, ONE_PIXEL), (8000, 8000, NO_PIXELS)])) == (gh.GIF, 64_000_001)
    assert header(crafted_gif((300, 200), [(1, 1, ONE_PIXEL)])) == (gh.GIF, 300 * 200)  # the canvas, if larger
    # written by Pillow: a global colour table, the looping and per-frame extensions
    assert header(animated("GIF", 5, duration=40, loop=0)) == (gh.GIF, 5 * 40 * 30)


def test_a_gif_walked_in_full_sub_blocks_takes_few_steps():
    """Image data in 255-byte sub-blocks (what encoders write) is skipped 64 KB a step: a
    large still GIF is counted within the step limit."""
    data = crafted_gif((1, 1), [(3000, 3000, b"\x02" + (b"\xff" + b"\0" * 255) * 2000 + b"\0")])
    assert header(data) == (gh.GIF, 9_000_000)


def test_a_gif_too_long_to_walk_is_refused_as_such(monkeypatch):
    monkeypatch.setattr(gh, "GIF_MAX_STEPS", 50)
    tiny_blocks = b"\x02" + b"\x01\x2c" * 60 + b"\0"  # one-byte sub-blocks: a step each
    assert header(crafted_gif((1, 1), [(1, 1, tiny_blocks)]))[0] == gh.LONG_GIF
    assert header(crafted_gif((1, 1), [(1, 1, b"\x02" + b"\x01\x2c" * 40 + b"\0")]))[0] == gh.GIF


@pytest.mark.parametrize(
    "data, kind",
    [
        (JPEG_XL, gh.JPEG_XL),
        (b"\0\0\0\x0cJXL \r\n\x87\n" + b"\0" * 20, gh.JPEG_XL),  # the container form
        (animated("WEBP", 2, lossless=True), gh.ANIMATED_WEBP),
        (b"RIFF\x20\0\0\0WAVEfmt " + b"\0" * 20, gh.UNKNOWN),
        (b"RIFF\x20\0\0\0WEBPXXXX" + b"\0" * 20, gh.UNKNOWN),
        (b"not an image at all", gh.UNKNOWN),
    ],
)
def test_formats_whose_size_is_not_read_are_kinds_of_their_own(data, kind):
    assert header(data) == (kind, 0)


@pytest.mark.parametrize(
    "data, message",
    [
        (JPEG_XL, "JPEG XL is not accepted: its size cannot be read before decoding it"),
        (animated("WEBP", 2, lossless=True), "animated WebP is not accepted"),
        (crafted_gif((1, 1), [(8000, 8000, NO_PIXELS)]), "over the 40000000-pixel limit"),
        (b"BM" + b"\0" * 16 + struct.pack("<ii", 20000, -20000) + b"\0" * 30, "over the 40000000-pixel limit"),
        (b"\x00\x01 not an image", "not a JPEG, PNG, GIF, BMP or still WebP image"),
    ],
)
def test_the_graph_refuses_each_class_before_decoding_with_its_own_message(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"image_bytes: .*({message})"):
        images.tf_decode_rgb(tf.constant(data), max_pixels=40_000_000)


def test_the_graph_still_decodes_what_it_can_bound():
    assert images.tf_decode_rgb(tf.constant(crafted_gif()), max_pixels=1).numpy().tolist() == [[[200, 10, 10]]]
    first = images.tf_decode_rgb(tf.constant(animated("GIF", 3, duration=40)), max_pixels=3 * 40 * 30)
    assert first.shape == (30, 40, 3)  # the first frame, once every frame is counted
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the 3599-pixel limit"):
        images.tf_decode_rgb(tf.constant(animated("GIF", 3, duration=40)), max_pixels=3 * 40 * 30 - 1)
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, format="WEBP", lossless=True)
    assert images.tf_decode_rgb(tf.constant(buf.getvalue()), max_pixels=200).shape == (10, 20, 3)
