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


def test_eval_config_holds_the_search_settings_of_its_served_road(tmp_path):
    cfg = c.apply_overrides(c.EvalConfig(), {"search.regions": "centre", "search.reranker.depth": "4"})
    assert (
        cfg.search.regions == "centre" and cfg.search.reranker.depth == 4 and c.EvalConfig().search == c.SearchConfig()
    )
    thorough = c.preset(c.EvalConfig, "thorough")
    assert thorough.search == c.preset(c.SearchConfig, "thorough") and thorough.model_dir == c.EvalConfig().model_dir
    c.save_json(thorough, tmp_path / "config.json")
    assert c.load_json(c.EvalConfig, tmp_path / "config.json") == thorough
    with pytest.raises(c.ConfigError, match="search.regions must be one of none, centre"):
        c.apply_overrides(c.EvalConfig(), {"search.regions": "everywhere"})


def test_overrides_from_give_back_the_config():
    cfg = c.apply_overrides(
        c.preset(c.SearchConfig, "thorough"), {"rerank": "false", "category_prior": "0.05", "reranker.depth": "3"}
    )
    settings = c.overrides_from(cfg)
    assert settings == ["category_prior=0.05", "rerank=false", "reranker.depth=3", "regions=centre"]
    assert c.apply_overrides(c.SearchConfig(), c.parse_overrides(settings)) == cfg
    assert c.overrides_from(c.SearchConfig()) == [] and c.overrides_from(cfg, cfg) == []


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


# ---------------------------------------------------------------- serving: SearchConfig, ServerConfig


@pytest.mark.parametrize("cls", [c.SearchConfig, c.ServerConfig])
@pytest.mark.parametrize("name", ["default", "smoke", "cosine", "thorough"])
def test_serving_presets_round_trip_through_json(tmp_path, cls, name):
    cfg = c.preset(cls, name)
    c.save_json(cfg, tmp_path / "config.json")
    assert c.load_json(cls, tmp_path / "config.json") == cfg


def test_serving_presets():
    smoke, cosine = c.preset(c.ServerConfig, "smoke"), c.preset(c.ServerConfig, "cosine")
    assert smoke.decode_budget_mb < c.ServerConfig().decode_budget_mb and smoke.search.reranker.depth < 10
    assert cosine.search.category_prior == 0 and cosine.search.rerank is False
    assert cosine.search == c.preset(c.SearchConfig, "cosine")
    thorough = c.preset(c.ServerConfig, "thorough").search
    assert thorough.regions == "centre" and c.SearchConfig().regions == "none"
    assert thorough == c.preset(c.SearchConfig, "thorough")


def test_a_serving_config_file_holds_any_subset_of_the_fields_nested_at_any_depth(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"port": 9000, "search": {"k": 8, "reranker": {"depth": 4}}}))
    cfg = c.load_json(c.ServerConfig, path)
    assert cfg.port == 9000 and cfg.search.k == 8 and cfg.search.reranker.depth == 4
    assert cfg.search.reranker.min_inliers == c.RerankConfig().min_inliers and cfg.host == c.ServerConfig().host


