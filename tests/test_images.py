import io

import numpy as np
import pytest
import tensorflow as tf
from conftest import awkward_files, jpeg_bytes, png_bytes
from PIL import Image

from vsearch import images
from vsearch.errors import ImageError


@pytest.fixture
def files(tmp_path):
    return awkward_files(tmp_path / "awkward")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("corrupt", "corrupt or truncated|not a recognised"),
        ("truncated", "corrupt or truncated"),
        ("empty", "empty"),
        ("text", "not a recognised image format"),
    ],
)
def test_bad_files_name_the_file_and_reason(files, name, reason):
    with pytest.raises(ImageError, match=reason) as info:
        images.load_image(files[name])
    assert str(files[name]) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        images.load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        images.load_image(tmp_path)


@pytest.mark.parametrize("name", ["gray", "rgba", "sixteen", "cmyk", "exif"])
def test_unusual_modes_become_rgb_uint8(files, name):
    pixels = images.load_image(files[name])
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] == 3


def test_exif_rotation_is_applied(files):
    stored = Image.open(files["exif"]).size  # (w, h) as stored
    pixels = images.load_image(files["exif"])
    assert pixels.shape[:2] == (stored[0], stored[1])  # rotated by 90 degrees: h, w swap


def test_alpha_is_composited_over_white(files):
    pixels = images.load_image(files["rgba"])
    right = pixels[:, -3:]
    assert (right == 255).all()  # fully transparent half is white


def test_sixteen_bit_scales_to_eight(files):
    pixels = images.load_image(files["sixteen"])
    gray = np.asarray(Image.open(files["gray"]))
    assert np.abs(pixels[..., 0].astype(int) - gray.astype(int)).max() <= 1


def test_pixel_limit_refuses_huge_images(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(ImageError, match="over the 10000-pixel limit"):
        images.load_image(path, max_pixels=10_000)


def test_unreadable_file_is_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes(Image.new("RGB", (8, 8))))

    def denied(file, *args, **kwargs):  # what open() raises without read permission (tests may run as root)
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(ImageError, match="locked.jpg: cannot read the file .Permission denied"):
        images.read_bytes(path)


def test_byte_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(ImageError, match="byte limit"):
        images.load_image(path, max_bytes=10)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_graph_decoding_matches_pillow(mode):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 24, len(mode)), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
    data = png_bytes(img)
    from_graph = images.tf_decode_rgb(tf.constant(data)).numpy()
    from_pillow = images.decode_image(data)
    assert from_graph.shape == from_pillow.shape == (20, 24, 3)
    assert np.abs(from_graph.astype(int) - from_pillow.astype(int)).max() <= 1


def test_graph_decoding_rejects_empty_and_garbage():
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty string"):
        images.tf_decode_rgb(tf.constant(b""))
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.tf_decode_rgb(tf.constant(b"garbage"))


def test_resize_matches_between_paths():
    yy, xx = np.mgrid[0:50, 0:40]
    smooth = np.stack([xx * 6, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # photo-like, no noise
    data = jpeg_bytes(Image.fromarray(smooth), quality=95)
    a = images.tf_decode_and_resize(tf.constant(data), 32).numpy()
    b = images.resize_pixels(images.decode_image(data), 32).numpy()
    assert a.shape == (32, 32, 3)
    # TensorFlow's and Pillow's JPEG decoders upsample chroma slightly differently.
    assert np.abs(a - b).mean() < 2.0  # measured: about 1 level of 255
    png = png_bytes(Image.fromarray(smooth))  # lossless: the two paths agree exactly
    assert (
        np.abs(
            images.tf_decode_and_resize(tf.constant(png), 32).numpy()
            - images.resize_pixels(images.decode_image(png), 32).numpy()
        ).max()
        < 1e-3
    )


# ---------------------------------------------------------------- step 2: the resize outside TensorFlow

RESIZE_SIZE = 32


@pytest.mark.parametrize("size", [RESIZE_SIZE, 224])
@pytest.mark.parametrize("shape", [(48, 40), (31, 77), (32, 32), (7, 5), (1, 1), (1, 300), (400, 533), (711, 400)])
def test_resize_matches_tensorflow(shape, size):
    pixels = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = images.resize_pixels(pixels, size).numpy()
    resized = images.resize_bilinear(pixels, size)
    assert resized.shape == (size, size, 3) and resized.dtype == np.float32
    assert np.abs(resized - expected).max() <= images.RESIZE_TOLERANCE


def test_writes_into_a_batch_slot_and_reuses_nothing_between_calls():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (50, 60, 3), dtype=np.uint8) for _ in range(2))
    batch = np.zeros((2, RESIZE_SIZE, RESIZE_SIZE, 3), np.float32)
    images.resize_bilinear(a, RESIZE_SIZE, out=batch[0])
    images.resize_bilinear(b, RESIZE_SIZE, out=batch[1])
    assert np.array_equal(batch[0], images.resize_bilinear(a, RESIZE_SIZE))  # b's call did not overwrite a's slot
    assert np.array_equal(batch[1], images.resize_bilinear(b, RESIZE_SIZE))
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize(
    "pixels", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)]
)
def test_refuses_anything_but_rgb_uint8(pixels):
    with pytest.raises(ValueError, match="uint8 RGB"):
        images.resize_bilinear(pixels, RESIZE_SIZE)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3)])
