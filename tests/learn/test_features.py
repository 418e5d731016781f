import numpy as np
import pytest

from vsearch.augment import customer_view
from vsearch.learn.features import extract, extract_cached, files_digest, image_batches


@pytest.fixture
def tiny(image_root):
    import keras

    paths = sorted(str(p) for p in (image_root / "train").rglob("*.jpg"))[:5]
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, strides=4)(inputs))
    return model, paths


def test_extract_runs_views_reproducibly(tiny):
    model, paths = tiny
    clean = extract(model, image_batches(paths, 32, 2))
    view = extract(model, image_batches(paths, 32, 2), transform=customer_view, seed=7)
    again = extract(model, image_batches(paths, 32, 2), transform=customer_view, seed=7)
    assert clean.shape == (5, 8, 8, 2) and clean.dtype == np.float16
    assert np.array_equal(view, again) and not np.allclose(view, clean)


def test_extract_cached_reuses_and_invalidates(tiny, tmp_path, monkeypatch):
    import vsearch.learn.features as features

    model, paths = tiny
    cache = tmp_path / "cache"
    first = extract_cached(model, image_batches(paths, 32, 2), paths, cache, transform=customer_view, seed=3)
    assert len(list(cache.glob("*.npy"))) == 1
    calls = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    logs = []
    again = extract_cached(
        model, image_batches(paths, 32, 2), paths, cache, transform=customer_view, seed=3, log=logs.append
    )
    assert np.array_equal(first, again) and calls == [] and "from the cache" in logs[0]
    extract_cached(model, image_batches(paths, 32, 2), paths, cache, transform=customer_view, seed=4)
    assert calls == [1]  # another seed is another view
    model.layers[-1].set_weights([w + 1 for w in model.layers[-1].get_weights()])
    extract_cached(model, image_batches(paths, 32, 2), paths, cache, transform=customer_view, seed=3)
    assert calls == [1, 1]  # other weights
    before = files_digest(paths)
    with open(paths[0], "ab") as fh:
        fh.write(b"\0")
    assert files_digest(paths) != before  # other bytes -> another key
    for p in cache.glob("*.npy"):
        p.write_bytes(b"damaged")
    out = extract_cached(model, image_batches(paths, 32, 2), paths, cache, transform=customer_view, seed=3)
    assert out.shape == first.shape  # a damaged entry is recomputed, not an error
    assert extract_cached(model, image_batches(paths, 32, 2), paths, "").shape == (5, 8, 8, 2)


def test_tflite_runtime_computes_what_keras_does_and_keeps_the_conversion(tiny, tmp_path, monkeypatch):
    import tensorflow as tf

    from vsearch.learn.features import Frozen

    model, paths = tiny
    keras_out = extract(Frozen(model, "keras"), image_batches(paths, 32, 2), dtype=np.float32)
    frozen = Frozen(model, "tflite", cache_dir=tmp_path)
    assert frozen.runtime == "tflite" and not list(tmp_path.glob("*.tflite"))  # converted on first use
    lite_out = extract(frozen, image_batches(paths, 32, 2), dtype=np.float32)  # batches of 2, 2, 1: resized
    assert len(list(tmp_path.glob("*.tflite"))) == 1
    assert lite_out.shape == keras_out.shape == (5, 8, 8, 2)
    assert np.abs(keras_out).max() > 1 and np.allclose(lite_out, keras_out, rtol=1e-4, atol=1e-3)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", no_conversion)
    again = extract(Frozen(model, "tflite", cache_dir=tmp_path), image_batches(paths, 32, 2), dtype=np.float32)
    assert np.array_equal(again, lite_out)  # the flatbuffer came from the cache
    original = model.layers[-1].get_weights()
    model.layers[-1].set_weights([w + 1 for w in original])
    with pytest.raises(AssertionError, match="converted again"):
        Frozen(model, "tflite", cache_dir=tmp_path)(np.zeros((1, 32, 32, 3), np.float32))  # other weights
    monkeypatch.undo()
    entry = next(tmp_path.glob("*.tflite"))
    entry.write_bytes(b"damaged")  # (the first model's entry; the second was never written)
    model.layers[-1].set_weights(original)
    repaired = extract(Frozen(model, "tflite", cache_dir=tmp_path), image_batches(paths, 32, 2), dtype=np.float32)
    assert np.array_equal(repaired, lite_out) and entry.read_bytes() != b"damaged"


