import json

import numpy as np
import pytest
from conftest import awkward_files

from vsearch import config as c
from vsearch.learn import evaluate


@pytest.fixture(scope="module")
def eval_run(smoke_run, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    cfg = c.apply_overrides(
        c.preset(c.EvalConfig, "smoke"),
        {
            "data.data_dir": str(smoke_run["data"]),
            "model_dir": str(smoke_run["root"] / "embedding"),
            "classifier_dir": str(smoke_run["root"] / "classifier"),
            "reports_dir": str(reports),
            "data.feature_cache_dir": str(smoke_run["root"] / "features"),
        },
    )
    summary = evaluate.run_eval(cfg, log=lambda *_: None)
    return reports, summary


def test_eval_writes_reports_and_pictures(eval_run):
    reports, summary = eval_run
    for name in (
        "metrics.json",
        "eval.md",
        "retrieval.png",
        "retrieval_grid.png",
        "embedding_map.png",
        "customer_photo.png",
        "reliability.png",
    ):
        assert (reports / name).is_file(), name
    saved = json.loads((reports / "metrics.json").read_text())
    assert saved["models"].keys() == summary["models"].keys()
    assert len(saved["models"]) == 3  # frozen baseline, fine-tuned features, exported model
    exported = saved["models"]["exported embedding (SavedModel)"]
    for key in ("precision@1", "precision@5", "recall@1", "recall@5", "recall@10", "r_precision", "map@r"):
        assert 0.0 <= exported["overall"][key] <= 1.0
    assert set(exported["per_class"]) == {"blue", "green", "red"}
    assert exported["customer_photo"]["num_queries"] == 9
    assert "classifier" in saved and saved["machine"] and saved["commit"]
    text = (reports / "eval.md").read_text()
    assert "| exported embedding (SavedModel) |" in text and "MAP@R" in text
    # the served road and the SavedModel's in-graph decoding, side by side (their closeness is
    # held by test_litert on a well-conditioned model; the random smoke tower magnifies the
    # JPEG decoders' one-level differences)
    graph = saved["in_graph"]
    assert graph["num_images"] == 9 and -1.0 <= graph["cosine_min"] <= graph["cosine_mean"] <= 1.0 + 1e-6
    assert 0.0 <= graph["precision@1"] <= 1.0
    assert "serving_default" in text
    served = saved["served"]  # the same model through the Searcher's defaults
    assert served["name"].startswith("served ranking: exported embedding") and "| **served ranking" in text
    assert served["customer_photo"]["num_queries"] == 9
    assert all(0.0 <= served["overall"][key] <= 1.0 for key in ("precision@1", "map@r"))
    calibration = saved["calibration"]  # the verdict's figures, measured on photos not used to fit it
    assert calibration["seeds"] == {"fit": 0, "check": 1} and 0.0 <= calibration["ece_exact"] <= 1.0


def test_customer_queries_are_seeded(smoke_run):
    paths = sorted(str(p) for p in (smoke_run["data"] / "validation").rglob("*.jpg"))
    a, ta = evaluate.customer_queries(paths, seed=3, limit=2)
    b, tb = evaluate.customer_queries(paths, seed=3, limit=2)
    assert (ta == tb).all() and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_customer_matching_by_hand():
    catalog = np.eye(3)[:2]
    originals = np.array([[0.0, 0.0, 1.0]])
    photos = np.array([[0.1, 0.0, 0.99]])
    assert evaluate.customer_matching(photos, np.array([0]), catalog, originals)["recall@1"] == 1.0
    far = np.array([[0.99, 0.0, 0.1]])
    result = evaluate.customer_matching(far, np.array([0]), catalog, originals)
    assert result["recall@1"] == 0.0 and result["recall@10"] == 1.0


def test_query_photo_in_the_picture(smoke_run, tmp_path):
    files = awkward_files(tmp_path / "q")
    cfg = c.apply_overrides(
        c.preset(c.EvalConfig, "smoke"),
        {
            "data.data_dir": str(smoke_run["data"]),
            "model_dir": str(smoke_run["root"] / "embedding"),
            "classifier_dir": str(smoke_run["root"] / "classifier"),
            "reports_dir": str(tmp_path / "r"),
            "baselines": "false",
            "data.feature_cache_dir": str(smoke_run["root"] / "features"),
        },
    )
    summary = evaluate.run_eval(cfg, query=str(files["exif"]), log=lambda *_: None)
    assert list(summary["models"]) == ["exported embedding (SavedModel)"]
    assert (tmp_path / "r" / "retrieval.png").stat().st_size > 1000
