"""What concurrent writers' acknowledged writes must leave in a catalog, on any store and road.

A writer logs each write as ``(started, ended, product_id, effect, acknowledged)``: ``effect``
is the state the write leaves the product in (a dict of its ``category``, ``attributes`` and
``photos`` ids, or None for a delete), ``acknowledged`` whether it succeeded (a failed one
may or may not have been applied). ``time.monotonic`` is shared by the machine's processes,
so logs of several processes merge. Used by the store suite (tests/stores/test_stores.py)
and the catalog contract over HTTP (tests/web/test_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable


def may_be_last(log: list, product_id: str) -> list:
    """The writes of ``product_id`` that may have taken effect last: those no other write of it
    started after (several overlapping ones may each be last)."""
    ops = [op for op in log if op[2] == product_id]
    return [op for op in ops if not any(other[0] > op[1] for other in ops)]


def check_acknowledged(read: Callable[[str], dict | None], ids, log: list) -> int:
    """Each product of ``ids`` is as one of its last writes left it, whenever those were all
    acknowledged (a failed write that may have been last leaves the product unchecked).

    Args:
        read: product id -> its state as ``effect`` says it (None: not in the catalog).
    Returns:
        How many writes the log holds.
    """
    for product_id in ids:
        last = may_be_last(log, product_id)
        if not last or not all(op[4] for op in last):
            continue
        state = read(product_id)
        assert state in [op[3] for op in last], (product_id, state, [op[3] for op in last])
    return len(log)
