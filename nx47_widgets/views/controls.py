"""The run controls: Scan, Detached, Run, Stop, Attach and the status line."""

from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W

from nx47_widgets.views.base import Syncer

__all__ = ["RunControls"]


class RunControls:
    """Buttons that act on a run, the detached toggle and the status line.

    Parameters
    ----------
    syncer : Syncer
    detached : bool
        Initial value of the "detached" toggle (run as a separate process).
    """

    def __init__(self, syncer: Syncer, *, detached: bool = False) -> None:
        self.syncer = syncer
        self.scan_button = W.Button(description="Scan data", tooltip="discover the data root again")
        self.detached = W.Checkbox(value=detached, indent=False,
                                   description="Detached (run survives page reload)",
                                   layout=W.Layout(width="auto"))
        self.detached.add_class("nx47-detached")
        self.run_button = W.Button(description="Run", button_style="success")
        self.stop_button = W.Button(description="Stop", button_style="danger", disabled=True)
        self.attach_button = W.Button(description="Attach to output folder",
                                      layout=W.Layout(width="auto"))
        for b, cls in ((self.run_button, "nx47-run"), (self.stop_button, "nx47-stop"),
                       (self.attach_button, "nx47-attach")):
            b.add_class(cls)
        self.status = W.HTML("")
        self.status.add_class("nx47-status-line")

    def on_click(self, *, scan: Callable[[], Any], run: Callable[[], Any],
                 stop: Callable[[], Any], attach: Callable[[], Any]) -> None:
        """Wire the buttons; Run, Stop and Attach show an error in the status line
        instead of raising.

        Parameters
        ----------
        scan, run, stop, attach : callable
            Called without arguments when their button is clicked.
        """
        self.scan_button.on_click(lambda _b: scan())
        self.run_button.on_click(lambda _b: self.guard(run))
        self.stop_button.on_click(lambda _b: self.guard(stop))
        self.attach_button.on_click(lambda _b: self.guard(attach))

    def guard(self, fn: Callable[[], Any]) -> None:
        """Call ``fn``; show an exception in the status line instead of raising it."""
        try:
            fn()
        except Exception as exc:
            self.set_status(f"<span style='color:#c62828'>{type(exc).__name__}: {exc}</span>")

    def set_status(self, html_text: str) -> None:
        """Show ``html_text`` (HTML) in the status line."""
        self.syncer.set(self.status, value=html_text)

    def set_running(self, running: bool) -> None:
        """Enable Stop while a run is shown as running, Run otherwise."""
        self.syncer.set(self.run_button, disabled=running)
        self.syncer.set(self.stop_button, disabled=not running)

    @property
    def shows_running(self) -> bool:
        """True while the buttons show a running run (Stop enabled)."""
        return not self.stop_button.disabled
