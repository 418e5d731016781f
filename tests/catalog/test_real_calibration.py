"""The verdict calibrated on labelled customer photos (vsearch.catalog.real_calibration)."""

import csv

import numpy as np
import pytest
from fake_server import COLOURS, ColourEmbedder, photo, write_catalog
from PIL import Image

from vsearch.catalog import real_calibration as real
from vsearch.catalog.calibration import Samples, calibrate_catalog, format_calibration
from vsearch.catalog.manifest import read_manifest, read_queries
from vsearch.catalog.search import Searcher
from vsearch.catalog.verdict import ranked_features
from vsearch.errors import DataError
from vsearch.stores import build_store, open_store


@pytest.fixture
def shop(tmp_path):
    """The fake model's catalog (12 products, 3 colours) in tmp_path, opened."""
    store = open_store(f"faiss:{write_catalog(tmp_path / 'shop')}")
    yield store
    store.close()


def customer_photo(colour, seed: int, shot: int) -> np.ndarray:
    """Catalog photo ``seed`` of a colour, photographed again: noisy and a little darker or lighter."""
    rng = np.random.default_rng([seed, shot])
    pixels = photo(colour, seed).astype(int) + rng.integers(-25, 25, (48, 40, 3)) + int(rng.integers(-15, 15))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_queries(folder, shots: int = 6, extra=(), header=("product_id", "image", "category")):
    """``folder/queries.csv`` with ``shots`` customer photos of each catalog product (relative
    paths), plus ``extra`` rows; returns its path."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, (name, colour) in enumerate(sorted(COLOURS.items())):
        for i in range(4):
            for shot in range(shots):
                path = folder / "photos" / f"{name}-{i}-{shot}.png"
                Image.fromarray(customer_photo(colour, 10 * c + i, shot)).save(path)
                rows.append({"product_id": f"{name}/{i}", "image": f"photos/{path.name}", "category": name})
    rows += list(extra)
    path = folder / "queries.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def absent_rows(folder, shots: int = 6):
    """Photos of two yellow products the catalog does not sell."""
    rows = []
    for i in range(2):
        for shot in range(shots):
            path = folder / "photos" / f"yellow-{i}-{shot}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(customer_photo((220, 200, 30), 50 + i, shot)).save(path)
            rows.append({"product_id": f"yellow/{i}", "image": f"photos/{path.name}", "category": "yellow"})
    return rows


# ---------------------------------------------------------------- the query manifest


def test_read_queries_resolves_relative_images_and_needs_no_category(tmp_path):
    path = write_queries(tmp_path, shots=1, header=("product_id", "image"))
    queries = read_queries(path)
    assert len(queries) == 12 and queries[0][0] == "line 2"
    assert queries[0][1].image == str(tmp_path / "photos" / "blue-0-0.png") and queries[0][1].category == ""
    with pytest.raises(DataError, match="missing column"):  # a catalog manifest needs the category
        read_manifest(path)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("product_id,category\nred/0,red\n", "missing column(s) image; a query manifest needs product_id, image"),
        ("product_id,image\nred/0,photos/gone.png\n", "line 2: image 'photos/gone.png' not found"),
        ("product_id,image\n", "no rows"),
        ("", "empty file"),
    ],
)
def test_a_bad_query_manifest_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "queries.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="queries.csv: ") as error:
        read_queries(path)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_query_sets_that_cannot_calibrate_are_refused_before_searching(shop, tmp_path):
    few = [("line 2", p) for p in read_manifest(write_queries(tmp_path, shots=1)).photos if p.category == "red"][:2]
    with pytest.raises(DataError, match="photos of 2 product"):
        real.check_queries(few, shop, "q.csv")
    elsewhere = [("line 2", p.__class__(f"x{n}", "i", p.image, "")) for n, (_, p) in enumerate(few * 2)]
    with pytest.raises(DataError, match="none of its 4 products is in the catalog"):
        real.check_queries(elsewhere, shop, "q.csv")
    catalog = [(f"line {n}", p) for n, p in enumerate(read_manifest(tmp_path / "shop" / "photos").photos)]
    with pytest.raises(DataError, match="are catalog photos"):
        real.check_queries(catalog, shop, "q.csv")


# ---------------------------------------------------------------- the searches: the served road


def test_served_samples_are_the_served_answers_read_as_the_verdict_reads_them(shop, tmp_path):
    queries = read_queries(write_queries(tmp_path, shots=1))[:3]
    searcher = Searcher(ColourEmbedder(), shop)
    samples = real.served_samples(searcher, queries, leave_out=True)
    assert samples.present.tolist() == [True, False] * 3 and samples.product.tolist() == [
        q.product_id for _, q in queries for _ in range(2)
    ]
    assert not samples.exact[~samples.present].any()  # its product left out: never the top-1
    where, first = queries[0]
    answer = searcher.search(first.image, real.verdict_depth(searcher.config)).matches  # what /api/search does
    expected = ranked_features([m["score"] for m in answer], [m["product_id"] for m in answer])
    assert (samples.top1[0], samples.gap[0]) == pytest.approx(expected)
    assert samples.exact[0] == (answer[0]["product_id"] == first.product_id)
    assert samples.verified[0] == (answer[0].get("inliers", 0) >= searcher.rerank_config.min_inliers)
    # left out by a filter: the answer of the catalog without that product
    others = [p for p in read_manifest(tmp_path / "shop" / "photos").photos if p.product_id != first.product_id]
    vectors = np.stack([searcher.model_input(p.image) for p in others])
    without = build_store(
        f"faiss:{tmp_path / 'without.vsi'}",
        others,
        ColourEmbedder().embed_pixels(vectors),
        fingerprint=shop.fingerprint,
        kind="exact",
    )
    alone = real.served_samples(Searcher(ColourEmbedder(), without), [(where, first)], leave_out=False)
    assert alone.category[0] == samples.category[1]
    assert (alone.top1[0], alone.gap[0]) == pytest.approx((samples.top1[1], samples.gap[1]), abs=1e-6)


def test_an_unreadable_query_photo_is_one_error_naming_it(shop, tmp_path):
    broken = tmp_path / "photos" / "broken.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a photo")
    queries = read_queries(
        write_queries(tmp_path, shots=1, extra=[{"product_id": "red/0", "image": "photos/broken.png"}])
    )
    with pytest.raises(DataError, match=r"q.csv: 1 query photo\(s\) cannot be read, e.g. line 14: .*broken.png"):
        real.served_samples(Searcher(ColourEmbedder(), shop), queries, leave_out=True, source="q.csv")


# ---------------------------------------------------------------- fit and held-out figures, by product


def labelled(products: int = 30, per_product: int = 6, seed: int = 0) -> Samples:
    """Searches where a high score and a wide gap mean the exact item; each product's photos alike."""
    rng = np.random.default_rng(seed)
    product = np.repeat([f"p{i}" for i in range(products)], per_product * 2)
    inside = np.tile([True, False], products * per_product)
    top1 = np.where(inside, rng.normal(0.8, 0.08, len(inside)), rng.normal(0.55, 0.08, len(inside)))
    gap = np.where(inside, rng.exponential(0.12, len(inside)), rng.exponential(0.03, len(inside)))
    exact = inside & (rng.random(len(inside)) < 1 / (1 + np.exp(-(12 * (top1 - 0.65) + 20 * gap))))
    n = len(inside)
    return Samples(top1, gap, np.full(n, "", object), exact, inside, np.zeros(n, bool), product.astype(object))


