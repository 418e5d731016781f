"""Searching: filters as Milvus expressions, the exact search of a small filtered set, and the
grouping of photos into products for a server without group-by.

Versions: Milvus 2.4+ groups photos into products itself (``group_by_field``); Milvus 2.3
ignores that option and milvus-lite's comes up short when one product's photos crowd the
top, so there the store searches photos and groups them here, widening the search until it
holds ``k`` products (or every photo the filter keeps): the products are then exactly the
best ``k`` of the photos searched (:func:`~vsearch.stores.milvus.connection.server_roads`
says which road a server takes).

milvus-lite 3.x is a pure-Python engine: whatever the index, each search walks every row in
Python to drop superseded and deleted ones (``milvus_lite/search/executor_indexed.py``),
about 1-2 microseconds a row, and a filter on a JSON path is evaluated row by row with a
``json.loads`` each (about 100 times a typed column's cost). Hence the typed columns, the
index built at once, and a filter's count kept until the catalog changes; the per-row walk
is milvus-lite's and sets its floor (bench/results/stores.md).
"""

from __future__ import annotations

import math

import numpy as np

from vsearch.errors import DataError
from vsearch.stores.filters import BUILTIN, Filter, milvus_literal, to_milvus
from vsearch.stores.milvus.collection import _Collection
from vsearch.stores.milvus.connection import READ, _Calls
from vsearch.stores.milvus.layout import FIELDS, HIT_FIELDS, _hit, _typed_condition
from vsearch.stores.validate import check_vectors

MAX_K = 16384  # Milvus' largest top-k
MAX_EF = 32768  # Milvus' largest HNSW search beam
EXACT_BELOW = 4096  # an HNSW catalog scores a filter keeping this few photos here (6 MB at 391-d)


