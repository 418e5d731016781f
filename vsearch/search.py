"""Search: index a catalog of photos once, then answer customers' photos.

:func:`build_catalog` embeds a folder of catalog photos (one sub-folder per category;
decoding in a thread pool, batched embedding, unreadable files skipped and listed) into a
:class:`~vsearch.index.Catalog`; :func:`add_images` grows it without re-embedding the rest.
:class:`Searcher` answers a photo (bytes, path or pixels) with the top-k items.

Category filter (``category=``): ``any`` searches everything; a category name restricts
the results to it; ``auto`` predicts the query's category from its nearest catalog items
(a score-weighted vote) and, when the vote is confident, ranks that category's items first.
The vote runs over the catalog's own categories, so it also works for a shop whose
categories the classifier never saw.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from vsearch.errors import DataError, ImageError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image, read_bytes
from vsearch.index import Catalog, FaissIndex, choose_kind, measure_recall

AUTO_NEIGHBOURS = 10      # neighbours that vote for the query's category
AUTO_CONFIDENCE = 0.6     # vote share above which `auto` ranks the predicted category first
VOTE_TEMPERATURE = 0.05   # softmax temperature over cosine scores for the vote
# Category search (Searcher._in_category): a category up to this share of the catalog is
# scanned exactly over its own items, a larger one found by widening an ordinary search. The
# shares are where the two cost the same (bench/category.py, 200k items: an exact index's
# scan costs the selector check of every row, its widening a full scan per round; HNSW's
# widening is a few cheap graph walks). Other index kinds filter by ids themselves.
SCAN_CATEGORY_SHARE = {"exact": 1 / 4, "hnsw": 1 / 32}


# ---------------------------------------------------------------- catalog files and metadata

def catalog_files(root: str | os.PathLike) -> list[tuple[Path, str, str]]:
    """(path, category, id) for every image under ``root``; category = first sub-folder.

    Ids are the path relative to ``root`` without its extension (``shoes/1a2b``), so they
    are stable across rebuilds and unique within a folder tree.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such catalog folder")
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)):
        rel = path.relative_to(root)
        category = rel.parts[0] if len(rel.parts) > 1 else ""
        files.append((path, category, rel.with_suffix("").as_posix()))
    if not files:
        raise DataError(f"{root}: no files found (expected <category>/<photo> image files)")
    return files


def read_items_csv(path: str | os.PathLike) -> dict[str, dict]:
    """Item metadata keyed by image path (relative to the catalog folder, as in the CSV).

    The CSV needs an ``id`` column and a ``path`` (or ``image``) column; every other column
    (title, url, price, ...) is carried into the search results as text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such items file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        key = "path" if "path" in columns else "image" if "image" in columns else None
        if "id" not in columns or key is None:
            raise DataError(f"{path}: needs an 'id' column and a 'path' (or 'image') column; has {columns}")
        rows: dict[str, dict] = {}
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            item_id, image = (row.get("id") or "").strip(), (row.get(key) or "").strip()
            if not item_id or not image:
                raise DataError(f"{path}:{line}: empty id or {key}")
            if item_id in seen:
                raise DataError(f"{path}:{line}: duplicate id {item_id!r}")
            seen.add(item_id)
            rows[Path(image).as_posix()] = {k: (v or "").strip() for k, v in row.items() if k and k != key}
    return rows


def _item(path: Path, category: str, item_id: str, extra: dict | None) -> dict:
    item = {"id": item_id, "path": str(path.resolve()), "category": category}
    if extra:
        item.update(extra)
    return item


# ---------------------------------------------------------------- embedding many files

def decode_for_model(data: bytes, source: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Strict decode (EXIF upright, any mode to RGB) and resize to the model's input."""
    from vsearch.resize import resize_bilinear

    return resize_bilinear(decode_image(data, source, max_pixels), size)


