import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import png_bytes

from vsearch.artifacts import read_metadata
from vsearch.embedder import SavedModelEmbedder
from vsearch.errors import ImageError

PLAIN_TF = textwrap.dedent("""
    import sys
    sys.modules["vsearch"] = None  # prove the export needs no vsearch
    import json, numpy as np, tensorflow as tf
    model_dir, pixels_path, bytes_path, out_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    pixels = np.load(pixels_path)
    blobs = json.load(open(bytes_path))
    by_pixels = loaded.signatures["embed_pixels"](images=tf.constant(pixels))["embedding"].numpy()
    by_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([bytes.fromhex(b) for b in blobs]))["embedding"].numpy()
    sig = loaded.signatures["serving_default"]
    spec = sig.structured_input_signature[1]["image_bytes"]
    np.savez(out_path, by_pixels=by_pixels, by_bytes=by_bytes,
             input_dtype=str(spec.dtype.name), outputs=list(sig.structured_outputs))
""")


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (3, 32, 32, 3)).astype(np.float32)


def test_export_loads_in_plain_tensorflow(smoke_run, pixels, tmp_path):
    import vsearch.learn.models  # noqa: F401  (registers the custom layers for the Keras reload)

    model_dir = smoke_run["root"] / "embedding"
    tower = keras.saving.load_model(smoke_run["root"] / "siamese" / "tower.keras")
    expected = tower.predict(pixels, verbose=0)
    np.save(tmp_path / "pixels.npy", pixels)
    blobs = [png_bytes(__import__("PIL.Image", fromlist=["Image"]).fromarray(p.astype(np.uint8))).hex() for p in pixels]
    (tmp_path / "bytes.json").write_text(json.dumps(blobs))
    subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_TF,
            str(model_dir),
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "bytes.json"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        timeout=300,
    )
    out = np.load(tmp_path / "out.npz")
    assert str(out["input_dtype"]) == "string" and list(out["outputs"]) == ["embedding"]
    assert np.abs(out["by_pixels"] - expected).max() <= 1e-5
    assert np.abs(out["by_bytes"] - expected).max() <= 1e-5  # same-size PNG: decode + resize is exact
    assert np.allclose(np.linalg.norm(out["by_bytes"], axis=1), 1.0, atol=1e-5)


def test_metadata_describes_the_model(smoke_run):
    meta = read_metadata(smoke_run["root"] / "embedding")
    # instance branch + class branch (4-d projection and the 3 class probabilities)
    assert meta["image_size"] == 32 and meta["embedding_dim"] == 8 + 4 + 3
    assert meta["branches"]["class_probabilities"] == 3
    assert meta["class_names"] == ["blue", "green", "red"]
    assert meta["training_config"]["embedding_dim"] == 8
    assert len(meta["fingerprint"]) == 16 and meta["vsearch_version"]
    assert "siamese_validation" in meta["metrics"]


def test_bad_bytes_are_clear_errors_not_crashes(smoke_run):
    embedder = SavedModelEmbedder(smoke_run["root"] / "embedding")
    for bad in (b"", b"definitely not an image"):
        with pytest.raises(ImageError, match="could not decode"):
            embedder.serving_default([bad])
    gray = __import__("PIL.Image", fromlist=["Image"]).new("LA", (40, 30), (90, 128))
    out = embedder.serving_default([png_bytes(gray)])  # still alive, and handles gray + alpha
    assert out.shape == (1, 8 + 4 + 3)


def test_not_a_saved_model(tmp_path):
    from vsearch.errors import DataError

    with pytest.raises(DataError, match="not a SavedModel"):
        read_metadata(tmp_path)


@pytest.mark.parametrize("text, message", [("{", "unreadable"), ("[]", "not vsearch metadata")])
def test_damaged_metadata_is_a_data_error(tmp_path, text, message):
    from vsearch.artifacts import METADATA_FILE
    from vsearch.errors import DataError

    (tmp_path / "saved_model.pb").write_bytes(b"")
    (tmp_path / METADATA_FILE).parent.mkdir()
    (tmp_path / METADATA_FILE).write_text(text)
    with pytest.raises(DataError, match=f"vsearch.json: {message}"):
        read_metadata(tmp_path)


