"""One behavioural suite for every store backend (faiss, milvus): what the Store interface promises."""

import numpy as np
import pytest

from vsearch.catalog.manifest import Photo
from vsearch.errors import DataError
from vsearch.stores import build_store, filters, open_store

DIM = 12
BRANDS = ("acme", "zeta", "omni")


def unit(rows):
    rows = np.atleast_2d(np.asarray(rows, np.float32))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def catalog(products=8, per=3, seed=0, brand=None):
    """``products`` products of ``per`` photos each, typed attributes, random unit vectors."""
    rng = np.random.default_rng(seed)
    photos = []
    for p in range(products):
        attributes = {"price": float(p) + 0.5, "brand": brand or BRANDS[p % 3], "in_stock": p % 2 == 0, "stock": p % 4}
        for n in range(per):
            photos.append(
                Photo(f"p{p}", f"p{p}/{n}.jpg", f"/photos/p{p}/{n}.jpg", "hats" if p % 2 else "shoes", attributes)
            )
    return photos, unit(rng.normal(size=(len(photos), DIM)))


@pytest.fixture(params=["faiss", "milvus"])
def spec(request, tmp_path):
    if request.param == "milvus":
        pytest.importorskip("vsearch.stores.milvus")
        return f"milvus:{tmp_path}/catalog.db"
    return f"faiss:{tmp_path}/catalog.vsi"


@pytest.fixture
def store(spec):
    photos, vectors = catalog()
    made = build_store(spec, photos, vectors, fingerprint="fp", model={"name": "tiny"})
    made.test_photos, made.test_vectors = photos, vectors
    yield made
    made.close()


def brute(store, query, where=None, group=True):
    """The exact answer from the store's own listing: (product or photo id, score) best first."""
    scored = []
    vectors = {p.photo_id: v for p, v in zip(store.test_photos, store.test_vectors)}
    for product in store.products():
        if not filters.matches(
            where, {"product_id": product.product_id, "category": product.category, "attributes": product.attributes}
        ):
            continue
        for photo_id in product.photos:
            scored.append((float(vectors[photo_id] @ query), product.product_id, photo_id))
    scored.sort(reverse=True)
    if not group:
        return [(photo, s) for s, _, photo in scored]
    best = {}
    for s, product, photo in scored:
        best.setdefault(product, (photo, s))
    return [(product, photo, s) for product, (photo, s) in best.items()]


def test_search_groups_photos_into_products(store):
    rng = np.random.default_rng(5)
    for q in range(4):
        query = unit(store.test_vectors[3 * q] + 0.3 * rng.normal(size=DIM))[0]
        hits = store.search(query[None], 3)[0]
        expected = brute(store, query)[:3]
        assert [h["product_id"] for h in hits] == [e[0] for e in expected]  # k counts products, each once
        assert [h["photo_id"] for h in hits] == [e[1] for e in expected]  # ... shown by their best photo
        assert np.allclose([h["score"] for h in hits], [e[2] for e in expected], atol=1e-4)
        photos = store.search(query[None], 5, group=False)[0]
        assert [h["photo_id"] for h in photos] == [e[0] for e in brute(store, query, group=False)[:5]]
    assert len(store.search(store.test_vectors[:1], 100)[0]) == 8  # the whole catalog, no more


def test_a_hit_says_where_its_photo_is(store):
    hit = store.search(store.test_vectors[4:5], 1)[0][0]
    assert hit["product_id"] == "p1" and hit["photo_id"] == hit["id"] == "p1/1.jpg"
    assert hit["path"] == "/photos/p1/1.jpg" and hit["category"] == "hats" and 0.999 < hit["score"] < 1.001
    assert hit["attributes"] == {"price": 1.5, "brand": "zeta", "in_stock": False, "stock": 1}
    assert store.photo("p1/1.jpg") == {k: v for k, v in hit.items() if k != "score"}
    assert store.photo("nope") is None


