"""Building a catalog: a folder of photos (and an items CSV) -> an index of items.

:func:`catalog_files` reads a folder laid out as ``<category>/<photo>``; :func:`build_catalog`
embeds every photo (through :func:`vsearch.embedder.embed_images`: unreadable files are
skipped and listed) into a new :class:`~vsearch.index.Catalog`; :func:`add_images` grows
one without re-embedding the rest. Answering a photo is :mod:`vsearch.search`'s job.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vsearch.artifacts import printable
from vsearch.embedder import embed_images
from vsearch.errors import DataError
from vsearch.index import Catalog, FaissIndex, choose_kind, measure_recall


def _walk(root: Path, skipped: dict[str, str]) -> list[Path]:
    """Every file under ``root``, following symlinked folders once each; hidden entries left out.

    A folder reached a second time (a symlink loop, or two links to one folder) is skipped
    and listed, as is a name that is not valid UTF-8 (it could not be an id or JSON text).
    """
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            skipped[printable(folder)] = "folder already read through another link (symlink loop?)"
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder) / name
            if printable(path) != os.fsdecode(path):
                skipped[printable(path)] = "file name is not valid UTF-8; rename the file"
            elif path.is_file():
                files.append(path)
    return files


def catalog_files(root: str | os.PathLike, skipped: dict[str, str] | None = None) -> list[tuple[Path, str, str]]:
    """(path, category, id) for every file under ``root``; category = first sub-folder.

    Ids are the path relative to ``root`` without its extension (``shoes/1a2b``), so they
    are stable across rebuilds and unique within a folder tree. Symlinked folders are
    followed; files that cannot be items are listed in ``skipped`` (path -> why).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{printable(root)}: no such catalog folder")
    skipped = {} if skipped is None else skipped
    files = []
    for path in sorted(_walk(root, skipped)):
        rel = path.relative_to(root)
        category = rel.parts[0] if len(rel.parts) > 1 else ""
        files.append((path, category, rel.with_suffix("").as_posix()))
    if not files:
        raise DataError(f"{printable(root)}: no files found (expected <category>/<photo> image files)")
    return files


def read_items_csv(path: str | os.PathLike) -> dict[str, dict]:
    """Item metadata keyed by image path (relative to the catalog folder, as in the CSV).

    The CSV needs an ``id`` column and a ``path`` (or ``image``) column; every other column
    (title, url, price, ...) is carried into the search results as text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such items file")
    try:
        return _read_items(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


def _read_items(path: Path) -> dict[str, dict]:
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
    done = embed_images(embedder, [Path(it["path"]) for it in items], **embed_kwargs)
    catalog.add([items[i] for i in done.good], done.vectors)
    report.added += len(done.good)
    report.skipped.update(done.bad)


def model_info(embedder) -> dict:
    meta = getattr(embedder, "metadata", {}) or {}
    return {"source": str(getattr(embedder, "model_dir", getattr(embedder, "path", ""))),
            "image_size": int(embedder.image_size), "class_names": meta.get("class_names", [])}


def build_catalog(embedder, root: str | os.PathLike, items_csv: str | os.PathLike | None = None,
                  kind: str = "auto", **embed_kwargs) -> tuple[Catalog, IndexReport]:
    """Embeds every image under ``root`` into a new catalog (see :func:`catalog_files`)."""
    root = Path(root)
    report = IndexReport()
    files = catalog_files(root, report.skipped)
    rows = read_items_csv(items_csv) if items_csv else {}
    catalog = Catalog(embedder.dim, embedder.fingerprint,
                      index=FaissIndex(embedder.dim, choose_kind(kind, len(files))), model=model_info(embedder))
    items = _planned_items([(p, c, i, p.relative_to(root).as_posix()) for p, c, i in files], rows)
    _embed_into(catalog, embedder, items, report, **embed_kwargs)
    report.unmatched_rows = sorted(rows)
    if not len(catalog):
        raise DataError(f"{root}: none of the {len(files)} files could be read as an image")
    report.recall_at_10 = _approximate_recall(catalog)
    return catalog, report


def _approximate_recall(catalog: Catalog) -> float | None:
    """An HNSW index's recall@10 against exact search on a sample (kept in its stats); None when exact."""
    if catalog.index.kind == "exact":
        return None
    sample = catalog.index.vectors[np.random.default_rng(0).choice(len(catalog), min(500, len(catalog)), False)]
    catalog.stats["recall@10"] = measure_recall(catalog.index, sample, 10)
    return catalog.stats["recall@10"]


def catalog_from_vectors(items: Sequence[dict], vectors: np.ndarray, fingerprint: str, model: dict | None = None,
                         kind: str = "auto") -> tuple[Catalog, IndexReport]:
    """A new catalog of vectors embedded elsewhere (``vsearch embed``'s shards); nothing is embedded.

    Args:
        items: One dict per vector, with at least ``id`` (unique).
        vectors: (len(items), dim) unit vectors.
        fingerprint: Of the model that made them.
        model: What made them (source, image size, class names), kept with the catalog.
        kind: ``auto``, ``exact`` or ``hnsw`` (see :func:`vsearch.index.choose_kind`).
    """
    vectors = np.asarray(vectors, np.float32)
    if not len(items) or vectors.ndim != 2 or len(vectors) != len(items):
        raise DataError(f"no vectors to index ({len(items)} item(s), vectors of shape {vectors.shape})")
    dim = vectors.shape[1]
    catalog = Catalog(dim, fingerprint, index=FaissIndex(dim, choose_kind(kind, len(items))), model=model)
    catalog.add(list(items), vectors)
    return catalog, IndexReport(added=len(catalog), recall_at_10=_approximate_recall(catalog))


def add_images(catalog: Catalog, embedder, paths: Iterable[str | os.PathLike], category: str | None = None,
               items_csv: str | os.PathLike | None = None, **embed_kwargs) -> IndexReport:
    """Adds files, or folders, to an existing catalog without re-embedding the rest.

    A file's category is ``category`` or its folder's name; a folder is read like the
    catalog (``<category>/<photo>``), except that photos directly inside it take the
    folder's name (or ``category``) as their category. Ids follow :func:`catalog_files`.
    """
    files: list[tuple[Path, str, str, str]] = []
    report = IndexReport()
    for raw in paths:
        path = Path(raw)
        if printable(path) != os.fsdecode(path):
            report.skipped[printable(path)] = "file name is not valid UTF-8; rename the file"
        elif path.is_dir():
            for p, cat, item_id in catalog_files(path, report.skipped):
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
    _embed_into(catalog, embedder, _planned_items(files, rows), report, **embed_kwargs)
    report.unmatched_rows = sorted(rows)
    return report
