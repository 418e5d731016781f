import dataclasses
import json

import pytest

from vsearch import config as c


@pytest.mark.parametrize("cls", [c.ClassifierConfig, c.SiameseConfig, c.EvalConfig])
@pytest.mark.parametrize("name", ["default", "smoke"])
def test_presets_round_trip_through_json(tmp_path, cls, name):
    cfg = c.preset(cls, name)
    c.save_json(cfg, tmp_path / "config.json")
    assert c.load_json(cls, tmp_path / "config.json") == cfg


def test_smoke_preset_is_small():
    smoke = c.preset(c.ClassifierConfig, "smoke")
    assert smoke.data.image_size == 32 and smoke.backbone_weights == "none"
    assert smoke.head_epochs == 1


def test_overrides_are_parsed_with_field_types():
    cfg = c.apply_overrides(
        c.ClassifierConfig(),
        {
            "head_epochs": "3",
            "dropout": "0.5",
            "class_weighting": "false",
            "data.image_size": "160",
            "fine_tune_from": "block_12",
        },
    )
    assert cfg.head_epochs == 3 and cfg.dropout == 0.5 and cfg.class_weighting is False
    assert cfg.data.image_size == 160 and cfg.fine_tune_from == "block_12"
    assert c.ClassifierConfig().head_epochs != 3  # the original is untouched (frozen)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"no_such_key": "1"}, "unknown config key 'no_such_key'"),
        ({"data.nope": "1"}, "unknown config key 'nope'"),
        ({"head_epochs": "three"}, "head_epochs: expected int"),
        ({"class_weighting": "maybe"}, "expected a boolean"),
        ({"data": "x"}, "is a group"),
        ({"dropout": "1.5"}, "dropout must be in"),
        ({"head_epochs": True}, "expected int"),
        ({"data.image_size": "16"}, "image_size must be >= 32"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(c.ConfigError, match=message):
        c.apply_overrides(c.ClassifierConfig(), overrides)


def test_parse_overrides_rejects_missing_equals():
    assert c.parse_overrides(["a=1", " data.b = x "]) == {"a": "1", "data.b": "x"}
    with pytest.raises(c.ConfigError, match="not KEY=VALUE"):
        c.parse_overrides(["epochs"])


def test_unknown_preset():
    with pytest.raises(c.ConfigError, match="unknown preset 'huge'"):
        c.preset(c.SiameseConfig, "huge")


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.SiameseConfig().margin = 1.0  # type: ignore[misc]


def test_siamese_validation():
    with pytest.raises(c.ConfigError, match="mining must be"):
        c.SiameseConfig(mining="hardest")
    with pytest.raises(c.ConfigError, match="instance_fraction"):
        c.SiameseConfig(instance_fraction=1.5)
    with pytest.raises(c.ConfigError, match="class_probs_weight"):
        c.SiameseConfig(class_probs_weight=-1)


def test_classifier_validation():
    with pytest.raises(c.ConfigError, match="lr_schedule must be"):
        c.ClassifierConfig(lr_schedule="step")
    with pytest.raises(c.ConfigError, match="augmentation must be one of mild, customer"):
        c.ClassifierConfig(augmentation="mixup")
    with pytest.raises(c.ConfigError, match="data.feature_runtime must be one of auto, keras, tflite"):
        c.DataConfig(feature_runtime="onnx")
    assert c.apply_overrides(c.ClassifierConfig(), {"lr_schedule": "constant"}).lr_schedule == "constant"


def test_a_config_json_written_before_a_value_was_renamed_still_loads(tmp_path):
    # Classifiers trained when the views were Keras layers recorded augmentation "keras" (now "mild").
    data = c.to_dict(c.ClassifierConfig())
    data["augmentation"] = "keras"
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert c.load_json(c.ClassifierConfig, tmp_path / "config.json").augmentation == "mild"
    data["augmentation"] = "mixup"  # other values are still checked
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(c.ConfigError, match="augmentation must be"):
        c.load_json(c.ClassifierConfig, tmp_path / "config.json")


def test_eval_validation():
    with pytest.raises(c.ConfigError, match="grid_queries must be >= 1"):
        c.EvalConfig(grid_queries=0)


@pytest.mark.parametrize(
    "text, message", [(None, "cannot read it"), ("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_unreadable_config_file_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(c.ConfigError, match=f"--config .*config.json: {message}"):
        c.load_json(c.ClassifierConfig, path)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_non_finite_overrides_are_refused_naming_the_key(raw):
    with pytest.raises(c.ConfigError, match=f"head_learning_rate: expected a finite number, got {raw!r}"):
        c.apply_overrides(c.ClassifierConfig(), {"head_learning_rate": raw})
    with pytest.raises(c.ConfigError, match="learning_rate: expected a finite number"):
        c.apply_overrides(c.SiameseConfig(), {"learning_rate": float(raw)})  # typed values too


def test_non_finite_numbers_in_a_config_file_are_refused(tmp_path):
    path = tmp_path / "config.json"
    c.save_json(c.SiameseConfig(), path)
    path.write_text(path.read_text().replace('"margin": 0.2', '"margin": Infinity'))  # Python's json reads it
    with pytest.raises(c.ConfigError, match="margin: expected a finite number, got inf"):
        c.load_json(c.SiameseConfig, path)


def test_configs_built_in_code_refuse_non_finite_numbers():
    with pytest.raises(c.ConfigError, match="fine_tune_learning_rate: expected a finite number, got nan"):
        c.ClassifierConfig(fine_tune_learning_rate=float("nan"))
    with pytest.raises(c.ConfigError, match="temperature: expected a finite number, got inf"):
        c.SiameseConfig(temperature=float("inf"))


def test_save_json_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    import os

    path = tmp_path / "config.json"
    c.save_json(c.ClassifierConfig(), path)
    before = path.read_text()

    def interrupted(*args):  # Ctrl-C just before the new file would have replaced the old one
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.save_json(c.preset(c.ClassifierConfig, "smoke"), path)
    monkeypatch.undo()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.json"]