def embed_paths(embedder, paths: Sequence[Path], batch_size: int = 32, workers: int = 4,
                progress: bool = False) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Embeds files with decoding in a thread pool: (vectors, indices of good paths, bad files).

    Unreadable files (corrupt, empty, not an image, too big) are skipped and returned with
    the reason, so one bad photo never stops an indexing job.
    """
    from tqdm import tqdm

    if batch_size < 1 or workers < 1:
        raise ValueError(f"embed_paths: batch_size and workers must be >= 1, got {batch_size} and {workers}")
    size = embedder.image_size

    def load(path: Path):
        try:
            return decode_for_model(read_bytes(path), str(path), size), None
        except ImageError as exc:
            return None, exc.reason

    vectors, good, bad = [], [], {}
    bar = tqdm(total=len(paths), desc="indexing", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            batch = []
            for i, (pixels, why) in zip(chunk, pool.map(load, [paths[i] for i in chunk])):
                if pixels is None:
                    bad[str(paths[i])] = why
                else:
                    good.append(i)
                    batch.append(pixels)
            if batch:
                vectors.append(embedder.embed_pixels(np.stack(batch)))
            bar.update(len(chunk))
    bar.close()
    out = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    return out.astype(np.float32), good, bad


@dataclass
class IndexReport:
    added: int = 0
    skipped: dict[str, str] = field(default_factory=dict)   # path -> why
    unmatched_rows: list[str] = field(default_factory=list)  # CSV rows without an image file
    recall_at_10: float | None = None

    def format(self) -> str:
        lines = [f"added {self.added} item(s)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {p}: {why}" for p, why in sorted(self.skipped.items())]
        if self.unmatched_rows:
            lines.append(f"{len(self.unmatched_rows)} items.csv row(s) name no image file: "
                         + ", ".join(self.unmatched_rows[:10]) + (" ..." if len(self.unmatched_rows) > 10 else ""))
        if self.recall_at_10 is not None:
            lines.append(f"approximate index recall@10 against exact search: {self.recall_at_10:.3f}")
        return "\n".join(lines)


def _planned_items(files: Sequence[tuple[Path, str, str, str]], rows: dict[str, dict]) -> list[dict]:
    """Items for (path, category, default id, CSV key) tuples; a matching CSV row sets id and extras."""
    items = []
    for path, category, item_id, key in files:
        extra = dict(rows.pop(key, None) or {})
        items.append(_item(path, category, extra.pop("id", item_id), extra))
    return items


def _embed_into(catalog: Catalog, embedder, items: list[dict], report: IndexReport, **embed_kwargs) -> None:
    """Embeds the items' photos and adds the readable ones; refuses ids already present or repeated."""
    clash = [it["id"] for it in items if it["id"] in catalog]
    if clash:
        raise DataError(f"{len(clash)} item(s) already in the catalog, e.g. {clash[:3]}; remove them first")
    first: dict[str, str] = {}
    repeated = []
    for it in items:
        if it["id"] in first:
            repeated.append(f"{it['id']!r} ({first[it['id']]} and {it['path']})")
        first.setdefault(it["id"], it["path"])
    if repeated:
        raise DataError(f"{len(repeated)} id(s) name more than one photo, e.g. {'; '.join(repeated[:3])}: ids are "
                        "the path without its extension, so rename one photo or give ids in an items CSV")
    vectors, good, bad = embed_paths(embedder, [Path(it["path"]) for it in items], **embed_kwargs)
    catalog.add([items[i] for i in good], vectors)
    report.added += len(good)
    report.skipped.update(bad)


def model_info(embedder) -> dict:
    meta = getattr(embedder, "metadata", {}) or {}
    return {"source": str(getattr(embedder, "model_dir", getattr(embedder, "path", ""))),
            "image_size": int(embedder.image_size), "class_names": meta.get("class_names", [])}


def build_catalog(embedder, root: str | os.PathLike, items_csv: str | os.PathLike | None = None,
                  kind: str = "auto", **embed_kwargs) -> tuple[Catalog, IndexReport]:
    """Embeds every image under ``root`` into a new catalog (see :func:`catalog_files`)."""
    root = Path(root)
    files = catalog_files(root)
    rows = read_items_csv(items_csv) if items_csv else {}
    catalog = Catalog(embedder.dim, embedder.fingerprint,
                      index=FaissIndex(embedder.dim, choose_kind(kind, len(files))), model=model_info(embedder))
    report = IndexReport()
    items = _planned_items([(p, c, i, p.relative_to(root).as_posix()) for p, c, i in files], rows)
    _embed_into(catalog, embedder, items, report, **embed_kwargs)
    report.unmatched_rows = sorted(rows)
    if not len(catalog):
        raise DataError(f"{root}: none of the {len(files)} files could be read as an image")
    if catalog.index.kind != "exact":
        sample = catalog.index.vectors[np.random.default_rng(0).choice(len(catalog), min(500, len(catalog)), False)]
        report.recall_at_10 = measure_recall(catalog.index, sample, 10)
        catalog.stats["recall@10"] = report.recall_at_10
    return catalog, report