def test_products_are_dealt_whole_and_evenly():
    samples = labelled(products=10)
    part = real.deal_products(samples, 3, seed=1)
    for product in set(samples.product):
        assert len(set(part[samples.product == product])) == 1  # a product's searches stay together
    sizes = sorted(len(set(samples.product[part == f])) for f in range(3))
    assert sizes == [3, 3, 4] and np.array_equal(part, real.deal_products(samples, 3, seed=1))


def test_each_folds_verdicts_come_from_a_fit_without_its_products(monkeypatch):
    samples = labelled()
    fitted, judged = [], []
    fit, verdicts = real.fit_on_photos, real.sample_verdicts
    monkeypatch.setattr(real, "fit_on_photos", lambda s, *a: fitted.append(set(s.product)) or fit(s, *a))
    monkeypatch.setattr(real, "sample_verdicts", lambda c, s: judged.append(set(s.product)) or verdicts(c, s))
    figures = real.cross_validate(samples, "m", folds=5, target=0.9)
    assert figures["folds"] == 5 and len(fitted) == len(judged) == 5
    assert all(not (seen & held) for seen, held in zip(fitted, judged))
    assert set().union(*judged) == set(samples.product)  # every search judged once, by one fold
    assert figures["num_in_catalog"] == figures["num_left_out"] == len(samples) // 2
    assert figures["num_exact"] > 0 and figures["exact_precision"] >= 0.85


