"""The catalog being served, kept up to date while the server runs.

A store takes in what other writers did when asked (:meth:`vsearch.stores.Store.refresh`:
for the FAISS file, the log records another process appended, or a whole new snapshot
after ``vsearch index build``; for Milvus, nothing to do). A :class:`LiveSearcher` asks
every ``interval_s`` from a background thread, and compacts an embedded store's log there
when it has grown (``should_compact``), so no request pays for it; after a compaction the
photos uploaded through the API that no product uses any more are removed (``media_dir``).
With ``warm_rerank``, another thread computes the catalog photos' re-rank keypoints at start
(:meth:`vsearch.catalog.search.Searcher.warm_rerank`).
A store that cannot be refreshed is logged and keeps serving what it has.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from vsearch.config import ServerConfig

log = logging.getLogger(__name__)


class LiveSearcher:
    """The searcher requests use, over a store refreshed in the background.

    Args:
        searcher: A :class:`~vsearch.catalog.search.Searcher`.
        interval_s: How often the store is refreshed (``ServerConfig.reload_interval_s``; 0:
            never; writes through this server's own store are seen at once all the same).

    ``listeners`` are called with ``"ok"`` after each refresh that changed the catalog and
    ``"failed"`` after each refresh or compaction that raised.
    """

    def __init__(self, searcher, interval_s: float = ServerConfig.reload_interval_s):
        self.current = searcher
        self.interval_s = float(interval_s)
        # photos uploaded through the API (the app sets it): the unused go after a compaction
        self.media_dir: str | os.PathLike | None = None
        self.loaded_at = time.time()
        self.listeners: list[Callable[[str], None]] = []
        self.warm_rerank = False  # the app sets it when searches re-rank by default
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warmer: threading.Thread | None = None

    @property
    def store(self):
        return self.current.store

    def check(self) -> bool:
        """Takes in other writers' changes, then compacts if due; True if the catalog changed."""
        try:
            changed = bool(self.store.refresh())
        except Exception as exc:  # noqa: BLE001  (a damaged update must not stop the server)
            self._tell("failed")
            log.error("%s: cannot take in the latest changes; still serving what was loaded (%s)", self.store.spec, exc)
            return False
        if changed:
            self.loaded_at = time.time()
            self._tell("ok")
            products, photos = self.store.count()
            log.info("%s refreshed: %d products, %d photos", self.store.spec, products, photos)
        self.compact_if_due()
        return changed

    def compact_if_due(self) -> None:
        """Rewrites an embedded store's snapshot when its log has grown (see the store's policy)."""
        due = getattr(self.store, "should_compact", None)
        if due is None or not due():
            return
        try:
            self.store.compact()
        except Exception as exc:  # noqa: BLE001  (the log stays valid; the next round tries again)
            self._tell("failed")
            log.error("%s: compaction failed; the log is kept and replayed as before (%s)", self.store.spec, exc)
            return
        self.collect_media()

    def collect_media(self) -> None:
        """Removes uploaded photos no product uses any more (:func:`vsearch.catalog.products.collect_media`)."""
        if self.media_dir is None:
            return
        from vsearch.catalog.products import collect_media

        try:
            removed = collect_media(self.store, self.media_dir)
        except Exception as exc:  # noqa: BLE001  (an unused file costs disk, not answers)
            log.error("%s: collecting unused photos failed (%s)", self.media_dir, exc)
            return
        if removed:
            log.info("%s: removed %d photos no product uses", self.media_dir, len(removed))

    def _tell(self, outcome: str) -> None:
        for listener in self.listeners:
            listener(outcome)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001  (keep watching whatever happened)
                log.exception("refreshing %s failed", self.store.spec)

    def _warm(self) -> None:
        try:
            done = self.current.warm_rerank(self._stop)
            log.info("re-rank keypoints ready for %d catalog photos", done)
        except Exception:  # noqa: BLE001  (searches compute what is missing themselves)
            log.exception("computing re-rank keypoints ahead failed")

    def start(self) -> None:
        self._stop.clear()
        if self.warm_rerank and self._warmer is None:
            self._warmer = threading.Thread(target=self._warm, name="vsearch-rerank-warm", daemon=True)
            self._warmer.start()
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="vsearch-catalog-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._warmer):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._warmer = None
