"""The LiteRT runtime (vsearch.litert) on the tiny exported model of conftest's ``tiny`` fixture."""

import numpy as np
import pytest
from conftest import TINY_SIZE as SIZE
from conftest import cosine, jpeg_bytes
from PIL import Image

from vsearch import litert
from vsearch.embedder import SavedModelEmbedder, embed_images, load_embedder
from vsearch.errors import ConfigError, DataError, ImageError
from vsearch.litert import TFLiteEmbedder


def test_fp32_matches_the_saved_model(tiny):
    embedder = load_embedder(tiny["files"]["none"], num_threads=2)
    pixels = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    assert np.abs(embedder.embed_pixels(pixels) - tiny["saved"].embed_pixels(pixels)).max() <= 1e-5
    ours, theirs = (embed_images(e, tiny["blobs"]).vectors for e in (embedder, tiny["saved"]))
    assert np.abs(ours - theirs).max() <= 1e-5  # one road to the pixels: only the runtimes differ
    # The SavedModel's own serving_default decodes in the graph: TensorFlow's JPEG decoder runs
    # the fast DCT, Pillow the exact one (pixels differ by ~1 level); PNGs agree exactly.
    graph = tiny["saved"].serving_default(tiny["blobs"])
    png = np.array([p.suffix == ".png" for p in tiny["photos"]])
    assert np.abs(ours[png] - graph[png]).max() <= 1e-4
    assert cosine(ours, graph).min() > 0.999


def test_batch_sizes_one_and_five_agree(tiny):
    embedder = TFLiteEmbedder(tiny["files"]["none"], num_threads=1)
    together = embed_images(embedder, tiny["blobs"][:5], batch_size=5).vectors
    assert together.shape == (5, 8)
    one_by_one = embed_images(embedder, tiny["blobs"][:5], batch_size=1).vectors
    assert np.abs(together - one_by_one).max() <= 1e-5
    again = embed_images(embedder, tiny["blobs"][:5], batch_size=5).vectors  # the interpreter resized back
    assert np.abs(again - together).max() <= 1e-6
    chunked = TFLiteEmbedder(tiny["files"]["none"], max_batch=2)  # interpreter calls of 2, 2, 1
    assert np.abs(embed_images(chunked, tiny["blobs"][:5], batch_size=5).vectors - together).max() <= 1e-5
    assert embed_images(embedder, []).vectors.shape == (0, 8)


def test_bad_photos_are_reported_and_bad_batches_refused(tiny):
    embedder = load_embedder(tiny["files"]["int8"])
    truncated = jpeg_bytes(Image.new("RGB", (200, 200), (10, 200, 30)))[:300]
    for bad, reason in ((b"", "empty"), (b"not an image", "not a recognised"), (truncated, "corrupt")):
        done = embed_images(embedder, [tiny["blobs"][0], bad])
        assert done.good == [0] and done.vectors.shape == (1, 8)
        assert list(done.bad) == ["<image 1>"] and reason in done.bad["<image 1>"]
    with pytest.raises(ImageError, match="expected a batch of shape"):
        embedder.embed_pixels(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ImageError, match="empty batch"):
        embedder.embed_pixels(np.zeros((0, SIZE, SIZE, 3), np.float32))
    nan = np.zeros((1, SIZE, SIZE, 3), np.float32)
    nan[0, 3, 3, 1] = np.nan
    with pytest.raises(ImageError, match="NaN or infinity"):
        embedder.embed_pixels(nan)


def test_load_embedder_dispatch_and_errors(tiny, tmp_path):
    assert isinstance(load_embedder(tiny["model"]), SavedModelEmbedder)
    assert isinstance(load_embedder(tiny["files"]["none"], num_threads=1), TFLiteEmbedder)
    with pytest.raises(DataError, match="no such file or folder"):
        load_embedder(tmp_path / "nowhere")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(DataError, match="not a SavedModel folder or a .tflite file"):
        load_embedder(tmp_path / "model.onnx")
    with pytest.raises(DataError, match="no such TFLite file"):
        load_embedder(tmp_path / "missing.tflite")
    with pytest.raises(ConfigError, match="num_threads"):
        TFLiteEmbedder(tiny["files"]["none"], num_threads=0)
    with pytest.raises(ConfigError, match="max_batch"):
        TFLiteEmbedder(tiny["files"]["none"], max_batch=0)


def test_search_with_tflite_never_imports_tensorflow(tiny, tmp_path):
    """A TFLite model serves search (decode, resize, embed, index) without TensorFlow."""
    import subprocess
    import sys

    code = f"""
import sys
from vsearch.catalog.building import build_catalog
from vsearch.litert import TFLiteEmbedder
from vsearch.catalog.search import Searcher
embedder = TFLiteEmbedder({str(tiny["files"]["none"])!r})
catalog, _ = build_catalog(embedder, {str(tiny["data"] / "train")!r}, {f"faiss:{tmp_path / 'c.vsi'}"!r}, kind="exact")
result = Searcher(embedder, catalog).search({str(tiny["photos"][0])!r}, 3)
assert len(result.matches) == 3, result
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("LOADED", loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout


@pytest.mark.parametrize("text, message", [("{", "unreadable"), ("[]", "not vsearch metadata")])
def test_damaged_sidecar_is_a_data_error(tmp_path, text, message):
    model = tmp_path / "embedding.tflite"
    model.write_bytes(b"flatbuffer")
    litert.sidecar_path(model).write_text(text)
    with pytest.raises(DataError, match=f"embedding.tflite.json: {message}"):
        litert.read_tflite_metadata(model)