def add_images(catalog: Catalog, embedder, paths: Iterable[str | os.PathLike], category: str | None = None,
               items_csv: str | os.PathLike | None = None, **embed_kwargs) -> IndexReport:
    """Adds files, or folders, to an existing catalog without re-embedding the rest.

    A file's category is ``category`` or its folder's name; a folder is read like the
    catalog (``<category>/<photo>``), except that photos directly inside it take the
    folder's name (or ``category``) as their category. Ids follow :func:`catalog_files`.
    """
    files: list[tuple[Path, str, str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for p, cat, item_id in catalog_files(path):
                rel = p.relative_to(path)
                if category or not cat:  # files directly in the folder: the folder is their category
                    cat = category or path.resolve().name
                    item_id = f"{cat}/{rel.with_suffix('').as_posix()}"
                files.append((p, cat, item_id, rel.as_posix()))
        elif path.is_file():
            cat = category or path.parent.name
            files.append((path, cat, f"{cat}/{path.stem}", path.name))
        else:
            raise DataError(f"{path}: no such file or folder")
    rows = read_items_csv(items_csv) if items_csv else {}
    report = IndexReport()
    _embed_into(catalog, embedder, _planned_items(files, rows), report, **embed_kwargs)
    report.unmatched_rows = sorted(rows)
    return report


# ---------------------------------------------------------------- answering a photo

def predict_category(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> tuple[str, float]:
    """Score-weighted vote of the neighbours' categories: (category, share of the vote)."""
    if not matches:
        return "", 0.0
    scores = np.array([m["score"] for m in matches], np.float64)
    weights = np.exp((scores - scores.max()) / temperature)
    votes: dict[str, float] = {}
    for match, weight in zip(matches, weights):
        votes[match.get("category", "")] = votes.get(match.get("category", ""), 0.0) + weight
    best = max(votes, key=votes.get)
    return best, float(votes[best] / weights.sum())


@dataclass
class SearchResult:
    matches: list[dict]
    category: dict  # mode, predicted, confidence, applied

    def to_dict(self) -> dict:
        return {"category": self.category,
                "matches": [{"rank": r + 1, **m} for r, m in enumerate(self.matches)]}


class Searcher:
    """A model and a catalog index, ready to answer photos.

    Args:
        embedder: An :class:`~vsearch.embedder.Embedder` whose fingerprint matches the catalog.
        catalog: The :class:`~vsearch.index.Catalog` to search.
        max_pixels / max_bytes: Limits for query photos (decompression bombs, huge uploads).
    """

    def __init__(self, embedder, catalog: Catalog, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        fingerprint = getattr(embedder, "fingerprint", None)
        if fingerprint is not None and fingerprint != catalog.fingerprint:
            raise DataError(f"the catalog was built with model {catalog.fingerprint}, the query model is "
                            f"{fingerprint}; rebuild the index with this model")
        if embedder.dim != catalog.dim:
            raise DataError(f"the model makes {embedder.dim}-d vectors, the catalog holds {catalog.dim}-d")
        self.embedder, self.catalog = embedder, catalog
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.categories = sorted({it.get("category", "") for it in catalog.items.values()} - {""})

    @classmethod
    def from_paths(cls, model: str | os.PathLike, index: str | os.PathLike, num_threads: int | None = None,
                   **kwargs) -> "Searcher":
        """Loads the embedding model (SavedModel folder or ``.tflite``) and a saved catalog."""
        from vsearch.embedder import load_embedder

        embedder = load_embedder(model, num_threads=num_threads)
        catalog = Catalog.load(index, expected_fingerprint=getattr(embedder, "fingerprint", None))
        return cls(embedder, catalog, **kwargs)

    def pixels(self, image, source: str = "<upload>") -> np.ndarray:
        """bytes, a path, or an (H, W, 3) array -> upright RGB uint8 pixels (strict checks)."""
        if isinstance(image, (str, os.PathLike)):
            source = str(image)
            image = read_bytes(image, self.max_bytes)
        if isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) > self.max_bytes:
                raise ImageError(source, f"{len(image)} bytes is over the {self.max_bytes}-byte limit")
            return decode_image(bytes(image), source, self.max_pixels)
        pixels = np.asarray(image)
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ImageError(source, f"expected (H, W, 3) RGB pixels, got shape {pixels.shape}")
        if pixels.size == 0:
            raise ImageError(source, f"empty image {pixels.shape}")
        if pixels.dtype != np.uint8:
            if np.issubdtype(pixels.dtype, np.floating) and pixels.max() <= 1.0:
                raise ImageError(source, f"{pixels.dtype} pixels in {pixels.min():g}..{pixels.max():g} look like "
                                 "0..1 floats; the model takes RGB in 0..255 (multiply by 255, or pass uint8)")
            if not (np.issubdtype(pixels.dtype, np.number) and 0 <= pixels.min() and pixels.max() <= 255):
                raise ImageError(source, f"expected RGB pixels in 0..255, got {pixels.dtype} "
                                 f"in {pixels.min()}..{pixels.max()}")
            pixels = np.round(pixels).astype(np.uint8)
        return pixels

    def embed(self, image, source: str = "<upload>") -> np.ndarray:
        """One photo -> its unit vector."""
        from vsearch.embedder import embed_arrays

        return embed_arrays(self.embedder, [self.pixels(image, source)])[0]

    def search(self, image, k: int = 5, category: str = "any", source: str = "<upload>") -> SearchResult:
        """The top-k catalog items for a photo (bytes, path or pixels)."""
        return self.search_vector(self.embed(image, source), k, category)

    def search_vector(self, vector: np.ndarray, k: int = 5, category: str = "any") -> SearchResult:
        """The top-k catalog items for an embedding (see the module doc for ``category``)."""
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        category = category or "any"
        info = {"mode": category, "predicted": None, "confidence": None, "applied": False}
        if category == "any":
            return SearchResult(self.catalog.search(vector[None], k)[0], info)
        if category == "auto":
            neighbours = self.catalog.search(vector[None], max(k, AUTO_NEIGHBOURS))[0]
            predicted, share = predict_category(neighbours[:AUTO_NEIGHBOURS])
            info.update(predicted=predicted, confidence=round(share, 4))
            if share < AUTO_CONFIDENCE:
                return SearchResult(neighbours[:k], info)
            info["applied"] = True
            category_items = self._in_category(vector, predicted, k)
            seen = {m["id"] for m in category_items}
            return SearchResult((category_items + [m for m in neighbours if m["id"] not in seen])[:k], info)
        if category not in self.categories:
            raise DataError(f"unknown category {category!r}; the catalog has {self.categories}")
        info.update(predicted=category, applied=True)
        return SearchResult(self._in_category(vector, category, k), info)

    def _in_category(self, vector: np.ndarray, category: str, k: int) -> list[dict]:
        """Top-k within one category: scanned exactly if small, else a widened search.

        A category up to :data:`SCAN_CATEGORY_SHARE` of the catalog is searched over its own
        items only; a larger one by an ordinary search, 4x deeper each round until k of its
        items come back (few rounds, since they are common).
        """
        ids = self.catalog.category_ids(category)
        share = SCAN_CATEGORY_SHARE.get(getattr(self.catalog.index, "kind", ""), 1.0)
        if len(ids) <= share * len(self.catalog):
            return self.catalog.search(vector[None], k, among=ids)[0]
        depth = max(4 * k, 64)
        while True:
            found = self.catalog.search(vector[None], depth)[0]
            hits = [m for m in found if m.get("category") == category]
            if len(hits) >= k or depth >= len(self.catalog):
                return hits[:k]
            depth *= 4

    def image_path(self, item_id: str) -> Path:
        """The catalog photo of an item (from the index's metadata, never from the caller)."""
        item = self.catalog.items.get(str(item_id))
        if item is None:
            raise KeyError(item_id)
        return Path(item["path"])


def thumbnails(matches: Sequence[dict], size: int = 160, load: Callable[[str], np.ndarray] | None = None):
    """Small RGB arrays of the matched catalog photos (grey where a file went missing)."""
    from PIL import Image

    from vsearch.images import load_image

    out = []
    for match in matches:
        try:
            pixels = (load or load_image)(match["path"])
            img = Image.fromarray(pixels)
            img.thumbnail((size, size))
            out.append(np.asarray(img))
        except (ImageError, OSError):
            out.append(np.full((size, size, 3), 200, np.uint8))
    return out
