"""Shared fixtures: tiny synthetic image folders, awkward image files, one smoke pipeline run."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from milvus_server import milvus_process, milvus_server  # noqa: E402, F401  (one Milvus server a session)
from PIL import Image  # noqa: E402

from vsearch.learn.synthetic import make_catalog  # noqa: E402
from vsearch.learn.synthetic import product_photo as _photo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# What makes a test slow: a trained smoke model or a started server behind a fixture, or a
# whole module of subprocesses and browsers. `make test-fast` runs the rest.
SLOW_FIXTURES = {"smoke_run", "smoke_index", "tiny", "milvus_server", "milvus_process"}
SLOW_MODULES = {
    "test_strategy.py",
    "test_notebook.py",
    "test_web_e2e.py",
    "test_budget_memory.py",
    "test_integration.py",
    "test_shutdown.py",  # servers in subprocesses, stopped by signals
}
# Single tests over a few seconds each (`make test-fast --durations`): they train a model or
# hammer every store with concurrent writers.
SLOW_TESTS = {
    "test_training_excludes_bad_files",
    "test_a_loss_that_is_no_longer_finite_stops_training_and_saves_nothing",
    "test_triplet_model_save_load_compare",
    "test_tower_outputs_unit_vectors_and_round_trips",
    "test_concurrent_puts_and_deletes_keep_exactly_what_was_acknowledged",
    "test_concurrent_puts_and_deletes_of_the_same_products_keep_what_was_acknowledged",
    "test_20_concurrent_puts_are_all_answered_and_kept_after_a_restart",
    "test_hostile_ids_are_written_read_listed_and_deleted_as_themselves",
}


def pytest_collection_modifyitems(items):
    for item in items:
        slow_test = getattr(item, "originalname", item.name) in SLOW_TESTS
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES or slow_test:
            item.add_marker(pytest.mark.slow)


def _repo_outputs() -> set[str]:
    """What the tests must never write in the checkout: catalogs, media, locks and logs."""
    return {
        str(p.relative_to(REPO))
        for pattern in ("saved_models/*", "*.lock", "*.vsi*", "*.db")
        for p in REPO.glob(pattern)
    }


@pytest.fixture(scope="session", autouse=True)
def tests_leave_the_checkout_alone():
    """Fails the run when a test wrote into the checkout (e.g. a catalog at the default
    ``saved_models/catalog.vsi``, which would overwrite a user's real one)."""
    before = _repo_outputs()
    yield
    new = sorted(_repo_outputs() - before)
    assert not new, f"tests wrote into the checkout: {new}"


def make_image_folder(root: Path, split_counts=(("train", 6), ("validation", 3))):
    """Writes root/{train,validation}/<class>/*.jpg|png of synthetic photos."""
    return make_catalog(root, split_counts)


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def awkward_files(folder: Path) -> dict[str, Path]:
    """The bad and unusual files of a real catalog, one each."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _photo((200, 40, 40), 3)
    files = {}
    files["corrupt"] = folder / "corrupt.jpg"
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(jpeg_bytes(base.resize((200, 200)))[:600])
    files["empty"] = folder / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not an image")
    files["gray"] = folder / "gray.png"
    base.convert("L").save(files["gray"])
    files["rgba"] = folder / "rgba.png"
    rgba = base.convert("RGBA")
    alpha = np.zeros(rgba.size[::-1], np.uint8)
    alpha[:, : rgba.size[0] // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(files["rgba"])
    files["sixteen"] = folder / "sixteen.png"
    Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257).save(files["sixteen"])
    files["cmyk"] = folder / "cmyk.jpg"
    base.convert("CMYK").save(files["cmyk"], format="JPEG")
    files["exif"] = folder / "exif_rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    base.save(files["exif"], format="JPEG", exif=exif)
    return files


@pytest.fixture
def image_root(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def calibrated_backbone_weights(path: Path, data: Path, size: int = 32, alpha: float = 0.35) -> Path:
    """A random MobileNetV2 whose BatchNorm statistics are set from the synthetic images.

    A randomly initialised MobileNetV2 in inference mode shrinks every input to almost the
    same near-zero vector, which would make smoke embeddings degenerate. Setting each
    BatchNorm's moving statistics from real activations keeps the signal alive, like
    pretrained weights do. One pass in training mode gives them all: there every
    BatchNorm normalises by its input's batch statistics, which are then exactly what
    inference mode sees once the earlier BatchNorms use them. Saved as a weights file, it
    also exercises ``--backbone-weights PATH``.
    """
    import keras

    from vsearch.learn.models import build_backbone

    keras.utils.set_random_seed(0)  # the same random backbone every run: reproducible smoke metrics
    base = build_backbone(size, "none", alpha)
    images = sorted((data / "train").rglob("*.jpg"))[:24]
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in images])
    x = x / 127.5 - 1.0
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    inputs = keras.Model(base.input, [layer.input for layer in norms])(x, training=True)
    for layer, value in zip(norms, inputs):
        value = np.asarray(value)
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, value.mean(axis=(0, 1, 2)), value.var(axis=(0, 1, 2))])
    base.save_weights(path)
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke pipeline (train, siamese, export) on a synthetic catalog; tests read its artifacts."""
    from vsearch import config as c
    from vsearch.learn.classifier import train_classifier
    from vsearch.learn.siamese import train_siamese

    root = tmp_path_factory.mktemp("smoke")
    data = make_image_folder(root / "data")
    weights = calibrated_backbone_weights(root / "backbone.weights.h5", data)
    data_cfg = c.DataConfig(
        data_dir=str(data),
        image_size=32,
        batch_size=8,
        feature_cache_dir=str(root / "features"),
        feature_runtime="tflite",
    )
    clf = c.apply_overrides(
        c.preset(c.ClassifierConfig, "smoke"), {"out_dir": str(root / "classifier"), "backbone_weights": str(weights)}
    )
    clf = dataclasses.replace(clf, data=data_cfg)
    logs: dict[str, list[str]] = {"train": [], "siamese": []}
    clf_metrics = train_classifier(clf, log=logs["train"].append)
    sia = c.preset(c.SiameseConfig, "smoke")
    sia = dataclasses.replace(
        sia, data=data_cfg, classifier_dir=clf.out_dir, out_dir=str(root / "embedding"), work_dir=str(root / "siamese")
    )
    sia_metrics = train_siamese(sia, log=logs["siamese"].append)
    return {
        "root": root,
        "data": data,
        "classifier": clf,
        "siamese": sia,
        "classifier_metrics": clf_metrics,
        "siamese_metrics": sia_metrics,
        "logs": logs,
    }


@pytest.fixture(scope="session")
def smoke_index(smoke_run, tmp_path_factory):
    """The smoke model's catalog (a faiss store) over the synthetic train split: (model dir, its file)."""
    from vsearch.catalog.building import build_catalog
    from vsearch.embedder import SavedModelEmbedder

    model = Path(smoke_run["siamese"].out_dir)
    path = tmp_path_factory.mktemp("index") / "catalog.vsi"
    store, _ = build_catalog(SavedModelEmbedder(model), smoke_run["data"] / "train", f"faiss:{path}", kind="exact")
    store.close()
    return model, path


# ---------------------------------------------------------------- a transparent model and a tiny shop


class ColourEmbedder:
    """A transparent stand-in model: the unit vector of an image's mean colour (plus a bias)."""

    image_size, dim, fingerprint = 8, 4, "colour-v1"

    def embed_pixels(self, pixels):
        mean = np.asarray(pixels, np.float32).mean(axis=(1, 2)) / 255.0
        out = np.concatenate([mean, np.full((len(mean), 1), 0.1, np.float32)], axis=1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def solid(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def shop(tmp_path):
    root = tmp_path / "shop"
    solid(root / "hats" / "red.jpg", (250, 10, 10))
    solid(root / "hats" / "pink.png", (250, 120, 140))
    solid(root / "shoes" / "green.png", (10, 240, 10))
    solid(root / "shoes" / "olive.png", (120, 160, 20))
    (root / "shoes" / ".hidden.png").write_bytes(b"ignored")
    return root


def solid_shop(tmp_path):
    root = tmp_path / "base"
    solid(root / "bags" / "blue.png", (10, 10, 240))
    return root


# ---------------------------------------------------------------- a tiny exported model, converted three ways

TINY_SIZE = 32


def tiny_tower(seed: int = 0):
    """MobileNetV2's kinds of layers (conv, BatchNorm, ReLU6, depthwise, pooling, dense, L2), shallow.

    The last conv has 2,048 weights, above the converter's 1,024-element floor, so that
    ``dynamic`` really quantizes something.
    """
    import keras

    from vsearch.learn import models

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    base = keras.Sequential(
        [
            keras.Input((TINY_SIZE, TINY_SIZE, 3)),
            layers.Conv2D(16, 3, strides=2, padding="same"),
            layers.BatchNormalization(),
            layers.ReLU(6.0),
            layers.DepthwiseConv2D(3, padding="same"),
            layers.ReLU(6.0),
            layers.Conv2D(128, 1),
        ],
        name=models.BACKBONE_NAME,
    )
    return build_tower(base, 8, TINY_SIZE)


def build_tower(base, embedding_dim: int, image_size: int):
    """A one-branch embedding tower: pixels 0..255 -> ``base`` -> pooled -> projected -> unit norm.

    The shape of the exported model with the fewest parts, for tests of what takes a tower
    (saving, the triplet model, conversion); the stages build theirs in vsearch.learn.siamese.
    """
    import keras

    from vsearch.learn import models

    projection = keras.layers.Dense(embedding_dim, name="projection")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = base(models.preprocessing_layer()(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, models.L2Normalize(name="l2_normalize")(projection(x)), name="embedding")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny model exported as a SavedModel and converted three ways."""
    from vsearch.embedder import SavedModelEmbedder
    from vsearch.learn import litert_export as tflite
    from vsearch.learn.export import export_embedding

    root = tmp_path_factory.mktemp("tflite")
    data = make_image_folder(root / "data")
    model_dir = export_embedding(tiny_tower(), root / "embedding", {"class_names": ["blue", "green", "red"]})
    files = {
        q: tflite.export_tflite(model_dir, None, q, data / "train", 12, log=lambda *_: None)
        for q in tflite.QUANTIZATIONS
    }
    photos = sorted(p for p in (data / "validation").rglob("*") if p.is_file())
    return {
        "root": root,
        "data": data,
        "model": model_dir,
        "files": files,
        "saved": SavedModelEmbedder(model_dir),
        "blobs": [p.read_bytes() for p in photos],
        "photos": photos,
    }


def cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------- the fake model's catalog (server tests)


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory) -> Path:
    """The catalog of tests/fake_server.py: 12 coloured products (15 photos), a numpy model, no TensorFlow."""
    from fake_server import write_catalog

    return write_catalog(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="module")
def fake_searcher(fake_index):
    from fake_server import load_searcher

    return load_searcher(fake_index)


@pytest.fixture(scope="module")
def fake_client(fake_searcher):
    """FastAPI's TestClient on the app serving ``fake_searcher``."""
    from fastapi.testclient import TestClient

    from vsearch.web.app import create_app

    with TestClient(create_app(fake_searcher)) as client:
        yield client