def test_views_on_disk_need_no_conversion(tiny, tmp_path, monkeypatch):
    import vsearch.learn.features as features
    from vsearch.learn.features import Frozen

    model, paths = tiny
    views = tmp_path / "views"
    first = extract_cached(
        Frozen(model, "tflite", cache_dir=tmp_path),
        image_batches(paths, 32, 2),
        paths,
        views,
        transform=customer_view,
        seed=3,
    )
    assert len(list(tmp_path.glob("*.tflite"))) == 1
    next(tmp_path.glob("*.tflite")).unlink()  # a re-run with the flatbuffer gone, the views kept
    converted = []
    monkeypatch.setattr(features, "tflite_flatbuffer", lambda *a, **k: converted.append(1) or b"")
    again = extract_cached(
        Frozen(model, "tflite", cache_dir=tmp_path),
        image_batches(paths, 32, 2),
        paths,
        views,
        transform=customer_view,
        seed=3,
    )
    assert np.array_equal(again, first) and converted == []


def test_runtime_auto_uses_tflite_without_a_gpu_for_enough_images_and_refuses_unknown_names():
    import tensorflow as tf

    from vsearch.errors import ConfigError
    from vsearch.learn.features import AUTO_TFLITE_MIN_IMAGES, resolve_runtime

    cpu = "keras" if tf.config.list_physical_devices("GPU") else "tflite"
    assert resolve_runtime("auto") == cpu
    assert resolve_runtime("auto", images=AUTO_TFLITE_MIN_IMAGES) == cpu
    assert resolve_runtime("auto", images=AUTO_TFLITE_MIN_IMAGES - 1) == "keras"  # not worth converting
    # 32x32 images are 1/49 of a 224x224 one's work: 49x as many are needed.
    assert resolve_runtime("auto", images=48 * AUTO_TFLITE_MIN_IMAGES, image_size=32) == "keras"
    assert resolve_runtime("auto", images=50 * AUTO_TFLITE_MIN_IMAGES, image_size=32) == cpu
    assert resolve_runtime("tflite", images=1) == "tflite"  # asked for by name: kept
    assert resolve_runtime("keras") == "keras"
    with pytest.raises(ConfigError, match="auto, keras, tflite"):
        resolve_runtime("onnx")


def test_cache_views_runs_each_job_and_keeps_the_cached_ones(image_root, tmp_path, monkeypatch):
    import keras

    import vsearch.learn.features as features
    from vsearch.config import DataConfig
    from vsearch.learn.features import View, cache_views

    inputs = keras.Input((32, 32, 3))
    bottom = keras.Model(inputs, keras.layers.Conv2D(2, 3, strides=4)(inputs))
    datasets = []
    for split in ("train", "validation"):
        paths = sorted(str(p) for p in (image_root / split).rglob("*.jpg"))[:4]
        ds = image_batches(paths, 32, 2)
        ds.file_paths = paths
        datasets.append(ds)
    train, val = datasets
    jobs = [
        (train, View("clean")),
        (train, View("view", customer_view, 3)),
        (val, View("val clean")),
        (val, View("val view", customer_view, 5, cached=False)),
    ]
    hashed = []
    real_digest = features.files_digest
    monkeypatch.setattr(features, "files_digest", lambda paths: hashed.append(len(paths)) or real_digest(paths))
    data = DataConfig(image_size=32, batch_size=2, feature_cache_dir=str(tmp_path), feature_runtime="keras")
    logs = []
    out = cache_views(bottom, data, jobs, logs.append)
    expected = [extract(bottom, ds, view.transform, view.seed, 2) for ds, view in jobs]
    assert all(np.array_equal(a, b) for a, b in zip(out, expected)) and not np.array_equal(out[0], out[1])
    assert len(list(tmp_path.glob("*.npy"))) == 3  # the uncached view is not kept
    assert hashed == [4, 4]  # each dataset's files hashed once, however many views it has
    logs.clear()
    again = cache_views(bottom, data, jobs, logs.append)
    assert all(np.array_equal(a, b) for a, b in zip(again, out))
    assert [("from the cache" in line) for line in logs] == [True, True, True, False]
    assert [line.split(":")[0] for line in logs] == [
        "  features clean",
        "  features view",
        "  features val clean",
        "  features val view",
    ]
