"""A sink for tests: a plain function ``fn(event)`` as a telemetry sink."""

from __future__ import annotations

from typing import Callable

from nx47_pipeline.telemetry.events import Event


class CallbackSink:
    """Adapt ``fn(event)`` to the sink protocol (``name``, ``handle``, ``close``)."""

    def __init__(self, fn: Callable[[Event], None], *, name: str = "") -> None:
        self._fn = fn
        self.name = name or getattr(fn, "__name__", "callback")

    def handle(self, event: Event) -> None:
        self._fn(event)

    def close(self) -> None:
        pass
