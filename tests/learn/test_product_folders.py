import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vsearch.errors import DataError
from vsearch.learn import product_folders as pf
from vsearch.learn.prepare import prepare
from vsearch.learn.synthetic import make_catalog, product_photo

# category -> products (colour), each with one catalog photo and PHOTOS other photos
SHOP = {
    "milk": {"milk-a": (230, 230, 230), "milk-b": (200, 210, 250)},
    "juice": {"juice-a": (250, 150, 20), "juice-b": (240, 220, 30)},
    "apple": {"apple": (200, 30, 30)},
}
PHOTOS = 5


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_product_manifests(root: Path, photos: int = PHOTOS) -> tuple[Path, Path]:
    """A catalog manifest (one photo per product) and a photos manifest (``photos`` per product)."""
    catalog, others = [], []
    for c, (category, products) in enumerate(SHOP.items()):
        for p, (product, colour) in enumerate(products.items()):
            folder = root / "images" / product
            folder.mkdir(parents=True)
            for i in range(photos + 1):
                # the same file name in every product's folder: the links must still be unique
                name = "iconic.jpg" if i == 0 else f"photo_{i}.jpg"
                product_photo(colour, c * 100 + p * 10 + i).save(folder / name)
                row = {"product_id": product, "image": f"images/{product}/{name}", "category": category}
                (catalog if i == 0 else others).append(row)
    return write_manifest(root / "catalog.csv", catalog), write_manifest(root / "photos.csv", others)


@pytest.fixture
def manifests(tmp_path):
    return make_product_manifests(tmp_path)


def test_prepare_products_writes_the_folders_the_stages_read(manifests, tmp_path):
    catalog, photos = manifests
    dest = tmp_path / "data"
    report = pf.prepare_products(catalog, photos, dest, holdout=0.2, seed=3)
    products = json.loads((dest / pf.PRODUCTS_FILE).read_text())["splits"]
    # every listed file is a link to its photo, in its category's folder
    for split, entries in products.items():
        for name, entry in entries.items():
            link = dest / split / name
            assert link.is_symlink() and os.path.samefile(link, entry["image"])
            assert name.split("/")[0] == next(c for c, ps in SHOP.items() if entry["product_id"] in ps)
    train, val = products["train"], products["validation"]
    # catalog photos always train; one in five of each product's photos is held out
    assert sum(e["role"] == "catalog" for e in train.values()) == 5
    assert all(e["role"] == "photo" for e in val.values())
    held = [e["product_id"] for e in val.values()]
    assert sorted(held) == sorted(p for ps in SHOP.values() for p in ps)
    assert len(train) + len(val) == 5 * (PHOTOS + 1)
    assert report["products"] == 5 and report["splits"]["validation"]["counts"] == {"apple": 1, "juice": 2, "milk": 2}
    assert json.loads((dest / "report.json").read_text())["splits"]["train"]["counts"]["juice"] == 2 * PHOTOS


def test_the_holdout_is_seeded(manifests, tmp_path):
    catalog, photos = manifests
    lists = [
        sorted(pf.prepare_products(catalog, photos, tmp_path / f"d{i}", seed=seed)["splits"]["validation"]["counts"])
        for i, seed in enumerate((1, 1))
    ]
    first, second = (json.loads((tmp_path / f"d{i}" / pf.PRODUCTS_FILE).read_text()) for i in range(2))
    assert lists[0] == lists[1]
    assert first["splits"]["validation"].keys() == second["splits"]["validation"].keys()


def test_a_small_holdout_still_validates_every_category(manifests, tmp_path):
    catalog, photos = manifests
    report = pf.prepare_products(catalog, photos, tmp_path / "data", holdout=0.0)
    assert report["splits"]["validation"]["counts"] == {"apple": 1, "juice": 1, "milk": 1}


def test_a_validation_manifest_replaces_the_holdout(manifests, tmp_path):
    catalog, photos = manifests
    rows = list(csv.DictReader(open(photos)))
    write_manifest(tmp_path / "train.csv", rows[1:])
    queries = write_manifest(tmp_path / "queries.csv", [r for r in rows if r["image"].endswith("photo_1.jpg")])
    with pytest.raises(DataError, match="both a training and a validation photo"):
        pf.prepare_products(catalog, photos, tmp_path / "data", validation=queries)
    train_rows = [r for r in rows if not r["image"].endswith("photo_1.jpg")]
    pf.prepare_products(catalog, write_manifest(tmp_path / "train.csv", train_rows), tmp_path / "data", queries)
    val = json.loads((tmp_path / "data" / pf.PRODUCTS_FILE).read_text())["splits"]["validation"]
    assert len(val) == 5 and all(name.endswith("--photo_1.jpg") for name in val)


