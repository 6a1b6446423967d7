"""The run controls: Scan, Detached, Run, Stop, Attach, the status line and
the inline problems that keep Run from starting."""

from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W

from nx47_widgets.views.base import Syncer, h

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
        # a running run in another folder, offered (never taken) for attach
        self.offer_button = W.Button(description="Attach to the running run",
                                     button_style="warning", layout=W.Layout(width="auto",
                                                                             display="none"))
        self.offer_button.add_class("nx47-offer")
        self.offer_text = W.HTML("")
        self.offer_text.add_class("nx47-offer-text")
        # Run on a folder that holds an ended run asks first
        self.confirm_text = W.HTML("")
        self.confirm_text.add_class("nx47-confirm-text")
        self.confirm_button = W.Button(description="Run here anyway", button_style="danger",
                                       layout=W.Layout(width="auto"))
        self.confirm_button.add_class("nx47-confirm-run")
        self.cancel_button = W.Button(description="Cancel", layout=W.Layout(width="auto"))
        self.cancel_button.add_class("nx47-confirm-cancel")
        self.confirm_box = W.VBox([self.confirm_text,
                                   W.HBox([self.confirm_button, self.cancel_button])],
                                  layout=W.Layout(display="none"))
        self.confirm_box.add_class("nx47-confirm")
        self.status = W.HTML("")
        self.status.add_class("nx47-status-line")
        self.problems = W.HTML("")
        self.problems.add_class("nx47-problems")
        self._busy = False
        self._running = False

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

    def offer(self, text_html: str | None) -> None:
        """Offer to attach to a run elsewhere (``text_html``: which one; None: no offer)."""
        self.syncer.set(self.offer_text, value=text_html or "")
        self.syncer.set(self.offer_button.layout, display="" if text_html else "none")

    def ask_confirmation(self, text_html: str | None) -> None:
        """Show the question Run asks before it changes an ended run (None: hide it)."""
        self.syncer.set(self.confirm_text, value=text_html or "")
        self.syncer.set(self.confirm_box.layout, display="" if text_html else "none")

    @property
    def asking(self) -> bool:
        """True while the confirmation question is shown."""
        return self.confirm_box.layout.display != "none"

    def set_status(self, html_text: str) -> None:
        """Show ``html_text`` (HTML) in the status line."""
        self.syncer.set(self.status, value=html_text)

    def show_problems(self, problems: list[str]) -> None:
        """List what keeps Run from starting (empty: nothing)."""
        body = "".join(f"<div>&#9888; {h(p)}</div>" for p in problems)
        self.syncer.set(self.problems, value=body)

    def set_running(self, running: bool) -> None:
        """Enable Stop while a run is shown as running, Run otherwise."""
        self._running = running
        self._buttons()

    def set_busy(self, busy_text: str | None) -> None:
        """The output folder is held by another live run (``busy_text``: by whom):
        offer Attach instead of Run."""
        self._busy = busy_text is not None
        self.syncer.set(self.run_button, tooltip=(
            f"the output folder is busy: {busy_text}" if busy_text else "start a run"))
        self._buttons()

    def _buttons(self) -> None:
        busy_free = self._busy and not self._running
        self.syncer.set(self.run_button, disabled=self._running or self._busy,
                        description="Run (folder busy)" if busy_free else "Run")
        self.syncer.set(self.stop_button, disabled=not self._running)
        self.syncer.set(self.attach_button,
                        description="Attach to the running run" if busy_free
                        else "Attach to output folder",
                        button_style="warning" if busy_free else "")

    @property
    def shows_running(self) -> bool:
        """True while the buttons show a running run (Stop enabled)."""
        return not self.stop_button.disabled
