"""In the TensorFlow graph: an image's format and pixel count, read before any pixel is decoded.

The SavedModel's ``serving_default`` decodes with ``tf.io.decode_image``, which allocates what
an image declares. :func:`vsearch.images.tf_decode_rgb` reads that first, here, and refuses
what it cannot bound:

* JPEG (``tf.image.extract_jpeg_shape``), PNG (IHDR), BMP (the info header) and still WebP
  (VP8, VP8L, VP8X): width x height from fixed fields, the sizes their decoders allocate.
* GIF: TensorFlow's decoder (giflib) decodes every frame at its own image descriptor's size,
  whatever the logical screen says, so :func:`tf_gif_pixels` walks the blocks and counts the
  larger of the canvas and the sum of the frames, in at most :data:`GIF_MAX_STEPS` steps.
* JPEG XL (its size is bit-packed, behind optional boxes) and animated WebP (TensorFlow 2.21's
  decoder corrupts its heap on one) are refused, as is anything that is none of these.

All the arithmetic is int64 TensorFlow ops: the graph runs in TF Serving without vsearch.
"""

from __future__ import annotations

# What :func:`tf_image_header` says an image is.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP, ANIMATED_WEBP, JPEG_XL, LONG_GIF = range(9)
ACCEPTED = "JPEG, PNG, GIF, BMP or still WebP"
# Steps of the GIF walk: a block header, or one data run (all the full 255-byte sub-blocks
# up to _GIF_RUN of them, then the next one). A still photo takes a handful, an animated GIF
# about seven a frame; a GIF made of tiny sub-blocks to make the walk long is refused.
GIF_MAX_STEPS = 4096
_GIF_RUN = 256
_HEAD = 32  # bytes of the fixed headers read


def _le(head, start: int, count: int):
    """Little-endian unsigned integer of ``count`` bytes of ``head`` (int64) from ``start``."""
    return sum(head[start + i] * (1 << (8 * i)) for i in range(count))


def _be(head, start: int, count: int):
    return sum(head[start + i] * (1 << (8 * (count - 1 - i))) for i in range(count))


def _is(head, start: int, magic: bytes):
    import tensorflow as tf

    return tf.reduce_all(tf.equal(head[start : start + len(magic)], tf.constant(list(magic), tf.int64)))


def _kind(head):
    """The format from the first bytes, as ``tf.io.decode_image`` tells them apart (int32)."""
    import tensorflow as tf

    webp = tf.logical_and(_is(head, 0, b"RIFF"), _is(head, 8, b"WEBP"))
    still = tf.logical_or(_is(head, 12, b"VP8 "), _is(head, 12, b"VP8L"))
    extended = tf.logical_and(webp, _is(head, 12, b"VP8X"))
    cases = [
        (_is(head, 0, b"\xff\xd8\xff"), JPEG),
        (_is(head, 0, b"\x89PNG\r\n\x1a\n"), PNG),
        (_is(head, 0, b"GIF8"), GIF),
        (_is(head, 0, b"BM"), BMP),
        (tf.logical_and(webp, still), WEBP),
        (tf.logical_and(extended, head[20] % 4 < 2), WEBP),  # VP8X flags: bit 1 is animation
        (extended, ANIMATED_WEBP),
        (tf.logical_or(_is(head, 0, b"\xff\x0a"), _is(head, 0, b"\0\0\0\x0cJXL \r\n\x87\n")), JPEG_XL),
    ]
    kind = tf.constant(UNKNOWN, tf.int32)
    for matches, value in reversed(cases):
        kind = tf.where(matches, tf.constant(value, tf.int32), kind)
    return kind


