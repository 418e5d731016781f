"""Training under ``strategy=mirrored`` on two logical CPU devices against one replica.

TensorFlow splits a CPU into logical devices only before it initialises its devices, which
the test process has long done, so the runs happen in a subprocess: this file run as a
script (``python tests/learn/test_strategy.py fit|stages ROOT``), which writes ``ROOT/result.json``.

``fit``: one phase of stage 1's ``fit_phase`` on a tiny head, every run (about 15 s).
``stages``: both stages end to end and the export, opt-in (``VSEARCH_SLOW=1``): two full
smoke runs, one of them tracing MobileNetV2 for two replicas, take about 3 CPU minutes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vsearch import config as c
from vsearch.errors import ConfigError

# The runs' differences come from float32 sums taken in another order: each replica's
# gradient is summed over its half of the batch and the halves are added in the all-reduce,
# and the loss is averaged per replica first. Measured, they stay below 1e-6 relative; a
# real difference (a gradient counted twice, a batch seen by one replica only) moves the
# losses by 1e-2 or more within these few steps, so 1e-4 tells them apart.
TOLERANCE = 1e-4

slow = pytest.mark.skipif(not os.environ.get("VSEARCH_SLOW"), reason="opt-in (about 3 CPU minutes): VSEARCH_SLOW=1")


def test_unknown_strategy_is_a_config_error():
    from vsearch.learn.fitting import distribution_strategy

    with pytest.raises(ConfigError, match="strategy must be one of auto, none, mirrored, got 'tpu'"):
        c.apply_overrides(c.SiameseConfig(), {"strategy": "tpu"})
    with pytest.raises(ConfigError, match="strategy must be one of"):
        distribution_strategy("multiworker")


def test_strategy_is_a_field_of_both_training_stages():
    for cls in (c.ClassifierConfig, c.SiameseConfig):
        assert cls().strategy == "auto"
        assert c.apply_overrides(cls(), {"strategy": "mirrored"}).strategy == "mirrored"


def test_none_is_one_replica_and_so_is_auto_without_two_gpus():
    import tensorflow as tf

    from vsearch.learn.fitting import distribution_strategy

    logged = []
    assert distribution_strategy("none", logged.append).num_replicas_in_sync == 1
    assert logged == ["strategy none: 1 replica"]
    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert distribution_strategy("auto").num_replicas_in_sync == 1


def _subprocess(root: Path, what: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), what, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "result.json").read_text())


def _assert_close(a, b, what) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape and a.size >= 1, what
    assert np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE), (what, a, b)


def test_fit_phase_on_two_replicas_computes_what_one_replica_computes(tmp_path):
    runs = _subprocess(tmp_path, "fit")
    one, two = runs["none"], runs["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["same_strategy_twice"]  # a second MirroredStrategy would collide with the first's all-reduces
    for key in ("loss", "val_loss", "accuracy"):
        _assert_close(one["history"][key], two["history"][key], key)
    _assert_close(one["kernel"], two["kernel"], "kernel")
    moved = np.abs(np.asarray(one["kernel"]) - np.asarray(one["start"])).max()
    assert moved > 100 * TOLERANCE  # the runs trained: agreeing is not agreeing on the start


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict:
    return _subprocess(tmp_path_factory.mktemp("strategy"), "stages")


@slow
def test_both_stages_run_on_two_replicas_and_cache_their_features(stages):
    one, two = stages["none"], stages["mirrored"]
    assert (one["classifier"]["replicas"], one["siamese"]["replicas"]) == (1, 1)
    assert (two["classifier"]["replicas"], two["siamese"]["replicas"]) == (2, 2)
    assert "strategy mirrored: 2 replicas (" in two["log"] and "CPU:1" in two["log"]
    assert "strategy none: 1 replica" in one["log"]
    for run in (one, two):
        # each run made its own feature caches (own folder), and trained on what the saved models compute
        assert "features train clean: 18 images in " in run["log"]
        assert max(run["classifier"]["cache_max_abs_diff"], run["siamese"]["cache_max_abs_diff"]) < 1e-2


@slow
def test_both_stages_on_two_replicas_compute_what_one_replica_computes(stages):
    one, two = stages["none"], stages["mirrored"]
    for stage, keys in (("classifier", ("loss", "val_loss", "accuracy", "val_accuracy")), ("siamese", ("loss",))):
        for key in keys:
            _assert_close(one[stage]["history"][key], two[stage]["history"][key], (stage, key))
    # Training moved the instance projection away from its PCA start (orthonormal columns),
    # so agreeing on it is not agreeing on where both runs started.
    assert min(one["projection_moved"], two["projection_moved"]) > 10 * TOLERANCE


@slow
def test_both_stages_on_two_replicas_export_the_same_contract(stages):
    one, two = stages["none"], stages["mirrored"]
    assert two["signatures"] == one["signatures"]
    assert two["metadata_keys"] == one["metadata_keys"]
    a, b = np.asarray(one["embeddings"]), np.asarray(two["embeddings"])
    assert a.shape == b.shape and a.shape[0] == 9
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < TOLERANCE


# ---------------------------------------------------------------- the subprocess


def _fit(root: Path) -> dict:
    """Stage 1's fit_phase on a softmax head over random vectors, under each strategy."""
    import keras

    from vsearch.learn.classifier import class_weights, fit_phase
    from vsearch.learn.fitting import distribution_strategy

    rng = np.random.default_rng(0)
    # 40 and 12 samples in batches of 8: every batch splits evenly across two replicas
    x, y = rng.normal(size=(40, 16)).astype(np.float32), np.arange(40) % 3
    x_val, y_val = rng.normal(size=(12, 16)).astype(np.float32), np.arange(12) % 3
    config = c.ClassifierConfig(data=c.DataConfig(batch_size=8), patience=10)
    result = {}
    for name in ("none", "mirrored"):
        strategy = distribution_strategy(name)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((16,))
            model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs), name="head")
            start = model.layers[-1].get_weights()[0]
            history = fit_phase(model, (x, y), (x_val, y_val), config, 3, 1e-2, class_weights(y, 3))
        result[name] = {
            "replicas": strategy.num_replicas_in_sync,
            "history": history,
            "start": start.tolist(),
            "kernel": model.layers[-1].get_weights()[0].tolist(),
            "same_strategy_twice": distribution_strategy(name) is strategy,
        }
    return result


