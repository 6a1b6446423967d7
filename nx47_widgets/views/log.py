"""The event log panel: the last lines, a minimum level and a kind filter."""

from __future__ import annotations

import threading
from typing import Sequence

import ipywidgets as W

from nx47_widgets.state.log import LEVELS, LogState
from nx47_widgets.views.base import Syncer, h, section

__all__ = ["LogPanel"]

#: The kind filter's "no filter" choice.
ALL_KINDS = "all"


class LogPanel:
    """Event log (last lines) with a minimum level and a kind filter.

    Parameters
    ----------
    syncer : Syncer
    state : LogState
        The log shown (until :meth:`render` shows another).
    kinds : sequence of str
        Event kind values offered by the kind filter.
    lock : threading.RLock, optional
        Shared with the UI pump's flush.
    """

    def __init__(self, syncer: Syncer, state: LogState, kinds: Sequence[str],
                 lock: threading.RLock | None = None) -> None:
        self.syncer = syncer
        self.state = state
        self._lock = lock if lock is not None else threading.RLock()
        self.level = W.Dropdown(options=list(LEVELS), value=state.min_level,
                                description="Level")
        self.kind = W.Dropdown(options=[ALL_KINDS, *kinds], value=ALL_KINDS, description="Kind")
        # a scroll box anchored at its bottom (column-reverse): the newest
        # line is in view after every update
        self.text = W.HTML("")
        self.text.add_class("nx47-log")
        self.level.observe(self._on_filter, names="value")
        self.kind.observe(self._on_filter, names="value")
        self.widget = W.VBox([section("Event log"), W.HBox([self.level, self.kind]), self.text])

    def _apply_filter(self) -> None:
        kind = self.kind.value
        self.state.set_filter(min_level=self.level.value,
                              kinds=None if kind == ALL_KINDS else [kind])

    def _on_filter(self, change: dict) -> None:
        with self._lock:
            self._apply_filter()
            self.render(self.state)

    def render(self, state: LogState, limit: int = 200) -> None:
        """Show the last ``limit`` lines of ``state`` that pass the filters
        (another log, a new run's, is shown from now on, with the filters the
        controls show)."""
        with self._lock:
            if state is not self.state:
                self.state = state
                self._apply_filter()
            lines = [e.line() for e in state.visible(limit)]
        body = h("\n".join(lines)) if lines else "<i>no event yet</i>"
        self.syncer.set(self.text, value=f"<div class='nx47-log-view'><div>{body}</div></div>")
