"""Building a catalog: a manifest or a folder of photos -> a store of products.

A manifest (:mod:`vsearch.catalog.manifest`) lists products and their photos with attributes;
a folder laid out as ``<category>/<photo>`` (:func:`catalog_files`) is the shortcut where
each photo is a product. :func:`build_catalog` embeds every photo (through
:func:`vsearch.embedder.embed_images`: unreadable files are skipped and listed) into a new
store (:mod:`vsearch.stores`); :func:`add_products` adds or replaces products of a store
without re-embedding the rest. Both also store the photos' re-rank keypoints beside the store
(:func:`vsearch.catalog.keypoints.index_keypoints`), so that searches verify their short list
without decoding catalog photos. Answering a photo is :mod:`vsearch.catalog.search`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vsearch.artifacts import printable
from vsearch.catalog.keypoints import index_keypoints
from vsearch.catalog.manifest import FORMATS as MANIFEST_FORMATS
from vsearch.catalog.manifest import Photo, catalog_files, read_manifest
from vsearch.config import RerankConfig
from vsearch.embedder import embed_images
from vsearch.errors import DataError
from vsearch.stores import Store, build_store
from vsearch.stores.validate import check_id

# ---------------------------------------------------------------- embedding many photos


@dataclass
class IndexReport:
    photos: int = 0  # photos stored
    products: int = 0  # products written
    replaced: int = 0  # of them, products that were there before
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why

    def format(self) -> str:
        lines = [
            f"{self.products} product(s) with {self.photos} photo(s)"
            + (f", {self.replaced} of them replacing what was there" if self.replaced else "")
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unusable photo(s):")
            lines += [f"  {p}: {why}" for p, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def model_info(embedder) -> dict:
    meta = getattr(embedder, "metadata", {}) or {}
    return {
        "source": str(getattr(embedder, "model_dir", getattr(embedder, "path", ""))),
        "image_size": int(embedder.image_size),
        "class_names": meta.get("class_names", []),
    }


def embed_photos(
    embedder, photos: Sequence[Photo], report: IndexReport, **embed_kwargs
) -> tuple[list[Photo], np.ndarray]:
    """The photos that could be embedded and their vectors; the others are listed in ``report``.

    A remote photo (``gs://``, ``s3://``) is read by ``vsearch embed`` (Beam's file
    systems), not here.
    """
    local = []
    for photo in photos:
        if "://" in photo.image:
            report.skipped[photo.image] = (
                "a remote photo: embed the catalog with `vsearch embed`, then `vsearch index build --from-embeddings`"
            )
        else:
            local.append(photo)
    done = embed_images(embedder, [Path(p.image) for p in local], **embed_kwargs)
    report.skipped.update(done.bad)
    return [local[i] for i in done.good], done.vectors


def build_catalog(
    embedder,
    source: str | os.PathLike,
    store: str,
    kind: str = "auto",
    reranker: RerankConfig | None = RerankConfig(),
    **embed_kwargs,
) -> tuple[Store, IndexReport]:
    """A new store at ``store`` (e.g. ``faiss:saved_models/catalog.vsi``; no default: a build
    replaces what is there) with every photo of a manifest or a ``<category>/<photo>`` folder.

    Replaces the catalog there in one step, and the re-rank keypoints beside it (computed with
    ``reranker``'s settings; None: none stored). Unusable photos are skipped and listed; a
    product whose photos are all unusable is left out.
    """
    manifest = read_manifest(source)
    report = IndexReport(skipped=dict(manifest.skipped))
    photos, vectors = embed_photos(embedder, manifest.photos, report, **embed_kwargs)
    if not photos:
        raise DataError(f"{source}: none of the {len(manifest.photos)} photos could be read as an image")
    built = build_store(store, photos, vectors, fingerprint=embedder.fingerprint, model=model_info(embedder), kind=kind)
    index_keypoints(built, photos, reranker, replace=True, max_pixels=embed_kwargs.get("max_pixels"))
    report.products, report.photos = built.count()
    return built, report


def catalog_from_vectors(
    photos: Sequence[Photo], vectors: np.ndarray, fingerprint: str, model: dict | None, store: str, kind: str = "auto"
) -> tuple[Store, IndexReport]:
    """A new store of vectors embedded elsewhere (``vsearch embed``'s shards); nothing is embedded."""
    vectors = np.asarray(vectors, np.float32)
    if not len(photos) or vectors.ndim != 2 or len(vectors) != len(photos):
        raise DataError(f"no vectors to index ({len(photos)} photo(s), vectors of shape {vectors.shape})")
    built = build_store(store, photos, vectors, fingerprint=fingerprint, model=model, kind=kind)
    report = IndexReport()
    report.products, report.photos = built.count()
    return built, report


def planned_photos(sources: Iterable[str | os.PathLike], category: str | None, skipped: dict[str, str]) -> list[Photo]:
    """The photos of manifests, folders and single files given to ``vsearch index add``.

    A manifest (``.csv``, ``.jsonl``, ``.parquet``) gives its products; a folder is read
    like a catalog (``<category>/<photo>``), except that photos directly inside it take the
    folder's name (or ``category``); a file is a product of one photo in ``category`` or its
    folder's name. Ids of folder and file photos follow :func:`catalog_files`.
    """
    photos: list[Photo] = []
    for raw in sources:
        path = Path(raw)
        if printable(path) != os.fsdecode(path):
            skipped[printable(path)] = "file name is not valid UTF-8; rename the file"
        elif path.is_dir():
            for file, cat, item_id in catalog_files(path, skipped):
                if category or not cat:  # files directly in the folder: the folder is their category
                    cat = category or path.resolve().name
                    item_id = f"{cat}/{file.relative_to(path).with_suffix('').as_posix()}"
                photos += _file_photo(item_id, file, cat, skipped)
        elif path.is_file() and path.suffix.lower() in MANIFEST_FORMATS:
            photos += read_manifest(path).photos
        elif path.is_file():
            cat = category or path.parent.name
            photos += _file_photo(f"{cat}/{path.stem}", path, cat, skipped)
        else:
            raise DataError(f"{printable(path)}: no such file or folder")
    return photos


def _file_photo(item_id: str, file: Path, category: str, skipped: dict[str, str]) -> list[Photo]:
    """A file as a product of one photo, or nothing (and why, in ``skipped``) when its id breaks the id rule."""
    try:
        check_id(item_id, "product id (from the file's path)")
        check_id(category, "category", allow_empty=True)
    except DataError as exc:
        skipped[printable(file)] = f"{exc}; rename the file or folder"
        return []
    return [Photo(item_id, item_id, str(file.resolve()), category)]


def _refuse_repeated_photos(photos: Sequence[Photo]) -> None:
    """One photo id for two files (``hats/red.jpg`` and ``hats/red.png``), refused before embedding."""
    first: dict[str, str] = {}
    repeated = []
    for photo in photos:
        if photo.photo_id in first:
            repeated.append(f"{photo.photo_id!r} ({first[photo.photo_id]} and {photo.image})")
        first.setdefault(photo.photo_id, photo.image)
    if repeated:
        raise DataError(
            f"{len(repeated)} id(s) name more than one photo, e.g. {'; '.join(repeated[:3])}: ids are "
            "the path without its extension, so rename one photo or list them in a manifest"
        )


def add_products(
    store: Store,
    embedder,
    sources: Iterable[str | os.PathLike],
    category: str | None = None,
    replace: bool = False,
    reranker: RerankConfig | None = RerankConfig(),
    **embed_kwargs,
) -> IndexReport:
    """Adds (``replace``: upserts) the products of ``sources`` without re-embedding the rest.

    Without ``replace`` a product already in the store is refused before anything is
    embedded. A product keeps the photos that could be read; one with none is left out.
    Their re-rank keypoints are stored beside the store (``reranker``'s settings; None: none).

    Raises:
        DataError: a product already there (without ``replace``), or no usable photo.
    """
    report = IndexReport()
    photos = planned_photos(sources, category, report.skipped)
    if not photos:
        reasons = "; ".join(f"{path}: {why}" for path, why in list(report.skipped.items())[:3])
        raise DataError(f"no photos to add ({reasons or 'the folders are empty'}); nothing changed")
    _refuse_repeated_photos(photos)
    products = list(dict.fromkeys(p.product_id for p in photos))
    present = [p for p in products if store.get(p) is not None]
    if present and not replace:
        raise DataError(
            f"{len(present)} product(s) already in the catalog, e.g. {present[:3]}; use "
            "`vsearch index upsert` to replace them, or remove them first"
        )
    good, vectors = embed_photos(embedder, photos, report, **embed_kwargs)
    if not good:
        raise DataError(f"none of the {len(photos)} photo(s) could be read as an image; nothing changed")
    store.upsert(good, vectors)
    index_keypoints(store, good, reranker, max_pixels=embed_kwargs.get("max_pixels"))
    written = set(p.product_id for p in good)
    report.products, report.photos = len(written), len(good)
    report.replaced = len(written & set(present))
    return report
