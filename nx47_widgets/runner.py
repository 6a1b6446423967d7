"""What the page's run session drives, however the run lives.

:class:`Runner` is the one interface of a run as the dashboard's
:class:`~nx47_widgets.session.RunSession` sees it.  Two classes implement it:

* :class:`~nx47_widgets.threaded.ThreadedRunner` (:mod:`nx47_widgets.threaded`)
  runs the pipeline on a worker thread of this kernel;
* :class:`~nx47_widgets.detached.DetachedRunner` (:mod:`nx47_widgets.detached`)
  runs it as its own process (``nx47 run --config <out>/config.json``) or
  follows any run folder's journal.

The page's :class:`~nx47_widgets.pump.UIPump` (:mod:`nx47_widgets.pump`)
drains the runner and applies the events to the widgets.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from nx47_pipeline.telemetry.events import Event

__all__ = ["Runner"]


@runtime_checkable
class Runner(Protocol):
    """What the page's :class:`~nx47_widgets.session.RunSession` drives, however the run lives.

    ``running`` while it has not ended; ``drain()`` its new events;
    ``stop(reason)`` asks it to stop and says what was done, in words;
    ``join(timeout)`` waits for the end; ``enforce_stop(now)`` kills a
    process that ignored Stop past its grace (True when it did now);
    ``killed`` says why this page killed the run (None: it did not);
    ``in_this_kernel`` is True for a run on a thread of the page's own kernel
    (it ends with the kernel; another run cannot be attached meanwhile);
    ``pid`` is the run's own process (None for a thread of this kernel).
    """

    in_this_kernel: bool
    killed: str | None

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    def drain(self) -> list[Event]: ...

    def stop(self, reason: str = ...) -> str: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def enforce_stop(self, now: float | None = None) -> bool: ...
