import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import awkward_files
from vsearch import cli
from vsearch.errors import DataError, ImageError
from vsearch.index import Catalog
from vsearch.search import (Searcher, add_images, build_catalog, catalog_files, predict_category,
                            read_items_csv)


class ColourEmbedder:
    """A transparent stand-in model: the unit vector of an image's mean colour (plus a bias)."""

    image_size, dim, fingerprint = 8, 4, "colour-v1"

    def embed_pixels(self, pixels):
        mean = np.asarray(pixels, np.float32).mean(axis=(1, 2)) / 255.0
        out = np.concatenate([mean, np.full((len(mean), 1), 0.1, np.float32)], axis=1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def solid(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def shop(tmp_path):
    root = tmp_path / "shop"
    solid(root / "hats" / "red.jpg", (250, 10, 10))
    solid(root / "hats" / "pink.png", (250, 120, 140))
    solid(root / "shoes" / "green.png", (10, 240, 10))
    solid(root / "shoes" / "olive.png", (120, 160, 20))
    (root / "shoes" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_catalog_files_ids_and_categories(shop, tmp_path):
    files = catalog_files(shop)
    assert [(f[1], f[2]) for f in files] == [("hats", "hats/pink"), ("hats", "hats/red"),
                                             ("shoes", "shoes/green"), ("shoes", "shoes/olive")]
    with pytest.raises(DataError, match="no such catalog folder"):
        catalog_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        catalog_files(tmp_path / "empty")


def test_read_items_csv(tmp_path):
    good = tmp_path / "items.csv"
    good.write_text("id,path,title,price\nH1,hats/red.jpg,Red cap,9.99\n")
    assert read_items_csv(good) == {"hats/red.jpg": {"id": "H1", "title": "Red cap", "price": "9.99"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,title\n1,x\n")
    with pytest.raises(DataError, match="needs an 'id' column"):
        read_items_csv(bad)
    bad.write_text("id,image\n1,a.jpg\n1,b.jpg\n")
    with pytest.raises(DataError, match=r"bad.csv:3: duplicate id '1'"):
        read_items_csv(bad)
    with pytest.raises(DataError, match="no such items file"):
        read_items_csv(tmp_path / "nope.csv")


def test_build_skips_bad_files_and_joins_csv(shop, tmp_path):
    files = awkward_files(shop / "misc")
    items = tmp_path / "items.csv"
    items.write_text("id,path,title\nH1,hats/red.jpg,Red cap\nGONE,hats/missing.jpg,Lost\n")
    catalog, report = build_catalog(ColourEmbedder(), shop, items, kind="exact", batch_size=3, workers=2)
    assert set(report.skipped) == {str(files[k]) for k in ("corrupt", "truncated", "empty", "text")}
    assert "file is empty" in report.skipped[str(files["empty"])]
    assert report.unmatched_rows == ["hats/missing.jpg"]
    assert report.added == len(catalog) == 4 + 5  # 4 shop photos + gray, rgba, 16-bit, cmyk, exif
    assert catalog.items["H1"]["title"] == "Red cap" and catalog.items["H1"]["category"] == "hats"
    assert "hats/red" not in catalog and "misc/exif_rotated" in catalog
    text = report.format()
    assert "skipped 4 unreadable file(s)" in text and "hats/missing.jpg" in text


def test_searcher_finds_the_item_and_filters(shop):
    catalog, _ = build_catalog(ColourEmbedder(), shop, kind="exact")
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
        Searcher(ColourEmbedder(), catalog, max_bytes=10).search(photo)
    assert searcher.image_path("shoes/olive") == (shop / "shoes" / "olive.png").resolve()
    with pytest.raises(KeyError):
        searcher.image_path("../../etc/passwd")


def test_searcher_pixels_accepts_0_255_numbers_and_refuses_others(shop):
    catalog, _ = build_catalog(ColourEmbedder(), shop, kind="exact")
    searcher = Searcher(ColourEmbedder(), catalog)
    olive = np.asarray(Image.open(shop / "shoes" / "olive.png"))
    as_float = searcher.search(olive.astype(np.float32), 1).matches[0]
    assert as_float["id"] == "shoes/olive" and as_float["score"] == pytest.approx(1, abs=1e-5)
    assert np.array_equal(searcher.pixels(olive.astype(np.float64) + 0.2), olive)  # rounded, not truncated
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


def test_searcher_refuses_another_model(shop):
    catalog, _ = build_catalog(ColourEmbedder(), shop, kind="exact")
    other = ColourEmbedder()
    other.fingerprint = "colour-v2"
    with pytest.raises(DataError, match="rebuild the index"):
        Searcher(other, catalog)


def test_add_images_and_clash(shop, tmp_path):
    catalog, _ = build_catalog(ColourEmbedder(), solid_shop(tmp_path), kind="exact")
    report = add_images(catalog, ColourEmbedder(), [shop / "hats" / "red.jpg", shop / "shoes"])
    assert report.added == 3 and {"hats/red", "shoes/green", "shoes/olive"} <= set(catalog.items)
    with pytest.raises(DataError, match="already in the catalog"):
        add_images(catalog, ColourEmbedder(), [shop / "hats" / "red.jpg"])
    report = add_images(catalog, ColourEmbedder(), [shop / "hats" / "pink.png"], category="sale")
    assert catalog.items["sale/pink"]["category"] == "sale"
    with pytest.raises(DataError, match="no such file or folder"):
        add_images(catalog, ColourEmbedder(), [tmp_path / "nothing.jpg"])


def test_one_id_for_two_photos_is_refused_before_embedding(shop, tmp_path):
    solid(shop / "hats" / "red.png", (240, 20, 20))  # hats/red.jpg and hats/red.png: both id hats/red
    calls = []

    class Counting(ColourEmbedder):
        def embed_pixels(self, pixels):
            calls.append(len(pixels))
            return super().embed_pixels(pixels)

    with pytest.raises(DataError, match=r"1 id\(s\) name more than one photo, e.g. 'hats/red' \(.*red.jpg and .*red.png\)"):
        build_catalog(Counting(), shop, kind="exact")
    catalog, _ = build_catalog(ColourEmbedder(), solid_shop(tmp_path), kind="exact")
    with pytest.raises(DataError, match="name more than one photo"):
        add_images(catalog, Counting(), [shop / "hats" / "pink.png", shop / "hats" / "pink.png"])
    assert calls == [] and len(catalog) == 1  # nothing embedded, nothing added
    with pytest.raises(ValueError, match="batch_size and workers must be >= 1, got 0 and 4"):
        build_catalog(ColourEmbedder(), solid_shop(tmp_path), batch_size=0)


def test_a_small_category_of_an_hnsw_catalog_is_searched_exactly():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    catalog = Catalog(4, ColourEmbedder.fingerprint, kind="hnsw")
    rare = {5, 1000, 2999}
    catalog.add([{"id": str(i), "category": "rare" if i in rare else "common"} for i in range(len(vecs))], vecs)
    searcher = Searcher(ColourEmbedder(), catalog)
    query = vecs[42]
    expected = sorted(rare, key=lambda i: -float(vecs[i] @ query))
    found = searcher.search_vector(query, 5, "rare").matches
    assert [m["id"] for m in found] == [str(i) for i in expected]  # all three, best first
    assert [m["score"] for m in found] == pytest.approx([float(vecs[i] @ query) for i in expected], abs=1e-5)
    common = searcher.search_vector(query, 5, "common").matches  # a large one: the graph, widened
    assert len(common) == 5 and {m["category"] for m in common} == {"common"}
    assert common[0]["id"] == "42"


def solid_shop(tmp_path):
    root = tmp_path / "base"
    solid(root / "bags" / "blue.png", (10, 10, 240))
    return root


def test_predict_category():
    matches = [{"id": "a", "category": "x", "score": 0.9}, {"id": "b", "category": "y", "score": 0.89},
               {"id": "c", "category": "y", "score": 0.88}]
    assert predict_category(matches)[0] == "y" and 0.5 < predict_category(matches)[1] < 0.7
    assert predict_category(matches, temperature=0.001)[0] == "x"
    assert predict_category([]) == ("", 0.0)


def test_cli_index_and_search_with_exported_model(smoke_run, smoke_index, tmp_path, capsys):
    model, index_path = smoke_index
    index = tmp_path / "catalog.vsi"
    shutil.copy(index_path, index)
    photo = sorted((smoke_run["data"] / "validation").rglob("*.jpg"))[0]
    assert cli.main(["search", str(photo), "--model", str(model), "--index", str(index), "-k", "3", "--json",
                     "--plot", str(tmp_path / "plots" / "plot.png")]) == 0  # its folder is made
    out = capsys.readouterr().out
    result = json.loads(out[:out.rindex("}") + 1])
    assert len(result["matches"]) == 3 and result["matches"][0]["rank"] == 1
    scores = [m["score"] for m in result["matches"]]
    assert scores == sorted(scores, reverse=True) and (tmp_path / "plots" / "plot.png").stat().st_size > 0

    # a catalog photo finds itself first
    own = sorted((smoke_run["data"] / "train").rglob("*.jpg"))[0]
    assert cli.main(["search", str(own), "--model", str(model), "--index", str(index), "-k", "1"]) == 0
    own_id = own.relative_to(smoke_run["data"] / "train").with_suffix("").as_posix()
    assert own_id in capsys.readouterr().out

    before = len(Catalog.load(index))
    assert cli.main(["index", "remove", str(index), own_id]) == 0
    assert len(Catalog.load(index)) == before - 1
    assert cli.main(["index", "remove", str(index), own_id]) == 2  # already gone: nothing removed
    assert "not in" in capsys.readouterr().err
    assert cli.main(["index", "add", str(index), str(own), "--model", str(model),
                     "--category", own.parent.name]) == 0
    assert len(Catalog.load(index)) == before
    assert cli.main(["index", "info", str(index)]) == 0
    assert f"{before} items" in capsys.readouterr().out


def test_cli_search_errors(smoke_index, tmp_path, capsys):
    model, index = smoke_index
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for photo, message in ((tmp_path / "missing.jpg", "no such file"), (empty, "file is empty")):
        assert cli.main(["search", str(photo), "--model", str(model), "--index", str(index)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    good = solid(tmp_path / "ok.png", (1, 2, 3))
    assert cli.main(["search", str(good), "--model", str(model), "--index", str(tmp_path / "none.vsi")]) == 2
    assert "no such catalog index" in capsys.readouterr().err
    assert cli.main(["index", "build", str(tmp_path / "nowhere"), "--model", str(model),
                     "--out", str(tmp_path / "x.vsi")]) == 2
    assert "no such catalog folder" in capsys.readouterr().err
    shop = tmp_path / "shop"
    solid(shop / "hats" / "red.png", (250, 10, 10))
    (tmp_path / "taken").mkdir()
    for extra, message in ((["--batch-size", "0"], "--batch-size must be >= 1"),
                           (["--workers", "0"], "--workers must be >= 1"),
                           (["--out", str(tmp_path / "taken")], "is a folder; give a file name"),
                           (["--out", str(good / "x.vsi")], "not a writable folder")):
        assert cli.main(["index", "build", str(shop), "--model", str(model), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert cli.main(["search", str(good), "--model", str(model), "--index", str(index),
                     "--plot", str(tmp_path / "taken")]) == 2
    assert "--plot" in capsys.readouterr().err
