"""Triplet sampling over cached image views: pure numpy, seeded, tested.

Items are catalog images; each item has ``V`` views (view 0 clean, the rest simulated
customer photos). Two kinds of triplet keep both structures an embedding needs:

* **instance** triplets: anchor and positive are two views of the same item, the negative
  is another item *of the same class*. They keep items apart, so a customer's photo finds
  that exact t-shirt and not merely a t-shirt.
* **class** triplets: the positive is another item of the anchor's class, the negative an
  item of another class. They keep categories together.

With one margin m the two kinds are compatible: views closer than same-class items,
same-class items closer than other classes. Negatives are drawn at random or ``semihard``:
among sampled candidates, one farther than the positive but within the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Triplets:
    """Indices into a (num_items, num_views) grid of cached views."""

    anchor: np.ndarray  # (T, 2) item, view
    positive: np.ndarray
    negative: np.ndarray
    instance: np.ndarray  # (T,) bool: positive is a view of the anchor item

    def __len__(self) -> int:
        return len(self.anchor)


def balanced_anchors(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Item indices with classes drawn uniformly (not by frequency), items uniformly within."""
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    picked = rng.choice(classes, size=count)
    return np.array([rng.choice(by_class[c]) for c in picked], dtype=np.int64)


def _semihard_pick(d_ap: float, d_an: np.ndarray, margin: float, rng: np.random.Generator) -> int:
    """Index into ``d_an``: random semi-hard, else the closest easy one, else the easiest hard one."""
    semi = np.flatnonzero((d_an > d_ap) & (d_an < d_ap + margin))
    if semi.size:
        return int(rng.choice(semi))
    easy = np.flatnonzero(d_an > d_ap)
    if easy.size:
        return int(easy[np.argmin(d_an[easy])])
    return int(np.argmax(d_an))


def _positive_photo(
    twins: np.ndarray, catalog: np.ndarray | None, catalog_fraction: float, rng: np.random.Generator
) -> int:
    """Another photo of the anchor's product: a catalog one with probability ``catalog_fraction``.

    A customer's photo must find the catalog photo, the pair a search is judged on, yet a
    product has many customer photos and one or two catalog ones: drawn uniformly, few
    positives would be catalog photos.
    """
    if catalog is not None:
        shop = twins[catalog[twins]]
        if shop.size and shop.size < twins.size and rng.random() < catalog_fraction:
            return int(rng.choice(shop))
    return int(rng.choice(twins))


def sample_triplets(
    labels: np.ndarray,
    num_views: int,
    count: int,
    rng: np.random.Generator,
    instance_fraction: float = 0.5,
    embeddings: np.ndarray | None = None,
    margin: float = 0.2,
    candidates: int = 64,
    products: np.ndarray | None = None,
    catalog: np.ndarray | None = None,
    catalog_fraction: float = 0.5,
) -> Triplets:
    """Samples ``count`` triplets over items with ``labels`` and ``num_views`` views each.

    Args:
        labels: (num_items,) class of each item.
        num_views: Views per item (>= 2 for instance triplets of products with one photo).
        instance_fraction: Share of instance triplets (needs items with a same-class peer).
        embeddings: (num_items, num_views, D) current unit embeddings; given, negatives are
            mined ``semihard`` among ``candidates`` random candidates; None, they are random.
        margin: The loss margin, defining semi-hard.
        products: (num_items,) product of each item (photo); None: each item is its own
            product. Given, anchors are drawn evenly over products (the categories with
            many near-twin products are where instance triplets matter), an instance
            positive is another photo of the product (the simulated view of the same
            photo only for a product of one photo), and instance negatives are photos of
            other products of the category.
        catalog: (num_items,) True for catalog photos (see ``catalog_fraction``).
        catalog_fraction: With ``catalog``: share of instance positives that are a catalog
            photo of the product, when it has one and other photos too.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("sample_triplets: need at least 2 classes")
    if products is not None and len(products) != len(labels):
        raise ValueError(f"sample_triplets: {len(products)} products for {len(labels)} items")
    own = products is None
    products = np.arange(len(labels)) if own else np.asarray(products)
    by_product = {p: np.flatnonzero(products == p) for p in np.unique(products)} if not own else {}
    if instance_fraction > 0 and num_views < 2 and (own or min(map(len, by_product.values())) < 2):
        raise ValueError("sample_triplets: instance triplets need at least 2 views per item (or photos per product)")
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in by_class}
    if own:
        anchors = balanced_anchors(labels, count, rng)
    else:
        anchors = np.array([rng.choice(by_product[p]) for p in rng.choice(list(by_product), size=count)])
    out_a, out_p, out_n, out_i = [], [], [], []
    for item in anchors:
        cls = labels[item]
        peers = by_class[cls][by_class[cls] != item]
        rivals = peers if own else peers[products[peers] != products[item]]
        twins = np.zeros(0, np.int64) if own else by_product[products[item]]
        twins = twins[twins != item]
        view = int(rng.integers(num_views))
        instance = rng.random() < instance_fraction and (num_views >= 2 or twins.size > 0)
        if instance or peers.size == 0:
            instance = True
            if twins.size:
                pos = (_positive_photo(twins, catalog, catalog_fraction, rng), int(rng.integers(num_views)))
            elif num_views >= 2:
                pos = (item, int((view + rng.integers(1, num_views)) % num_views))
            else:
                pos = (item, view)
            pool = rivals if rivals.size else others[cls]
        else:
            pos = (int(rng.choice(peers)), int(rng.integers(num_views)))
            pool = others[cls]
        cand_items = rng.choice(pool, size=min(candidates, pool.size), replace=False)
        cand_views = rng.integers(num_views, size=cand_items.size)
        if embeddings is None:
            k = 0
        else:
            a = embeddings[item, view]
            d_ap = float(np.linalg.norm(a - embeddings[pos]))
            d_an = np.linalg.norm(embeddings[cand_items, cand_views] - a, axis=1)
            k = _semihard_pick(d_ap, d_an, margin, rng)
        out_a.append((item, view))
        out_p.append(pos)
        out_n.append((int(cand_items[k]), int(cand_views[k])))
        out_i.append(instance)
    as_array = lambda rows: np.asarray(rows, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return Triplets(as_array(out_a), as_array(out_p), as_array(out_n), np.asarray(out_i, bool))