def _fixed_pixels(head):
    """Width x height of a PNG, BMP or still WebP from its fixed header fields (0 for others)."""
    import tensorflow as tf

    vp8l = _le(head, 21, 4)
    signed = lambda v: tf.abs(tf.where(v >= 2**31, v - 2**32, v))  # noqa: E731  (BMP sides are signed)
    cases = [
        (_is(head, 0, b"\x89PNG"), _be(head, 16, 4) * _be(head, 20, 4)),
        (_is(head, 0, b"BM"), signed(_le(head, 18, 4)) * signed(_le(head, 22, 4))),
        (_is(head, 12, b"VP8 "), (_le(head, 26, 2) % 16384) * (_le(head, 28, 2) % 16384)),
        (_is(head, 12, b"VP8L"), (vp8l % 16384 + 1) * ((vp8l // 16384) % 16384 + 1)),
        (_is(head, 12, b"VP8X"), (_le(head, 24, 3) + 1) * (_le(head, 27, 3) + 1)),
    ]
    out = tf.constant(0, tf.int64)
    for matches, pixels in reversed(cases):
        out = tf.where(matches, pixels, out)
    return out


def tf_gif_pixels(image_bytes):
    """In-graph: ``(pixels, complete)`` of a GIF, walking its blocks without decoding them.

    ``pixels`` is the larger of the canvas (the logical screen widened to every frame's
    extent) and the sum of every frame's image-descriptor size (what giflib decodes);
    ``complete`` is False when the walk needed more than :data:`GIF_MAX_STEPS` steps. The walk
    ends at the trailer, at a byte that starts no block, or at the end of the data, as giflib
    stops there too.
    """
    import tensorflow as tf

    data = tf.io.decode_raw(tf.strings.join([image_bytes, tf.constant(b"\0" * 16)]), tf.uint8)
    end = tf.size(data, out_type=tf.int64) - 16
    last = end + 15  # a zero: reading past the end reads a block terminator

    def at(positions):
        return tf.cast(tf.gather(data, tf.minimum(positions, last)), tf.int64)

    offsets = tf.range(10, dtype=tf.int64)
    runs = tf.range(_GIF_RUN, dtype=tf.int64) * 256

    def in_data(pos, total, wide, high):
        """Image or extension data: the full sub-blocks skipped at once, then the next one."""
        full = tf.argmax(tf.concat([tf.not_equal(at(pos + runs), 255), [True]], 0), output_type=tf.int64)
        skipped = pos + 256 * full
        length = at(skipped)
        more = tf.equal(full, _GIF_RUN)
        return tf.where(more, skipped, skipped + 1 + length), tf.logical_or(more, length > 0), total, wide, high

    def at_block(pos, total, wide, high):
        """An image descriptor (counted, its colour table skipped), an extension, or the end."""
        head = at(pos + offsets)
        image, extension = tf.equal(head[0], 0x2C), tf.equal(head[0], 0x21)
        table = tf.where(head[9] >= 128, tf.bitwise.left_shift(tf.constant(6, tf.int64), head[9] % 8), 0)
        width, height = head[5] + 256 * head[6], head[7] + 256 * head[8]
        return (
            tf.where(image, pos + 11 + table, tf.where(extension, pos + 2, end)),
            tf.logical_or(image, extension),
            total + tf.where(image, width * height, 0),
            tf.where(image, tf.maximum(wide, head[1] + 256 * head[2] + width), wide),
            tf.where(image, tf.maximum(high, head[3] + 256 * head[4] + height), high),
        )

    def step(pos, data_next, total, wide, high, steps):
        state = (pos, total, wide, high)
        return (*tf.cond(data_next, lambda: in_data(*state), lambda: at_block(*state)), steps + 1)

    screen = at(tf.range(6, 11, dtype=tf.int64))
    colours = tf.where(screen[4] >= 128, tf.bitwise.left_shift(tf.constant(6, tf.int64), screen[4] % 8), 0)
    start = [13 + colours, tf.constant(False), tf.constant(0, tf.int64), _le(screen, 0, 2), _le(screen, 2, 2)]
    pos, _, total, wide, high, _ = tf.while_loop(
        lambda pos, data_next, total, wide, high, steps: tf.logical_and(pos < end, steps < GIF_MAX_STEPS),
        step,
        start + [tf.constant(0, tf.int32)],
    )
    return tf.maximum(total, wide * high), pos >= end


def tf_image_header(image_bytes):
    """In-graph: ``(kind, pixels)`` of one encoded image, before any pixel is decoded.

    ``kind`` is one of this module's constants (int32); ``pixels`` (int64) is what decoding
    it would produce (a GIF: :func:`tf_gif_pixels`), 0 where the kind is not accepted. A GIF
    whose walk did not finish is :data:`LONG_GIF`.
    """
    import tensorflow as tf

    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * _HEAD)])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEAD), tf.uint8), tf.int64)
    kind = _kind(head)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return kind, shape[0] * shape[1]

    def gif():
        pixels, complete = tf_gif_pixels(image_bytes)
        return tf.where(complete, kind, LONG_GIF), pixels

    def fixed():
        accepted = tf.logical_or(tf.equal(kind, PNG), tf.logical_or(tf.equal(kind, BMP), tf.equal(kind, WEBP)))
        return kind, tf.where(accepted, _fixed_pixels(head), 0)

    branch = tf.where(tf.equal(kind, JPEG), 0, tf.where(tf.equal(kind, GIF), 1, 2))
    return tf.switch_case(branch, [jpeg, gif, fixed])


def tf_header_pixels(image_bytes):
    """In-graph: width x height from an image's header (int64; see :func:`tf_image_header`)."""
    return tf_image_header(image_bytes)[1]


def tf_header_checks(image_bytes, max_pixels: int) -> list:
    """In-graph assertions, one per class of image the graph must not decode: each fails with
    an ``InvalidArgumentError`` whose message starts ``image_bytes:`` and says why."""
    import tensorflow as tf

    limit = int(max_pixels)
    kind, pixels = tf_image_header(image_bytes)
    send = f"send a {ACCEPTED} image of at most {limit} pixels"
    refusals = [
        (JPEG_XL, f"JPEG XL is not accepted: its size cannot be read before decoding it; {send}"),
        (ANIMATED_WEBP, f"animated WebP is not accepted; {send}"),
        (LONG_GIF, f"a GIF of more than {GIF_MAX_STEPS} blocks is not accepted: its frames are not counted; {send}"),
        (UNKNOWN, f"not a {ACCEPTED} image"),
    ]
    checks = [tf.debugging.Assert(tf.not_equal(kind, value), [f"image_bytes: {why}"]) for value, why in refusals]
    with tf.control_dependencies(checks):
        checks.append(
            tf.debugging.Assert(
                tf.less_equal(pixels, limit),
                [f"image_bytes: the image is over the {limit}-pixel limit (every frame of a GIF counts)"],
            )
        )
    return checks