def test_refuses_an_empty_image(shape):
    with pytest.raises(ValueError, match="empty image"):
        images.resize_bilinear(np.zeros(shape, np.uint8), RESIZE_SIZE)


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((RESIZE_SIZE, RESIZE_SIZE, 3), np.float64),
        np.zeros((RESIZE_SIZE + 1, RESIZE_SIZE, 3), np.float32),
        np.zeros((RESIZE_SIZE, 2 * RESIZE_SIZE, 3), np.float32)[:, ::2],
    ],
)
def test_refuses_an_out_array_it_cannot_fill_in_place(out):
    with pytest.raises(ValueError, match="out must be"):
        images.resize_bilinear(np.zeros((8, 8, 3), np.uint8), RESIZE_SIZE, out=out)


# ---------------------------------------------------------------- the whole road and its choices


def test_draft_decodes_big_jpegs_at_reduced_scale():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8))
    assert images.decode_image(jpeg_bytes(photo)).shape == (160, 200, 3)
    assert images.decode_image(jpeg_bytes(photo), draft_size=32).shape == (40, 50, 3)  # 1/4, both sides >= 32
    assert images.decode_image(jpeg_bytes(photo), draft_size=80).shape == (80, 100, 3)  # 1/2 only
    assert images.decode_image(jpeg_bytes(photo), draft_size=81).shape == (160, 200, 3)  # 1/2 would be < 81
    assert images.decode_image(png_bytes(photo), draft_size=32).shape == (160, 200, 3)  # not a JPEG: untouched
    assert images.model_input(jpeg_bytes(photo), 32, draft=True).shape == (32, 32, 3)


