"""Waiting in tests on a condition, never on the clock alone.

Every wait of the suite on something it cannot be told about -- a file
another process writes, a port that starts answering, a page's DOM, a
widget updated by a pump thread -- goes through :func:`wait_until`: it
returns as soon as the condition holds and fails naming what it waited for
after a generous bound, so a loaded machine makes a test slower, never
wrong.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout_s: float, what: str = "the condition",
               interval_s: float = 0.05) -> T:
    """The first truthy value of ``pred()``, polled every ``interval_s``;
    AssertionError naming ``what`` (and the last value) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last value {value!r}")
        # polling: files, sockets, pages and other processes offer no event to wait on
        time.sleep(interval_s)
