"""A dataset's own layout -> manifests: the shop's catalog, further product photos, labelled queries.

vsearch takes any catalog and any query set as a manifest (:mod:`vsearch.catalog.manifest`:
``product_id, image, category``, then typed attributes). A public dataset comes laid out its
own way; a *layout* here is one function from the dataset's folder to :class:`Manifests`,
and :func:`write_manifests` writes them as CSV files, each read back with
:func:`~vsearch.catalog.manifest.read_manifest` before this returns, so what is written is
what evaluation (:mod:`vsearch.learn.query_eval`) and training will read:

* ``catalog.csv``: the shop's photo of each product, with its attributes;
* ``train.csv``: further photos of catalog products (``product_id, image, category``);
* ``queries.csv``: labelled customer photos (``product_id, image, category``);
* ``catalog_plus_train.csv``: the catalog with the train photos as further photos of their
  products. One file, not two sources: a store requires a product's photos to agree on its
  attributes, so each train photo carries its product's ``title`` here.

Images are absolute paths, so the manifests can sit anywhere. Layouts:

* ``grocery``, :func:`grocery_store`: the Grocery Store Dataset (Klasson, Zhang, Kjellström,
  WACV 2019): ``classes.csv`` (each product's iconic image and coarse class), ``train.txt``
  and ``val.txt`` (in-store phone photos with fine and coarse class ids). Product = fine
  class name, category = coarse class name, title = the name with spaces.

::

    python -m vsearch.learn.layouts grocery ../shared/datasets/grocery-store-dataset data/grocery  # make grocery
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vsearch.artifacts import printable, write_atomic
from vsearch.catalog.manifest import REQUIRED, read_manifest
from vsearch.errors import DataError

FILES = ("catalog", "train", "queries", "catalog_plus_train")


@dataclass(frozen=True)
class Manifests:
    """What a layout yields: manifest rows (dicts keyed by column), before writing."""

    catalog: list[dict]  # product_id, image, category and the attributes, one row per catalog photo
    train: list[dict]  # product_id, image, category: further photos of catalog products
    queries: list[dict]  # product_id, image, category: labelled customer photos
    attributes: tuple[str, ...] = ()  # the catalog's attribute columns, in order


# ---------------------------------------------------------------- writing any manifest


def manifest_text(rows: Sequence[dict], attributes: Sequence[str] = ()) -> str:
    """``rows`` as CSV manifest text: the required columns, then ``attributes``.

    Raises:
        DataError: a row lacks a column or has an empty product id or image.
    """
    columns = [*REQUIRED, *attributes]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for n, row in enumerate(rows, start=1):
        missing = [c for c in columns if c not in row]
        if missing or not str(row["product_id"]).strip() or not str(row["image"]).strip():
            raise DataError(f"manifest row {n} ({row}): needs non-empty product_id and image, and {columns}")
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return out.getvalue()


def write_manifest(path: str | os.PathLike, rows: Sequence[dict], attributes: Sequence[str] = ()) -> Path:
    """Writes ``rows`` as a CSV manifest atomically and reads it back.

    Returns:
        The path written.
    Raises:
        DataError: no rows, a row without a required column, or a file that does not read
            back as the same number of photos (a value that breaks its column's type).
    """
    if not rows:
        raise DataError(f"{printable(path)}: no rows to write; a manifest lists one photo per row")
    path = write_atomic(path, manifest_text(rows, attributes))
    read = read_manifest(path)
    if len(read.photos) != len(rows):
        raise DataError(f"{printable(path)}: wrote {len(rows)} rows, read back {len(read.photos)}")
    return path


def with_further_photos(catalog: Sequence[dict], photos: Sequence[dict], attributes: Sequence[str]) -> list[dict]:
    """The catalog rows, then each further photo as a photo of its catalog product (its
    category and attributes).

    Raises:
        DataError: a photo of a product the catalog lacks, or in another category.
    """
    products = {row["product_id"]: row for row in catalog}
    out = [dict(row) for row in catalog]
    for n, photo in enumerate(photos, start=1):
        product = products.get(photo["product_id"])
        if product is None:
            raise DataError(
                f"further photo {n} ({photo['image']}): product {photo['product_id']!r} is not in the catalog"
            )
        if photo["category"] != product["category"]:
            raise DataError(
                f"further photo {n} ({photo['image']}): category {photo['category']!r}, but its product "
                f"{photo['product_id']!r} is in {product['category']!r}"
            )
        out.append({**photo, **{a: product.get(a) for a in attributes}})
    return out


def write_manifests(manifests: Manifests, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes :data:`FILES` (``catalog.csv`` ...) into ``out_dir``; returns name -> path.

    Each file is replaced on its own (atomically); other files in ``out_dir`` are left alone.
    """
    out = Path(out_dir)
    plus = with_further_photos(manifests.catalog, manifests.train, manifests.attributes)
    return {
        "catalog": write_manifest(out / "catalog.csv", manifests.catalog, manifests.attributes),
        "train": write_manifest(out / "train.csv", manifests.train),
        "queries": write_manifest(out / "queries.csv", manifests.queries),
        "catalog_plus_train": write_manifest(out / "catalog_plus_train.csv", plus, manifests.attributes),
    }


# ---------------------------------------------------------------- the Grocery Store Dataset


@dataclass(frozen=True)
class GroceryClass:
    name: str  # the fine class: one product (a milk) or one variety (an apple)
    coarse_id: int
    coarse: str
    iconic: Path


_GROCERY_COLUMNS = {
    "name": "Class Name",
    "id": "Class ID",
    "coarse": "Coarse Class Name",
    "coarse_id": "Coarse Class ID",
    "iconic": "Iconic Image Path",
}


def _int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: {text.strip()!r} is not a class id (a whole number)") from None


def grocery_classes(root: Path) -> dict[int, GroceryClass]:
    """``classes.csv``: fine class id -> its name, coarse class and iconic image (which must exist).

    Its header names carry their type (``Class Name (str)``); only the part before `` (`` counts.
    """
    path = root / "classes.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such file; is {root} the Grocery Store Dataset's folder?")
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    header = [h.split(" (")[0].strip() for h in next(reader, [])]
    missing = [c for c in _GROCERY_COLUMNS.values() if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {header}")
    col = {key: header.index(name) for key, name in _GROCERY_COLUMNS.items()}
    classes: dict[int, GroceryClass] = {}
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        where = f"{path}: line {reader.line_num}"
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} fields, the header has {len(header)}")
        fine = _int(cells[col["id"]], where)
        if fine in classes:
            raise DataError(f"{where}: class id {fine} appears twice")
        iconic = root / cells[col["iconic"]].strip().lstrip("/")
        if not iconic.is_file():
            raise DataError(f"{where}: iconic image {iconic}: no such file")
        name = cells[col["name"]].strip()
        classes[fine] = GroceryClass(name, _int(cells[col["coarse_id"]], where), cells[col["coarse"]].strip(), iconic)
    names = [c.name for c in classes.values()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class name appears twice; names are the product ids")
    if not classes:
        raise DataError(f"{path}: no classes")
    return classes


def grocery_split(root: Path, listing: str, classes: dict[int, GroceryClass]) -> list[dict]:
    """The photos a split file lists (``train/<...>/x.jpg, fine id, coarse id``) as manifest rows.

    Raises:
        DataError: a line that does not parse, an unknown class id, a coarse id that is not its
            class's, or listed photos that are not there (the first named, the rest counted).
    """
    path = root / listing
    if not path.is_file():
        raise DataError(f"{path}: no such file; is {root} the Grocery Store Dataset's folder?")
    rows, absent = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3:
            raise DataError(f"{where}: expected 'image, fine class id, coarse class id', got {line!r}")
        fine, coarse = _int(fields[1], where), _int(fields[2], where)
        if fine not in classes:
            raise DataError(f"{where}: class id {fine} is not in classes.csv")
        product = classes[fine]
        if coarse != product.coarse_id:
            raise DataError(
                f"{where}: coarse id {coarse}, but {product.name} is in {product.coarse_id} ({product.coarse})"
            )
        image = root / fields[0]
        if not image.is_file():
            absent.append(f"{where}: {image}")
        rows.append({"product_id": product.name, "image": str(image.resolve()), "category": product.coarse})
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise DataError(f"{absent[0]}: no such file{more}")
    if not rows:
        raise DataError(f"{path}: lists no photos")
    return rows


def grocery_store(root: str | os.PathLike, queries: str = "val.txt") -> Manifests:
    """The Grocery Store Dataset as manifests: the iconic images are the catalog, ``train.txt``
    its further photos, ``queries`` (default ``val.txt``) the labelled customer photos."""
    root = Path(root).resolve()
    classes = grocery_classes(root)
    catalog = [
        {"product_id": c.name, "image": str(c.iconic), "category": c.coarse, "title": c.name.replace("-", " ")}
        for c in classes.values()
    ]
    return Manifests(
        catalog, grocery_split(root, "train.txt", classes), grocery_split(root, queries, classes), ("title",)
    )


LAYOUTS: dict[str, Callable[[str | os.PathLike], Manifests]] = {"grocery": grocery_store}


def summary(manifests: Manifests) -> str:
    """One line: products, categories and photos of each manifest."""
    categories = len({row["category"] for row in manifests.catalog})
    return (
        f"{len(manifests.catalog)} products in {categories} categories; {len(manifests.train)} train photos, "
        f"{len(manifests.queries)} query photos"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vsearch.learn.layouts", description=__doc__.splitlines()[0])
    ap.add_argument("layout", choices=sorted(LAYOUTS), help="the dataset's layout")
    ap.add_argument("src", help="the dataset's folder, e.g. ../shared/datasets/grocery-store-dataset")
    ap.add_argument("out", help="where the manifests go, e.g. data/grocery")
    args = ap.parse_args(argv)
    try:
        manifests = LAYOUTS[args.layout](args.src)
        written = write_manifests(manifests, args.out)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(summary(manifests))
    for path in written.values():
        print(f"wrote {printable(path)}")


if __name__ == "__main__":
    main()
