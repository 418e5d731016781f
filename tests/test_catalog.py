"""Building a catalog from a folder and an items CSV (vsearch.catalog)."""
import pytest

from conftest import ColourEmbedder, awkward_files, solid, solid_shop
from vsearch.catalog import add_images, build_catalog, catalog_files, read_items_csv
from vsearch.errors import DataError


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


def test_symlinked_category_folders_are_followed_once(shop, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "bags"
    solid(elsewhere / "blue.png", (10, 10, 240))
    (shop / "bags").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(shop, target_is_directory=True)  # bags/loop -> the whole shop again
    skipped = {}
    files = catalog_files(shop, skipped)
    ids = [f[2] for f in files]
    assert "bags/blue" in ids and len(ids) == len(set(ids)) == 5
    assert any("loop" in path and "another link" in why for path, why in skipped.items())
    catalog, report = build_catalog(ColourEmbedder(), shop, kind="exact")
    assert "bags/blue" in catalog and catalog.items["bags/blue"]["category"] == "bags"
    assert any("loop" in path for path in report.skipped)


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(shop):
    import os

    raw = os.path.join(os.fsencode(shop / "hats"), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    with open(raw, "wb") as fh:
        fh.write((shop / "hats" / "pink.png").read_bytes())
    catalog, report = build_catalog(ColourEmbedder(), shop, kind="exact")
    assert len(catalog) == 4
    [(path, why)] = report.skipped.items()
    assert path.endswith("caf\\xe9.png") and "not valid UTF-8" in why
    report.format().encode("utf-8")  # printable, and savable as JSON
    report = add_images(catalog, ColourEmbedder(), [os.fsdecode(raw)], category="sale")
    assert report.added == 0 and "not valid UTF-8" in next(iter(report.skipped.values()))


def test_an_items_csv_that_is_not_utf8_is_a_data_error(shop, tmp_path):
    items = tmp_path / "items.csv"
    items.write_bytes("id,path,title\nH1,hats/red.jpg,Caf\xe9 cap\n".encode("latin-1"))
    with pytest.raises(DataError, match="items.csv: not UTF-8 text .* save the CSV as UTF-8"):
        build_catalog(ColourEmbedder(), shop, items)
