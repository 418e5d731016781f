"""Triplet losses: plain ``keras.ops`` functions and a thin registered loss layer.

``tensorflow-addons`` (end of life, no Keras 3) used to provide these; ours are small and
tested against hand-computed values.
"""

from __future__ import annotations

import keras
from keras import ops

DISTANCES = ("euclidean", "squared")


def pairwise_distances(embeddings, squared: bool = False):
    """Euclidean distance matrix (N, N) of row vectors, numerically safe at zero."""
    dot = ops.matmul(embeddings, ops.transpose(embeddings))
    norms = ops.diagonal(dot)
    d2 = ops.maximum(ops.expand_dims(norms, 0) - 2.0 * dot + ops.expand_dims(norms, 1), 0.0)
    if squared:
        return d2
    zero = ops.cast(ops.equal(d2, 0.0), d2.dtype)
    return ops.sqrt(d2 + zero * 1e-16) * (1.0 - zero)


def row_distances(a, b, distance: str = "euclidean"):
    """Distance between matching rows of ``a`` and ``b``: (N, D), (N, D) -> (N,)."""
    d2 = ops.sum(ops.square(a - b), axis=-1)
    if distance == "squared":
        return d2
    return ops.sqrt(ops.maximum(d2, 1e-12))


def triplet_margin_loss(d_ap, d_an, margin: float, soft: bool = False):
    """Per-triplet loss ``max(d_ap - d_an + margin, 0)`` or its soft-plus version."""
    if soft:
        return ops.softplus(d_ap - d_an + margin)
    return ops.relu(d_ap - d_an + margin)


def in_batch_softmax_loss(anchor, positive, negative, temperature: float = 0.1, products=None):
    """Per-anchor cross-entropy of finding its own positive among all positives and negatives.

    Row i's candidates are every ``positive`` and every ``negative`` of the batch; the target
    is ``positive[i]``. With unit vectors this is the InfoNCE / NT-Xent loss: each anchor
    gets 2N - 1 negatives instead of one, which keeps items (not only classes) apart.

    ``products`` (N, 3): the product id of each triplet's anchor, positive and negative.
    Given, a candidate of the anchor's own product (another triplet's photo of it) is left
    out of row i rather than counted as a negative; None: every candidate counts.
    """
    candidates = ops.concatenate([positive, negative], axis=0)
    logits = ops.matmul(anchor, ops.transpose(candidates)) / temperature
    if products is not None:
        logits = ops.where(_same_product(products), ops.cast(-1e9, logits.dtype), logits)
    logits = logits - ops.max(logits, axis=1, keepdims=True)
    target = ops.diagonal(logits[:, : ops.shape(anchor)[0]])
    return ops.log(ops.sum(ops.exp(logits), axis=1)) - target


def _same_product(products):
    """(N, 2N) True where candidate j (positives, then negatives) shows row i's anchor's product,
    its own target ``positive[i]`` excepted."""
    products = ops.convert_to_tensor(products, "int32")
    candidates = ops.concatenate([products[:, 1], products[:, 2]], axis=0)
    same = ops.equal(ops.expand_dims(products[:, 0], 1), ops.expand_dims(candidates, 0))
    n = ops.shape(products)[0]
    target = ops.concatenate([ops.eye(n), ops.zeros((n, n))], axis=1)
    return ops.logical_and(same, ops.logical_not(ops.cast(target, "bool")))


def _masks(labels):
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))
    eye = ops.cast(ops.eye(ops.shape(labels)[0]), "bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    return positive, negative


def batch_hard_triplet_loss(labels, embeddings, margin: float = 0.2, squared: bool = False):
    """Batch-hard loss (Hermans et al. 2017): per anchor, hardest positive vs hardest negative.

    Anchors without a positive or without a negative in the batch are left out.
    """
    dist = pairwise_distances(embeddings, squared)
    positive, negative = _masks(labels)
    pos_f, neg_f = ops.cast(positive, dist.dtype), ops.cast(negative, dist.dtype)
    hardest_pos = ops.max(dist * pos_f, axis=1)
    big = ops.max(dist) + 1.0
    hardest_neg = ops.min(dist + big * (1.0 - neg_f), axis=1)
    valid = ops.cast(ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)), dist.dtype)
    loss = ops.relu(hardest_pos - hardest_neg + margin) * valid
    return ops.sum(loss) / ops.maximum(ops.sum(valid), 1.0)


