import dataclasses
import json

import numpy as np
import pytest

from vsearch.learn.mining import Triplets
from vsearch.learn.siamese import Views, pca_projection, quick_metrics, triplet_inputs


def test_pca_projection_is_orthonormal_and_centres():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 3.0
    kernel, bias = pca_projection(x, 3)
    assert kernel.shape == (6, 3) and bias.shape == (3,)
    assert np.allclose(kernel.T @ kernel, np.eye(3), atol=1e-5)
    projected = x @ kernel + bias
    assert np.allclose(projected.mean(axis=0), 0.0, atol=1e-4)
    variances = projected.var(axis=0)
    assert (np.diff(variances) <= 1e-6).all()  # sorted by explained variance


def test_pca_projection_pads_when_few_samples():
    kernel, _ = pca_projection(np.random.default_rng(0).normal(size=(2, 10)), 4)
    assert kernel.shape == (10, 4) and np.isfinite(kernel).all()


def test_quick_metrics_perfect_case():
    catalog = np.eye(4)[[0, 0, 1, 1]] + np.array([[0, 0, 0.1, 0], [0, 0, 0, 0.1], [0, 0, 0.1, 0], [0, 0, 0, 0.1]])
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    queries = np.eye(4)[[0, 1]]
    m = quick_metrics(catalog, np.array([0, 0, 1, 1]), queries, np.array([0, 1]), queries.copy())
    assert m["precision@1"] == 1.0 and m["map@r"] == 1.0
    assert m["customer_recall@1"] == 1.0


def test_smoke_siamese_writes_artifacts(smoke_run):
    work = smoke_run["root"] / "siamese"
    for name in ("tower.keras", "triplet.keras", "config.json", "metrics.json"):
        assert (work / name).is_file(), name
    metrics = json.loads((work / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 1 and len(metrics["history"]["active_fraction"]) == 1
    assert 0.0 <= metrics["history"]["active_fraction"][0] <= 1.0
    assert {"precision@1", "map@r", "customer_recall@1"} <= {k.removeprefix("val_") for k in metrics["validation"]}
    assert (smoke_run["root"] / "embedding" / "saved_model.pb").is_file()
    # the exported tower computes what was trained on cached bottom features
    assert metrics["cache_max_abs_diff"] < 1e-2


def test_siamese_reads_the_views_train_cached(smoke_run):
    train_log = "\n".join(smoke_run["logs"]["train"])
    siamese_log = "\n".join(smoke_run["logs"]["siamese"])
    assert "features train view 1: " in train_log and "from the cache" not in train_log
    # the classifier's clean views are the siamese stage's; its mild augmented views are not
    assert "features catalog clean: " in siamese_log and "features validation clean: " in siamese_log
    assert siamese_log.count("from the cache") == 2
    assert "features catalog customer view 1: " in siamese_log


def test_siamese_without_class_branch(smoke_run, tmp_path):
    # class_dim 0: the tower is the instance branch alone, trained and exported on one input.
    from vsearch.learn.siamese import train_siamese

    config = dataclasses.replace(
        smoke_run["siamese"], class_dim=0, out_dir=str(tmp_path / "embedding"), work_dir=str(tmp_path / "siamese")
    )
    metrics = train_siamese(config, log=lambda _: None)
    assert "class_branch_cache_s" in metrics["timings"] and metrics["timings"]["fit_s"] > 0
    assert metrics["cache_max_abs_diff"] < 1e-2
    meta = json.loads((tmp_path / "embedding" / "assets.extra" / "vsearch.json").read_text())
    assert meta["embedding_dim"] == config.embedding_dim and meta["branches"]["class"] == 0


def _views(with_class: bool) -> Views:
    maps = np.arange(3 * 2 * 4, dtype=np.float16).reshape(3, 2, 2, 2, 1)  # 3 items, 2 views, 2x2x1 maps
    vectors = -np.arange(3 * 2 * 5, dtype=np.float32).reshape(3, 2, 5) if with_class else None
    return Views(maps, vectors, maps[:, 0], None, maps[:, 1], None)


@pytest.mark.parametrize("with_class", [True, False])
def test_triplet_inputs_gather_each_role_from_the_cached_views(with_class):
    views = _views(with_class)
    trip = Triplets(
        anchor=np.array([[0, 1], [2, 0]]),
        positive=np.array([[0, 0], [1, 1]]),
        negative=np.array([[1, 0], [2, 1]]),
        instance=np.array([True, False]),
    )
    inputs = triplet_inputs(views, trip)
    per_role = 2 if with_class else 1
    assert len(inputs) == 3 * per_role
    for r, role in enumerate((trip.anchor, trip.positive, trip.negative)):
        maps = inputs[r * per_role]
        assert maps.dtype == np.float16  # fed as cached: no float32 copy
        assert np.array_equal(maps, np.stack([views.catalog[i, v] for i, v in role]))
        if with_class:
            assert np.array_equal(inputs[r * per_role + 1], np.stack([views.catalog_class[i, v] for i, v in role]))


def test_triplet_inputs_end_with_each_roles_product_when_products_are_listed():
    views = _views(False)
    trip = Triplets(
        anchor=np.array([[0, 1], [2, 0]]),
        positive=np.array([[1, 0], [2, 1]]),
        negative=np.array([[2, 0], [0, 1]]),
        instance=np.array([True, True]),
    )
    plain = triplet_inputs(views, trip)
    listed = triplet_inputs(views, trip, products=np.array([5, 5, 7]))  # items 0 and 1: one product
    assert len(listed) == len(plain) + 1
    assert all(np.array_equal(x, y) for x, y in zip(listed, plain))
    assert listed[-1].dtype == np.int32
    assert np.array_equal(listed[-1], [[5, 5, 7], [7, 7, 5]])


def test_a_loss_that_is_no_longer_finite_stops_stage_2_and_saves_nothing(smoke_run, tmp_path):
    from vsearch.errors import TrainingError
    from vsearch.learn.siamese import train_siamese

    config = dataclasses.replace(
        smoke_run["siamese"],
        learning_rate=1e38,
        out_dir=str(tmp_path / "embedding"),
        work_dir=str(tmp_path / "siamese"),
    )
    with pytest.raises(TrainingError, match=r"training the triplet model: the loss became (nan|inf) .*learning_rate"):
        train_siamese(config, log=lambda _: None)
    assert not (tmp_path / "embedding").exists()
    assert not [p.name for p in (tmp_path / "siamese").iterdir() if p.suffix in (".keras", ".json")]
