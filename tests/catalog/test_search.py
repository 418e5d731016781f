"""Answering a photo (vsearch.catalog.search) and the search / index CLI."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import ColourEmbedder, solid
from PIL import Image

from vsearch import cli
from vsearch.catalog.building import build_catalog
from vsearch.catalog.manifest import Photo
from vsearch.catalog.prior import AUTO_NEIGHBOURS, category_votes
from vsearch.catalog.search import Searcher
from vsearch.config import SearchConfig
from vsearch.errors import DataError, ImageError
from vsearch.stores import build_store, open_store
from vsearch.stores.filters import parse_where


@pytest.fixture
def catalog(shop, tmp_path):
    """The tiny shop as a faiss store (each photo a product of its own)."""
    store, _ = build_catalog(ColourEmbedder(), shop, f"faiss:{tmp_path / 'shop.vsi'}", kind="exact")
    yield store
    store.close()


def test_searcher_finds_the_item_and_filters(shop, catalog):
    searcher = Searcher(ColourEmbedder(), catalog)
    photo = (shop / "shoes" / "olive.png").read_bytes()
    result = searcher.search(photo, k=2)
    assert result.matches[0]["id"] == "shoes/olive" and result.matches[0]["score"] == pytest.approx(1, abs=1e-5)
    assert [m["category"] for m in searcher.search(photo, 2, category="hats").matches] == ["hats", "hats"]
    auto = searcher.search(photo, 4, category="auto")
    assert auto.category["predicted"] == "shoes" and auto.category["mode"] == "auto"
    assert [m["category"] for m in auto.matches][:2] == ["shoes", "shoes"]
    by_path = searcher.search(shop / "shoes" / "olive.png", 1).matches[0]
    by_pixels = searcher.search(np.asarray(Image.open(shop / "shoes" / "olive.png")), 1).matches[0]
    assert by_path["id"] == by_pixels["id"] == "shoes/olive"
    assert searcher.search(photo, k=50).to_dict()["matches"][-1]["rank"] == 4  # k larger than the catalog
    with pytest.raises(DataError, match="unknown category 'bags'"):
        searcher.search(photo, 2, category="bags")
    with pytest.raises(DataError, match="k must be >= 1"):
        searcher.search(photo, 0)
    with pytest.raises(ImageError, match="not a recognised image"):
        searcher.search(b"plain text, not a photo")
    with pytest.raises(ImageError, match="over the 10-byte limit"):
        Searcher(ColourEmbedder(), catalog, SearchConfig(max_bytes=10)).search(photo)
    assert searcher.image_path("shoes/olive") == (shop / "shoes" / "olive.png").resolve()
    with pytest.raises(KeyError):
        searcher.image_path("../../etc/passwd")


def test_catalog_keypoints_are_ready_from_the_index(catalog, monkeypatch):
    import threading

    searcher = Searcher(ColourEmbedder(), catalog)
    photos = catalog.count()[1]
    assert searcher.rerank_ready == photos  # stored when the catalog was built
    stop = threading.Event()
    stop.set()
    assert searcher.warm_rerank(stop) == 0
    monkeypatch.setattr("vsearch.catalog.search.catalog_features", lambda *a, **k: pytest.fail("decoded again"))
    assert searcher.warm_rerank() == photos and searcher.rerank_ready == photos


def test_searcher_accepts_0_255_numbers_and_refuses_others(shop, catalog):
    searcher = Searcher(ColourEmbedder(), catalog)
    olive = np.asarray(Image.open(shop / "shoes" / "olive.png"))
    as_float = searcher.search(olive.astype(np.float32), 1).matches[0]
    assert as_float["id"] == "shoes/olive" and as_float["score"] == pytest.approx(1, abs=1e-5)
    rounded = searcher.embed(olive.astype(np.float64) + 0.2)  # rounded, not truncated
    assert np.allclose(rounded, searcher.embed(olive), atol=1e-6)
    with pytest.raises(ImageError, match="0..255"):
        searcher.search(olive.astype(np.float32) / 255.0 - 0.5)  # -0.5..0.5: not pixels
    with pytest.raises(ImageError, match="look like 0..1 floats"):
        searcher.search(olive.astype(np.float32) / 255.0)  # the usual float image: refused, not near-black
    with pytest.raises(ImageError, match="0..255"):
        searcher.search(olive.astype(np.int32) * 300)
    with pytest.raises(ImageError, match="RGB pixels"):
        searcher.search(olive[..., 0])
    with pytest.raises(ImageError, match="empty image"):
        searcher.search(np.zeros((0, 4, 3), np.float32))


def test_searcher_refuses_another_model(catalog):
    other = ColourEmbedder()
    other.fingerprint = "colour-v2"
    with pytest.raises(DataError, match="rebuild the index"):
        Searcher(other, catalog)


def test_a_small_category_of_an_hnsw_catalog_is_searched_exactly(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rare = {5, 1000, 2999}
    photos = [Photo(str(i), str(i), f"/nowhere/{i}.png", "rare" if i in rare else "common") for i in range(len(vecs))]
    store = build_store(
        f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint, kind="hnsw"
    )
    searcher = Searcher(ColourEmbedder(), store)
    query = vecs[42]
    expected = sorted(rare, key=lambda i: -float(vecs[i] @ query))
    found = searcher.search_vector(query, 5, "rare").matches
    assert [m["id"] for m in found] == [str(i) for i in expected]  # all three, best first
    assert [m["score"] for m in found] == pytest.approx([float(vecs[i] @ query) for i in expected], abs=1e-5)
    common = searcher.search_vector(query, 5, "common").matches  # a large one
    assert len(common) == 5 and {m["category"] for m in common} == {"common"}
    assert common[0]["id"] == "42"


def test_products_are_grouped_and_filtered(tmp_path):
    """Three photos per product: k counts products, each once by its best photo; filters keep products."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 4))
    photos, vecs = [], []
    for p, centre in enumerate(centres):
        for v in range(3):
            vec = centre + 0.05 * rng.normal(size=4)
            vecs.append(vec / np.linalg.norm(vec))
            photos.append(
                Photo(
                    f"p{p}",
                    f"p{p}/{v}",
                    f"/nowhere/p{p}-{v}.png",
                    "tops",
                    {"price": float(10 * (p + 1)), "brand": "acme" if p % 2 else "zeta"},
                )
            )
    vecs = np.asarray(vecs, np.float32)
    store = build_store(
        f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint, kind="exact"
    )
    searcher = Searcher(ColourEmbedder(), store)
    result = searcher.search_vector(vecs[4], 3)  # a photo of p1
    products = [m["product_id"] for m in result.matches]
    assert len(products) == 3 == len(set(products)) and products[0] == "p1"
    assert result.matches[0]["photo_id"] == "p1/1" and result.matches[0]["score"] == pytest.approx(1, abs=1e-5)
    cheap = searcher.search_vector(vecs[4], 5, where=parse_where(["price<=30", "brand=zeta"], store.schema))
    assert sorted(m["product_id"] for m in cheap.matches) == ["p0", "p2"]  # price <= 30 and brand zeta
    assert all(m["attributes"]["price"] <= 30 and m["attributes"]["brand"] == "zeta" for m in cheap.matches)
    assert cheap.to_dict()["filter"] == {"price": {"lte": 30.0}, "brand": {"eq": "zeta"}}
    none = searcher.search_vector(vecs[4], 5, where=parse_where(["price>1000"], store.schema))
    assert none.matches == []
    with pytest.raises(DataError, match="'colour'"):
        parse_where(["colour=red"], store.schema)


