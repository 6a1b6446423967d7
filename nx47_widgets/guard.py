"""What the page's run buttons do (Run, Stop, Attach) and promise: a run is
never taken or changed by surprise.

:class:`RunGuard` is a part of :class:`~nx47_widgets.app.Dashboard` (a mixin:
it uses the dashboard's ``controls``, ``settings``, ``coverage``, ``panels``,
``session``, ``pump``, ``page``, ``running``, ``_render_run`` and ``_lock``):

* Run is refused, with the problems listed under it, while anything keeps
  it from starting (:meth:`RunGuard.problems`), and the refusal goes once
  its reason is gone;

* the configured output folder stays the page's Output: a run going on in
  another folder under the output root is only *offered* for attach;
* Run on a folder that holds an ended run starts nothing until the page's
  explicit confirmation (*Run here anyway*), since a new run there resumes
  from that run's files or moves them to ``stale-<time>/``;
* the status line says how a run ended only once its end was applied (never
  "running" for a run whose process is gone).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from nx47_widgets.lifecycle import describe, holder
from nx47_widgets.detached import DetachedRunner, has_run
from nx47_widgets.threaded import ThreadedRunner
from nx47_widgets.settings import run_problems
from nx47_widgets.state.runs import RunSummary, summarize_run
from nx47_widgets.views.base import h
from nx47_widgets.views.colours import outcome_colour

__all__ = ["RunGuard", "RunRefused"]


class RunRefused(ValueError):
    """Run was pressed with settings that cannot run (the page lists why)."""


class RunGuard:
    """Run, stop, attach; offer, confirm, and say how the run ended (see the
    module docstring)."""

    controls: Any
    settings: Any
    session: Any
    pump: Any
    page: Any
    running: bool
    coverage: Any
    coverage_note: Any
    _refused: bool
    panels: Any
    _lock: Any
    _named_folder: bool
    _offered: Path | None
    _confirm_for: Path | None
    _await_end: bool
    _render_run: Callable[..., None]

    def ended_run_in(self, folder: str | os.PathLike) -> RunSummary | None:
        """The ended run ``folder`` holds (None: none, or a live one)."""
        path = Path(folder).expanduser()
        if not has_run(path) or holder(path) is not None:
            return None
        return summarize_run(path)

    def press_run(self) -> ThreadedRunner | DetachedRunner | None:
        """What the Run button does: :meth:`run`, but a folder that holds an
        ended run is changed only after the page's explicit confirmation.

        Returns
        -------
        ThreadedRunner, DetachedRunner or None
            None when the page asks for the confirmation first.
        """
        with self._lock:
            folder = self.settings.out_dir.value.strip()
            ended = self.ended_run_in(folder) if folder and not self.running else None
            if ended is None or self.problems():  # nothing to ask, or refused anyway
                return self.run()
            self._confirm_for = Path(folder).expanduser().resolve()
            when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(ended.started_ts))
                    if ended.started_ts else "")
            self.controls.ask_confirmation(
                f"<b>{h(folder)}</b> holds a run that ended "
                f"(<b style='color:{outcome_colour(ended.verdict.outcome)}'>{h(ended.verdict.label)}</b>"
                f"{', started ' + h(when) if when else ''}). A new run here changes that "
                "folder: it resumes from the run's files, or moves them to "
                "<code>stale-&lt;time&gt;/</code> when the settings differ. Run here anyway, "
                "or choose another output folder?")
            self.controls.set_status("not started: the output folder holds an ended run; "
                                     "confirm below or choose another folder")
            return None

    def confirm_run(self) -> ThreadedRunner | DetachedRunner | None:
        """The confirmed Run over an ended run (see :meth:`press_run`)."""
        with self._lock:
            folder = Path(self.settings.out_dir.value.strip()).expanduser().resolve()
            asked = self._confirm_for
            self._cancel_confirmation(status=False)
            if asked != folder:  # the folder changed since the question: ask again
                return self.press_run()
            return self.run()

    def _cancel_confirmation(self, status: bool = True) -> None:
        self._confirm_for = None
        self.controls.ask_confirmation(None)
        if status:
            self.controls.set_status("not started")

    def _auto_attach(self) -> None:
        """Open the run of the output folder (live or ended).

        The configured output folder stays the page's Output: a run going on
        in another folder under the output root is only offered (*Attach to
        the running run*), never opened by itself.
        """
        folder = Path(self.settings.out_dir.value).expanduser()
        if has_run(folder):
            self.controls.guard(lambda: self.attach(folder))
        if not self._named_folder and not self.running:
            self.offer_running()

    def offer_running(self) -> Path | None:
        """Offer the run going on under the output root, if any; its folder."""
        mine = Path(self.settings.out_dir.value).expanduser().resolve()
        live = next((r for r in self.panels.runs.runs
                     if r.running and Path(r.folder).resolve() != mine), None)
        self._offered = Path(live.folder) if live is not None else None
        self.controls.offer(None if live is None else (
            f"<span class='nx47-hint'>a run is going on in <b>{h(live.folder)}</b> "
            f"({h(live.holder)}); this page's output folder stays {h(mine)}</span>"))
        return self._offered

    def attach_offered(self) -> DetachedRunner | None:
        """Attach to the run :meth:`offer_running` offered."""
        if self._offered is None:
            return None
        return self.attach(self._offered)

    def follow_end(self, state: Any, *, running: bool) -> None:
        """Turn the buttons and the status line to the run's end (UI pump).

        A run whose process is gone before its end was applied reads
        "reading its last events…" until the end (cancelled, killed, lost)
        is known, then that end: never "running" with Stop disabled.
        """
        done = state.ended or not running
        if done and self.controls.shows_running:
            self.panels.runs.refresh()
            self.controls.set_running(False)
            self._await_end = not state.ended
            if state.ended:
                self._show_end(state.results.verdict)
            else:  # the process is gone; its last lines (or lost/killed) come next
                self.controls.set_status("the run's process ended; reading its last events…")
        elif self._await_end and state.ended:
            self._await_end = False
            self.panels.runs.refresh()
            self.panels.heartbeat.render(state)
            self._show_end(state.results.verdict)

    def _show_end(self, verdict: Any) -> None:
        self.controls.set_status(
            f"run ended: <b class='nx47-ended' data-outcome='{h(verdict.outcome.value)}' "
            f"style='color:{outcome_colour(verdict.outcome)}'>{h(verdict.label)}</b> — {h(verdict.words)}")

    # -- before Run: what keeps Run from starting --------------------------------
    def problems(self) -> list[str]:
        """What keeps Run from starting now (empty: it can start)."""
        return run_problems(self.settings, self.coverage, self.coverage_note,
                            running=self.running)

    def show_problems(self) -> list[str]:
        """Show :meth:`problems` under the Run button; returns them."""
        found = self.problems() if not self.running else []
        self.controls.show_problems(found)
        if not found and self._refused:  # the refusal's reason is gone: so is the refusal
            self._refused = False
            self.controls.set_status("ready: nothing keeps Run from starting")
        return found

    def _check_folder(self) -> None:
        if self.running:
            self.controls.set_busy(None)
            return
        folder = self.settings.out_dir.value.strip()
        h_ = holder(folder) if folder else None
        self.controls.set_busy(describe(h_) if h_ is not None else None)
        self.show_problems()

    # -- running -------------------------------------------------------------
    def run(self) -> ThreadedRunner | DetachedRunner:
        """Start a run with the current controls (threaded or detached).

        Returns
        -------
        ThreadedRunner or DetachedRunner

        Raises
        ------
        RuntimeError
            When a run is already in progress.
        RunRefused
            When the settings cannot run (they are listed under the Run button).
        """
        with self._lock:
            if self.running:
                raise RuntimeError("a run is already in progress; press Stop first")
            problems = self.show_problems()
            if problems:
                self._refused = True
                raise RunRefused("not started: " + "; ".join(problems))
            self._refused = False
            self._await_end = False
            self.controls.ask_confirmation(None)
            self._confirm_for = None
            self.controls.offer(None)
            config = self.current_config()
            runner = self.session.start(config, detached=bool(self.controls.detached.value))
            self._render_run(force=True)  # the new state on every panel: none of the last run
            self.pump.set_source(self.session.drain)
            self.controls.set_running(True)
            self.controls.set_busy(None)
            mode = self.session.mode + (f" pid {runner.pid}" if runner.pid else "")
            self.controls.set_status(f"running in a {mode} → {h(self.session.folder)}")
            self.page.keep_run_in_url(str(self.session.folder))
            self.panels.runs.current = str(self.session.folder)
            self.panels.runs.refresh()
            return runner

    def stop(self, reason: str = "user pressed Stop") -> None:
        """Stop the run shown (its own thread or process, or one attached to).

        Parameters
        ----------
        reason : str
            Why (the run's CANCELLED event says it).
        """
        self.controls.set_status(h(self.session.stop(reason)) + "…")

    def attach(self, out_dir: str | os.PathLike | None = None) -> DetachedRunner:
        """Follow the journal of a run folder (running or finished).

        Parameters
        ----------
        out_dir : str or path-like, optional
            The run folder (default: the Output control's).

        Returns
        -------
        DetachedRunner

        Raises
        ------
        RuntimeError
            While a threaded run is in progress.
        FileNotFoundError
            When the folder holds no journal.
        """
        with self._lock:
            folder = Path(out_dir if out_dir is not None else self.settings.out_dir.value).expanduser()
            runner = self.session.attach(folder)
            self._await_end = False
            self.controls.offer(None)
            self._offered = None
            self.settings.out_dir.value = str(self.session.folder)
            self._render_run(force=True)  # the new state on every panel: none of the last run
            self.pump.set_source(self.session.drain)
            live = runner.running
            self.controls.set_running(live)
            self.controls.set_busy(None)
            self.controls.show_problems([])
            h_ = runner.holder
            if live and h_ is not None:  # the toggle says how the run runs
                self.controls.detached.value = not h_.threaded
            self.controls.set_status(
                f"attached to {h(self.session.folder)} "
                f"({'running: ' + describe(h_) if live else 'not running'})")
            self.page.keep_run_in_url(str(self.session.folder))
            self.panels.runs.current = str(self.session.folder)
            self.panels.runs.render(self.panels.runs.runs)
            return runner
