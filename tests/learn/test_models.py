import keras
import numpy as np
import pytest
from conftest import build_tower

from vsearch.errors import BackboneError
from vsearch.learn import models


@pytest.fixture(scope="module")
def tiny_base():
    return models.build_backbone(32, "none", alpha=0.35)


def test_l2_normalize_round_trip_and_norms():
    layer = models.L2Normalize(epsilon=1e-10, name="n")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.get_config() == layer.get_config()
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    assert np.allclose(np.asarray(clone(x)), [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ValueError, match="epsilon"):
        models.L2Normalize(epsilon=0)


def test_split_backbone_composes_to_the_whole(tiny_base):
    bottom, top = models.split_backbone(tiny_base, "block_14")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    whole = np.asarray(tiny_base(x / 127.5 - 1.0, training=False))  # the bottom preprocesses pixels
    assert np.allclose(np.asarray(top(bottom(x, training=False), training=False)), whole, atol=1e-5)
    assert top.layers[1].name.startswith("block_14")


@pytest.mark.parametrize("name", ["block_99", "conv", "block_"])
def test_bad_cut_names(tiny_base, name):
    with pytest.raises(BackboneError):
        models.split_backbone(tiny_base, name)


def test_fine_tuning_keeps_batchnorm_frozen(tiny_base):
    _, top = models.split_backbone(tiny_base, "block_15")
    models.set_fine_tuning(top, True)
    bns = [l for l in top.layers if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l for l in top.layers if isinstance(l, keras.layers.Conv2D)]
    assert bns and not any(l.trainable for l in bns)
    assert all(l.trainable for l in convs)


def test_fine_tuning_unfreezes_layers_frozen_one_by_one(tiny_base):
    """A layer frozen on its own (as in a clone of a frozen model) is trainable after fine-tuning is on."""
    _, top = models.split_backbone(tiny_base, "block_15")
    convs = [l for l in top.layers if isinstance(l, keras.layers.Conv2D)]
    for layer in convs:
        layer.trainable = False
    models.set_fine_tuning(top, True)
    assert all(l.trainable for l in convs) and top.trainable_weights
    models.set_fine_tuning(top, False)
    assert not top.trainable_weights


def test_tower_outputs_unit_vectors_and_round_trips(tiny_base, tmp_path):
    tower = build_tower(tiny_base, 8, 32)
    projection = tower.get_layer("projection")  # an untrained tiny backbone outputs near zero
    projection.set_weights([projection.get_weights()[0], np.linspace(-1, 1, 8).astype(np.float32)])
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    out = tower.predict(x, verbose=0)
    assert out.shape == (2, 8) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    tower.save(tmp_path / "tower.keras")
    again = keras.saving.load_model(tmp_path / "tower.keras")
    assert np.allclose(again.predict(x, verbose=0), out, atol=1e-6)


def test_triplet_model_save_load_compare(tiny_base, tmp_path):
    tower = build_tower(tiny_base, 4, 32)
    triplet = models.build_triplet_model(tower, margin=0.3)
    assert [t.name for t in triplet.inputs] == ["anchor", "positive", "negative"]
    x = [np.random.default_rng(i).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32) for i in range(3)]
    out = triplet.predict(x, verbose=0)
    triplet.save(tmp_path / "triplet.keras")
    again = keras.saving.load_model(tmp_path / "triplet.keras")
    assert np.allclose(again.predict(x, verbose=0), out, atol=1e-6)
    assert again.get_layer("triplet_loss").margin == 0.3


def test_triplet_model_trains_with_fit(tiny_base):
    inputs = keras.Input((6,))
    tower = keras.Model(inputs, models.L2Normalize()(keras.layers.Dense(4)(inputs)))
    triplet = models.build_triplet_model(tower, margin=0.5)
    triplet.compile(optimizer=keras.optimizers.Adam(0.05))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 6)).astype(np.float32)
    data = [a, a + 0.05 * rng.normal(size=a.shape).astype(np.float32), rng.normal(size=(64, 6)).astype(np.float32)]
    history = triplet.fit(data, epochs=15, batch_size=16, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert "active_fraction" in history


def test_triplet_model_with_product_ids_trains_and_round_trips(tmp_path):
    inputs = keras.Input((6,))
    tower = keras.Model(inputs, models.L2Normalize()(keras.layers.Dense(4)(inputs)))
    triplet = models.build_triplet_model(tower, margin=0.5, instance_weight=1.0, product_ids=True)
    assert [t.name for t in triplet.inputs] == ["anchor", "positive", "negative", "products"]
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 6)).astype(np.float32)
    products = np.stack([np.arange(16) % 3, np.arange(16) % 3, 3 + np.arange(16) % 2], axis=1)
    data = [a, a + 0.05 * rng.normal(size=a.shape).astype(np.float32), rng.normal(size=a.shape).astype(np.float32)]
    triplet.compile(optimizer=keras.optimizers.Adam(0.05))
    assert "active_fraction" in triplet.fit([*data, products], epochs=2, batch_size=8, verbose=0).history
    out = triplet.predict([*data, products], verbose=0)
    triplet.save(tmp_path / "triplet.keras")
    again = keras.saving.load_model(tmp_path / "triplet.keras")
    assert np.allclose(again.predict([*data, products], verbose=0), out, atol=1e-6)


def test_triplet_model_takes_every_input_of_a_multi_input_tower():
    # The siamese stage's training tower: (cached feature map, cached class-branch vector).
    features, class_pooled = keras.Input((2, 2, 3), name="features"), keras.Input((5,), name="class_pooled")
    joined = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(features), class_pooled])
    tower = keras.Model([features, class_pooled], models.L2Normalize()(keras.layers.Dense(4)(joined)))
    triplet = models.build_triplet_model(tower, margin=0.5)
    assert [t.name for t in triplet.inputs] == [
        f"{role}_{name}" for role in ("anchor", "positive", "negative") for name in ("features", "class_pooled")
    ]
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(6, 2, 2, 3)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)] * 3
    distances = triplet.predict(data, verbose=0)
    # anchor and positive are the same inputs here, the negative too: every distance is zero
    assert np.allclose(distances, 0.0, atol=1e-5)
    data[4:] = [rng.normal(size=(6, 2, 2, 3)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)]
    assert np.asarray(triplet.predict(data, verbose=0)).max() > 1e-3  # the negatives' second input is used
    triplet.compile(optimizer=keras.optimizers.Adam(0.05))
    assert "active_fraction" in triplet.fit(data, epochs=2, batch_size=3, verbose=0).history


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        models.build_backbone(32, str(tmp_path / "nope.h5"), alpha=0.35)


def test_imagenet_without_cache_or_network_says_what_to_do(tmp_path, monkeypatch):
    import keras.src.applications.mobilenet_v2 as mnv2

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(mnv2.file_utils, "get_file", offline)
    with pytest.raises(BackboneError, match="KERAS_HOME"):
        models.build_backbone(224, "imagenet")
