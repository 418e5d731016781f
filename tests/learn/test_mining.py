import numpy as np
import pytest

from vsearch.learn import mining

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])


def test_balanced_anchors_draw_classes_evenly():
    labels = np.array([0] * 90 + [1] * 10)
    anchors = mining.balanced_anchors(labels, 4000, np.random.default_rng(0))
    share = np.mean(labels[anchors] == 1)
    assert 0.45 < share < 0.55  # not 0.10, the class frequency


@pytest.mark.parametrize("embeddings", [None, "random"])
def test_triplets_follow_the_rules(embeddings):
    rng = np.random.default_rng(0)
    emb = None
    if embeddings:
        emb = rng.normal(size=(len(LABELS), 3, 4))
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    t = mining.sample_triplets(LABELS, 3, 500, rng, instance_fraction=0.5, embeddings=emb)
    assert len(t) == 500
    a, p, n = t.anchor, t.positive, t.negative
    inst = t.instance
    # instance: same item, another view; negative another item of the same class
    assert (p[inst, 0] == a[inst, 0]).all() and (p[inst, 1] != a[inst, 1]).all()
    assert (n[inst, 0] != a[inst, 0]).all() and (LABELS[n[inst, 0]] == LABELS[a[inst, 0]]).all()
    # class: another item of the same class; negative of another class
    assert (p[~inst, 0] != a[~inst, 0]).all() and (LABELS[p[~inst, 0]] == LABELS[a[~inst, 0]]).all()
    assert (LABELS[n[~inst, 0]] != LABELS[a[~inst, 0]]).all()
    assert 0.4 < inst.mean() < 0.6
    assert ((t.anchor[:, 1] >= 0) & (t.anchor[:, 1] < 3)).all()


def test_semihard_pick_prefers_the_margin_band():
    rng = np.random.default_rng(0)
    d_an = np.array([0.1, 0.55, 0.9, 2.0])
    assert mining._semihard_pick(0.5, d_an, 0.2, rng) == 1  # inside (0.5, 0.7)
    assert mining._semihard_pick(0.5, np.array([0.1, 0.9, 2.0]), 0.2, rng) == 1  # closest easy one
    assert mining._semihard_pick(0.5, np.array([0.1, 0.3]), 0.2, rng) == 1  # easiest hard one


def test_semihard_mining_picks_semihard_negatives():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(LABELS), 2, 8))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    t = mining.sample_triplets(LABELS, 2, 300, rng, 0.0, emb, margin=0.3, candidates=64)
    d = lambda x, y: np.linalg.norm(emb[x[:, 0], x[:, 1]] - emb[y[:, 0], y[:, 1]], axis=1)  # noqa: E731
    d_ap, d_an = d(t.anchor, t.positive), d(t.anchor, t.negative)
    random_t = mining.sample_triplets(LABELS, 2, 300, np.random.default_rng(1), 0.0, None)
    r_ap, r_an = d(random_t.anchor, random_t.positive), d(random_t.anchor, random_t.negative)
    band = lambda ap, an: np.mean((an > ap) & (an < ap + 0.3))  # noqa: E731
    assert band(d_ap, d_an) > band(r_ap, r_an)


def test_sampling_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        mining.sample_triplets(np.zeros(5, int), 2, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 views"):
        mining.sample_triplets(LABELS, 1, 10, np.random.default_rng(0), instance_fraction=0.5)