def _signatures(loaded) -> dict:
    def specs(structure) -> list[str]:
        return sorted(f"{k}:{s.dtype.name}{s.shape}" for k, s in structure.items())

    return {
        name: {"inputs": specs(fn.structured_input_signature[1]), "outputs": specs(fn.structured_outputs)}
        for name, fn in sorted(loaded.signatures.items())
    }


def _stages_under(root: Path, data: Path, weights: Path, strategy: str) -> dict:
    """Both stages on the synthetic catalog under ``strategy``; what the tests compare."""
    import keras
    import tensorflow as tf

    from vsearch.learn.classifier import train_classifier
    from vsearch.learn.siamese import train_siamese

    out = root / strategy
    data_cfg = c.DataConfig(
        data_dir=str(data),
        image_size=32,
        batch_size=8,
        feature_cache_dir=str(out / "features"),
        feature_runtime="keras",
    )
    # No dropout: each replica would draw its own masks, so the runs could not be compared.
    # block_16: the smallest top to trace, twice over under two replicas.
    clf = dataclasses.replace(
        c.preset(c.ClassifierConfig, "smoke"),
        data=data_cfg,
        backbone_weights=str(weights),
        dropout=0.0,
        fine_tune_from="block_16",
        out_dir=str(out / "classifier"),
        strategy=strategy,
    )
    # No in-batch term: its negatives are each replica's half of the batch (documented), which
    # changes the loss on purpose; the margin loss is a mean over triplets, the same split or not.
    # Ten times smoke's learning rate: the two steps move the weights well beyond TOLERANCE.
    sia = dataclasses.replace(
        c.preset(c.SiameseConfig, "smoke"),
        data=data_cfg,
        classifier_dir=clf.out_dir,
        out_dir=str(out / "embedding"),
        work_dir=str(out / "siamese"),
        fine_tune_from="block_16",
        instance_loss_weight=0.0,
        learning_rate=1e-3,
        strategy=strategy,
    )
    log: list[str] = []
    classifier = train_classifier(clf, log=log.append)
    siamese = train_siamese(sia, log=log.append)
    photos = sorted(p for p in (data / "validation").rglob("*") if p.is_file())
    loaded = tf.saved_model.load(sia.out_dir)
    embeddings = loaded.signatures["serving_default"](image_bytes=tf.constant([p.read_bytes() for p in photos]))
    tower = keras.saving.load_model(Path(sia.work_dir) / "tower.keras")
    kernel = np.asarray(tower.get_layer("instance_projection").kernel)
    meta = json.loads((Path(sia.out_dir) / "assets.extra" / "vsearch.json").read_text())
    keep = ("history", "replicas", "cache_max_abs_diff")
    return {
        "classifier": {k: classifier[k] for k in keep},
        "siamese": {k: siamese[k] for k in keep},
        "projection_moved": float(np.abs(kernel.T @ kernel - np.eye(kernel.shape[1])).max()),
        "log": "\n".join(log),
        "signatures": _signatures(loaded),
        "metadata_keys": sorted(meta),
        "embeddings": embeddings["embedding"].numpy().tolist(),
    }


def _stages(root: Path) -> dict:
    from conftest import calibrated_backbone_weights, make_image_folder

    data = make_image_folder(root / "data")
    weights = calibrated_backbone_weights(root / "backbone.weights.h5", data)
    return {strategy: _stages_under(root, data, weights, strategy) for strategy in ("none", "mirrored")}


def main(what: str, root: Path) -> None:
    import tensorflow as tf

    # Before anything initialises TensorFlow's devices: two logical CPUs for MirroredStrategy.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    result = {"fit": _fit, "stages": _stages}[what](root)
    (root / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest
    main(sys.argv[1], Path(sys.argv[2]))
