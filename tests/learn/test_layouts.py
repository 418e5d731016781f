from pathlib import Path

import pytest
from conftest import solid

from vsearch.catalog.manifest import read_manifest
from vsearch.errors import DataError
from vsearch.learn import layouts

HEADER = (
    "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    "Iconic Image Path (str),Product Description Path (str)"
)
CLASSES = [  # name, id, coarse, coarse id, group
    ("Granny-Smith", 0, "Apple", 0, "Fruit"),
    ("Pink-Lady", 1, "Apple", 0, "Fruit"),
    ("Arla-Standard-Milk", 2, "Milk", 1, "Packages"),
]


def grocery(root: Path, photos: int = 2) -> Path:
    """A Grocery Store Dataset in miniature: classes.csv, iconic images, train.txt and val.txt."""
    lines = [HEADER]
    for name, fine, coarse, coarse_id, group in CLASSES:
        folder = f"{group}/{coarse}/{name}"
        solid(root / "iconic-images-and-descriptions" / folder / f"{name}_Iconic.jpg", (40 * fine, 200, 90))
        lines.append(
            f"{name},{fine},{coarse},{coarse_id},/iconic-images-and-descriptions/{folder}/{name}_Iconic.jpg,"
            f"/iconic-images-and-descriptions/{folder}/{name}_Description.txt"
        )
        for split in ("train", "val"):
            for i in range(photos):
                solid(root / split / folder / f"{name}_{i:03d}.jpg", (40 * fine + i, 180, 80))
    (root / "classes.csv").write_text("\n".join(lines) + "\n")
    for split in ("train", "val"):
        listed = [
            f"{split}/{group}/{coarse}/{name}/{name}_{i:03d}.jpg, {fine}, {coarse_id}"
            for name, fine, coarse, coarse_id, group in CLASSES
            for i in range(photos)
        ]
        (root / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return root


def test_grocery_store_rows(tmp_path):
    root = grocery(tmp_path / "grocery")
    manifests = layouts.grocery_store(root)
    assert [r["product_id"] for r in manifests.catalog] == [c[0] for c in CLASSES]
    assert manifests.catalog[2] == {
        "product_id": "Arla-Standard-Milk",
        "image": str(
            root.resolve()
            / "iconic-images-and-descriptions/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_Iconic.jpg"
        ),
        "category": "Milk",
        "title": "Arla Standard Milk",
    }
    assert len(manifests.train) == len(manifests.queries) == 6
    assert manifests.queries[0] == {
        "product_id": "Granny-Smith",
        "image": str(root.resolve() / "val/Fruit/Apple/Granny-Smith/Granny-Smith_000.jpg"),
        "category": "Apple",
    }
    assert manifests.attributes == ("title",)


def test_written_manifests_read_back(tmp_path):
    root = grocery(tmp_path / "grocery")
    written = layouts.write_manifests(layouts.grocery_store(root), tmp_path / "out")
    assert sorted(written) == sorted(layouts.FILES)
    catalog = read_manifest(written["catalog"])
    assert catalog.schema == {"title": "text"} and len(catalog.photos) == 3
    assert read_manifest(written["train"]).schema == {}
    plus = read_manifest(written["catalog_plus_train"])
    assert len(plus.photos) == 3 + 6
    milk = [p for p in plus.photos if p.product_id == "Arla-Standard-Milk"]
    assert len(milk) == 3 and {p.attributes["title"] for p in milk} == {"Arla Standard Milk"}
    assert {p.category for p in milk} == {"Milk"}
    queries = read_manifest(written["queries"])
    assert all(Path(p.image).is_absolute() and Path(p.image).is_file() for p in queries.photos)


def test_command_line(tmp_path, capsys):
    root = grocery(tmp_path / "grocery", photos=1)
    layouts.main(["grocery", str(root), str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "3 products in 2 categories; 3 train photos, 3 query photos" in out
    assert (tmp_path / "out" / "catalog_plus_train.csv").is_file()


def test_classes_without_a_column_name_the_file(tmp_path):
    root = grocery(tmp_path / "grocery", photos=1)
    text = (root / "classes.csv").read_text().replace("Coarse Class Name (str)", "Kind (str)")
    (root / "classes.csv").write_text(text)
    with pytest.raises(DataError, match=r"classes.csv: missing column\(s\) \['Coarse Class Name'\]"):
        layouts.grocery_store(root)


def test_missing_iconic_image_names_the_line(tmp_path):
    root = grocery(tmp_path / "grocery", photos=1)
    next((root / "iconic-images-and-descriptions").rglob("Pink-Lady_Iconic.jpg")).unlink()
    with pytest.raises(DataError, match=r"classes.csv: line 3: iconic image .*Pink-Lady_Iconic.jpg: no such file"):
        layouts.grocery_store(root)


@pytest.mark.parametrize(
    "line, message",
    [
        ("train/x.jpg, 7, 0", r"train.txt: line 4: class id 7 is not in classes.csv"),
        ("train/x.jpg, 2, 0", r"train.txt: line 4: coarse id 0, but Arla-Standard-Milk is in 1 \(Milk\)"),
        ("train/x.jpg, two, 0", r"train.txt: line 4: 'two' is not a class id"),
        ("train/x.jpg 2 1", r"train.txt: line 4: expected 'image, fine class id, coarse class id'"),
    ],
)
def test_bad_split_lines_name_the_line(tmp_path, line, message):
    root = grocery(tmp_path / "grocery", photos=1)
    with open(root / "train.txt", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DataError, match=message):
        layouts.grocery_store(root)


def test_missing_photos_are_named_and_counted(tmp_path):
    root = grocery(tmp_path / "grocery", photos=2)
    for path in sorted((root / "val").rglob("*_001.jpg")):
        path.unlink()
    with pytest.raises(DataError, match=r"val.txt: line 2: .*Granny-Smith_001.jpg: no such file \(and 2 more\)"):
        layouts.grocery_store(root)


def test_further_photos_of_unknown_products_are_refused():
    catalog = [{"product_id": "a", "image": "/a.jpg", "category": "x", "title": "A"}]
    plus = layouts.with_further_photos(catalog, [{"product_id": "a", "image": "/a2.jpg", "category": "x"}], ["title"])
    assert plus[1] == {"product_id": "a", "image": "/a2.jpg", "category": "x", "title": "A"}
    with pytest.raises(DataError, match=r"further photo 1 \(/b.jpg\): product 'b' is not in the catalog"):
        layouts.with_further_photos(catalog, [{"product_id": "b", "image": "/b.jpg", "category": "x"}], ["title"])
    with pytest.raises(DataError, match=r"category 'y', but its product 'a' is in 'x'"):
        layouts.with_further_photos(catalog, [{"product_id": "a", "image": "/a3.jpg", "category": "y"}], ["title"])


def test_write_manifest_refuses_nothing_and_incomplete_rows(tmp_path):
    with pytest.raises(DataError, match="no rows to write"):
        layouts.write_manifest(tmp_path / "m.csv", [])
    with pytest.raises(DataError, match="manifest row 1"):
        layouts.write_manifest(tmp_path / "m.csv", [{"product_id": "a", "image": "/a.jpg"}])
    assert not (tmp_path / "m.csv").exists()


def test_write_manifest_quotes_what_needs_quoting(tmp_path):
    rows = [{"product_id": "a", "image": str(tmp_path / "a, b.jpg"), "category": "x", "title": 'say "hi", twice'}]
    photo = read_manifest(layouts.write_manifest(tmp_path / "m.csv", rows, ["title"])).photos[0]
    assert photo.image == str(tmp_path / "a, b.jpg") and photo.attributes == {"title": 'say "hi", twice'}