def test_serving_default_refuses_a_pixel_bomb_from_its_header(tiny):
    """A 20000 x 20000 PNG of a few hundred bytes: refused before decoding (it took 7 GB and 25 s)."""
    from test_images import forged_png

    embedder = tiny["saved"]
    assert read_metadata(tiny["model"])["max_pixels"] == 40_000_000
    with pytest.raises(ImageError, match="over the 40000000-pixel limit"):
        embedder.serving_default([forged_png(20000, 20000)])
    assert embedder.serving_default([tiny["blobs"][0]]).shape == (1, 8)  # still serving


HOSTILE = textwrap.dedent("""
    import sys
    sys.modules["vsearch"] = None  # what TF Serving runs: the graph alone
    import json, numpy as np, tensorflow as tf
    model_dir, blobs_path, out_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    by_bytes, by_pixels = loaded.signatures["serving_default"], loaded.signatures["embed_pixels"]
    calls = {name: (lambda blob=bytes.fromhex(blob): by_bytes(image_bytes=tf.constant([blob])))
             for name, blob in json.load(open(blobs_path)).items()}
    calls["no photos"] = lambda: by_bytes(image_bytes=tf.constant([], tf.string))
    calls["no pixels"] = lambda: by_pixels(images=tf.zeros([0, 32, 32, 3]))
    calls["nan pixels"] = lambda: by_pixels(images=tf.tensor_scatter_nd_update(
        tf.fill([2, 32, 32, 3], 100.0), [[1, 5, 5, 0]], [float("nan")]))
    calls["inf pixels"] = lambda: by_pixels(images=tf.fill([1, 32, 32, 3], float("inf")))
    out = {}
    for name, call in calls.items():
        try:
            out[name] = "shape %s" % (call()["embedding"].shape,)
        except tf.errors.InvalidArgumentError as exc:
            out[name] = exc.message
    json.dump(out, open(out_path, "w"))
""")


def test_the_saved_model_refuses_what_it_cannot_bound_with_clear_messages(tiny, tmp_path):
    """In plain TensorFlow (TF Serving's view): a GIF whose 1x1 screen hides a 64-Mpx frame, a
    JPEG XL (size unread before decoding: it took 7.4 GB for a 40 KB one), an animated WebP
    (TensorFlow 2.21's decoder corrupts its heap on it), empty batches and NaN pixels are
    refused by name; a small animated GIF is still embedded."""
    from test_graph_headers import JPEG_XL, NO_PIXELS, animated, crafted_gif

    blobs = {
        "hidden gif frame": crafted_gif((1, 1), [(8000, 8000, NO_PIXELS)]),
        "jpeg xl": JPEG_XL,
        "animated webp": animated("WEBP", 2, lossless=True),
        "animated gif": animated("GIF", 3, duration=40),
    }
    (tmp_path / "blobs.json").write_text(json.dumps({k: v.hex() for k, v in blobs.items()}))
    subprocess.run(
        [sys.executable, "-c", HOSTILE, str(tiny["model"]), str(tmp_path / "blobs.json"), str(tmp_path / "out.json")],
        check=True,
        timeout=300,
    )
    out = json.loads((tmp_path / "out.json").read_text())
    expected = {
        "hidden gif frame": "image_bytes: the image is over the 40000000-pixel limit (every frame of a GIF counts)",
        "jpeg xl": "image_bytes: JPEG XL is not accepted: its size cannot be read before decoding it; send a "
        "JPEG, PNG, GIF, BMP or still WebP image of at most 40000000 pixels",
        "animated webp": "image_bytes: animated WebP is not accepted",
        "no photos": "image_bytes: empty batch, expected at least one encoded image",
        "no pixels": "images: empty batch, expected at least one image",
        "nan pixels": "images: the pixels contain NaN or infinity, expected RGB values 0..255",
        "inf pixels": "images: the pixels contain NaN or infinity",
    }
    for name, message in expected.items():
        assert message in out[name], (name, out[name])
    assert out["animated gif"] == "shape (1, 8)"


def test_vsearch_reads_the_graph_s_refusal(tiny):
    from test_graph_headers import JPEG_XL

    with pytest.raises(ImageError, match=r"could not decode an image \(JPEG XL is not accepted"):
        tiny["saved"].serving_default([JPEG_XL])