def test_serving_overrides_are_parsed_with_field_types():
    cfg = c.apply_overrides(
        c.ServerConfig(),
        {
            "port": "9000",
            "docs": "false",
            "max_upload_mb": "2.5",
            "search.rerank": "off",
            "search.reranker.ratio": "0.7",
            "search.regions": "centre",
        },
    )
    assert (cfg.port, cfg.docs, cfg.max_upload_mb) == (9000, False, 2.5)
    assert cfg.search.rerank is False and cfg.search.reranker.ratio == 0.7 and cfg.search.regions == "centre"
    assert cfg.max_upload_bytes == int(2.5 * c.MB) and cfg.decode_budget_bytes == 1024 * c.MB


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"port": "0"}, "port must be 1..65535, got 0"),
        ({"host": " "}, "host must not be empty"),
        ({"max_upload_mb": "0"}, "max_upload_mb must be a positive number of MB"),
        ({"max_upload_mb": "1e-9"}, "max_upload_mb must be a positive number of MB"),
        ({"decode_budget_mb": "-5"}, "decode_budget_mb must be a positive number of MB"),
        ({"decode_budget_mb": "nan"}, "decode_budget_mb: expected a finite number"),
        ({"decode_wait_s": "-1"}, "decode_wait_s must be a number of seconds >= 0"),
        ({"decode_max_waiting": "-1"}, "decode_max_waiting must be >= 0"),
        ({"reload_interval_s": "-1"}, "reload_interval_s must be a number of seconds >= 0"),
        ({"page_k": "101"}, "page_k must be 1..100"),
        ({"docs": "maybe"}, "docs: expected a boolean"),
        ({"search.k": "0"}, "search.k must be >= 1, got 0"),
        ({"search.k": "101"}, "search.k must be 1..100"),
        ({"search.k": "many"}, "search.k: expected int"),
        ({"search.category": ""}, "search.category must be auto, any or a category name"),
        ({"search.category_prior": "-0.5"}, "search.category_prior must be a number >= 0, got -0.5"),
        ({"search.category_prior": float("nan")}, "search.category_prior must be a number >= 0, got nan"),
        ({"search.max_pixels": "0"}, "search.max_pixels must be >= 1"),
        ({"search.max_bytes": "0"}, "search.max_bytes must be >= 1"),
        ({"search.reranker.depth": "0"}, "search.reranker.depth must be >= 1, got 0"),
        ({"search.reranker.side": "16"}, "search.reranker.side must be >= 32"),
        ({"search.reranker.detector": "akaze"}, "search.reranker.detector must be one of orb, sift"),
        ({"search.reranker.ratio": "1.5"}, r"search.reranker.ratio must be in \(0, 1\]"),
        ({"search.reranker.reprojection": "inf"}, "search.reranker.reprojection: expected a finite number"),
        ({"search.regions": "grid"}, "search.regions must be one of none, centre, got 'grid'"),
        ({"search.regions": ""}, "search.regions must be one of none, centre, got ''"),
        ({"search.nope": "1"}, "unknown config key 'nope' for SearchConfig"),
        ({"search": "x"}, "is a group"),
    ],
)
def test_bad_serving_values_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(c.ConfigError, match=message):
        c.apply_overrides(c.ServerConfig(), overrides)


def test_a_search_config_of_its_own_names_its_keys_without_the_group():
    with pytest.raises(c.ConfigError, match="^category_prior must be a number >= 0, got -1.0"):
        c.apply_overrides(c.SearchConfig(), {"category_prior": "-1"})
    with pytest.raises(c.ConfigError, match="^reranker.features must be >= 1"):
        c.apply_overrides(c.SearchConfig(), {"reranker.features": "0"})
    with pytest.raises(c.ConfigError, match="category_prior must be a number >= 0"):
        c.SearchConfig(category_prior=float("inf"))  # built in code: the same check
    with pytest.raises(c.ConfigError, match="^regions must be one of none, centre, got 'Centre'"):
        c.SearchConfig(regions="Centre")


def test_each_region_set_is_named_once():
    from vsearch.catalog.regions import REGION_BOXES

    assert tuple(REGION_BOXES) == c.REGION_SETS and REGION_BOXES["none"] == ()
    for boxes in REGION_BOXES.values():
        assert all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for x0, y0, x1, y1 in boxes)


def test_each_serving_limit_has_one_default():
    from vsearch.catalog.rerank import RerankConfig
    from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    search = c.SearchConfig()
    assert search.category_prior == c.CATEGORY_PRIOR and RerankConfig is c.RerankConfig
    assert search.max_pixels == DEFAULT_MAX_PIXELS == c.DataConfig().max_image_pixels
    assert search.max_bytes == DEFAULT_MAX_BYTES
    assert c.ServerConfig(max_upload_mb=100).max_upload_bytes == DEFAULT_MAX_BYTES  # capped by search.max_bytes
