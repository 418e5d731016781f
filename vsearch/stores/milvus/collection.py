"""A catalog's collection: the state a store keeps of it, its metadata (kept in the collection's
properties, see :mod:`vsearch.stores.milvus.layout`) and the calls that read it.

:class:`_Collection` is what :class:`~vsearch.stores.milvus.store.MilvusStore` searches
(:mod:`~vsearch.stores.milvus.searching`) and writes (:mod:`~vsearch.stores.milvus.writing`) stand on.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence

from pymilvus import MilvusClient, MilvusException

from vsearch.errors import DataError
from vsearch.stores.milvus.connection import READ, _Calls, _one_writer, lock_file, server_roads
from vsearch.stores.milvus.layout import CALIBRATION, CHANGE, CHUNK, FORMAT, META, _in
from vsearch.stores.rows import calibration_problem


class _Collection:
    """The catalog's collection as a store sees it: its metadata and the calls that read it."""

    def __init__(
        self,
        spec: str,
        client: MilvusClient,
        name: str,
        local: str | None,
        expected_fingerprint: str | None = None,
        uri: str = "",
    ):
        self.spec, self.client, self.name, self.local = spec, client, name, local
        self.expected_fingerprint = expected_fingerprint
        self.collection = ""
        self.change = ""
        self.calibration: dict | None = None
        self.columns: dict[str, str] = {}  # attribute -> its typed column
        self.slots = 1  # the most photos a product has had: an upsert deletes its slots past its own
        self.ivf: dict = {}  # an IVF catalog's nlist and nprobe (unfiltered)
        self._categories: list[str] | None = None
        self._kept: dict[str, int] = {}  # filter expression -> photos it keeps, at self.change
        # product -> (when this process wrote it, its photo ids then; None: deleted)
        self._recent: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._lock_file = lock_file(uri or spec, name, local)
        with _Calls(spec):
            self.engine = {"backend": "milvus", **server_roads(str(client.get_server_version()))}
        self.lite = self.engine["server"].startswith("milvus_lite")  # in this process or its own server
        self._read_meta()

    # ---- metadata, kept in the collection's properties

    def _describe(self) -> dict:
        with _Calls(self.spec):
            if not self.client.has_collection(self.name):
                raise DataError(
                    f"{self.spec}: no vsearch catalog named {self.name!r} there; build one with "
                    f"`vsearch index build ... --store {self.spec}`"
                )
            return self.client.describe_collection(self.name)

    def _read_meta(self) -> None:
        described = self._describe()
        properties = described.get("properties") or {}
        try:
            meta = json.loads(properties[META])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            fingerprint, dim, model, schema = meta["fingerprint"], int(meta["dim"]), meta["model"], meta["schema"]
            kind, columns, ef_search = meta["kind"], dict(meta.get("columns") or {}), int(meta.get("ef_search", 64))
            slots = int(meta["slots"])
            ivf = dict(meta.get("ivf") or {})
            calibration = json.loads(properties.get(CALIBRATION) or "null")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            earlier = (
                "an earlier vsearch's catalog"
                if str(exc).startswith("format 'vsearch-milvus/")
                else "not a vsearch catalog"
            )
            raise DataError(
                f"{self.spec}: collection {self.name!r} is {earlier} ({exc}); rebuild it with `vsearch index build`"
            ) from None
        expected = self.expected_fingerprint
        if expected is not None and fingerprint != expected:
            raise DataError(
                f"{self.spec}: built with model {fingerprint}, but the query model is {expected}; "
                "rebuild the index with this model"
            )
        self.fingerprint, self.dim, self.model, self.schema = fingerprint, dim, dict(model), dict(schema)
        self.kind, self.columns, self._ef_search, self.slots, self.ivf = kind, columns, ef_search, slots, ivf
        self.calibration, self.collection = calibration, described["collection_name"]
        self.change = properties.get(CHANGE, "")
        self._categories = None
        self._kept = {}

    def _meta(self, schema: dict[str, str], slots: int) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "model": self.model,
            "schema": schema,
            "kind": self.kind,
            "columns": self.columns,
            "ef_search": self._ef_search,
            "slots": slots,
            "ivf": self.ivf,
        }

    def _write_meta(self, schema: dict[str, str] | None = None, slots: int | None = None) -> None:
        properties = {CHANGE: uuid.uuid4().hex}
        if schema is not None or slots is not None:
            schema = self.schema if schema is None else schema
            slots = self.slots if slots is None else slots
            properties[META] = json.dumps(self._meta(schema, slots))
        with _Calls(self.spec, writing=True):
            self.client.alter_collection_properties(self.collection, properties=properties)
        self.change = properties[CHANGE]
        self._categories = None
        self._kept = {}

    def _writing(self) -> contextlib.AbstractContextManager:
        return _one_writer(self._lock_file, self.spec)

    def refresh(self) -> bool:
        """Takes in other writers' changes (a rebuild, new metadata); whether there were any.

        Cheap: one call. The rows need no refresh (every search asks the live catalog).
        """
        described = self._describe()
        if (described["collection_name"], (described.get("properties") or {}).get(CHANGE, "")) == (
            self.collection,
            self.change,
        ):
            return False
        self._read_meta()
        return True

    def set_calibration(self, calibration: dict | None) -> None:
        if calibration is not None:
            problem = calibration_problem(calibration, self.fingerprint)
            if problem:
                raise DataError(f"calibration refused: it {problem}")
        with self._writing(), _Calls(self.spec, writing=True):
            self.client.alter_collection_properties(self.collection, properties={CALIBRATION: json.dumps(calibration)})
        self.calibration = calibration

    # ---- reading

    def _read(self, method: str, *args, **kwargs):
        """``self.client.<method>(...)``; a collection the server has not loaded again yet (it
        reloads them after a restart, in its own time) is loaded here and the call made once more."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as exc:
            if "not loaded" not in str(getattr(exc, "message", exc)):
                raise
        self.client.load_collection(self.name)
        return getattr(self.client, method)(*args, **kwargs)

    def catch_up(self) -> None:
        """One ``Strong`` read: the server has applied every write acknowledged before this store
        opened, so this store's ``Session`` reads (which wait only for its own writes) see them all.
        A fresh process has no writes of its own, and a server that has just restarted replays its
        log in its own time: its first counts and searches could miss products stored before."""
        self._count("", "Strong")

    def _count(self, expression: str, consistency: str = READ) -> int:
        with _Calls(self.spec):
            rows = self._read(
                "query", self.name, filter=expression, output_fields=["count(*)"], consistency_level=consistency
            )
        return int(rows[0]["count(*)"])

    def _kept_by(self, expression: str) -> int:
        """Photos ``expression`` keeps, counted once per catalog change (a count costs milvus-lite a
        query that reads every row; a stale count only sets the beam: :meth:`_exact` checks itself)."""
        if expression not in self._kept:
            if len(self._kept) >= 64:
                self._kept.clear()
            self._kept[expression] = self._count(expression)
        return self._kept[expression]

    def _select(self, field: str, values: Sequence[str], fields: list[str], consistency: str = READ) -> list[dict]:
        out = []
        with _Calls(self.spec):
            for start in range(0, len(values), CHUNK):
                out += self._read(
                    "query",
                    self.name,
                    filter=_in(field, values[start : start + CHUNK]),
                    output_fields=fields,
                    consistency_level=consistency,
                )
        return out

    def _select_where(self, expression: str, consistency: str) -> list[dict]:
        with _Calls(self.spec):
            return self._read(
                "query", self.name, filter=expression, output_fields=["product_id"], consistency_level=consistency
            )
