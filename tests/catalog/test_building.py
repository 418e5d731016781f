"""Building a catalog from a folder or a manifest (vsearch.catalog.building)."""

import pytest
from conftest import ColourEmbedder, awkward_files, solid, solid_shop

from vsearch.artifacts import printable
from vsearch.catalog.building import add_products, build_catalog
from vsearch.catalog.manifest import catalog_files
from vsearch.errors import DataError


@pytest.fixture
def spec(tmp_path):
    return f"faiss:{tmp_path / 'catalog.vsi'}"


def photo_ids(store) -> set[str]:
    return {photo for product in store.products() for photo in product.photos}


def test_catalog_files_ids_and_categories(shop, tmp_path):
    files = catalog_files(shop)
    assert [(f[1], f[2]) for f in files] == [
        ("hats", "hats/pink"),
        ("hats", "hats/red"),
        ("shoes", "shoes/green"),
        ("shoes", "shoes/olive"),
    ]
    with pytest.raises(DataError, match="no such catalog folder"):
        catalog_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        catalog_files(tmp_path / "empty")


def test_build_from_a_folder_skips_bad_files(shop, spec):
    files = awkward_files(shop / "misc")
    store, report = build_catalog(ColourEmbedder(), shop, spec, kind="exact", batch_size=3, workers=2)
    assert set(report.skipped) == {str(files[k]) for k in ("corrupt", "truncated", "empty", "text")}
    assert "file is empty" in report.skipped[str(files["empty"])]
    assert (
        report.photos == report.products == store.count()[0] == 4 + 5
    )  # 4 shop photos + gray, rgba, 16-bit, cmyk, exif
    assert store.get("hats/red").category == "hats" and "misc/exif_rotated" in photo_ids(store)
    assert "skipped 4 unusable photo(s)" in report.format()


def test_build_from_a_manifest_groups_photos_into_products(shop, spec, tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text(
        "product_id,image,category,title,price\n"
        f"cap,{shop}/hats/red.jpg,hats,Red cap,9.5\n"
        f"cap,{shop}/hats/pink.png,hats,Red cap,9.5\n"
        f"boot,{shop}/shoes/green.png,shoes,Green boot,40\n"
        f"gone,{shop}/shoes/missing.jpg,shoes,Lost,1\n"
    )
    store, report = build_catalog(ColourEmbedder(), manifest, spec, kind="exact")
    assert store.count() == (2, 3) and report.products == 2 and report.photos == 3
    assert any("missing.jpg" in path for path in report.skipped)  # its product had no other photo: left out
    cap = store.get("cap")
    assert len(cap.photos) == 2 and cap.attributes == {"title": "Red cap", "price": 9.5}
    assert store.schema == {"title": "text", "price": "float"}
    assert store.get("gone") is None


def test_add_products_and_clash(shop, tmp_path):
    store, _ = build_catalog(ColourEmbedder(), solid_shop(tmp_path), f"faiss:{tmp_path / 'c.vsi'}", kind="exact")
    report = add_products(store, ColourEmbedder(), [shop / "hats" / "red.jpg", shop / "shoes"])
    assert report.products == 3 and {"hats/red", "shoes/green", "shoes/olive"} <= photo_ids(store)
    with pytest.raises(DataError, match="already in the catalog"):
        add_products(store, ColourEmbedder(), [shop / "hats" / "red.jpg"])
    again = add_products(store, ColourEmbedder(), [shop / "hats" / "red.jpg"], replace=True)
    assert again.replaced == 1 and store.count()[0] == 1 + 3
    add_products(store, ColourEmbedder(), [shop / "hats" / "pink.png"], category="sale")
    assert store.get("sale/pink").category == "sale"
    with pytest.raises(DataError, match="no such file or folder"):
        add_products(store, ColourEmbedder(), [tmp_path / "nothing.jpg"])


def test_added_files_whose_ids_break_the_id_rule_are_skipped_and_named(shop, tmp_path):
    """An id that the API could never replace or delete is never written by `index add` either."""
    store, _ = build_catalog(ColourEmbedder(), solid_shop(tmp_path), f"faiss:{tmp_path / 'c.vsi'}", kind="exact")
    odd = shop / "hats" / "line\nbreak.jpg"
    odd.write_bytes((shop / "hats" / "red.jpg").read_bytes())
    report = add_products(store, ColourEmbedder(), [odd, shop / "hats" / "red.jpg"])
    assert report.products == 1 and "hats/red" in photo_ids(store)
    assert not any("\n" in pid for pid in photo_ids(store))
    assert "unprintable" in report.skipped[printable(odd)]


def test_one_id_for_two_photos_is_refused_before_embedding(shop, tmp_path):
    solid(shop / "hats" / "red.png", (240, 20, 20))  # hats/red.jpg and hats/red.png: both id hats/red
    calls = []

    class Counting(ColourEmbedder):
        def embed_pixels(self, pixels):
            calls.append(len(pixels))
            return super().embed_pixels(pixels)

    with pytest.raises(DataError, match=r"one id 'hats/red' for two photos"):
        build_catalog(Counting(), shop, f"faiss:{tmp_path / 'a.vsi'}", kind="exact")
    store, _ = build_catalog(ColourEmbedder(), solid_shop(tmp_path), f"faiss:{tmp_path / 'b.vsi'}", kind="exact")
    with pytest.raises(DataError, match="name more than one photo"):
        add_products(store, Counting(), [shop / "hats" / "pink.png", shop / "hats" / "pink.png"])
    assert calls == [] and store.count() == (1, 1)  # nothing embedded, nothing added
    with pytest.raises(ValueError, match="batch_size and workers must be >= 1, got 0 and 4"):
        build_catalog(ColourEmbedder(), solid_shop(tmp_path), f"faiss:{tmp_path / 'c.vsi'}", batch_size=0)


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
    store, report = build_catalog(ColourEmbedder(), shop, f"faiss:{tmp_path / 'c.vsi'}", kind="exact")
    assert store.get("bags/blue").category == "bags"
    assert any("loop" in path for path in report.skipped)


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(shop, spec):
    import os

    raw = os.path.join(os.fsencode(shop / "hats"), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    with open(raw, "wb") as fh:
        fh.write((shop / "hats" / "pink.png").read_bytes())
    store, report = build_catalog(ColourEmbedder(), shop, spec, kind="exact")
    assert store.count() == (4, 4)
    [(path, why)] = report.skipped.items()
    assert path.endswith("caf\\xe9.png") and "not valid UTF-8" in why
    report.format().encode("utf-8")  # printable, and savable as JSON
    with pytest.raises(DataError, match="no photos to add .*not valid UTF-8"):
        add_products(store, ColourEmbedder(), [os.fsdecode(raw)], category="sale")