class _Searching(_Collection):
    """A store's searches (see the module doc)."""

    def _field(self, name: str) -> str:
        """Where a filter field lives: a column for the built-in ones and the typed attributes, else
        a key of ``attributes``."""
        if name in BUILTIN:
            return name
        return self.columns.get(name) or f"attributes[{milvus_literal(name)}]"

    def _expression(self, where: Filter | None) -> str:
        """``where`` as a Milvus expression: typed columns by
        :func:`~vsearch.stores.milvus.layout._typed_condition`, the rest (built-in fields,
        attributes in the JSON field) by :func:`~vsearch.stores.filters.to_milvus`, but for ``in``
        on the JSON field of a server: there as ``in`` (Milvus 2.3 fails on a filter's 100 values
        as ORed equalities; milvus-lite takes ``in`` on fields only)."""
        if not where:
            return ""
        parts = []
        for condition in where.conditions:
            column = None if condition.field in BUILTIN else self.columns.get(condition.field)
            if column is not None:
                parts.append(f"({_typed_condition(column, self.schema[condition.field], condition)})")
            elif condition.op == "in" and condition.field not in BUILTIN and not self.lite:
                values = ", ".join(dict.fromkeys(milvus_literal(v) for v in condition.value))
                parts.append(f"({self._field(condition.field)} in [{values}])")
            else:
                parts.append(to_milvus(Filter((condition,)), self._field))
        return " and ".join(parts)

    def search(self, vectors: np.ndarray, k: int, where: Filter | None = None, group: bool = True) -> list[list[dict]]:
        """Per query, the best ``k`` products (each once, by its best photo) or, ``group=False``, photos.

        Products: Milvus' group-by (2.4+) or, where a server has none, :meth:`_grouped`. An
        approximate catalog searches a filter that keeps at most ``EXACT_BELOW`` photos exactly
        over them (their vectors scored here), and one that keeps more with its search widened
        by the inverse of the share kept: HNSW's beam (a graph walk that must skip most nodes
        misses answers: milvus-lite gave a wrong top 3 for 10 of 20 queries with a filter
        keeping 12 of 1,800 photos), IVF's lists probed, up to 4 times (at a filter keeping 10%
        of 100k photos Milvus 2.3 found 0.93 of the products with HNSW, whatever the beam, and
        0.99-1.0 with IVF probing 3-12% of its lists).
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        vectors = check_vectors(vectors, len(vectors), self.dim)
        if int(k) < 1:
            raise DataError(f"{self.spec}: search: k must be at least 1, got {k}")
        k = min(int(k), MAX_K)
        expression = self._expression(where)
        widen = 1.0  # the inverse of the share of photos a filter keeps
        if self.kind != "exact" and expression:
            kept = self._kept_by(expression)
            if kept <= EXACT_BELOW:
                exact = self._exact(vectors, k, expression, group)
                if exact is not None:
                    return exact
                kept = self._kept[expression] = self._count(expression)  # it grew since it was counted
            widen = self._kept_by("") / max(kept, 1)
        if self.kind == "hnsw":
            ef = max(self._ef_search, k)
            params = {"ef": min(MAX_EF, max(ef, math.ceil(2 * ef * widen))) if widen > 1 else ef}
        elif self.kind == "ivf":
            nlist, nprobe = self.ivf["nlist"], self.ivf["nprobe"]
            params = {"nprobe": min(nlist, math.ceil(nprobe * min(widen, 4.0)))}
        else:
            params = {}
        if group and self.engine["group_by"] == "vsearch":
            return self._grouped(vectors, k, expression, params)
        options = {"group_by_field": "product_id", "group_size": 1} if group else {}
        return self._search(vectors, k, expression, params, **options)

    def _search(self, vectors: np.ndarray, limit: int, expression: str, params: dict, **options) -> list[list[dict]]:
        with _Calls(self.spec):
            results = self._read(
                "search",
                self.name,
                data=vectors.tolist(),
                limit=limit,
                filter=expression,
                output_fields=HIT_FIELDS,
                search_params={  # HNSW's beam holds at least the photos asked for
                    "metric_type": "COSINE",
                    "params": {**params, "ef": max(params["ef"], limit)} if "ef" in params else params,
                },
                consistency_level=READ,
                **options,
            )
        return [[{**_hit(hit["entity"]), "score": float(hit["distance"])} for hit in hits] for hits in results]

    def _grouped(self, vectors: np.ndarray, k: int, expression: str, params: dict) -> list[list[dict]]:
        """The best ``k`` products per query from a photo search grouped here (a server without group-by).

        Searches ``k`` times twice the photos a product has on average, then, for a query
        whose photos name fewer than ``k`` products while more photos remain, four times as
        many, up to Milvus' top-k limit: once the photos found name ``k`` products, those are
        the best ``k`` of them (a product not found has no photo above the last one found).
        """
        products = max(1, self._kept_by("seq == 0"))
        limit = min(MAX_K, max(k, 2 * k * math.ceil(self._kept_by("") / products)))
        answers: list[list[dict]] = [[] for _ in vectors]
        todo = list(range(len(vectors)))
        while todo:
            found = self._search(vectors[todo], limit, expression, params)
            again = []
            for n, hits in zip(todo, found):
                answers[n] = _best_per_product(hits, k)
                if len(answers[n]) < k and len(hits) >= limit and limit < MAX_K:
                    again.append(n)
            todo, limit = again, min(MAX_K, 4 * limit)
        return answers

    def _exact(self, vectors: np.ndarray, k: int, expression: str, group: bool) -> list[list[dict]] | None:
        """Every photo ``expression`` keeps, scored against each query (cosine, as the index);
        None when it keeps more than ``EXACT_BELOW`` photos."""
        with _Calls(self.spec):
            rows = self._read(
                "query",
                self.name,
                filter=expression,
                output_fields=FIELDS + ["vector"],
                limit=EXACT_BELOW + 1,
                consistency_level=READ,
            )
        if len(rows) > EXACT_BELOW:
            return None
        if not rows:
            return [[] for _ in vectors]
        stored = np.asarray([row["vector"] for row in rows], np.float32)
        stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
        queries = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        answers = []
        for scores in queries @ stored.T:
            hits, seen = [], set()
            for n in np.argsort(-scores, kind="stable"):
                if group and rows[n]["product_id"] in seen:
                    continue
                seen.add(rows[n]["product_id"])
                hits.append({**_hit(rows[n]), "score": float(scores[n])})
                if len(hits) == k:
                    break
            answers.append(hits)
        return answers


def _best_per_product(hits: list[dict], k: int) -> list[dict]:
    """The first ``k`` hits of different products (``hits`` best first)."""
    out, seen = [], set()
    for hit in hits:
        if hit["product_id"] not in seen:
            seen.add(hit["product_id"])
            out.append(hit)
            if len(out) == k:
                break
    return out
