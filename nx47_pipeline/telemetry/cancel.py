"""Cooperative cancellation: a token every long loop checks.

The orchestrator owns one :class:`CancelToken`; the dashboard's Stop button,
a signal handler or the budget deadline call :meth:`CancelToken.cancel`, and
the worker notices at its next check (``Telemetry.progress`` checks after
every progress report) by :class:`Cancelled` being raised.
"""

from __future__ import annotations

import threading

__all__ = ["Cancelled", "CancelToken"]


class Cancelled(Exception):
    """Raised by :meth:`CancelToken.raise_if_cancelled`; ``str()`` is the reason."""


class CancelToken:
    """Thread-safe, one-way cancellation flag.

    Examples
    --------
    >>> token = CancelToken()
    >>> token()
    False
    >>> token.cancel("user pressed Stop")
    >>> token.cancelled, token.reason
    (True, 'user pressed Stop')
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""

    def cancel(self, reason: str = "") -> None:
        """Request cancellation.  The first reason given is kept."""
        with self._lock:
            if not self._event.is_set():
                self._reason = str(reason)
                self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    @property
    def reason(self) -> str:
        """The reason passed to the first :meth:`cancel` ("" if none)."""
        return self._reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` (with the reason) if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled(self._reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for cancellation; return :attr:`cancelled`."""
        return self._event.wait(timeout)

    def __call__(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        state = f"cancelled: {self._reason!r}" if self.cancelled else "active"
        return f"CancelToken({state})"