def batch_semihard_triplet_loss(labels, embeddings, margin: float = 0.2, squared: bool = False):
    """Semi-hard loss (Schroff et al. 2015, FaceNet) over every positive pair of a batch.

    For each (anchor, positive) the negative is the closest one farther than the positive;
    if there is none, the farthest negative (the easiest of the hard ones).
    """
    dist = pairwise_distances(embeddings, squared)
    positive, negative = _masks(labels)
    d_ap = ops.expand_dims(dist, 2)  # [a, p, 1]
    d_an = ops.expand_dims(dist, 1)  # [a, 1, n]
    neg = ops.expand_dims(negative, 1)
    outside = ops.logical_and(neg, ops.greater(d_an, d_ap))  # [a, p, n]
    big = ops.max(dist) + 1.0
    outside_f = ops.cast(outside, dist.dtype)
    semi = ops.min(d_an + big * (1.0 - outside_f), axis=2)
    neg_f = ops.cast(neg, dist.dtype)
    farthest = ops.max(d_an * neg_f - big * (1.0 - neg_f), axis=2)
    chosen = ops.where(ops.any(outside, axis=2), semi, farthest)
    valid = ops.logical_and(positive, ops.any(negative, axis=1, keepdims=True))
    valid_f = ops.cast(valid, dist.dtype)
    loss = ops.relu(dist - chosen + margin) * valid_f
    return ops.sum(loss) / ops.maximum(ops.sum(valid_f), 1.0)


@keras.saving.register_keras_serializable(package="vsearch")
class TripletLoss(keras.layers.Layer):
    """Margin triplet loss over (anchor, positive, negative) embeddings, added with ``add_loss``.

    Optionally adds ``instance_weight`` times :func:`in_batch_softmax_loss`, so that each
    anchor also meets every other item of the batch as a negative; called with ``products``
    (N, 3) ids of each triplet's anchor, positive and negative, other photos of the anchor's
    product are not among them. Returns the two distances stacked as (N, 2) so the model has
    an output, and tracks ``active_fraction``: the share of triplets with non-zero margin
    loss (the rest teach nothing).

    Args:
        margin: Required gap between the anchor-negative and anchor-positive distances.
        distance: ``euclidean`` or ``squared`` (squared euclidean).
        soft: Soft-plus instead of the hinge.
        instance_weight: Weight of the in-batch term (0: plain triplet loss).
        temperature: Softmax temperature of the in-batch term.
    """

    def __init__(
        self,
        margin: float = 0.2,
        distance: str = "euclidean",
        soft: bool = False,
        instance_weight: float = 0.0,
        temperature: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not margin > 0:
            raise ValueError(f"TripletLoss: margin must be > 0, got {margin}")
        if distance not in DISTANCES:
            raise ValueError(f"TripletLoss: distance must be one of {DISTANCES}, got {distance!r}")
        if instance_weight < 0:
            raise ValueError(f"TripletLoss: instance_weight must be >= 0, got {instance_weight}")
        if not temperature > 0:
            raise ValueError(f"TripletLoss: temperature must be > 0, got {temperature}")
        self.margin = float(margin)
        self.distance = distance
        self.soft = bool(soft)
        self.instance_weight = float(instance_weight)
        self.temperature = float(temperature)
        self.active_fraction = keras.metrics.Mean(name="active_fraction")

    def call(self, anchor, positive, negative, products=None):
        d_ap = row_distances(anchor, positive, self.distance)
        d_an = row_distances(anchor, negative, self.distance)
        loss = ops.mean(triplet_margin_loss(d_ap, d_an, self.margin, self.soft))
        if self.instance_weight:
            loss = loss + self.instance_weight * ops.mean(
                in_batch_softmax_loss(anchor, positive, negative, self.temperature, products)
            )
        self.add_loss(loss)
        self.active_fraction.update_state(ops.cast(ops.greater(d_ap - d_an + self.margin, 0.0), "float32"))
        return ops.stack([d_ap, d_an], axis=-1)

    def compute_output_shape(self, anchor_shape, positive_shape=None, negative_shape=None, products_shape=None):
        return (anchor_shape[0], 2)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "distance": self.distance,
            "soft": self.soft,
            "instance_weight": self.instance_weight,
            "temperature": self.temperature,
        }