@pytest.mark.parametrize(
    "where",
    [
        ["price<=3"],
        ["price<3.5"],
        ["price>2"],
        ["price>=4.5"],
        ["price=2.5"],
        ["price!=2.5"],
        ["price in (0.5, 7.5)"],
        ["brand=acme"],
        ["brand!=acme"],
        ["brand in (acme,omni)"],
        ["in_stock=true"],
        ["in_stock!=true"],
        ["stock in (1,3)"],
        ["stock>=2"],
        ["category=hats"],
        ["product_id in (p2,p5,p9)"],
        ["price<6", "brand=zeta", "category=hats"],
        ["brand=nobody"],
    ],
)
def test_filters_keep_exactly_what_they_name(store, where):
    condition = filters.parse_where(where, store.schema)
    query = store.test_vectors[0]
    expected = brute(store, query, condition)
    assert expected or where == ["brand=nobody"]
    hits = store.search(query[None], 20, where=condition)[0]
    assert [h["product_id"] for h in hits] == [e[0] for e in expected]
    for hit in hits:
        assert filters.matches(condition, hit)
    photos = store.search(query[None], 5, where=condition, group=False)[0]
    assert [h["photo_id"] for h in photos] == [e[0] for e in brute(store, query, condition, group=False)[:5]]


def test_filters_name_unknown_attributes_and_wrong_types(store):
    assert store.schema == {"price": "float", "brand": "text", "in_stock": "bool", "stock": "int"}
    with pytest.raises(DataError, match="'colour'"):
        filters.parse_where(["colour=red"], store.schema)
    with pytest.raises(DataError, match="'price'"):
        filters.parse_json({"price": {"lte": "cheap"}}, store.schema)


def test_a_selective_filter_finds_the_exact_answer(spec):
    photos, vectors = catalog(products=600, per=3, seed=1)
    rare = {"p7", "p100", "p333", "p599"}
    photos = [
        Photo(
            p.product_id,
            p.photo_id,
            p.image,
            p.category,
            {**p.attributes, "brand": "rare" if p.product_id in rare else p.attributes["brand"]},
        )
        for p in photos
    ]
    store = build_store(spec, photos, vectors, fingerprint="fp", kind="hnsw" if spec.startswith("faiss") else "auto")
    store.test_photos, store.test_vectors = photos, vectors
    where = filters.parse_where(["brand=rare"], store.schema)
    query = unit(np.random.default_rng(2).normal(size=(1, DIM)))[0]
    hits = store.search(query[None], 3, where=where)[0]
    assert [(h["product_id"], h["photo_id"]) for h in hits] == [e[:2] for e in brute(store, query, where)[:3]]
    store.close()


def test_upsert_replaces_a_products_photos_and_attributes(store):
    new = unit(np.random.default_rng(9).normal(size=(2, DIM)))
    store.upsert(
        [
            Photo("p1", "p1/new-a.jpg", "/new/a.jpg", "bags", {"price": 99.0, "colour": "red"}),
            Photo("p1", "p1/new-b.jpg", "/new/b.jpg", "bags", {"price": 99.0, "colour": "red"}),
            Photo("p50", "p50/0.jpg", "/new/c.jpg", "hats", {"price": 7}),
        ],
        np.vstack([new, new[:1]]),
    )
    product = store.get("p1")
    assert product.category == "bags" and product.attributes == {"price": 99.0, "colour": "red"}
    assert product.photos == ("p1/new-a.jpg", "p1/new-b.jpg") and product.paths == ("/new/a.jpg", "/new/b.jpg")
    assert store.photo("p1/0.jpg") is None and store.count() == (9, 24)
    assert store.schema["colour"] == "text" and "bags" in store.categories()
    old = store.search(store.test_vectors[3:4], 20, group=False)[0]
    assert all(h["product_id"] != "p1" or h["photo_id"].startswith("p1/new") for h in old)
    top = store.search(new[1:2], 1)[0][0]
    assert (top["product_id"], top["photo_id"], top["category"]) == ("p1", "p1/new-b.jpg", "bags")
    red = store.search(new[1:2], 5, where=filters.parse_where(["colour=red"], store.schema))[0]
    assert [h["product_id"] for h in red] == ["p1"]


def test_delete_removes_every_photo_of_a_product(store):
    assert store.delete(["p2", "p2", "unknown"]) == 1
    assert store.get("p2") is None and store.photo("p2/0.jpg") is None and store.count() == (7, 21)
    hits = store.search(store.test_vectors[6:9], 10, group=False)
    assert all(h["product_id"] != "p2" for row in hits for h in row)
    assert store.delete(["p2"]) == 0


