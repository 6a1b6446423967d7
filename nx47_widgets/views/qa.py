"""The slice viewer's QA marks: pass / fail / a note on the volume shown,
saved to the run folder's ``qa.json`` at once."""

from __future__ import annotations

import threading

import ipywidgets as W

from nx47_widgets.state.preview import PreviewState
from nx47_widgets.state.qa import QaMarks
from nx47_widgets.views.base import Syncer, button, h

__all__ = ["QaPanel"]


class QaPanel:
    """Pass, Fail, a note and what is saved, for the volume the viewer shows.

    The slice viewer (:class:`~nx47_widgets.views.preview.PreviewPanel`)
    lays out these widgets and renders this panel with its selection.

    Parameters
    ----------
    syncer : Syncer
    lock : threading.RLock, optional
        Shared with the viewer and the UI pump's flush.

    Attributes
    ----------
    state : PreviewState or None
        The selection last rendered (its ``volume`` is the one marked).
    saved : QaMarks or None
        The marks of the run shown (read from ``qa.json`` when first needed).
    """

    def __init__(self, syncer: Syncer, lock: threading.RLock | None = None) -> None:
        self.syncer = syncer
        self._lock = lock if lock is not None else threading.RLock()
        self.mark_pass = button("Pass", "nx47-qa-pass", "mark this volume as passing QA")
        self.mark_fail = button("Fail", "nx47-qa-fail", "mark this volume as failing QA")
        self.note = W.Text(placeholder="note on this volume (Enter saves)", continuous_update=False,
                           layout=W.Layout(width="60%"))
        self.note.add_class("nx47-qa-note")
        self.mark_info = W.HTML("")
        self.mark_info.add_class("nx47-qa-info")
        self.state: PreviewState | None = None
        self.saved: QaMarks | None = None
        self._updating = False
        self.mark_pass.on_click(lambda _b: self.set_mark("pass"))
        self.mark_fail.on_click(lambda _b: self.set_mark("fail"))
        self.note.observe(lambda c: self.set_mark(None, note=c["new"]), names="value")

    def render(self, state: PreviewState) -> None:
        """Show the mark of the volume ``state`` selects (a new state, a new
        run's, reads its own ``qa.json``; nothing selected: left as is)."""
        with self._lock:
            if state is not self.state:
                self.state, self.saved = state, None
            if state.current is None:
                return
            self._updating = True  # the note set here is not a user's note
            try:
                self._show(state.volume)
            finally:
                self._updating = False

    def marks(self) -> QaMarks | None:
        """The QA marks of the run shown (``qa.json`` in its folder)."""
        if self.saved is None and self.state is not None and self.state.out_dir is not None:
            self.saved = QaMarks.load(self.state.out_dir)
        return self.saved

    def set_mark(self, mark: str | None, note: str | None = None) -> None:
        """Mark the volume shown (``"pass"``, ``"fail"``) and/or note it; saved at once."""
        if self._updating:
            return
        with self._lock:
            qa = self.marks()
            key = self.state.volume if self.state is not None else None
            if qa is None or key is None:
                return
            try:
                qa.mark(key, mark=mark, note=note)
            except OSError as exc:
                self.syncer.set(self.mark_info, value=f"<span style='color:#c62828'>cannot save "
                                                      f"{h(qa.path)}: {h(exc)}</span>")
                return
            self._show(key)

    def _show(self, key: str) -> None:
        qa = self.marks()
        entry = qa.get(key) if qa is not None else {}
        mark = entry.get("mark", "")
        colour = {"pass": "#2e7d32", "fail": "#c62828"}.get(mark, "#555")
        text = (f"<b style='color:{colour}'>{h(mark or 'not marked')}</b>"
                + (f" · note: {h(entry['note'])}" if entry.get("note") else "")
                + (f" · saved in {h(qa.path)}" if qa is not None and entry else ""))
        self.syncer.set(self.mark_info, value=f"<span data-mark='{h(mark)}'>{text}</span>")
        self.syncer.set(self.mark_pass, button_style="success" if mark == "pass" else "")
        self.syncer.set(self.mark_fail, button_style="danger" if mark == "fail" else "")
        self.syncer.set(self.note, value=entry.get("note", ""))
