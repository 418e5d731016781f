import json
import re

import numpy as np
import pytest

from vsearch import config as c
from vsearch.learn.classifier import class_weights, joined_history, load_classifier, train_classifier, training_views


def test_class_weights_balance_the_classes():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    weights = class_weights(labels, 3)
    per_class_total = [weights[k] * np.sum(labels == k) for k in range(3)]
    assert np.allclose(per_class_total, per_class_total[0])  # each class weighs the same in the loss
    assert np.isclose(np.mean([weights[y] for y in labels]), 1.0)


def test_smoke_training_writes_every_artifact(smoke_run):
    out = smoke_run["root"] / "classifier"
    for name in (
        "classifier.keras",
        "config.json",
        "class_names.json",
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
    ):
        assert (out / name).is_file(), name
    assert any((out / "logs").rglob("events.out.tfevents*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == metrics["num_validation"] == 9
    assert c.load_json(c.ClassifierConfig, out / "config.json") == smoke_run["classifier"]
    assert {"feature_cache_s", "head_s", "fine_tune_s", "total_s"} <= set(metrics["timings"])
    # what was trained on cached bottom features is what the saved full model computes
    assert metrics["cache_max_abs_diff"] < 1e-2


def test_saved_classifier_reloads_and_predicts(smoke_run):
    model, names = load_classifier(smoke_run["root"] / "classifier")
    assert names == ["blue", "green", "red"]
    probs = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_missing_classifier_is_a_clear_error(tmp_path):
    from vsearch.errors import DataError

    with pytest.raises(DataError, match="run `vsearch train`"):
        load_classifier(tmp_path)


def test_training_excludes_bad_files(tmp_path):
    from conftest import awkward_files, make_image_folder

    data = make_image_folder(tmp_path / "data", split_counts=(("train", 3), ("validation", 2)))
    awkward_files(data / "train" / "red")
    cfg = c.preset(c.ClassifierConfig, "smoke")
    cfg = c.apply_overrides(
        cfg,
        {
            "data.data_dir": str(data),
            "out_dir": str(tmp_path / "clf"),
            "data.feature_cache_dir": str(tmp_path / "features"),
            "fine_tune_epochs": 0,
            "augment_views": 0,
        },
    )
    logged = []
    metrics = train_classifier(cfg, log=logged.append)
    assert metrics["num_train"] == 3 * 3 + 5  # five awkward-but-usable images are normalised
    assert {p.split("/")[-1] for p in metrics["excluded"]} == {"corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"}
    assert any("excluded (train)" in line and "empty.jpg" in line for line in logged)
    # `auto` keeps so few images on Keras: converting to LiteRT would cost more than it saves.
    assert cfg.data.feature_runtime == "auto"
    assert any(line.endswith("(keras)") for line in logged if "features" in line)
    assert not any("to TFLite in" in line for line in logged)
    assert not list((tmp_path / "features").glob("*.tflite"))


def test_frozen_bottom_runs_on_litert_and_is_converted_once(smoke_run):
    # The smoke run asks for tflite by name (`auto` would keep so few images on Keras).
    train_logs, siamese_logs = smoke_run["logs"]["train"], smoke_run["logs"]["siamese"]
    assert smoke_run["classifier"].data.feature_runtime == "tflite"
    assert any(line.endswith("(tflite)") for line in train_logs if "features" in line)
    assert any(line.endswith("(tflite)") for line in siamese_logs if "features" in line)
    # stage 2 reads the flatbuffer stage 1 converted
    assert sum("to TFLite in" in line for line in train_logs) == 1
    assert not any("to TFLite in" in line for line in siamese_logs)


def test_training_views_are_the_clean_one_then_seeded_augmentations():
    from vsearch.augment import CUSTOMER_VIEW_SEED, classifier_view, customer_view

    mild = training_views(c.apply_overrides(c.ClassifierConfig(), {"augment_views": 2, "data.seed": 5}))
    assert [(v.label, v.transform, v.seed) for v in mild] == [
        ("train clean", None, 0),
        ("train view 1", classifier_view, 6),
        ("train view 2", classifier_view, 7),
    ]
    customer = training_views(c.apply_overrides(c.ClassifierConfig(), {"augment_views": 1, "augmentation": "customer"}))
    # the very views stage 2 caches as its customer view 1, so the caches are shared
    assert [(v.transform, v.seed) for v in customer] == [(None, 0), (customer_view, CUSTOMER_VIEW_SEED + 1)]
    assert all(v.cached for v in mild + customer)


def test_joined_history_puts_the_phases_end_to_end():
    head = {"accuracy": [0.5, 0.6], "loss": [2.0, 1.5], "val_accuracy": [0.4, 0.5], "val_loss": [2.1, 1.9]}
    fine = {"accuracy": [0.7], "loss": [1.2], "val_accuracy": [0.55], "val_loss": [1.8], "learning_rate": [1e-4]}
    history, starts = joined_history([head, fine])
    assert history == {
        "accuracy": [0.5, 0.6, 0.7],
        "loss": [2.0, 1.5, 1.2],
        "val_accuracy": [0.4, 0.5, 0.55],
        "val_loss": [2.1, 1.9, 1.8],
    }
    assert starts == [0, 2]


def test_a_loss_that_is_no_longer_finite_stops_training_and_saves_nothing(tmp_path, capsys):
    from conftest import make_image_folder

    from vsearch import cli

    data = make_image_folder(tmp_path / "data", split_counts=(("train", 3), ("validation", 2)))
    out = tmp_path / "clf"
    # A finite but absurd learning rate: the first step throws the weights to ~1e38, the next loss overflows.
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "smoke",
                "--data-dir",
                str(data),
                "--set",
                f"out_dir={out}",
                "--set",
                f"data.feature_cache_dir={tmp_path / 'features'}",
                "--set",
                "head_learning_rate=1e38",
                "--set",
                "augment_views=0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"training classifier_head: the loss became (nan|inf) at epoch 1", err[0])
    assert "head_learning_rate" in err[0]
    for name in ("classifier.keras", "config.json", "class_names.json", "metrics.json"):
        assert not (out / name).exists(), name
