import keras
import numpy as np
import pytest

from vsearch.learn import losses


def test_triplet_margin_loss_hand_values():
    out = losses.triplet_margin_loss(np.array([0.1, 0.5]), np.array([0.5, 0.2]), margin=0.2)
    assert np.allclose(out, [0.0, 0.5])
    soft = losses.triplet_margin_loss(np.array([0.0]), np.array([0.0]), margin=0.0, soft=True)
    assert np.allclose(soft, [np.log(2.0)])


def test_pairwise_distances():
    emb = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    assert np.allclose(losses.pairwise_distances(emb), [[0, 5], [5, 0]], atol=1e-6)
    assert np.allclose(losses.pairwise_distances(emb, squared=True), [[0, 25], [25, 0]])


# 1-D points; the values below are worked out by hand in the comments.
LABELS = np.array([0, 0, 1, 1])
POINTS = np.array([[0.0], [1.0], [3.0], [5.0]], np.float32)


def test_batch_hard_hand_values():
    # anchor 2 (x=3): hardest positive 2 (x=5), hardest negative 2 (x=1): 2 - 2 + 0.2; others 0.
    assert np.isclose(float(losses.batch_hard_triplet_loss(LABELS, POINTS, 0.2)), 0.2 / 4)


def test_batch_semihard_hand_values():
    # margin 1.5: (1,0): 1 - 2 + 1.5 = 0.5; (2,3): 2 - 3 + 1.5 = 0.5; (0,1), (3,2): 0.
    assert np.isclose(float(losses.batch_semihard_triplet_loss(LABELS, POINTS, 1.5)), 0.25)


def test_semihard_falls_back_to_the_farthest_negative():
    labels = np.array([0, 0, 1])
    points = np.array([[0.0], [4.0], [1.0]], np.float32)
    # no negative is farther than the positive (4): use the farthest one.
    # (0,1): 4 - 1 + 0.2 = 3.2; (1,0): 4 - 3 + 0.2 = 1.2; anchor 2 has no positive.
    assert np.isclose(float(losses.batch_semihard_triplet_loss(labels, points, 0.2)), 2.2)
    assert np.isclose(float(losses.batch_hard_triplet_loss(labels, points, 0.2)), 2.2)


def test_triplet_loss_layer_value_and_active_fraction():
    layer = losses.TripletLoss(margin=0.2)
    a = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    p = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    n = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    out = np.asarray(layer(a, p, n))
    assert np.allclose(out, [[np.sqrt(2), 0.0], [0.0, 2.0]], atol=1e-5)
    # losses: sqrt(2) - 0 + 0.2 and max(0 - 2 + 0.2, 0)
    assert np.isclose(float(layer.losses[0]), (np.sqrt(2) + 0.2) / 2, atol=1e-5)
    assert np.isclose(float(layer.active_fraction.result()), 0.5)


def test_in_batch_softmax_loss_hand_values():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = a.copy()
    n = np.array([[-1.0, 0.0], [0.0, -1.0]], np.float32)
    out = np.asarray(losses.in_batch_softmax_loss(a, p, n, temperature=1.0))
    # row 0 logits over [p0, p1, n0, n1] = [1, 0, -1, 0]: -log(e / (e + 1 + 1/e + 1))
    expected = -np.log(np.e / (np.e + 2 + 1 / np.e))
    assert np.allclose(out, [expected, expected], atol=1e-6)


def test_triplet_loss_layer_adds_the_instance_term():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    n = -a
    plain = losses.TripletLoss(margin=0.2)
    plain(a, a, n)
    mixed = losses.TripletLoss(margin=0.2, instance_weight=0.5, temperature=1.0)
    mixed(a, a, n)
    term = -np.log(np.e / (np.e + 2 + 1 / np.e))
    assert np.isclose(float(plain.losses[0]), 0.0)  # d_ap 0, d_an 2: no margin loss
    assert np.isclose(float(mixed.losses[0]), 0.5 * term, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"margin": 0.0}, "margin must be > 0"),
        ({"distance": "manhattan"}, "distance must be one of"),
        ({"instance_weight": -1.0}, "instance_weight"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_triplet_loss_layer_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.TripletLoss(**kwargs)


def test_triplet_loss_layer_config_round_trip():
    layer = losses.TripletLoss(
        margin=0.3, distance="squared", soft=True, instance_weight=0.7, temperature=0.05, name="t"
    )
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, losses.TripletLoss)
    assert clone.get_config() == layer.get_config()


def test_in_batch_softmax_loss_leaves_the_anchors_own_product_out_of_its_negatives():
    a = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    n = np.array([[-1.0, 0.0], [0.0, -1.0]], np.float32)
    products = np.array([[0, 0, 1], [0, 0, 2]])  # both triplets show product 0
    out = np.asarray(losses.in_batch_softmax_loss(a, p, n, temperature=1.0, products=products))
    # row 0 logits over [p0, p1, n0, n1] = [1, 0, -1, 0], p1 (product 0) left out
    # row 1 logits = [1, 0, -1, 0], target p1 (0), p0 (product 0) left out
    expected = [np.log(np.e + 1 / np.e + 1) - 1.0, np.log(1 + 1 / np.e + 1)]
    assert np.allclose(out, expected, atol=1e-6)
    unmasked = np.asarray(losses.in_batch_softmax_loss(a, p, n, temperature=1.0))
    assert np.allclose(unmasked, [np.log(np.e + 2 + 1 / np.e) - 1.0, np.log(np.e + 2 + 1 / np.e)], atol=1e-6)


def test_in_batch_softmax_loss_with_every_photo_its_own_product_is_unchanged():
    # The clothing demo: no products passed, and distinct products mask nothing either.
    rng = np.random.default_rng(0)
    a, p, n = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(3))
    plain = np.asarray(losses.in_batch_softmax_loss(a, p, n, temperature=0.1))
    distinct = np.arange(18).reshape(6, 3)
    assert np.array_equal(np.asarray(losses.in_batch_softmax_loss(a, p, n, 0.1, products=distinct)), plain)
    layer = losses.TripletLoss(margin=0.2, instance_weight=1.0, temperature=0.1)
    layer(a, p, n)
    margin = np.maximum(np.linalg.norm(a - p, axis=1) - np.linalg.norm(a - n, axis=1) + 0.2, 0)
    assert np.isclose(float(layer.losses[0]), margin.mean() + plain.mean(), atol=1e-5)


def test_triplet_loss_layer_takes_products():
    a = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    n = np.array([[-1.0, 0.0], [0.0, -1.0]], np.float32)
    layer = losses.TripletLoss(margin=0.2, instance_weight=1.0, temperature=1.0)
    layer(a, p, n, np.array([[0, 0, 1], [0, 0, 2]]))
    # margins: 0 - 2 + 0.2 -> 0 and sqrt(2) - sqrt(2) + 0.2 = 0.2
    term = (np.log(np.e + 1 / np.e + 1) - 1.0 + np.log(2 + 1 / np.e)) / 2
    assert np.isclose(float(layer.losses[0]), 0.1 + term, atol=1e-5)