def test_fit_on_photos_says_exact_at_the_target_probability_and_none_within_its_rate():
    samples = labelled(products=60)
    calibration = real.fit_on_photos(samples, "m", target=0.9, wrong_none=0.1)
    assert calibration["thresholds"]["exact"] == 0.9 and calibration["method"] == {"exact": "platt", "present": "platt"}
    said, p_exact, p_present = real.sample_verdicts(calibration, samples)
    assert np.array_equal(said == "exact", (p_exact >= 0.9) & ~(p_present <= calibration["thresholds"]["none"]))
    told_none = (said == "none")[samples.present].mean()
    assert 0 < told_none <= 0.1 and (said == "none")[~samples.present].mean() > told_none
    with pytest.raises(ValueError, match="between 0 and 1"):
        real.fit_on_photos(samples, "m", target=1.0)


def test_folds_are_capped_at_the_products():
    assert real.cross_validate(labelled(products=3), "m", folds=5, target=0.9)["folds"] == 3


# ---------------------------------------------------------------- the stage


def test_calibrate_on_queries_fits_real_photos_and_states_its_held_out_precision(shop, tmp_path):
    queries = write_queries(tmp_path)
    logs = []
    calibration = real.calibrate_on_queries(shop, ColourEmbedder(), queries, target=0.8, log=logs.append)
    assert calibration["fitted_on"] == {
        "kind": "real",
        "description": "real photos: 72 queries of 12 products",
        "manifest": str(queries),
        "queries": 72,
        "products": 12,
        "not_in_catalog": "photos with their product left out",
    }
    h = calibration["heldout"]
    assert h["photos"] == "real photos, 5 folds by product" and h["num_in_catalog"] == h["num_left_out"] == 72
    assert h["num_exact"] > 0 and 0 < h["exact_coverage"] <= 1 and h["exact_precision_low"] <= h["exact_precision"]
    assert calibration["target_precision"] == 0.8 and calibration["road"]["rerank"] is True
    assert len(logs) == 1  # no calibration before: nothing to compare
    text = format_calibration(calibration)
    assert "fitted on real photos: 72 queries of 12 products" in text
    assert "held-out real photos, 5 folds by product (72 in the catalog, 72 not)" in text
    shop.set_calibration(calibration)
    match = Searcher(ColourEmbedder(), shop).search(tmp_path / "photos" / "red-1-0.png").match
    assert match["fitted_on"] == "real" and match["verdict"] in ("exact", "similar", "none")


def test_photos_of_products_not_in_the_catalog_are_the_none_side(shop, tmp_path):
    queries = write_queries(tmp_path, shots=4, extra=absent_rows(tmp_path))
    shop.set_calibration(calibrate_catalog(shop, ColourEmbedder(), photos=24, log=lambda _: None))
    logs = []
    calibration = real.calibrate_on_queries(shop, ColourEmbedder(), queries, target=0.8, log=logs.append)
    assert calibration["fitted_on"]["description"] == (
        "real photos: 60 queries of 14 products (12 photos of 2 products not in the catalog)"
    )
    assert calibration["fitted_on"]["not_in_catalog"] == "photos of products not in the catalog"
    assert (calibration["heldout"]["num_in_catalog"], calibration["heldout"]["num_left_out"]) == (48, 12)
    assert "not in the catalog: 2 of its products" in logs[0]
    # the calibration it replaces, measured on the same photos
    assert logs[1].startswith("the catalog's calibration until now (synthetic photos from the catalog")


def test_calibrate_on_queries_refuses_another_model(shop, tmp_path):
    other = ColourEmbedder()
    other.fingerprint = "colour-v2"
    with pytest.raises(DataError, match="calibrate with the catalog's model"):
        real.calibrate_on_queries(shop, other, write_queries(tmp_path, shots=1))


# ---------------------------------------------------------------- the command line


def kept_calibration(index: str) -> dict:
    store = open_store(index)
    store.close()
    return store.calibration


