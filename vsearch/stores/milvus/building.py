"""Building a catalog: a new collection filled and indexed, then swapped in for the old one.

``build`` fills a new collection, then moves the alias and drops the old one: readers
search the old catalog or the new one, never a mix, and take in the new metadata at their
next ``refresh()`` (which refuses a catalog built with another model).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient, MilvusException

from vsearch.errors import DataError, StoreError
from vsearch.stores.milvus.connection import _Calls, _connect, _one_writer, _release, locate, lock_file
from vsearch.stores.milvus.layout import FORMAT, META, _batches, _create, to_rows
from vsearch.stores.milvus.store import MilvusStore
from vsearch.stores.rows import FaissIndex, choose_kind
from vsearch.stores.validate import check_vectors, group_photos, photo_dict

SEAL_ABOVE = 20_000  # a server build of more photos is flushed into sealed, indexed segments


def build(
    where: str, photos: Sequence, vectors: np.ndarray, *, fingerprint: str, model: dict, kind: str = "auto"
) -> MilvusStore:
    """A new catalog at ``where`` holding ``photos``; replaces the one there at once (see the module doc)."""
    uri, name, local = locate(where)
    spec = f"milvus:{where}"
    photos = list(photos)
    vectors = check_vectors(vectors, len(photos), None)
    dim = int(vectors.shape[1])
    schema = group_photos([photo_dict(p) for p in photos], {})[1] if photos else {}
    columns = {name: f"a{n}" for n, name in enumerate(sorted(schema))}
    rows, schema = to_rows(photos, vectors, schema, columns) if photos else ([], {})
    try:
        chosen = "ivf" if kind == "ivf" else choose_kind(kind, len(rows))
    except ValueError as exc:
        raise DataError(f"{spec}: {exc}") from None
    graph = FaissIndex(1).params()  # the FAISS store's HNSW parameters: the same graph, comparable figures
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["product_id"]] = sizes.get(row["product_id"], 0) + 1
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "dim": dim,
        "model": dict(model),
        "schema": schema,
        "kind": chosen,
        "columns": columns,
        "ef_search": graph["ef_search"],
        "slots": max(sizes.values(), default=1),
        "ivf": {},
    }
    if local:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
    client = _connect(uri, local, spec)
    try:
        with _Calls(spec):
            lite = str(client.get_server_version()).startswith("milvus_lite")
            if kind == "auto" and chosen == "hnsw" and not lite:
                meta["kind"] = "ivf"

            old = _alias_target(client, name, spec)
            collection = f"{name}_{uuid.uuid4().hex[:12]}"
            _create(client, collection, dim, meta)
            try:
                if local or len(rows) > SEAL_ABOVE:
                    for batch in _batches(rows, dim):
                        client.insert(collection, batch)
                    client.flush(collection)  # seals the rows into segments that get the index
                    if meta["kind"] == "ivf":
                        meta["ivf"] = ivf_params(_largest_segment(client, collection, len(rows)))
                        client.alter_collection_properties(collection, properties={META: json.dumps(meta)})
                    _index(client, collection, meta, lite)
                else:  # a few rows, searched as they are: indexed and loaded empty (a flush takes seconds)
                    if meta["kind"] == "ivf":
                        meta["ivf"] = ivf_params(len(rows))
                        client.alter_collection_properties(collection, properties={META: json.dumps(meta)})
                    _index(client, collection, meta, lite)
                    for batch in _batches(rows, dim):
                        client.insert(collection, batch)
                # Read Strong once: the rows went in under the collection's own name, so this process'
                # Session reads of the alias know no write to wait for; this read moves the server past them.
                stored = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
                if int(stored[0]["count(*)"]) != len(rows):
                    raise StoreError(f"{spec}: the new catalog holds {stored[0]['count(*)']} of {len(rows)} photos")
                with _one_writer(lock_file(uri, name, local), spec):  # no write runs across the swap
                    old = _alias_target(client, name, spec)
                    if old is None:
                        client.create_alias(collection, name)
                    else:
                        client.alter_alias(collection, name)
            except BaseException:
                client.drop_collection(collection)
                raise
            if old is not None:
                client.drop_collection(old)
        return MilvusStore(spec, client, name, local, uri=uri)
    except BaseException:
        _release(client, local)
        raise


def _alias_target(client: MilvusClient, name: str, spec: str) -> str | None:
    """The collection the catalog's alias points at; None for a new catalog."""
    if not client.has_collection(name):
        return None
    described = client.describe_collection(name)
    if described["collection_name"] == name:
        raise DataError(
            f"{spec}: a collection named {name!r} that vsearch did not make is there; pick another "
            f"name with milvus:...#NAME"
        )
    return described["collection_name"]


def ivf_params(segment_rows: int) -> dict[str, int]:
    """An IVF catalog's lists (about 4 sqrt of a segment's rows: Milvus indexes each segment on
    its own, and seals one at about 50k photos of 391-d) and the lists a search probes
    unfiltered (1/32 of them)."""
    nlist = max(16, min(4096, int(4 * math.sqrt(max(segment_rows, 1)))))
    return {"nlist": nlist, "nprobe": max(8, math.ceil(nlist / 32))}


def _largest_segment(client: MilvusClient, collection: str, rows: int) -> int:
    """The most rows a sealed segment of ``collection`` holds (``rows`` where the server cannot say)."""
    try:
        sizes = [int(s.num_rows) for s in client.list_persistent_segments(collection)]
    except (MilvusException, AttributeError):
        return rows
    return max(sizes, default=rows) or rows


def _index(client: MilvusClient, collection: str, meta: dict, lite: bool) -> None:
    """The vector index over the loaded rows, built before this returns: created with the
    collection, milvus-lite builds it in a background thread after each flush and searches
    every row by brute force until it is done (minutes at 100k photos).

    ``kind``: ``hnsw`` (the FAISS store's graph parameters), ``ivf`` (IVF_FLAT, what ``auto``
    picks above the exact size on a Milvus server: filtered searches keep their recall) or
    ``exact`` (FLAT). On a server, ``photo_id`` and ``product_id`` get a scalar index (Trie):
    a write's photo check and a product's read look ids up rather than scan every row (an
    upsert took 80 ms at 1M photos without).
    """
    index = client.prepare_index_params()
    graph = FaissIndex(1).params()
    if meta["kind"] == "hnsw":
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": graph["hnsw_m"], "efConstruction": graph["ef_construction"]},
        )
    elif meta["kind"] == "ivf":
        index.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": meta["ivf"]["nlist"]})
    else:
        index.add_index("vector", index_type="FLAT", metric_type="COSINE")
    if not lite:
        for field in ("photo_id", "product_id"):
            index.add_index(field, index_type="Trie", index_name=f"{field}_trie")
    client.create_index(collection, index)
    client.load_collection(collection)
