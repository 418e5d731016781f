"""Writes: upserts and deletes, each acknowledged only once Milvus holds it.

Writes: one writer at a time per catalog, threads of a process by a lock and processes of
a machine by a lock file (beside a milvus-lite file; in the temporary folder for a server).
An ``upsert`` writes a product's photos into its slots ``0..n-1`` by primary key and deletes
its slots ``n..`` (the catalog's ``slots``: the most photos a product has had), so it reads
nothing back from the server: Milvus makes a write visible to searches only at its next
time tick (200 ms), and a write that had to read the last one would wait for it. A failure
midway leaves extra photos, never a lost product, and says so (a
:class:`~vsearch.errors.StoreError`, which the API answers with 503); writing again
completes it. Writes that are not serialized (two machines on one server) are last-writer-
wins per slot. A local file is flushed after each write (milvus-lite writes its log to the
OS at once; the flush makes segments and keeps searches fast); a server is flushed after a
build only, as Milvus persists each write already and rate-limits flushes.

``delete`` counts what it removes with ``Strong``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from vsearch.errors import DataError, StoreError
from vsearch.stores.milvus.collection import _Collection
from vsearch.stores.milvus.connection import _Calls
from vsearch.stores.milvus.layout import CHUNK, _batches, _in, _key, _storable, to_rows
from vsearch.stores.validate import check_vectors

RECENT_S = 60  # how long this process remembers its writes' photo ids (the move check's own view)


class _Writing(_Collection):
    """A store's writes (see the module doc)."""

    def upsert(self, photos: Sequence, vectors: np.ndarray) -> None:
        """Writes the products' photos into their slots, then deletes their slots past them (see
        the module doc); nothing is read back, so a write does not wait for the last one."""
        photos = list(photos)
        vectors = check_vectors(vectors, len(photos), self.dim)
        with self._writing():
            self._read_meta()  # the schema and slots as the last writer left them
            rows, schema = to_rows(photos, vectors, self.schema, self.columns)
            sizes: dict[str, int] = {}
            for row in rows:
                sizes[row["product_id"]] = sizes.get(row["product_id"], 0) + 1
            self._refuse_moves(rows)
            slots = max(self.slots, *sizes.values())
            if schema != self.schema or slots != self.slots:
                self._write_meta(schema, slots)  # before the rows: a reader may filter on what it finds
                self.schema, self.slots = schema, slots
            stale = [_key(seq, product) for product, size in sizes.items() for seq in range(size, slots)]
            with _Calls(self.spec, writing=True):
                for batch in _batches(rows, self.dim):
                    self.client.upsert(self.name, batch)
                for start in range(0, len(stale), CHUNK):
                    self.client.delete(self.name, filter=_in("key", stale[start : start + CHUNK]))
                if stale:  # Milvus 2.3 answers a delete without its timestamp: a Session read waits
                    # for the last write whose timestamp it knows, so one row is written again last.
                    self.client.upsert(self.name, next(_batches(rows[-1:], self.dim)))
            self._remember({product: [] for product in sizes}, rows)
            self._written()

    def _refuse_moves(self, rows: list[dict]) -> None:
        """A photo id may pass only between products this upsert replaces (it would be kept twice).

        Reads with ``Eventually`` (no wait for the time tick) and corrects that view with this
        process' own writes of the last ``RECENT_S`` seconds; another process' write of the
        last moment may be missed.
        """
        wanted = {row["photo_id"]: row["product_id"] for row in rows}
        replaced = set(wanted.values())
        now = time.monotonic()
        self._recent = {p: seen for p, seen in self._recent.items() if now - seen[0] < RECENT_S}
        owners = [
            (row["photo_id"], row["product_id"])
            for row in self._select("photo_id", list(wanted), ["photo_id", "product_id"], "Eventually")
            if row["product_id"] not in self._recent or row["photo_id"] in (self._recent[row["product_id"]][1] or ())
        ]
        owners += [
            (photo, product) for product, (_, ids) in self._recent.items() for photo in ids or () if photo in wanted
        ]
        for photo, product in owners:
            if product not in replaced:
                raise DataError(f"product {wanted[photo]!r}: photo id {photo!r} already belongs to product {product!r}")

    def _remember(self, products: dict[str, list], rows: list[dict]) -> None:
        """This process' view of what it wrote: each product's photo ids (none: deleted)."""
        for row in rows:
            products[row["product_id"]].append(row["photo_id"])
        now = time.monotonic()
        for product, photo_ids in products.items():
            self._recent[product] = (now, frozenset(photo_ids) if photo_ids else None)

    def delete(self, product_ids: Sequence[str]) -> int:
        """Removes the products (every slot), counting those that were there with ``Strong``
        consistency (another process' write of the last moment counts too), and reads them
        ``Strong`` again after: Milvus 2.3 answers a delete without its timestamp, so a
        Session read could not wait for it, and a Strong read moves the server's view past it."""
        ids = [i for i in dict.fromkeys(str(p) for p in product_ids) if _storable(i)]
        removed: list[str] = []
        with self._writing():
            self._read_meta()  # the slots as the last writer left them
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                expression = f"({_in('product_id', chunk)}) and (seq == 0)"
                found = [row["product_id"] for row in self._select_where(expression, "Strong")]
                keys = [_key(seq, product) for product in found for seq in range(self.slots)]
                with _Calls(self.spec, writing=True):
                    for at in range(0, len(keys), CHUNK):
                        self.client.delete(self.name, filter=_in("key", keys[at : at + CHUNK]))
                if found and self._select_where(_in("product_id", found), "Strong"):
                    raise StoreError(f"{self.spec}: Milvus kept products {found[:3]} after deleting them; try again")
                removed += found
            if removed:
                self._remember({product: [] for product in removed}, [])
                self._written()
        return len(removed)

    def _written(self) -> None:
        if self.local:
            with _Calls(self.spec, writing=True):
                self.client.flush(self.name)
        self._write_meta()
