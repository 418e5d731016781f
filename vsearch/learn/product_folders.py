"""``vsearch data --catalog/--photos``: product manifests -> the folders the stages read.

Stage 1 reads ``train/<category>/`` and ``validation/<category>/`` with
``image_dataset_from_directory``; stage 2 also needs the product each photo shows, so that
its positives are other photos of the same product. :func:`prepare_products` writes both
from product manifests (:func:`vsearch.catalog.manifest.read_manifest`), in named steps:

1. :func:`read_products`: the manifests' photos, each with its role: ``catalog`` (the
   shop's own photos, what a search finds, e.g. one iconic image per product) or ``photo``
   (other photos of the products, such as customers' phone photos);
2. :func:`split_photos`: the validation split: a validation manifest's photos, or a seeded
   per-product holdout of the ``photo`` photos (catalog photos always train);
3. :func:`link_names`: a file name per photo, unique within its category folder;
4. :func:`write_folders`: a symlink per photo under ``<split>/<category>/``, and
   ``products.json`` beside them (:func:`read_products_file` reads it back): each file's
   product and role. ``report.json`` is the one ``vsearch data`` writes for a folder.

Without ``products.json`` (a folder source, the clothing demo) every photo is its own
product and a catalog photo (:func:`product_labels`).

    vsearch data --catalog catalog.csv --photos train.csv --dest data/grocery/photos
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsearch.artifacts import write_json
from vsearch.catalog.manifest import read_manifest
from vsearch.errors import DataError
from vsearch.images import DEFAULT_MAX_PIXELS
from vsearch.learn.photo_checks import scan_split
from vsearch.learn.prepare import DEST_MARKER, PRODUCTS_FILE, SPLITS, check_destination

ROLES = ("catalog", "photo")
# Bumped when products.json's layout changes; an older file is refused with what to run.
PRODUCTS_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ProductPhoto:
    """One photo of a product, as the training folders need it."""

    product_id: str
    category: str
    image: str  # an absolute local path
    role: str  # catalog | photo
    where: str  # the manifest row it came from, for error messages


# ---------------------------------------------------------------- step 1: the manifests' photos


def read_products(manifests: Sequence[tuple[str | os.PathLike, str]]) -> list[ProductPhoto]:
    """The photos of ``(manifest, role)`` pairs, in order; the same photo twice is read once.

    Raises:
        DataError: a photo without a category, one that is not a local file, or one image
            listed for two products (each names the manifest and the photo).
    """
    photos: list[ProductPhoto] = []
    seen: dict[str, ProductPhoto] = {}
    for path, role in manifests:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        for photo in read_manifest(path).photos:
            where = f"{path}: {photo.photo_id}"
            if not photo.category:
                raise DataError(f"{where}: no category; training learns the categories, so every photo needs one")
            if photo.category in (".", "..") or "/" in photo.category or photo.category.startswith("."):
                raise DataError(f"{where}: category {photo.category!r} cannot name a folder; rename the category")
            if "://" in photo.image or not Path(photo.image).is_file():
                raise DataError(f"{where}: {photo.image} is not a local file; training reads local photos")
            first = seen.get(photo.image)
            if first is not None:
                if first.product_id != photo.product_id:
                    raise DataError(
                        f"{where}: the image is also a photo of product {first.product_id!r} ({first.where}); "
                        "a photo shows one product"
                    )
                continue
            seen[photo.image] = ProductPhoto(photo.product_id, photo.category, photo.image, role, where)
            photos.append(seen[photo.image])
    if not photos:
        raise DataError("no photos: pass a catalog and/or a photos manifest")
    _check_categories(photos)
    return photos


def _check_categories(photos: list[ProductPhoto]) -> None:
    """A product has one category: the classifier's label of all its photos."""
    category: dict[str, ProductPhoto] = {}
    for photo in photos:
        first = category.setdefault(photo.product_id, photo)
        if first.category != photo.category:
            raise DataError(
                f"{photo.where}: category {photo.category!r}, but {first.where} puts product "
                f"{photo.product_id!r} in {first.category!r}; a product has one category"
            )
    if len({p.category for p in photos}) < 2:
        raise DataError(f"the manifests hold one category ({photos[0].category!r}); training needs at least 2")


# ---------------------------------------------------------------- step 2: the validation split


