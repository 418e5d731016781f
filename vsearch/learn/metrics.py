"""Metrics as small pure numpy functions: classification and retrieval.

Retrieval metrics follow Musgrave et al. 2020, "A Metric Learning Reality Check":
for a query of class c with R relevant catalog items, R-Precision is the precision of the
top R results and MAP@R is the mean over those R positions of precision@i at relevant hits.
"""

from __future__ import annotations

import numpy as np

# --- classification -----------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def per_class_precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


def classification_report(y_true, y_pred, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    precision, recall = per_class_precision_recall(cm)
    support = cm.sum(axis=1)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": float(np.mean(recall[support > 0])) if support.any() else float("nan"),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(class_names, precision, recall, support)
        },
        "confusion_matrix": cm.tolist(),
    }


# --- retrieval ----------------------------------------------------------------------------


def ranked_neighbours(
    queries: np.ndarray, catalog: np.ndarray, k: int, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k catalog rows by inner product (cosine for unit vectors), best first.

    Args:
        exclude_self: queries are the catalog itself; drop each row's own match.
    Returns:
        ``(indices, scores)``, each (num_queries, k).
    """
    scores = queries @ catalog.T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    k = min(k, catalog.shape[0] - (1 if exclude_self else 0))
    part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query: share of the top-k results that are relevant. ``relevant`` is (Q, >=k) bool."""
    return relevant[:, :k].mean(axis=1)


def recall_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1 if any of the top-k results is relevant (the metric-learning Recall@K)."""
    return relevant[:, :k].any(axis=1).astype(float)


def r_precision(relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """Per query: precision of the top R results, R = that query's number of relevant items."""
    out = np.zeros(len(relevant))
    for i, r in enumerate(num_relevant):
        if r > 0:
            out[i] = relevant[i, :r].sum() / r
    return out


def map_at_r(relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """Per query: MAP@R = (1/R) * sum_{i<=R} P@i * rel_i."""
    out = np.zeros(len(relevant))
    for i, r in enumerate(num_relevant):
        if r > 0:
            rel = relevant[i, :r].astype(float)
            precision_at_i = np.cumsum(rel) / np.arange(1, r + 1)
            out[i] = float(np.sum(precision_at_i * rel) / r)
    return out


def retrieval_metrics(
    query_labels, ranked_labels: np.ndarray, catalog_labels, ks: tuple[int, ...] = (1, 5, 10)
) -> dict:
    """Class-level retrieval metrics for queries whose ranked catalog labels are given.

    Args:
        query_labels: (Q,) class of each query.
        ranked_labels: (Q, >= max R) catalog labels in ranked order (full ranking is safest).
        catalog_labels: (N,) catalog classes, to count R per query.
    """
    query_labels = np.asarray(query_labels)
    relevant = ranked_labels == query_labels[:, None]
    counts = np.bincount(np.asarray(catalog_labels), minlength=int(query_labels.max(initial=0)) + 1)
    num_relevant = np.minimum(counts[query_labels], relevant.shape[1])
    result = {
        "precision@1": float(precision_at_k(relevant, 1).mean()),
        "precision@5": float(precision_at_k(relevant, 5).mean()),
    }
    for k in ks:
        result[f"recall@{k}"] = float(recall_at_k(relevant, k).mean())
    result["r_precision"] = float(r_precision(relevant, num_relevant).mean())
    result["map@r"] = float(map_at_r(relevant, num_relevant).mean())
    return result


def per_class_retrieval(query_labels, ranked_labels, catalog_labels, class_names) -> dict:
    """:func:`retrieval_metrics` per query class."""
    query_labels = np.asarray(query_labels)
    out = {}
    for index, name in enumerate(class_names):
        mask = query_labels == index
        if mask.any():
            out[name] = retrieval_metrics(query_labels[mask], ranked_labels[mask], catalog_labels)
    return out


def instance_recall(target_rank: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict:
    """Instance matching: share of queries whose exact target is within the top k.

    Args:
        target_rank: (Q,) 0-based rank of each query's target in its result list.
    """
    target_rank = np.asarray(target_rank)
    return {f"recall@{k}": float(np.mean(target_rank < k)) for k in ks}


def rank_of_targets(queries: np.ndarray, pool: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of ``pool[targets[i]]`` among all pool rows for query i (ties count against)."""
    scores = queries @ pool.T
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores > target_scores[:, None]).sum(axis=1) + ((scores == target_scores[:, None]).sum(axis=1) - 1)
