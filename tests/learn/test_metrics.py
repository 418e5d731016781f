import numpy as np

from vsearch.learn import metrics


def test_classification_report_by_hand():
    report = metrics.classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert report["accuracy"] == 0.75
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert np.isclose(report["per_class"]["b"]["precision"], 2 / 3)
    assert report["confusion_matrix"] == [[1, 1], [0, 2]]
    assert report["balanced_accuracy"] == 0.75


def test_map_at_r_and_r_precision_by_hand():
    # R = 3 relevant items; ranking: rel, not, rel, rel
    relevant = np.array([[True, False, True, True]])
    # MAP@R over the first 3: (1/1 + 0 + 2/3) / 3
    assert np.isclose(metrics.map_at_r(relevant, np.array([3]))[0], (1 + 2 / 3) / 3)
    assert np.isclose(metrics.r_precision(relevant, np.array([3]))[0], 2 / 3)
    assert metrics.precision_at_k(relevant, 1)[0] == 1.0
    assert metrics.recall_at_k(np.array([[False, False, True]]), 2)[0] == 0.0
    assert metrics.recall_at_k(np.array([[False, False, True]]), 3)[0] == 1.0


def test_retrieval_metrics_end_to_end():
    catalog = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    catalog_labels = np.array([0, 0, 1])
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    order = np.argsort(-(queries @ catalog.T), axis=1)
    result = metrics.retrieval_metrics(np.array([0, 1]), catalog_labels[order], catalog_labels)
    assert result["precision@1"] == 1.0 and result["map@r"] == 1.0 and result["r_precision"] == 1.0
    wrong = metrics.retrieval_metrics(np.array([1, 0]), catalog_labels[order], catalog_labels)
    # query 0 as class 1 (R=1): top hit wrong -> 0; query 1 as class 0 (R=2): ranks [wrong, right]
    # -> (1/2) / 2 = 0.25; mean 0.125
    assert wrong["precision@1"] == 0.0 and np.isclose(wrong["map@r"], 0.125)


def test_ranked_neighbours_and_target_ranks():
    catalog = np.eye(4)
    queries = np.array([[0.1, 0.9, 0.5, 0.0]])
    idx, scores = metrics.ranked_neighbours(queries, catalog, 3)
    assert idx.tolist() == [[1, 2, 0]] and np.allclose(scores, [[0.9, 0.5, 0.1]])
    assert metrics.rank_of_targets(queries, catalog, np.array([2])).tolist() == [1]
    assert metrics.instance_recall(np.array([0, 1, 12]), (1, 10)) == {"recall@1": 1 / 3, "recall@10": 2 / 3}
    self_idx, _ = metrics.ranked_neighbours(catalog, catalog, 1, exclude_self=True)
    assert (self_idx[:, 0] != np.arange(4)).all()
