"""The catalog being served, reloaded when its index file is replaced.

``vsearch index build/add/remove`` write a new index file and rename it into place, so a
replacement changes the file's inode, size or modification time (:func:`file_signature`).
A :class:`LiveSearcher` checks the file every ``interval_s`` from a background thread and,
when it changed, loads the new catalog beside the old one and swaps one reference.
Requests read that reference once, so those in flight finish on the catalog they started
with; a file that cannot be loaded is logged and the current catalog kept.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

DEFAULT_RELOAD_INTERVAL_S = 2.0  # how often the index file is checked for a replacement

log = logging.getLogger(__name__)


class FileSignature(NamedTuple):
    device: int
    inode: int
    size: int
    mtime_ns: int


def file_signature(path: str | os.PathLike) -> FileSignature | None:
    """What changes when a file is replaced or rewritten; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSignature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def reload_searcher(searcher, path: str | os.PathLike):
    """A searcher like ``searcher`` (same model and limits) over the catalog saved at ``path``."""
    from vsearch.index import Catalog

    fingerprint = getattr(searcher.embedder, "fingerprint", None) or searcher.catalog.fingerprint
    catalog = Catalog.load(path, expected_fingerprint=fingerprint)
    return type(searcher)(searcher.embedder, catalog, max_pixels=searcher.max_pixels,
                          max_bytes=searcher.max_bytes)


class LiveSearcher:
    """The searcher requests use; swapped for a new one when its index file is replaced.

    Args:
        searcher: The searcher serving now.
        path: Its index file, watched for replacements (None: never reloaded).
        interval_s: How often the file is checked (0: never).
        signature: The file's :func:`file_signature` when ``searcher``'s catalog was read
            (default: now).
        load: ``load(current_searcher, path) -> Searcher`` (default :func:`reload_searcher`).

    ``listeners`` are called with ``"ok"`` after each swap and ``"failed"`` after each file
    that could not be loaded.
    """

    def __init__(self, searcher, path: str | os.PathLike | None = None,
                 interval_s: float = DEFAULT_RELOAD_INTERVAL_S, signature: FileSignature | None = None,
                 load: Callable | None = None):
        self.current = searcher
        self.path = Path(path) if path is not None else None
        self.interval_s = float(interval_s)
        self.signature = signature if signature is not None else (
            file_signature(self.path) if self.path is not None else None)
        self.load = load or reload_searcher
        self.loaded_at = time.time()
        self.listeners: list[Callable[[str], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_signature: FileSignature | None = None

    def check(self) -> bool:
        """Reloads if the file was replaced since the last load; True if it swapped."""
        if self.path is None:
            return False
        before = file_signature(self.path)
        if before is None or before == self.signature or before == self._failed_signature:
            return False
        try:
            fresh = self.load(self.current, self.path)
        except Exception as exc:  # noqa: BLE001  (a bad file must not stop the server)
            self._failed_signature = before
            self._tell("failed")
            log.error("%s changed but cannot be loaded; still serving the previous catalog (%s)", self.path, exc)
            return False
        # If the file was replaced again while loading, `before` no longer matches it and the
        # next check loads the newer one.
        self.current, self.signature, self.loaded_at = fresh, before, time.time()
        self._tell("ok")
        log.info("%s reloaded: %d items", self.path, len(fresh.catalog))
        return True

    def _tell(self, outcome: str) -> None:
        for listener in self.listeners:
            listener(outcome)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001  (keep watching whatever happened)
                log.exception("checking %s for a new catalog failed", self.path)

    def start(self) -> None:
        if self.path is None or self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="vsearch-catalog-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
