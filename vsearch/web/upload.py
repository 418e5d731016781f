"""The steps of one uploaded photo in the server: decode under the decode budget, embed, search.

:class:`BudgetedDecoder` admits a photo's decoded cost (:mod:`vsearch.web.budget`) before any
decoding, for searches and product writes alike; a search's worker thread then goes on with
:func:`embed_and_search`, so a search is one thread hand-off. The catalog photos its re-rank
decodes (those whose keypoints the catalog does not hold) take the same budget from that
thread (the app gives the searcher the budget: :meth:`vsearch.catalog.search.Searcher.with_budget`).
Every step is timed into the server's metrics (:mod:`vsearch.web.prometheus`).
"""

import time

import numpy as np

from vsearch.errors import ImageError
from vsearch.web.budget import DecodeBudget
from vsearch.web.middleware import error_response, megabytes
from vsearch.web.prometheus import ServerMetrics, timed

RETRY_AFTER_S = 1  # the Retry-After of a 503


def decode_upload(searcher, data: bytes, source: str, box=None) -> np.ndarray:
    """Step 1 of a product write, under the decode budget: encoded bytes -> the model's (S, S, 3)
    float32 input (the searcher's own step, :meth:`vsearch.catalog.search.Searcher.model_input`)."""
    return searcher.model_input(data, source, box)


def query_upload(searcher, data: bytes, source: str, box=None, regions: str | None = None):
    """Step 1 of a search, under the decode budget: encoded bytes -> the model inputs of the parts
    it searches (:meth:`vsearch.catalog.search.Searcher.query`: the ``box`` alone, or the whole
    photo and the ``regions``), each cut from the upright full-resolution photo before resizing."""
    return searcher.query(data, source, box, regions)


def embed_and_search(
    metrics: ServerMetrics, searcher, query, *, k: int, category: str, where=None, rerank: bool = True
):
    """Steps 2 and 3, each timed: one model call on the query's parts (a
    :class:`~vsearch.catalog.regions.Query`), then the catalog search (with ``rerank``, its short
    list verified against those parts)."""
    vectors = timed(metrics.stage_seconds.labels("embed"), searcher.embedder.embed_pixels, query.inputs)
    return timed(
        metrics.stage_seconds.labels("search"),
        searcher.search_query,
        query,
        vectors,
        k,
        category,
        where,
        rerank,
    )


class BudgetedDecoder:
    """Step 1 for every photo the server takes (searches and product writes), under one budget.

    ``await decoder(searcher, data, name, box)``: the photo's model input once the budget
    admits its decoded cost, or None when the budget stayed busy (answer :meth:`busy`);
    ``decode``: another step 1 for it (a search's :func:`query_upload`). With ``then``, the
    worker thread that decoded the photo goes on with ``then(decoded)`` (a search's steps 2
    and 3) and that is the answer: one thread hand-off per search instead of two. The budget
    is released as soon as decoding ends, either way.
    """

    def __init__(self, budget: DecodeBudget, metrics: ServerMetrics, wait_s: float):
        self.budget, self.metrics, self.wait_s = budget, metrics, float(wait_s)

    async def __call__(self, searcher, data: bytes, name: str, box=None, then=None, decode=decode_upload):
        from fastapi.concurrency import run_in_threadpool

        from vsearch.images import image_header

        header = await run_in_threadpool(image_header, data, name)
        if header.pixels > searcher.max_pixels:
            raise ImageError(
                name, f"{header.width}x{header.height} pixels is over the {searcher.max_pixels}-pixel limit"
            )
        cost = header.decoded_bytes  # the whole photo, box or not: the box is cut after decoding
        if cost > self.budget.capacity:
            self.metrics.refusals.labels("too_large").inc()
            raise ImageError(
                name,
                f"{header.width}x{header.height} {header.format} ({header.mode}) needs "
                f"{megabytes(cost)} to decode, over this server's decode budget of "
                f"{megabytes(self.budget.capacity)}",
            )
        waited = time.perf_counter()
        admitted = await self.budget.acquire(cost, self.wait_s)
        self.metrics.decode_wait_seconds.observe(time.perf_counter() - waited)
        if not admitted:
            self.metrics.refusals.labels("busy").inc()
            return None
        # run_in_threadpool waits for the thread even when the request is cancelled, and the
        # thread releases the budget itself
        return await run_in_threadpool(self._decode, searcher, data, name, box, cost, then, decode)

    def _decode(self, searcher, data: bytes, name: str, box, cost: int, then, decode):
        """(Worker thread) decode under the admitted ``cost``, release it, then ``then(decoded)``."""
        try:
            decoded = timed(self.metrics.stage_seconds.labels("decode"), decode, searcher, data, name, box)
        finally:
            self.budget.release(cost)
        return decoded if then is None else then(decoded)

    def busy(self):
        """The 503 for a photo the budget did not admit in time."""
        budget = self.budget
        return error_response(
            503,
            f"busy: {megabytes(budget.in_flight)} of photos are being decoded "
            f"(budget {megabytes(budget.capacity)}), {budget.waiting} waiting; "
            f"retry in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
