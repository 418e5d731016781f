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


# Photos of products: two categories; category 0 holds products 0 (photos 0-3, catalog photo 0)
# and 1 (photos 4-6, catalog photo 4), category 1 holds product 2 (photos 7-9) and product 3,
# one photo (10).
CATEGORY = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
PRODUCT = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
CATALOG = np.isin(np.arange(11), [0, 4])


def test_product_positives_are_other_photos_of_the_product_and_negatives_its_category_rivals():
    t = mining.sample_triplets(CATEGORY, 2, 2000, np.random.default_rng(0), 1.0, products=PRODUCT)
    a, p, n = t.anchor[:, 0], t.positive[:, 0], t.negative[:, 0]
    assert t.instance.all()
    several = a != 10
    # another photo of the same product, whatever its view
    assert (p[several] != a[several]).all() and (PRODUCT[p] == PRODUCT[a]).all()
    # the product of one photo: its simulated view
    assert (p[~several] == 10).all() and (t.positive[~several, 1] != t.anchor[~several, 1]).all()
    # negatives: another product of the anchor's category (product 0 <-> 1, 2 <-> 3)
    assert (PRODUCT[n] != PRODUCT[a]).all() and (CATEGORY[n] == CATEGORY[a]).all()
    # anchors evenly over products, not over photos or categories
    assert np.allclose(np.bincount(PRODUCT[a]) / len(a), 0.25, atol=0.03)


def test_catalog_photos_are_the_chosen_share_of_positives():
    # uniform: 1 in 3 of product 0's other photos, 1 in 2 of product 1's, products drawn evenly
    for fraction, expected in ((1.0, 1.0), (0.0, (1 / 3 + 1 / 2) / 2)):
        t = mining.sample_triplets(
            CATEGORY,
            2,
            3000,
            np.random.default_rng(1),
            1.0,
            products=PRODUCT,
            catalog=CATALOG,
            catalog_fraction=fraction,
        )
        customer = ~CATALOG[t.anchor[:, 0]] & np.isin(PRODUCT[t.anchor[:, 0]], [0, 1])
        # 1.0: every customer photo's positive is its catalog photo; 0.0: drawn uniformly
        assert np.mean(CATALOG[t.positive[customer, 0]]) == pytest.approx(expected, abs=0.03)
        # a catalog photo's positive is a customer photo of its product
        shop = CATALOG[t.anchor[:, 0]]
        assert not CATALOG[t.positive[shop, 0]].any()


def test_products_of_several_photos_need_no_second_view():
    several = np.array([0, 0, 1, 1])
    t = mining.sample_triplets(np.array([0, 0, 1, 1]), 1, 50, np.random.default_rng(0), 1.0, products=several)
    assert (t.positive[:, 0] != t.anchor[:, 0]).all() and (t.positive[:, 1] == 0).all()
    with pytest.raises(ValueError, match="2 views per item"):
        mining.sample_triplets(np.array([0, 0, 1, 1]), 1, 5, np.random.default_rng(0), 1.0, products=np.arange(4))


def test_class_triplets_of_products_keep_the_category_rule():
    t = mining.sample_triplets(CATEGORY, 2, 1000, np.random.default_rng(2), 0.0, products=PRODUCT)
    a, p, n = t.anchor[:, 0], t.positive[:, 0], t.negative[:, 0]
    assert not t.instance.any()
    assert (CATEGORY[p] == CATEGORY[a]).all() and (p != a).all() and (CATEGORY[n] != CATEGORY[a]).all()


def test_without_products_mining_is_unchanged():
    # products=None: the draws of the sampler before products (each photo its own product),
    # so the clothing demo's figures stay what they were
    emb = np.random.default_rng(0).normal(size=(len(LABELS), 3, 4))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    t = mining.sample_triplets(LABELS, 3, 6, np.random.default_rng(4), 0.5, emb)
    assert t.anchor.tolist() == [[8, 1], [5, 1], [6, 1], [4, 1], [6, 1], [6, 0]]
    assert t.positive.tolist() == [[8, 0], [5, 2], [6, 0], [4, 0], [7, 1], [5, 0]]
    assert t.negative.tolist() == [[6, 2], [8, 2], [8, 1], [3, 1], [2, 2], [2, 0]]