def split_photos(
    photos: list[ProductPhoto],
    validation: list[ProductPhoto] | None = None,
    holdout: float = 0.1,
    seed: int = 1337,
) -> tuple[list[ProductPhoto], list[ProductPhoto]]:
    """(train, validation): ``validation`` as given, or a seeded per-product holdout.

    The holdout takes ``round(holdout * n)`` of each product's ``n`` ``photo`` photos,
    keeping at least one of them for training, then one more photo for every category that
    has none yet; catalog photos always train (a search finds them).

    Raises:
        DataError: a category without validation photos (stage 1 validates on every
            category), or validation photos of a category training does not have.
    """
    if validation is None:
        validation = _holdout(photos, holdout, seed)
        held = {p.image for p in validation}
        photos = [p for p in photos if p.image not in held]
    else:
        overlap = {p.image for p in photos} & {p.image for p in validation}
        if overlap:
            raise DataError(f"{sorted(overlap)[0]} is both a training and a validation photo; list it once")
    _check_validation(photos, validation)
    return photos, validation


def _holdout(photos: list[ProductPhoto], fraction: float, seed: int) -> list[ProductPhoto]:
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"the validation holdout must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_product: dict[str, list[ProductPhoto]] = {}
    for photo in photos:
        if photo.role == "photo":
            by_product.setdefault(photo.product_id, []).append(photo)
    held: list[ProductPhoto] = []
    spare: dict[str, ProductPhoto] = {}  # a category's next photo, should the fraction give it none
    for product in sorted(by_product):
        candidates = sorted(by_product[product], key=lambda p: p.image)
        order = [candidates[i] for i in rng.permutation(len(candidates))]
        k = min(int(round(fraction * len(order))), len(order) - 1)
        held += order[:k]
        if k < len(order) - 1:
            spare.setdefault(order[0].category, order[k])
    covered = {p.category for p in held}
    held += [photo for category, photo in sorted(spare.items()) if category not in covered]
    return held


def _check_validation(train: list[ProductPhoto], validation: list[ProductPhoto]) -> None:
    train_categories = {p.category for p in train}
    unknown = sorted({p.category for p in validation} - train_categories)
    if unknown:
        raise DataError(f"validation photos of categories training has no photo of: {unknown}")
    missing = sorted(train_categories - {p.category for p in validation})
    if missing:
        raise DataError(
            f"no validation photo of categories {missing}: stage 1 validates on every category; "
            "add photos of them (a product with two or more photos gives one to the holdout)"
        )


# ---------------------------------------------------------------- step 3: the file names


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "photo"


def link_names(photos: list[ProductPhoto]) -> list[str]:
    """``<category>/<product>--<file name>`` per photo, unique (a counter where two would clash).

    The product leads the name so a folder lists a product's photos together; the
    extension is kept, so ``image_dataset_from_directory`` lists the file.
    """
    names, taken = [], set()
    for photo in photos:
        image = Path(photo.image)
        stem, suffix = f"{_safe(photo.product_id)}--{_safe(image.stem)}", image.suffix.lower()
        name, n = f"{photo.category}/{stem}{suffix}", 1
        while name in taken:
            n += 1
            name = f"{photo.category}/{stem}-{n}{suffix}"
        taken.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------- step 4: the folders


def write_folders(splits: dict[str, list[ProductPhoto]], dest: Path) -> dict:
    """Symlinks under ``dest/<split>/<category>/`` and ``dest/products.json``; returns the latter's content.

    The split folders are written anew (what an earlier run left there goes), so a photo
    dropped from a manifest is no longer trained on.
    """
    products: dict = {"version": PRODUCTS_VERSION, "splits": {}}
    for split, photos in splits.items():
        root = dest / split
        if root.exists():
            shutil.rmtree(root)
        entries = {}
        for photo, name in zip(photos, link_names(photos)):
            link = root / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(photo.image), link)
            entries[name] = {"product_id": photo.product_id, "role": photo.role, "image": photo.image}
        products["splits"][split] = entries
    write_json(dest / PRODUCTS_FILE, products)
    return products