def test_writing_again_drops_what_the_manifests_no_longer_list(manifests, tmp_path):
    catalog, photos = manifests
    dest = tmp_path / "data"
    pf.prepare_products(catalog, photos, dest, holdout=0.2)
    rows = [r for r in csv.DictReader(open(photos)) if r["product_id"] != "milk-b"]
    pf.prepare_products(catalog, write_manifest(tmp_path / "fewer.csv", rows), dest, holdout=0.2)
    assert not list(dest.glob("*/milk/milk-b--photo_*"))
    assert len(list(dest.glob("train/milk/milk-b--*"))) == 1  # its catalog photo stays
    # a folder source written over it leaves no product map behind
    prepare(make_catalog(tmp_path / "folder"), dest)
    assert not (dest / pf.PRODUCTS_FILE).exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"category": ""}, "no category"),
        ({"category": "a/b"}, "cannot name a folder"),
        ({"image": "images/nowhere.jpg"}, "not a local file"),
        ({"product_id": "milk-b"}, "also a photo of product 'milk-a'"),
    ],
)
def test_bad_rows_are_named(manifests, tmp_path, change, message):
    catalog, photos = manifests
    rows = list(csv.DictReader(open(photos)))
    if change.get("product_id"):  # milk-a's first photo listed again for milk-b
        rows.append({**rows[0], **change})
    else:
        rows[0] = {**rows[0], **change}
    bad = write_manifest(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=message) as err:
        pf.prepare_products(catalog, bad, tmp_path / "data")
    assert str(bad) in str(err.value)


def test_a_product_has_one_category(manifests, tmp_path):
    catalog, photos = manifests
    rows = list(csv.DictReader(open(photos)))
    rows[0]["category"] = "juice"
    with pytest.raises(DataError, match="'milk-a' in 'milk'; a product has one category"):
        pf.prepare_products(catalog, write_manifest(tmp_path / "bad.csv", rows), tmp_path / "data")


def test_every_category_needs_a_validation_photo(manifests, tmp_path):
    catalog, _ = manifests
    with pytest.raises(DataError, match=r"no validation photo of categories \['apple', 'juice', 'milk'\]"):
        pf.prepare_products(catalog, None, tmp_path / "data")  # catalog photos are never held out


def test_link_names_are_unique_and_keep_the_extension():
    photo = lambda product, image: pf.ProductPhoto(product, "c", image, "photo", "")  # noqa: E731
    names = pf.link_names([photo("a b", "/x/1.JPG"), photo("a b", "/y/1.jpg"), photo("c", "/x/1.jpg")])
    assert names == ["c/a_b--1.jpg", "c/a_b--1-2.jpg", "c/c--1.jpg"]


def test_product_labels_follow_the_files_and_their_clean_mirror(manifests, tmp_path):
    catalog, photos = manifests
    dest = tmp_path / "data"
    pf.prepare_products(catalog, photos, dest, holdout=0.2)
    entries = json.loads((dest / pf.PRODUCTS_FILE).read_text())["splits"]
    train = sorted(str(dest / "train" / n) for n in entries["train"])
    # a file normalised by the photo checks is found under its PNG name in the mirror
    mirror = tmp_path / "clean"
    val = [str(mirror / (n + ".png")) for n in sorted(entries["validation"])]
    labels = pf.product_labels(dest, (dest / "train", train), (mirror, val))
    assert labels.listed and len(labels.ids) == 5
    assert [labels.ids[i] for i in labels.train] == [
        entries["train"][Path(p).relative_to(dest / "train").as_posix()]["product_id"] for p in train
    ]
    assert labels.catalog.sum() == 5
    assert set(labels.validation) <= set(range(5))
    with pytest.raises(DataError, match="not listed in products.json"):
        pf.product_labels(dest, (dest / "train", [str(dest / "train" / "milk" / "stray.jpg")]), (mirror, []))


def test_without_a_product_map_each_photo_is_its_own_product(tmp_path):
    root = make_catalog(tmp_path / "photos")
    train = sorted(str(p) for p in (root / "train").rglob("*.*"))
    labels = pf.product_labels(root, (root / "train", train), (root / "validation", ["v1", "v2"]))
    assert not labels.listed and np.array_equal(labels.train, np.arange(len(train)))
    assert labels.catalog.all() and (labels.validation == -1).all()


def test_vsearch_data_reads_product_manifests(manifests, tmp_path, capsys):
    from vsearch.cli import main

    catalog, photos = manifests
    dest = tmp_path / "data"
    args = ["data", "--catalog", str(catalog), "--photos", str(photos), "--dest", str(dest), "--feature-cache-dir", ""]
    assert main([*args, "--holdout", "0.2"]) == 0
    assert "| validation | 1 | 2 | 2 | 5 |" in capsys.readouterr().out
    assert main([*args, "--source", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