def test_listing_products_count_and_categories(store):
    assert store.count() == (8, 24) and store.categories() == ["hats", "shoes"]
    listed = {p.product_id: p for p in store.products()}
    assert sorted(listed) == [f"p{n}" for n in range(8)]
    assert listed["p3"].photos == ("p3/0.jpg", "p3/1.jpg", "p3/2.jpg") and listed["p3"].category == "hats"
    assert store.get("p3") == listed["p3"] and store.get("nope") is None
    assert store.dim == DIM and store.fingerprint == "fp" and store.calibration is None


def test_reopen_sees_every_acknowledged_write(store, spec):
    new = unit(np.random.default_rng(3).normal(size=(1, DIM)))
    store.upsert([Photo("p9", "p9/0.jpg", "/p9.jpg", "hats", {"price": 1.0, "brand": "acme"})], new)
    store.delete(["p0"])
    expected = {p.product_id: p for p in store.products()}
    answer = store.search(new, 4)
    store.close()
    again = open_store(spec, expected_fingerprint="fp")
    assert {p.product_id: p for p in again.products()} == expected and again.count() == (8, 22)
    assert again.search(new, 4) == answer and again.schema == store.schema
    with pytest.raises(DataError, match="built with model fp, but the query model is other; rebuild the index"):
        open_store(spec, expected_fingerprint="other")
    again.close()


def test_wrong_or_disagreeing_values_change_nothing(store, spec):
    before = (store.count(), store.get("p1"), dict(store.schema))
    one = store.test_vectors[:1]
    with pytest.raises(DataError, match="'p1'.*'price'"):
        store.upsert([Photo("p1", "p1/x.jpg", "/x.jpg", "hats", {"price": "cheap"})], one)
    with pytest.raises(DataError, match="'p1'.*'in_stock'"):
        store.upsert([Photo("p1", "p1/x.jpg", "/x.jpg", "hats", {"in_stock": 1})], one)
    with pytest.raises(DataError, match="'p7'.*'brand'"):  # a product's photos share its attributes
        store.upsert(
            [
                Photo("p7", "p7/a.jpg", "/a.jpg", "hats", {"brand": "acme"}),
                Photo("p7", "p7/b.jpg", "/b.jpg", "hats", {"brand": "zeta"}),
            ],
            store.test_vectors[:2],
        )
    with pytest.raises(DataError, match="'p7'.*categor"):
        store.upsert(
            [Photo("p7", "p7/a.jpg", "/a.jpg", "hats"), Photo("p7", "p7/b.jpg", "/b.jpg", "shoes")],
            store.test_vectors[:2],
        )
    with pytest.raises(DataError):
        store.upsert([Photo("p1", "p1/x.jpg", "/x.jpg", "hats")], np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(DataError):
        store.upsert([Photo("p1", "p1/x.jpg", "/x.jpg", "hats")], np.ones((1, DIM + 1), np.float32))
    with pytest.raises(DataError):
        store.upsert([], np.zeros((0, DIM), np.float32))
    assert (store.count(), store.get("p1"), store.schema) == before
    store.close()
    again = open_store(spec)
    assert (again.count(), again.get("p1"), again.schema) == before
    again.close()


def calibration(fingerprint):
    model = {"method": "platt", "mean": [0.0, 0.0], "scale": [1.0, 1.0], "coef": [1.0, 1.0], "intercept": -0.5}
    head = {"global": model, "categories": {"hats": model}}
    return {
        "fingerprint": fingerprint,
        "heads": {"exact": head, "present": head},
        "thresholds": {"exact": 0.6, "none": 0.3},
    }


def test_calibration_is_checked_and_kept(store, spec):
    with pytest.raises(DataError, match="calibration refused"):
        store.set_calibration(calibration("another-model"))
    store.set_calibration(calibration("fp"))
    assert store.calibration == calibration("fp")
    store.close()
    again = open_store(spec)
    assert again.calibration == calibration("fp")
    again.set_calibration(None)
    again.close()
    assert open_store(spec).calibration is None