def test_cli_calibrate_on_labelled_photos(tmp_path, capsys, monkeypatch):
    from vsearch import cli

    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    index = str(write_catalog(tmp_path / "shop"))
    queries = write_queries(tmp_path)
    common = ["--store", index, "--model", "fake", "--target-precision", "0.8"]
    assert cli.main(["calibrate", "--queries", str(queries), *common]) == 0
    out = capsys.readouterr()
    assert "fitted on real photos: 72 queries of 12 products" in out.out and "wrote the calibration" in out.out
    assert "72 labelled photos of 12 products" in out.err
    assert kept_calibration(index)["fitted_on"]["kind"] == "real"
    assert cli.main(["index", "info", "--store", index]) == 0
    assert "held-out real photos, 5 folds by product" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    for text, fragment in (
        ("image\nphotos/red-0-0.png\n", "missing column(s) product_id"),
        ("product_id,image\nred/0,photos/nowhere.png\n", "line 2: image 'photos/nowhere.png' not found"),
        ("product_id,image\n", "no rows"),
    ):
        bad.write_text(text)
        assert cli.main(["calibrate", "--queries", str(bad), *common]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vsearch calibrate: error: ") and fragment in err and err.count("\n") == 1
    assert kept_calibration(index)["fitted_on"]["kind"] == "real"  # the refused runs changed nothing


def test_cli_calibrate_searches_with_the_serving_settings(tmp_path, capsys, monkeypatch):
    from vsearch import cli

    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    index = str(write_catalog(tmp_path / "shop"))
    queries = write_queries(tmp_path, shots=2)
    common = ["--store", index, "--model", "fake", "--target-precision", "0.8"]
    settings = ["--preset", "thorough", "--set", "rerank=false"]
    assert cli.main(["calibrate", "--queries", str(queries), *settings, *common]) == 0
    out = capsys.readouterr()
    assert "searched as served (category auto, re-rank off, regions centre)" in out.err
    assert "searches: category auto, re-rank off, regions centre" in out.out
    road = kept_calibration(index)["road"]
    assert (road["category"], road["rerank"], road["regions"]) == ("auto", False, "centre")
    # without labelled photos the settings would be ignored: refused, before the model loads
    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: pytest.fail("model loaded"))
    assert cli.main(["calibrate", "--preset", "thorough", *common]) == 2
    err = capsys.readouterr().err
    assert "search setting regions=centre needs --queries" in err and err.count("\n") == 1
    assert cli.main(["calibrate", "--queries", str(queries), "--set", "regions=everywhere", *common]) == 2
    assert "regions must be one of none, centre" in capsys.readouterr().err
    assert kept_calibration(index)["road"]["regions"] == "centre"  # the refused runs changed nothing


def test_index_build_calibrate_keeps_the_synthetic_road(tmp_path, capsys, monkeypatch):
    from vsearch import cli

    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    write_catalog(tmp_path / "shop")
    index = str(tmp_path / "built.vsi")
    args = ["index", "build", str(tmp_path / "shop" / "photos"), "--model", "fake", "--store", index]
    assert cli.main([*args, "--kind", "exact", "--calibrate", "--photos", "6"]) == 0
    calibration = kept_calibration(index)
    assert calibration["photos"] == 6 and calibration["fitted_on"]["kind"] == "synthetic" and "road" not in calibration


def test_a_calibration_says_the_road_it_was_fitted_on(shop, tmp_path):
    from vsearch.catalog.verdict import calibration_summary, road_differences
    from vsearch.config import SearchConfig, preset

    thorough = preset(SearchConfig, "thorough")
    calibration = real.calibrate_on_queries(
        shop, ColourEmbedder(), write_queries(tmp_path, shots=2), target=0.8, config=thorough, log=lambda _: None
    )
    assert (
        calibration["road"]["regions"] == "centre" and calibration_summary(calibration)["road"] == calibration["road"]
    )
    assert road_differences(calibration, thorough) == {}
    assert road_differences(calibration, SearchConfig()) == {"regions": ("centre", "none")}
    assert road_differences(calibration, SearchConfig(category="any", rerank=False)) == {
        "category": ("auto", "any"),
        "rerank": (True, False),
        "regions": ("centre", "none"),
    }
    before_regions = {**calibration, "road": {k: v for k, v in calibration["road"].items() if k != "regions"}}
    assert road_differences(before_regions, thorough) == {"regions": ("none", "centre")}  # it searched whole photos
    synthetic = {k: v for k, v in calibration.items() if k != "road"}
    assert road_differences(synthetic, thorough) == {} and calibration_summary(synthetic)["road"] is None
