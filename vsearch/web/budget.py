"""The decode budget: how many bytes of decoded photos the server holds at once.

A photo of a few hundred kilobytes can take hundreds of megabytes to decode (a 16-bit or
palette PNG near the pixel limit). The server reads an upload's header first
(:func:`vsearch.images.image_header`: its decoded cost, counted at its real size for 16-bit,
palette and alpha images), then takes that many bytes from a process-wide
:class:`DecodeBudget` for the decode and resize, and gives them back after. A photo that
does not fit waits on the event loop, woken by a release, up to a deadline; one that can
never fit, or arrives when too many already wait, is refused at once.

The catalog photos a search decodes for its re-rank (those whose keypoints the catalog does
not hold: :mod:`vsearch.catalog.keypoints`) take the same budget from the search's worker
thread (:meth:`DecodeBudget.hold`), at the size the re-rank decodes them at.

Its size, the wait and the number of photos that may wait are the server's settings
(``decode_budget_mb``, ``decode_wait_s``, ``decode_max_waiting``: :class:`vsearch.config.ServerConfig`).
:func:`return_freed_memory` makes the memory the budget admits the memory actually used.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vsearch.config import ServerConfig


class DecodeBudget:
    """Bytes of decoded images in flight across all requests, at most ``capacity``.

    Thread-safe. Waiting happens on the event loop (a future woken by :meth:`release`), so
    a waiting request holds no worker thread; at most ``max_waiting`` requests wait at once
    (each holds its upload), the others are refused at once.
    """

    class _Waiter:
        __slots__ = ("loop", "future")

        def __init__(self, loop):
            self.loop, self.future = loop, None

    def __init__(self, capacity: int, max_waiting: int = ServerConfig.decode_max_waiting):
        if capacity < 1:
            raise ValueError(f"decode budget must be >= 1 byte, got {capacity}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.capacity, self.max_waiting = int(capacity), int(max_waiting)
        self._in_flight = 0
        self._waiters: list[DecodeBudget._Waiter] = []
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # wakes the threads waiting in hold()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self._in_flight + n > self.capacity:
                return False
            self._in_flight += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            if n > self._in_flight:
                raise RuntimeError("decode budget released more than it held")
            self._in_flight -= n
            wake = [w for w in self._waiters if w.future is not None]
            self._freed.notify_all()
        for waiter in wake:
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    async def acquire(self, n: int, wait_s: float) -> bool:
        """Takes ``n`` bytes, waiting up to ``wait_s`` for them; False if they did not fit by then."""
        if n > self.capacity:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiter = None
        try:
            while True:
                with self._lock:
                    if self._in_flight + n <= self.capacity:
                        self._in_flight += n
                        return True
                    if waiter is None:
                        if len(self._waiters) >= self.max_waiting:
                            return False
                        waiter = self._Waiter(loop)
                        self._waiters.append(waiter)
                    waiter.future = loop.create_future()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(waiter.future, remaining)
                except TimeoutError:
                    deadline = loop.time()  # one last look at the budget, then give up
        finally:
            if waiter is not None:
                with self._lock:
                    self._waiters.remove(waiter)

    @contextmanager
    def hold(self, n: int, wait_s: float) -> Iterator[bool]:
        """From a worker thread: holds ``n`` bytes while the block runs, waiting up to ``wait_s``
        for them; yields False (and holds nothing) if they did not fit by then.

        For decodes inside a request already running in a thread (a search's catalog photos):
        the thread waits, not the event loop.
        """
        admitted = self._acquire_blocking(n, wait_s)
        try:
            yield admitted
        finally:
            if admitted:
                self.release(n)

    def _acquire_blocking(self, n: int, wait_s: float) -> bool:
        if n > self.capacity:
            return False
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._freed:
            while self._in_flight + n > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._freed.wait(remaining)
            self._in_flight += n
            return True


def _wake(future) -> None:
    if not future.done():
        future.set_result(None)


def return_freed_memory() -> None:
    """Makes glibc give large freed blocks back to the system at once (a no-op elsewhere).

    glibc serves allocations above a threshold with their own mappings, unmapped on free,
    but raises that threshold (up to 32 MB) each time such a block is freed; from then on
    a decode's 1-32 MB buffers come from per-thread heaps, which keep the pages after the
    request. Under concurrent large uploads the process then grows well past the decode
    budget. A fixed 1 MiB threshold keeps what the budget admits the memory actually used.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also turns off the raising
