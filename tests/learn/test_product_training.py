"""Both stages on a product manifest: categories for stage 1, other photos of a product for stage 2."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import calibrated_backbone_weights
from test_product_folders import make_product_manifests

from vsearch import config as c
from vsearch.learn.product_folders import prepare_products

pytestmark = pytest.mark.slow  # trains a smoke model


@pytest.fixture(scope="module")
def product_run(tmp_path_factory):
    from vsearch.learn.classifier import train_classifier
    from vsearch.learn.siamese import train_siamese

    root = tmp_path_factory.mktemp("products")
    data = root / "data"
    prepare_products(*make_product_manifests(root), data, holdout=0.2)
    weights = calibrated_backbone_weights(root / "backbone.weights.h5", data)
    data_cfg = c.DataConfig(data_dir=str(data), image_size=32, batch_size=8, feature_cache_dir=str(root / "features"))
    clf = dataclasses.replace(
        c.preset(c.ClassifierConfig, "smoke"),
        data=data_cfg,
        out_dir=str(root / "classifier"),
        backbone_weights=str(weights),
    )
    logs: dict[str, list[str]] = {"train": [], "siamese": []}
    clf_metrics = train_classifier(clf, log=logs["train"].append)
    sia = dataclasses.replace(
        c.preset(c.SiameseConfig, "smoke"),
        data=data_cfg,
        classifier_dir=clf.out_dir,
        out_dir=str(root / "embedding"),
        work_dir=str(root / "siamese"),
        triplets_per_epoch=32,
    )
    return {
        "root": root,
        "classifier_metrics": clf_metrics,
        "siamese_metrics": train_siamese(sia, log=logs["siamese"].append),
        "siamese": sia,
        "logs": logs,
    }


def test_stage_1_learns_the_categories(product_run):
    names = json.loads((product_run["root"] / "classifier" / "class_names.json").read_text())
    assert names == ["apple", "juice", "milk"]
    assert product_run["classifier_metrics"]["num_train"] == 25  # 5 products: catalog photo + 4 of 5 photos


def test_stage_2_trains_on_products_and_measures_their_recall(product_run):
    metrics = product_run["siamese_metrics"]
    assert metrics["num_products"] == 5 and metrics["num_catalog"] == 25
    assert "products: 5, 5 catalog photos" in product_run["logs"]["siamese"]
    for key in ("product_recall@1", "product_recall@10", "customer_recall@1", "precision@1"):
        assert 0.0 <= metrics["validation"][f"val_{key}"] <= 1.0, key
    # a catalog of 5 products: every validation photo's product is within the top 10
    assert metrics["validation"]["val_product_recall@10"] == 1.0
    assert metrics["cache_max_abs_diff"] < 1e-2


def test_the_export_loads_with_plain_tensorflow(product_run):
    import tensorflow as tf

    model = product_run["root"] / "embedding"
    loaded = tf.saved_model.load(str(model))
    pixels = tf.constant(np.full((2, 32, 32, 3), 128.0, np.float32))
    embedding = loaded.signatures["embed_pixels"](images=pixels)["embedding"].numpy()
    assert embedding.shape == (2, json.loads((model / "assets.extra" / "vsearch.json").read_text())["embedding_dim"])
    assert np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