def brute_force_prior(vecs, cats, query, weight, keep=None):
    """Product ids by cosine + weight x the vote share of the top AUTO_NEIGHBOURS, over every product."""
    ids = [i for i in range(len(vecs)) if keep is None or keep(i)]
    scores = {i: float(vecs[i] @ query) for i in ids}
    by_cosine = sorted(ids, key=lambda i: -scores[i])
    votes = category_votes([{"score": scores[i], "category": cats[i]} for i in by_cosine[:AUTO_NEIGHBOURS]])
    return [str(i) for i in sorted(ids, key=lambda i: -(scores[i] + weight * votes.get(cats[i], 0.0)))]


@pytest.mark.parametrize("weight", [0.05, 0.3, 2.0])
def test_auto_ranks_by_cosine_plus_the_category_prior_exactly(tmp_path, weight):
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(400, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cats = [("tops", "shoes", "hats", "bags")[int(i)] for i in rng.integers(0, 4, len(vecs))]
    photos = [Photo(str(i), str(i), f"/nowhere/{i}.png", c, {"price": float(i % 50)}) for i, c in enumerate(cats)]
    store = build_store(
        f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint, kind="exact"
    )
    searcher = Searcher(ColourEmbedder(), store, SearchConfig(category_prior=weight))
    cheap = parse_where(["price<=20"], store.schema)
    for _q in range(8):
        query = rng.normal(size=4).astype(np.float32)
        query /= np.linalg.norm(query)
        for k in (1, 5, 40):
            result = searcher.search_vector(query, k)  # the default: auto
            assert [m["product_id"] for m in result.matches] == brute_force_prior(vecs, cats, query, weight)[:k]
            assert result.category["mode"] == "auto" and result.category["predicted"] in cats
            filtered = searcher.search_vector(query, k, where=cheap)
            expected = brute_force_prior(vecs, cats, query, weight, keep=lambda i: i % 50 <= 20)[:k]
            assert [m["product_id"] for m in filtered.matches] == expected
        plain = searcher.search_vector(query, 40, "any").matches
        assert [m["score"] for m in plain] == sorted((m["score"] for m in plain), reverse=True)
    with pytest.raises(ValueError, match="category_prior"):
        Searcher(ColourEmbedder(), store, SearchConfig(category_prior=-1))
    store.close()


def test_cli_index_and_search_with_exported_model(smoke_run, smoke_index, tmp_path, capsys):
    model, index_path = smoke_index
    index = tmp_path / "catalog.vsi"
    shutil.copy(index_path, index)
    photo = sorted((smoke_run["data"] / "validation").rglob("*.jpg"))[0]
    assert (
        cli.main(
            [
                "search",
                str(photo),
                "--model",
                str(model),
                "--store",
                str(index),
                "-k",
                "3",
                "--json",
                "--category",
                "any",
                "--no-rerank",
                "--plot",
                str(tmp_path / "plots" / "plot.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert len(result["matches"]) == 3 and result["matches"][0]["rank"] == 1
    scores = [m["score"] for m in result["matches"]]  # the plain cosine order
    assert scores == sorted(scores, reverse=True) and (tmp_path / "plots" / "plot.png").stat().st_size > 0
    assert not any("inliers" in m for m in result["matches"])  # --no-rerank: nothing examined

    # the defaults: the category prior and the re-rank
    assert cli.main(["search", str(photo), "--model", str(model), "--store", str(index), "-k", "3", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["category"]["mode"] == "auto" and result["category"]["applied"]
    assert "inliers" in result["matches"][0]

    # a catalog photo finds itself first
    own = sorted((smoke_run["data"] / "train").rglob("*.jpg"))[0]
    assert cli.main(["search", str(own), "--model", str(model), "--store", str(index), "-k", "1"]) == 0
    own_id = own.relative_to(smoke_run["data"] / "train").with_suffix("").as_posix()
    assert own_id in capsys.readouterr().out
    assert (
        cli.main(["search", str(own), "--model", str(model), "--store", str(index), "-k", "2", "--rerank", "--json"])
        == 0
    )  # the smoke photos are too plain to verify: the order stays
    out = capsys.readouterr().out
    verified = json.loads(out[: out.rindex("}") + 1])["matches"][0]
    assert verified["id"] == own_id and verified["inliers"] >= 0  # it was examined

    def count():
        store = open_store(str(index))
        try:
            return store.count()
        finally:
            store.close()

    before = count()
    assert cli.main(["index", "remove", own_id, "--store", str(index)]) == 0
    assert count() == (before[0] - 1, before[1] - 1)
    assert cli.main(["index", "remove", own_id, "--store", str(index)]) == 2  # already gone: nothing removed
    assert "not in" in capsys.readouterr().err
    assert (
        cli.main(
            ["index", "add", str(own), "--store", str(index), "--model", str(model), "--category", own.parent.name]
        )
        == 0
    )
    assert count() == before
    assert (
        cli.main(
            ["index", "add", str(own), "--store", str(index), "--model", str(model), "--category", own.parent.name]
        )
        == 2
    )  # already there: add refuses, upsert replaces
    assert "index upsert" in capsys.readouterr().err
    assert (
        cli.main(
            ["index", "upsert", str(own), "--store", str(index), "--model", str(model), "--category", own.parent.name]
        )
        == 0
    )
    assert count() == before
    assert cli.main(["index", "info", "--store", str(index)]) == 0
    assert f"{before[0]} products, {before[1]} photos" in capsys.readouterr().out


def test_cli_search_errors(smoke_index, tmp_path, capsys):
    model, index = smoke_index
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for photo, message in ((tmp_path / "missing.jpg", "no such file"), (empty, "file is empty")):
        assert cli.main(["search", str(photo), "--model", str(model), "--store", str(index)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    good = solid(tmp_path / "ok.png", (1, 2, 3))
    assert cli.main(["search", str(good), "--model", str(model), "--store", str(tmp_path / "none.vsi")]) == 2
    assert "none.vsi" in capsys.readouterr().err
    assert cli.main(["search", str(good), "--model", str(model), "--store", str(index), "--where", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "'colour'" in err and len(err.strip().splitlines()) == 1
    assert (
        cli.main(
            ["index", "build", str(tmp_path / "nowhere"), "--model", str(model), "--store", str(tmp_path / "x.vsi")]
        )
        == 2
    )
    assert "no such" in capsys.readouterr().err
    shop = tmp_path / "shop"
    solid(shop / "hats" / "red.png", (250, 10, 10))
    (tmp_path / "taken").mkdir()
    for extra, message in (
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--store", str(tmp_path / "taken")], "is a folder; give a file name"),
        (["--store", str(good / "x.vsi")], "not a writable folder"),
    ):
        assert cli.main(["index", "build", str(shop), "--model", str(model), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert (
        cli.main(["search", str(good), "--model", str(model), "--store", str(index), "--plot", str(tmp_path / "taken")])
        == 2
    )
    assert "--plot" in capsys.readouterr().err
    # a place no one can write, not even root: one line, not a traceback
    assert (
        cli.main(
            ["search", str(good), "--model", str(model), "--store", str(index), "--plot", "/proc/vsearch-test/plot.png"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/vsearch-test" in err[0] and "error:" in err[0]


def test_searching_a_part_of_the_photo_finds_the_item_in_it(catalog):
    """Two catalog items side by side on one canvas: a box around each finds each."""
    searcher = Searcher(ColourEmbedder(), catalog)
    canvas = np.zeros((30, 80, 3), np.uint8)
    canvas[:, :40] = (250, 10, 10)  # the red hat
    canvas[:, 40:] = (10, 240, 10)  # the green shoes
    assert searcher.search(canvas, 1, box="0,0,0.5,1").matches[0]["id"] == "hats/red"
    assert searcher.search(canvas, 1, box=(0.5, 0, 1, 1)).matches[0]["id"] == "shoes/green"
    assert searcher.search(canvas, 1).matches[0]["id"] not in ("hats/red", "shoes/green")  # the mix is neither
    with pytest.raises(ImageError, match="not a box inside the photo"):
        searcher.search(canvas, 1, box="0.6,0,0.5,1")


def test_rerank_moves_the_product_showing_the_same_surface_first(tmp_path):
    """The embedding ranks product a first; b's nearest photo shows what the query shows: rerank puts b first."""
    from test_rerank import textured, warped

    files = {}
    for name, seed in (("a0", 11), ("b0", 12), ("b1", 13), ("c0", 14)):
        files[name] = tmp_path / f"{name}.png"
        Image.fromarray(textured(seed)).save(files[name])
    vecs = np.asarray([[1, 0, 0, 0], [0.6, 0, 0.8, 0], [0.9, 0.43, 0, 0], [0, 0, 0, 1]], np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    photos = [Photo(name[0], name, str(path), "tops") for name, path in files.items()]
    store = build_store(
        f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint, kind="exact"
    )
    searcher = Searcher(ColourEmbedder(), store)
    query = warped(textured(13)).astype(np.float32)  # a customer's view of b's second photo
    plain = searcher.search_vector(vecs[0], 3)
    assert [m["product_id"] for m in plain.matches] == ["a", "b", "c"]
    verified = searcher.search_vector(vecs[0], 3, rerank_query=query)
    assert [m["product_id"] for m in verified.matches] == ["b", "a", "c"]
    assert verified.matches[0]["inliers"] >= searcher.rerank_config.min_inliers
    assert verified.matches[1]["score"] == pytest.approx(1, abs=1e-5)  # the scores stay the embedding's

    # a calibration that says "not in the catalog" of everything: a verified first product is "similar" instead
    flat = {"method": "platt", "mean": [0.0, 0.0], "scale": [1.0, 1.0], "coef": [0.0, 0.0], "intercept": 0.0}
    store.set_calibration(
        {
            "fingerprint": ColourEmbedder.fingerprint,
            "thresholds": {"exact": 0.99, "none": 0.99},
            "heads": {h: {"global": flat, "categories": {}} for h in ("exact", "present")},
        }
    )
    assert searcher.search_vector(vecs[0], 3).match["verdict"] == "none"
    assert searcher.search_vector(vecs[0], 3, rerank_query=query).match["verdict"] == "similar"
    store.set_calibration(None)

    # a prior strong enough to push b out of the ranked list: b is still verified (the short list is by cosine)
    cats = {"a0": "tops", "b0": "shoes", "b1": "shoes", "c0": "tops"}
    photos = [Photo(name[0], name, str(path), cats[name]) for name, path in files.items()]
    sided = build_store(
        f"faiss:{tmp_path / 'd.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint, kind="exact"
    )
    strong = Searcher(ColourEmbedder(), sided, SearchConfig(category_prior=5.0))
    assert [m["product_id"] for m in strong.search_vector(vecs[0], 2).matches] == ["a", "c"]
    assert [m["product_id"] for m in strong.search_vector(vecs[0], 2, rerank_query=query).matches] == ["b", "a"]
    sided.close()

    files["b1"].unlink()  # a catalog photo gone from disk verifies nothing and breaks nothing
    fresh = Searcher(ColourEmbedder(), store)
    assert [m["product_id"] for m in fresh.search_vector(vecs[0], 3, rerank_query=query).matches] == ["a", "b", "c"]
    store.close()


def textured_catalog(tmp_path):
    """Products a and b, one textured photo each (the re-rank finds keypoints in them), at orthogonal vectors."""
    from test_rerank import textured

    files = {}
    for name, seed in (("a0", 11), ("b0", 13)):
        files[name] = tmp_path / f"{name}.png"
        Image.fromarray(textured(seed)).save(files[name])
    photos = [Photo(name[0], name, str(path), "tops") for name, path in files.items()]
    vecs = np.asarray([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    return build_store(f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint)


def b_at_an_angle(size: tuple[int, int], left: int, width: int, corners) -> np.ndarray:
    """A grey (200) photo of ``size`` (width, height) showing b's photo at an angle in the ``width``
    columns from ``left``, its corners at ``corners`` (pixels of the whole photo)."""
    from test_rerank import perspective, textured

    canvas = np.full((size[1], size[0], 3), 200, np.uint8)
    canvas[:, left : left + width] = perspective(textured(13), (width, size[1]), [(x - left, y) for x, y in corners])
    return canvas


def outline_error(match: dict, photo: np.ndarray, corners) -> float:
    """How far, in pixels of ``photo``, the match's outline (fractions of ``photo``) lies from ``corners``."""
    height, width = photo.shape[:2]
    return float(np.abs(np.array(match["outline"]) * (width, height) - np.array(corners)).max())


def test_the_outline_of_a_verified_product_is_drawn_on_the_whole_photo(tmp_path):
    """A view of b's photo in the left half of a wide photo, searched in a box around it: the
    outline the answer carries is where that photo lies in the whole photo."""

    class SharpColourEmbedder(ColourEmbedder):
        image_size = 256  # a model input the re-rank finds keypoints in

    store = textured_catalog(tmp_path)
    searcher = Searcher(SharpColourEmbedder(), store)
    corners = ((40, 30), (250, 55), (230, 230), (25, 200))
    canvas = b_at_an_angle((600, 260), 0, 300, corners)
    top = searcher.search(canvas, 2, "any", box=(0, 0, 0.5, 1)).matches[0]
    assert top["product_id"] == "b" and top["inliers"] >= searcher.rerank_config.min_inliers
    assert outline_error(top, canvas, corners) < 6  # pixels of the whole photo
    whole = searcher.search(canvas[:, :300], 2, "any").matches[0]
    assert outline_error(whole, canvas[:, :300], corners) < 6
    store.close()


def test_a_searchers_settings_are_its_defaults_and_can_be_changed(shop, catalog):
    searcher = Searcher(ColourEmbedder(), catalog, SearchConfig(k=2, category="hats", rerank=False))
    photo = (shop / "shoes" / "olive.png").read_bytes()
    result = searcher.search(photo)
    assert len(result.matches) == 2 and {m["category"] for m in result.matches} == {"hats"}
    assert len(searcher.search(photo, 3, "any").matches) == 3  # a search that says
    assert searcher.with_config(searcher.config) is searcher
    other = searcher.with_config(SearchConfig(k=1))
    assert (
        other.store is searcher.store and other.embedder is searcher.embedder and other._features is searcher._features
    )
    assert len(other.search(photo).matches) == 1 and searcher.config.k == 2
    finer = searcher.with_config(SearchConfig(reranker=replace(searcher.rerank_config, features=100)))
    assert finer._features is not searcher._features and finer._features.config.features == 100


# ---------------------------------------------------------------- regions of the photo


class CountingEmbedder(ColourEmbedder):
    """The colour model, counting its calls and their batch sizes."""

    def __init__(self):
        self.calls: list[int] = []

    def embed_pixels(self, pixels):
        self.calls.append(len(pixels))
        return super().embed_pixels(pixels)


def cluttered() -> np.ndarray:
    """The green shoes in the photo's centre 80%, a red shelf around them: the whole photo's
    mean colour is nearer the olive shoes."""
    canvas = np.zeros((100, 100, 3), np.uint8)
    canvas[:] = (250, 10, 10)
    canvas[10:90, 10:90] = (10, 240, 10)
    return canvas


def test_a_product_in_a_cluttered_photo_is_found_through_a_region(catalog):
    embedder = CountingEmbedder()
    searcher = Searcher(embedder, catalog, SearchConfig(rerank=False))
    whole = searcher.search(cluttered(), 2, "any")
    assert whole.matches[0]["id"] == "shoes/olive" and whole.region is None
    found = searcher.search(cluttered(), 2, "any", regions="centre")
    assert found.matches[0]["id"] == "shoes/green" and found.matches[0]["score"] == pytest.approx(1, abs=1e-5)
    assert found.region == (0.1, 0.1, 0.9, 0.9) and found.to_dict()["region"] == [0.1, 0.1, 0.9, 0.9]
    assert found.matches[1]["id"] == "shoes/olive"  # each product once, by its best part
    assert "region" not in found.matches[0] and whole.to_dict()["region"] is None
    assert embedder.calls == [1, 2]  # the whole photo and its centre in one model call

    by_default = Searcher(embedder, catalog, SearchConfig(rerank=False, regions="centre"))
    embedder.calls.clear()
    assert by_default.search(cluttered(), 1, "any").matches[0]["id"] == "shoes/green"
    boxed = by_default.search(cluttered(), 1, "any", box=(0, 0, 1, 1))  # a box is searched alone
    assert boxed.matches[0]["id"] == "shoes/olive" and boxed.region is None
    assert embedder.calls == [2, 1]
    with pytest.raises(DataError, match="regions must be one of none, centre, got 'grid'"):
        searcher.search(cluttered(), 1, regions="grid")


def test_a_region_ranks_each_product_by_its_best_part_under_the_prior(catalog):
    """category=auto over parts: the neighbours' vote and the prior see each product's best score."""
    searcher = Searcher(ColourEmbedder(), catalog, SearchConfig(rerank=False, category_prior=0.5))
    found = searcher.search(cluttered(), 4, "auto", regions="centre")
    assert found.category["predicted"] == "shoes" and found.region == (0.1, 0.1, 0.9, 0.9)
    assert [m["category"] for m in found.matches] == ["shoes", "shoes", "hats", "hats"]
    query = searcher.query(cluttered(), regions="centre")
    vectors = searcher.embedder.embed_pixels(query.inputs)
    scores = {m["product_id"]: m["score"] for m in found.matches}
    for match in searcher.search_vector(vectors[0], 4, "any").matches:  # never below the whole photo's
        assert scores[match["product_id"]] >= match["score"] - 1e-6


def test_a_product_verified_in_a_region_is_outlined_on_the_whole_photo(tmp_path):
    """b's photo seen at an angle in the middle of a wide grey frame: its vector comes from the
    centre (less grey), where the re-rank verifies it; the outline is where it lies in the whole photo."""

    class GreyShareEmbedder:
        """A stand-in model that sees how much of the input is the grey frame: all grey is a, none is b."""

        image_size, dim, fingerprint = 256, 4, ColourEmbedder.fingerprint

        def embed_pixels(self, pixels):
            grey = (np.abs(np.asarray(pixels, np.float32) - 200).max(axis=3) < 1).mean(axis=(1, 2))
            out = np.stack([grey, 1 - grey, np.zeros_like(grey), np.zeros_like(grey)], axis=1)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    store = textured_catalog(tmp_path)
    searcher = Searcher(GreyShareEmbedder(), store, SearchConfig(regions="centre"))
    corners = ((150, 70), (440, 95), (420, 330), (135, 300))
    canvas = b_at_an_angle((600, 400), 100, 400, corners)
    found = searcher.search(canvas, 2, "any")
    top = found.matches[0]
    assert top["product_id"] == "b" and top["inliers"] >= searcher.rerank_config.min_inliers
    assert found.region == (0.1, 0.1, 0.9, 0.9)
    assert outline_error(top, canvas, corners) < 8  # pixels of the whole photo
    store.close()


def test_cli_search_prints_the_part_of_the_photo_that_gave_the_answer(catalog, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    photo = tmp_path / "cluttered.png"
    Image.fromarray(cluttered()).save(photo)
    search = ["search", str(photo), "--model", "colour", "--store", str(tmp_path / "shop.vsi"), "-k", "1"]
    assert cli.main([*search, "--category", "any", "--no-rerank"]) == 0
    out = capsys.readouterr().out
    assert "shoes/olive" in out and "found in the part" not in out
    assert cli.main([*search, "--category", "any", "--no-rerank", "--regions", "centre"]) == 0
    out = capsys.readouterr().out
    assert "found in the part 0.1,0.1,0.9,0.9 of the photo (regions centre)" in out and "shoes/green" in out
    assert cli.main([*search, "--set", "regions=centre", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1])["region"] == [0.1, 0.1, 0.9, 0.9]
    assert cli.main([*search, "--regions", "grid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--regions must be one of none, centre, got 'grid'" in err[0]
