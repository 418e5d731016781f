import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import awkward_files, jpeg_bytes, png_bytes
from vsearch import images
from vsearch.errors import ImageError


@pytest.fixture
def files(tmp_path):
    return awkward_files(tmp_path / "awkward")


@pytest.mark.parametrize("name, reason", [
    ("corrupt", "corrupt or truncated|not a recognised"),
    ("truncated", "corrupt or truncated"),
    ("empty", "empty"),
    ("text", "not a recognised image format"),
])
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

    def denied(self):  # what open() raises on a file without read permission (tests may run as root)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)
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
    assert np.abs(images.tf_decode_and_resize(tf.constant(png), 32).numpy()
                  - images.resize_pixels(images.decode_image(png), 32).numpy()).max() < 1e-3
