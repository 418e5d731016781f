"""The Milvus store: :class:`MilvusStore`, which ties the collection, its searches and its
writes together, and :func:`open`, which connects to a catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vsearch.errors import DataError, StoreError
from vsearch.stores import Product
from vsearch.stores.filters import milvus_literal
from vsearch.stores.milvus.connection import READ, _Calls, _connect, _release, locate
from vsearch.stores.milvus.layout import FIELDS, _hit, _product, _storable
from vsearch.stores.milvus.searching import _Searching
from vsearch.stores.milvus.writing import _Writing

PAGE = 1000  # rows per page of a listing


class MilvusStore(_Searching, _Writing):
    """A catalog in Milvus; see :mod:`vsearch.stores.milvus` for its modules and
    :mod:`vsearch.stores.milvus.layout` for its layout."""

    def count(self) -> tuple[int, int]:
        return self._count("seq == 0"), self._count("")

    def categories(self) -> list[str]:
        if self._categories is None:
            self._categories = sorted({row["category"] for row in self._rows("seq == 0", ["category"])})
        return list(self._categories)

    def _rows(self, expression: str, fields: list[str]) -> Iterator[dict]:
        """Every row ``expression`` keeps, a page at a time in primary-key order, each page after
        the last one's final key (as pymilvus' query iterator pages, but with the key escaped: the
        iterator quotes it as it is, and photo ``x" or product_id != "/0`` made every page the first).

        pymilvus sends a paged query without this process' Session timestamp, so a Session count
        goes first: it waits for this process' last write, and the pages see the server past it.
        """
        self._count(expression)
        after: str | None = None
        while True:
            terms = [f"key > {milvus_literal(after)}" if after is not None else "", expression]
            with _Calls(self.spec):
                page = self._read(
                    "query",
                    self.name,
                    filter=" and ".join(f"({t})" for t in terms if t),
                    output_fields=list(dict.fromkeys(["key", *fields])),
                    limit=PAGE,
                    iterator="True",  # rows in primary-key order, which the cursor needs
                    reduce_stop_for_best="True",
                    consistency_level=READ,
                )
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1]["key"]
            if after is not None and last <= after:  # a server that ignores the order: stop, never loop
                raise StoreError(f"{self.spec}: listing the catalog did not advance past row {after!r}")
            after = last

    def get(self, product_id: str) -> Product | None:
        if not _storable(str(product_id)):
            return None
        rows = self._select("product_id", [str(product_id)], FIELDS)
        return _product(rows) if rows else None

    def photo(self, photo_id: str) -> dict | None:
        if not _storable(str(photo_id)):
            return None
        rows = self._select("photo_id", [str(photo_id)], FIELDS)
        return _hit(rows[0]) if rows else None

    def products(self) -> Iterator[Product]:
        by_product: dict[str, list[dict]] = {}
        for row in self._rows("", FIELDS):
            by_product.setdefault(row["product_id"], []).append(row)
        for rows in by_product.values():
            yield _product(rows)

    def close(self) -> None:
        if self.client is not None:
            _release(self.client, self.local)
            self.client = None


def open(where: str, expected_fingerprint: str | None = None) -> MilvusStore:  # noqa: A001  (the backend API)
    """The catalog at ``where`` (``FILE.db`` or ``http://HOST:PORT``, then ``#NAME``).

    Raises:
        DataError: no catalog there, an unreachable server, or one built with another model.
    """
    uri, name, local = locate(where)
    spec = f"milvus:{where}"
    if local and not Path(local).exists():
        raise DataError(f"{spec}: no such milvus-lite store; build one with `vsearch index build ... --store {spec}`")
    client = _connect(uri, local, spec)
    try:
        with _Calls(spec):
            if client.has_collection(name):
                client.load_collection(name)  # after a restart collections come up released
        store = MilvusStore(spec, client, name, local, expected_fingerprint, uri=uri)
        if not store.lite:
            store.catch_up()
        return store
    except BaseException:
        _release(client, local)
        raise
