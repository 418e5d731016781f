"""vsearch.catalog.demo: a <category>/<photo> folder -> products of three photos with typed attributes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from vsearch.catalog.demo import VARIANTS, main, make_demo_catalog
from vsearch.catalog.manifest import read_manifest
from vsearch.errors import DataError
from vsearch.learn.synthetic import make_catalog


@pytest.fixture
def split(tmp_path):
    """3 categories x 4 photos (jpg and png)."""
    return make_catalog(tmp_path / "src", (("train", 4),)) / "train"


def by_product(manifest):
    products = defaultdict(list)
    for photo in manifest.photos:
        products[photo.product_id].append(photo)
    return products


def test_products_of_three_photos_with_typed_attributes(split, tmp_path):
    path = make_demo_catalog(split, tmp_path / "products", seed=3)
    manifest = read_manifest(path)
    assert path == tmp_path / "products" / "manifest.csv"
    assert manifest.schema == {"title": "text", "price": "float", "brand": "text", "colour": "text", "in_stock": "bool"}
    products = by_product(manifest)
    assert len(products) == 12 and len(manifest.photos) == 36
    for photos in products.values():
        assert [p.image.rsplit("-", 1)[1] for p in photos] == [f"{v}.jpg" for v in VARIANTS]
        assert len({p.category for p in photos}) == 1 and len({str(p.attributes) for p in photos}) == 1
        attrs = photos[0].attributes
        assert isinstance(attrs["price"], float) and attrs["price"] > 0
        assert isinstance(attrs["in_stock"], bool)
        assert attrs["title"] == f"{attrs['brand']} {attrs['colour']} {photos[0].category}"
    assert {p.category for p in manifest.photos} == {"blue", "green", "red"}


def test_variants_are_the_photo_mirrored_and_cropped(split, tmp_path):
    manifest = read_manifest(make_demo_catalog(split, tmp_path / "products"))
    original, mirrored, cropped = (np.asarray(Image.open(p.image), np.float32) for p in manifest.photos[:3])
    assert mirrored.shape == original.shape
    assert np.abs(mirrored[:, ::-1] - original).mean() < 8  # JPEG noise only
    assert cropped.shape[0] < original.shape[0] and cropped.shape[1] < original.shape[1]


def test_same_seed_same_catalog_and_rerun_replaces(split, tmp_path):
    first = make_demo_catalog(split, tmp_path / "a", seed=5)
    again = make_demo_catalog(split, tmp_path / "b", seed=5)
    other = make_demo_catalog(split, tmp_path / "c", seed=6)
    assert first.read_text() == again.read_text()
    assert first.read_text() != other.read_text()
    images = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "images").rglob("*.jpg"))
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in images)

    (tmp_path / "a" / "stale.txt").write_text("left by an earlier run")
    make_demo_catalog(split, tmp_path / "a", seed=6, limit=2)
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert len(by_product(read_manifest(first))) == 6  # 2 per category
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_unreadable_photo_is_left_out_and_recorded(split, tmp_path):
    (split / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "products"
    manifest = read_manifest(make_demo_catalog(split, out))
    assert len(by_product(manifest)) == 12
    assert "broken.jpg" in (out / "demo_catalog.json").read_text()


def test_errors_and_command_line(tmp_path, split, capsys):
    with pytest.raises(DataError, match="no such folder"):
        make_demo_catalog(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty" / "hats").mkdir(parents=True)
    with pytest.raises(DataError, match="no photos"):
        make_demo_catalog(tmp_path / "empty", tmp_path / "out")
    main([str(split), str(tmp_path / "cli"), "--limit", "1", "--seed", "2"])
    assert "3 products, 9 photos" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such folder"):
        main([str(tmp_path / "missing"), str(tmp_path / "cli")])