def prepare_products(
    catalog: str | os.PathLike | None,
    photos: str | os.PathLike | None,
    dest: str | os.PathLike,
    validation: str | os.PathLike | None = None,
    holdout: float = 0.1,
    seed: int = 1337,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: str | os.PathLike | None = None,
) -> dict:
    """Product manifests -> ``dest/{train,validation}/<category>/``, ``products.json``, ``report.json``.

    Args:
        catalog: The shop's catalog manifest (role ``catalog``), or None.
        photos: Other photos of the products (role ``photo``), or None.
        dest: The data folder the stages read (``data.data_dir``).
        validation: A manifest of validation photos; None: a per-product ``holdout``.
        holdout: Share of each product's ``photo`` photos held out for validation.
        seed: The holdout's seed.
        max_pixels, checks: The photo checks' limit and memory (:func:`scan_split`).

    Returns:
        The report ``vsearch data`` prints (:func:`vsearch.learn.prepare.format_report`),
        also written to ``dest/report.json``.
    """
    given = [(m, r) for m, r in ((catalog, "catalog"), (photos, "photo")) if m is not None]
    train, held = split_photos(
        read_products(given), read_products([(validation, "photo")]) if validation else None, holdout, seed
    )
    dest = Path(dest)
    check_destination(None, dest, tuple(sorted({p.category for p in train})))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / DEST_MARKER).touch()
    products = write_folders({"train": train, "validation": held}, dest)
    result = {
        "source": {"catalog": _name(catalog), "photos": _name(photos), "validation": _name(validation)},
        "holdout": None if validation else holdout,
        "products": len({p.product_id for p in train + held}),
        "splits": {
            split: scan_split(dest / split, None, max_pixels, checks).to_dict()
            for split in SPLITS
            if products["splits"].get(split)
        },
    }
    write_json(dest / "report.json", result)
    return result


def _name(path) -> str | None:
    return None if path is None else str(path)


# ---------------------------------------------------------------- the stages' side


def read_products_file(data_dir: str | os.PathLike) -> dict[str, dict[str, dict]] | None:
    """``products.json``'s entries per split (``<category>/<file>`` -> product, role), or None.

    Raises:
        DataError: the file is there but unreadable or of another version.
    """
    path = Path(data_dir) / PRODUCTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); write it again with `vsearch data --catalog/--photos`") from None
    if not isinstance(data, dict) or data.get("version") != PRODUCTS_VERSION:
        raise DataError(
            f"{path}: not a products file of version {PRODUCTS_VERSION}; write it again with `vsearch data`"
        )
    return data["splits"]


@dataclass(frozen=True)
class ProductLabels:
    """The product of each file of the train and validation splits, as indices into ``ids``.

    Attributes:
        train: (n_train,) product index of each training file, in the split's file order.
        validation: (n_validation,) product index of each validation file; -1 where the
            photo is no product of the training split.
        catalog: (n_train,) True where the training file is a catalog photo.
        ids: The product ids.
        listed: Read from ``products.json``; False: each photo is its own product.
    """

    train: np.ndarray
    validation: np.ndarray
    catalog: np.ndarray
    ids: list[str]
    listed: bool = True


def _entry(entries: dict[str, dict], path: str, root: str | os.PathLike) -> dict:
    """The products.json entry of a file of a (possibly clean-mirrored) split."""
    rel = Path(os.path.relpath(path, root)).as_posix()
    if rel in entries:
        return entries[rel]
    if rel.endswith(".png") and rel[: -len(".png")] in entries:  # normalised to PNG by the photo checks
        return entries[rel[: -len(".png")]]
    raise DataError(f"{path}: not listed in {PRODUCTS_FILE}; write the data folder again with `vsearch data`")


def product_labels(
    data_dir: str | os.PathLike,
    train: tuple[str | os.PathLike, Sequence[str]],
    validation: tuple[str | os.PathLike, Sequence[str]],
) -> ProductLabels:
    """Product indices of the splits' files, ``train`` and ``validation`` as (root, file paths).

    Without ``data_dir/products.json`` every training file is its own product and a catalog
    photo, and no validation file is a training product (the clothing demo).
    """
    (train_root, train_paths), (val_root, val_paths) = train, validation
    splits = read_products_file(data_dir)
    if splits is None:
        n = len(train_paths)
        ids = [Path(os.path.relpath(p, train_root)).with_suffix("").as_posix() for p in train_paths]
        return ProductLabels(np.arange(n), np.full(len(val_paths), -1), np.ones(n, bool), ids, listed=False)
    train_entries = [_entry(splits.get("train", {}), p, train_root) for p in train_paths]
    val_entries = [_entry(splits.get("validation", {}), p, val_root) for p in val_paths]
    ids = sorted({e["product_id"] for e in train_entries})
    lookup = {p: i for i, p in enumerate(ids)}
    return ProductLabels(
        np.asarray([lookup[e["product_id"]] for e in train_entries], dtype=np.int64),
        np.asarray([lookup.get(e["product_id"], -1) for e in val_entries], dtype=np.int64),
        np.asarray([e["role"] == "catalog" for e in train_entries], dtype=bool),
        ids,
    )