def test_model_input_takes_bytes_paths_and_arrays_alike(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(arr).save(path)
    by_array = images.model_input(arr, 16)
    assert by_array.shape == (16, 16, 3) and by_array.dtype == np.float32
    assert np.array_equal(images.model_input(path, 16), by_array)
    assert np.array_equal(images.model_input(path.read_bytes(), 16), by_array)
    assert np.array_equal(images.model_input(arr.astype(np.float64), 16), by_array)
    slot = np.zeros((2, 16, 16, 3), np.float32)
    images.model_input(arr, 16, out=slot[1])
    assert np.array_equal(slot[1], by_array) and not slot[0].any()
    with pytest.raises(ImageError, match="expected image bytes, a file path or an RGB array, got int"):
        images.model_input(42, 16)
    with pytest.raises(ImageError, match="over the 100-pixel limit"):
        images.model_input(arr, 16, max_pixels=100)


def test_upright_is_a_visible_choice_and_the_graph_matches_the_stored_orientation(files):
    blob = files["exif"].read_bytes()
    graph = images.tf_decode_and_resize(blob, 32).numpy()  # serving_default ignores EXIF
    stored = images.model_input(blob, 32, upright=False)
    assert np.abs(stored - graph).mean() <= 2.0  # the two JPEG decoders differ by a level or two
    assert np.abs(images.model_input(blob, 32) - graph).mean() > 10.0  # upright: rotated
    for name in ("gray", "rgba", "sixteen"):  # PNG: grayscale expanded, alpha over white, 16 -> 8 bit
        blob = files[name].read_bytes()
        graph = images.tf_decode_and_resize(blob, 32).numpy()
        assert np.abs(images.model_input(blob, 32) - graph).max() <= 1.0, name


def test_check_pixels_refuses_what_is_not_rgb_0_255():
    ok = np.full((4, 5, 3), 7, np.uint8)
    assert images.check_pixels(ok) is ok
    assert np.array_equal(images.check_pixels(ok.astype(np.float64) + 0.2), ok)  # rounded, not truncated
    bad = np.full((4, 5, 3), 100.0)
    bad[1, 1, 1] = np.nan
    for pixels, message in (
        (bad, "NaN or infinity"),
        (ok.astype(np.float32) / 255, "look like 0..1 floats"),
        (ok.astype(np.int32) * 300, "0..255"),
        (ok[..., 0], "RGB pixels"),
        (np.zeros((0, 4, 3), np.uint8), "empty image"),
        (np.full((2, 2, 3), "a"), "numeric"),
    ):
        with pytest.raises(ImageError, match=message):
            images.check_pixels(pixels)


def test_image_header_reads_size_and_cost_without_decoding():
    big16 = Image.fromarray(np.zeros((300, 400), np.uint16))  # 16-bit gray: 2 bytes a pixel in Pillow
    header = images.image_header(png_bytes(big16))
    assert (header.format, header.width, header.height, header.mode) == ("PNG", 400, 300, "I;16")
    rgb = images.image_header(jpeg_bytes(Image.new("RGB", (400, 300))))
    assert header.pixels == rgb.pixels == 120_000
    assert rgb.decoded_bytes > header.decoded_bytes >= 120_000 * (2 + 3)
    for bad, message in ((b"", "empty"), (b"GIF89a not really", "not a recognised|corrupt")):
        with pytest.raises(ImageError, match=message):
            images.image_header(bad)


def test_sixteen_bit_decoding_costs_no_float64_copy():
    """A 16-bit photo is scaled with integers: a float64 copy made a 40 Mpx one cost gigabytes."""
    import tracemalloc

    arr = (np.arange(1000 * 1000, dtype=np.uint32).reshape(1000, 1000) % 65536).astype(np.uint16)
    data = png_bytes(Image.fromarray(arr))
    tracemalloc.start()
    pixels = images.decode_image(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert pixels.shape == (1000, 1000, 3)
    assert np.array_equal(pixels[..., 0], ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    assert peak < 1000 * 1000 * 16  # the float64 scaling took 8 bytes a pixel per temporary, 24+ in all


def _formats():
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for fmt, kwargs in (
        ("JPEG", {"exif": exif}),
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {"exif": exif}),
        ("TIFF", {}),
        ("PPM", {}),
        ("ICO", {}),
    ):
        buf = io.BytesIO()
        photo.save(buf, format=fmt, **kwargs)
        out[fmt] = buf.getvalue()
    return out


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO"])
def test_fuzzed_bytes_of_every_format_give_image_errors_only(fmt):
    """Seeded mutations (flipped bytes, cuts, repeated chunks): decoding yields pixels or an ImageError."""
    data = _formats()[fmt]
    rng = np.random.default_rng(sum(map(ord, fmt)))
    for trial in range(60):
        blob = bytearray(data)
        kind = trial % 3
        if kind == 0:
            for pos in rng.integers(0, len(blob), size=int(rng.integers(1, 8))):
                blob[pos] = int(rng.integers(0, 256))
        elif kind == 1:
            blob = blob[: int(rng.integers(1, len(blob)))]
        else:
            start = int(rng.integers(0, len(blob) - 8))
            blob[start:start] = blob[start : start + int(rng.integers(1, 64))] * 3
        try:
            pixels = images.model_input(bytes(blob), 16)
        except ImageError:
            continue
        assert pixels.shape == (16, 16, 3) and np.all(np.isfinite(pixels))


def test_a_format_that_decodes_to_learn_its_size_is_refused_unread():
    """An ICO names 16x16 and holds a PNG of any size, which Pillow decodes when the file is
    opened: only formats whose header says their size are opened (a server reads the header
    before the decode budget admits the decode)."""
    import struct

    inner = png_bytes(Image.new("RGB", (3000, 2000), (200, 10, 10)))
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22) + inner
    for read in (images.image_header, images.decode_image):
        with pytest.raises(ImageError, match=r"not a recognised image format \(JPEG, PNG, GIF, BMP, WebP or TIFF\)"):
            read(ico)


def test_a_gif_is_its_first_frame_at_its_extent():
    """Pillow decodes a GIF's first frame only, at the size it reads when opening (the logical
    screen widened to that frame): a 1x1 screen does not hide a large frame."""
    from test_graph_headers import NO_PIXELS, ONE_PIXEL, crafted_gif

    hidden = crafted_gif((1, 1), [(8000, 8000, NO_PIXELS)])
    assert images.image_header(hidden).pixels == 64_000_000
    with pytest.raises(ImageError, match="8000x8000 pixels is over the 40000000-pixel limit"):
        images.decode_image(hidden)
    later = crafted_gif((1, 1), [(1, 1, ONE_PIXEL), (8000, 8000, NO_PIXELS)])
    assert images.image_header(later).pixels == 1
    assert images.decode_image(later).tolist() == [[[200, 10, 10]]]  # the large second frame is never read


# EXIF blocks with a damaged tag, found by mutating a valid one: Pillow raised struct.error
# (JPEG) and TypeError (WebP) from inside the EXIF rotation.
DAMAGED_EXIF = {
    "JPEG": "4578696600004d4d002a000000080002013d00020000000600000026011200030000000100060045000000004d616b657200",
    "WEBP": "4578696600004d4d002a000000084802011e00020000000600000026011200030000000100060000000000004d616b657200",
}


@pytest.mark.parametrize("fmt", sorted(DAMAGED_EXIF))
def test_damaged_exif_is_the_image_s_error_not_a_crash(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(buf, format=fmt, exif=bytes.fromhex(DAMAGED_EXIF[fmt]))
    with pytest.raises(ImageError, match="<bytes>: corrupt or truncated image"):
        images.decode_image(buf.getvalue())
    assert images.decode_image(buf.getvalue(), upright=False).shape == (10, 20, 3)  # the pixels themselves are fine


def test_a_plugin_s_own_exception_becomes_an_image_error(monkeypatch):
    """Decoders outside Pillow's core (AVIF, HEIF plugins) raise RuntimeError and others."""
    from PIL import ImageFile

    def broken(self, *args, **kwargs):
        raise RuntimeError("decoder plugin failed")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageError, match="corrupt or truncated image .decoder plugin failed"):
        images.decode_image(png_bytes(Image.new("RGB", (8, 8))))


# ---------------------------------------------------------------- the in-graph pixel limit


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height; its pixel data is a few bytes (a bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_the_graph_refuses_an_image_over_the_limit_before_decoding_it():
    bomb = forged_png(20000, 20000)  # 400 Mpx declared, 100-odd bytes sent
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the 40000000-pixel limit"):
        images.tf_decode_rgb(tf.constant(bomb), max_pixels=40_000_000)
    ok = png_bytes(Image.new("RGB", (20, 10)))
    assert images.tf_decode_rgb(tf.constant(ok), max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the 199-pixel limit"):
        images.tf_decode_rgb(tf.constant(ok), max_pixels=199)


# ---------------------------------------------------------------- a part of the photo


def test_a_box_crops_the_upright_photo_before_resizing(files):
    upright = images.load_image(files["exif"])
    h, w = upright.shape[:2]
    part = images.to_pixels(files["exif"], box="0.5,0,1,0.25")
    assert part.shape == (round(h * 0.25), w - w // 2, 3)
    assert np.array_equal(part, upright[: round(h * 0.25), w // 2 :])
    assert np.array_equal(
        images.model_input(files["exif"], 16, box=(0.5, 0, 1, 0.25)), images.resize_bilinear(part, 16)
    )
    tiny = images.to_pixels(upright, box=(0.5, 0.5, 0.5001, 0.5001))  # never empty: at least a pixel
    assert tiny.shape == (1, 1, 3)


@pytest.mark.parametrize(
    "box, message",
    [
        ("0.1,0.2,0.3", "four finite numbers"),
        ("a,b,c,d", "four numbers"),
        ("0,0,nan,1", "finite"),
        ("0.5,0,0.4,1", "not a box inside the photo"),
        ("0,0,0,1", "not a box"),
        ("-0.1,0,1,1", "not a box"),
        ("0,0,1,1.5", "not a box"),
        (None, "four numbers"),
    ],
)
def test_bad_boxes_are_clear_errors(box, message):
    with pytest.raises(ImageError, match=message):
        images.parse_box(box)


def test_palette_images_with_and_without_transparency():
    arr = np.zeros((6, 8), np.uint8)
    arr[:, 4:] = 1
    img = Image.fromarray(arr, "P")
    img.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    opaque = images.decode_image(png_bytes(img))
    assert (opaque[:, :4] == (200, 0, 0)).all() and (opaque[:, 4:] == (0, 0, 200)).all()
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=1)  # colour 1 is see-through: composited over white
    clear = images.decode_image(buf.getvalue())
    assert (clear[:, :4] == (200, 0, 0)).all() and (clear[:, 4:] == 255).all()
    assert images.image_header(buf.getvalue()).decoded_bytes >= 48 * 24  # counted with the RGBA copies
