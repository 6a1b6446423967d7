"""The dashboard: settings, run controls, panels, runner and UI pump wired together.

``build_dashboard(config)`` is what ``dashboard.ipynb`` calls when it is shown
(Voila, Jupyter, Kaggle interactive).  What happens lives elsewhere: event
reducers in :mod:`nx47_widgets.state`, widget panels in
:mod:`nx47_widgets.views`, the controls' mapping to RunConfig in
:mod:`nx47_widgets.settings`, runners and the pump in
:mod:`nx47_widgets.runner`, the headless path in :mod:`nx47_widgets.notebook`.
"""

from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ipywidgets as W
from IPython.display import display

from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import Event, EventKind

from nx47_widgets.runner import DetachedRunner, Job, ThreadedRunner, UIPump, has_run, is_live
from nx47_widgets.settings import SettingsForm
from nx47_widgets.state import CoverageModel, DashboardState, scan_coverage
from nx47_widgets.views import (
    ChartsPanel,
    CoveragePanel,
    HeartbeatPanel,
    LogPanel,
    PreviewPanel,
    ProgressPanel,
    ResultsPanel,
    RunControls,
    Syncer,
)

__all__ = ["Dashboard", "build_dashboard"]

#: Values of ``NX47_DETACHED`` that turn the "detached" toggle on.
_YES = ("1", "true", "yes", "on")

#: Kinds after which the preflight timings in the output folder may be new.
_TIMING_KINDS = frozenset({EventKind.PREFLIGHT_OK, EventKind.BUDGET})


class Dashboard:
    """Widgets + states + runner + pump of one dashboard page.

    Parameters
    ----------
    config : RunConfig
        Initial values of the controls.
    job : callable, optional
        ``job(config, cancel, sink)`` for the threaded mode (default: the pipeline).
    detached : bool
        Initial value of the "detached" toggle (run as a separate process).
    clock : callable
        Wall clock for the heartbeat light (tests inject a fake one).
    pump_interval : float
        Minimum seconds between two UI flushes.
    start_pump : bool
        Start the UI pump thread at once (tests may call ``pump.pump_once``).
    auto_attach : bool
        Attach at once to a live run found in the output folder.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The whole page.
    settings : SettingsForm
        The run settings' controls (also reachable as ``data_root``,
        ``out_dir``, ``max_train``, ``max_val``, ``budget_min``, ``use_unet``,
        ``auto_coverage``).
    controls : RunControls
        Scan, Detached, Run, Stop, Attach and the status line (also reachable
        as ``scan_button``, ``detached``, ``run_button``, ``stop_button``,
        ``attach_button``, ``status``).
    state : DashboardState
    coverage : CoverageModel or None
    runner : ThreadedRunner, DetachedRunner or None
    pump : UIPump
    syncer : Syncer
        Counts widget trait changes.
    """

    def __init__(self, config: RunConfig, *, job: Job | None = None, detached: bool = False,
                 clock: Callable[[], float] = time.time, pump_interval: float = 0.1,
                 start_pump: bool = True, auto_attach: bool = True) -> None:
        self.config = config
        self.job = job
        self.clock = clock
        self.syncer = Syncer()
        self.state = DashboardState(out_dir=config.out_dir, clock=clock)
        self.coverage: CoverageModel | None = None
        self.coverage_note = ""
        self.runner: ThreadedRunner | DetachedRunner | None = None
        self._lock = threading.RLock()

        # -- controls ---------------------------------------------------
        self.settings = SettingsForm(config)
        self.controls = RunControls(self.syncer, detached=detached)
        s, c = self.settings, self.controls
        self.data_root, self.out_dir = s.data_root, s.out_dir
        self.max_train, self.max_val, self.budget_min = s.max_train, s.max_val, s.budget_min
        self.use_unet, self.auto_coverage = s.use_unet, s.auto_coverage
        self.scan_button, self.detached, self.status = c.scan_button, c.detached, c.status
        self.run_button, self.stop_button = c.run_button, c.stop_button
        self.attach_button = c.attach_button

        # -- panels -----------------------------------------------------
        self.progress_panel = ProgressPanel(self.syncer)
        self.heartbeat_panel = HeartbeatPanel(self.syncer)
        self.coverage_panel = CoveragePanel(self.syncer)
        self.preview_panel = PreviewPanel(self.syncer, self.state.preview, lock=self._lock)
        self.log_panel = LogPanel(self.syncer, self.state.log,
                                  [k.value for k in EventKind], lock=self._lock)
        self.charts_panel = ChartsPanel(self.syncer)
        self.results_panel = ResultsPanel(self.syncer)

        self.model_info = W.HTML()
        self.model_info.add_class("nx47-model-info")
        form = W.VBox([
            W.HBox([s.data_root, c.scan_button]),
            s.out_dir,
            s.model_dir,
            self.model_info,
            W.HBox([s.max_train, s.max_val]),
            W.HBox([s.budget_min, s.use_unet]),
            W.HBox([s.auto_coverage, c.detached]),
            W.HBox([c.run_button, c.stop_button, c.attach_button]),
            c.status,
        ])
        self.widget = W.VBox([
            W.HTML("<h2 style='margin:4px 0'>NX47 — surface segmentation run</h2>"),
            W.HBox([form, W.VBox([W.HTML("<h3 style='margin:8px 0 2px 0'>Coverage</h3>"),
                                  self.coverage_panel.widget])]),
            self.heartbeat_panel.widget,
            self.progress_panel.widget,
            self.preview_panel.widget,
            self.charts_panel.widget,
            self.results_panel.widget,
            self.log_panel.widget,
        ])
        self.widget.add_class("nx47-dashboard")

        # -- wiring -----------------------------------------------------
        self.settings.observe(self._on_coverage_control)
        self.settings.observe(self._on_model_control, fields=("model_dir",))
        self._on_model_control({})
        self.controls.on_click(scan=self.scan, run=self.run, stop=self.stop, attach=self.attach)

        self.pump = UIPump(None, self.flush, interval=pump_interval)
        self.scan()
        self._render_all()
        if auto_attach:
            self._auto_attach()
        if start_pump:
            self.pump.start()

    # -- coverage ----------------------------------------------------------
    def scan(self) -> None:
        """Discover the data root and bound the sliders by what was found."""
        with self._lock:
            self.coverage, self.coverage_note = scan_coverage(
                self.data_root.value, self.out_dir.value, self.current_config())
            if self.coverage is not None:
                self.settings.bound_volumes(self.coverage.n_pairs)
            self.coverage_panel.render(self.coverage, self.coverage_note)

    def _on_model_control(self, change: dict) -> None:
        ok, text = self.settings.model_summary()
        colour = "#555" if ok else "#b00020"
        self.syncer.set(self.model_info,
                        value=f"<span style='color:{colour};font-size:12px'>{html.escape(text)}</span>")

    def _on_coverage_control(self, change: dict) -> None:
        with self._lock:
            if self.coverage is None:
                return
            self.coverage.update(**self.settings.coverage_caps())
            self.coverage_panel.render(self.coverage, self.coverage_note)

    def refresh_timings(self) -> None:
        """Reload preflight timings from the output folder into the coverage panel."""
        with self._lock:
            if self.coverage is not None and self.coverage.reload_timings(self.out_dir.value):
                self.coverage_panel.render(self.coverage, self.coverage_note)

    def current_config(self) -> RunConfig:
        """A RunConfig from the controls (on top of the initial config).

        Raises
        ------
        SettingsError
            When a control holds a value its field refuses.
        """
        return self.settings.read()

    # -- running -------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a run (thread or process) is going on."""
        return self.runner is not None and self.runner.running

    def run(self) -> ThreadedRunner | DetachedRunner:
        """Start a run with the current controls (threaded or detached).

        Returns
        -------
        ThreadedRunner or DetachedRunner

        Raises
        ------
        RuntimeError
            When a run is already in progress.
        """
        with self._lock:
            if self.running:
                raise RuntimeError("a run is already in progress; press Stop first")
            config = self.current_config()
            self._reset_for_run(config.out_dir)
            if self.detached.value:
                self.runner = DetachedRunner.launch(config)
                mode = f"detached process pid {self.runner.pid}"
            else:
                self.runner = ThreadedRunner(config, job=self.job).start()
                mode = "worker thread"
            self.pump.set_source(self.runner.drain)
            self.controls.set_running(True)
            self.controls.set_status(f"running in a {mode} → {config.out_dir}")
            return self.runner

    def _reset_for_run(self, out_dir: str) -> None:
        self.state = DashboardState(out_dir=out_dir, clock=self.clock)
        self.preview_panel.bind(self.state.preview)
        self.log_panel.bind(self.state.log)

    def stop(self, reason: str = "user pressed Stop") -> None:
        """Cancel the run (threaded: cancel token; detached: SIGTERM).

        Parameters
        ----------
        reason : str
            Why (the run's CANCELLED event says it).
        """
        if self.runner is None:
            return
        self.runner.stop(reason)
        self.controls.set_status("stopping…")

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
            if self.running and isinstance(self.runner, ThreadedRunner):
                raise RuntimeError("a threaded run is in progress; stop it before attaching")
            folder = Path(out_dir if out_dir is not None else self.out_dir.value).resolve()
            runner = DetachedRunner.attach(folder)
            self.out_dir.value = str(folder)
            self._reset_for_run(str(folder))
            self.runner = runner
            self.pump.set_source(self.runner.drain)
            live = self.runner.running
            self.controls.set_running(live)
            self.controls.set_status(
                f"attached to {folder} "
                f"({'running, pid ' + str(self.runner.pid) if live else 'not running'})")
            return self.runner

    def _auto_attach(self) -> None:
        folder = Path(self.out_dir.value)
        if is_live(folder):
            self.detached.value = True
            self.controls.guard(self.attach)
        elif has_run(folder):
            self.controls.set_status(f"{folder} holds a finished run: press "
                                     f"'Attach to output folder' to open it")

    # -- pump ---------------------------------------------------------------
    def flush(self, events: list[Event], tick: bool) -> None:
        """Apply a batch of events and render what changed (called by the pump).

        Parameters
        ----------
        events : list of Event
            The batch, in order.
        tick : bool
            True when the time-only displays (seconds since the last beat)
            are due for a refresh.
        """
        with self._lock:
            state = self.state
            changed = state.apply_many(events) if events else set()
            if "progress" in changed:
                self.progress_panel.render(state.progress)
            if "heartbeat" in changed or tick:
                self.heartbeat_panel.render(state.heartbeat)
            if "preview" in changed:
                self.preview_panel.render()
            if "log" in changed:
                self.log_panel.render()
            if "charts" in changed:
                self.charts_panel.render(state.charts)
            if any(e.kind in _TIMING_KINDS for e in events):
                self.refresh_timings()
            done = state.ended or (self.runner is not None and not self.runner.running)
            if state.ended and self.runner is not None \
                    and state.verify_journal_once(self.out_dir.value):
                self.refresh_timings()
            if "results" in changed or state.ended:
                self.results_panel.render(state.results)
            if done and self.controls.shows_running:
                self.controls.set_running(False)
                self.controls.set_status(
                    f"run ended: {state.results.status or 'process exited'}")

    def _render_all(self) -> None:
        self.progress_panel.render(self.state.progress)
        self.heartbeat_panel.render(self.state.heartbeat)
        self.log_panel.render()
        self.charts_panel.render(self.state.charts)
        self.results_panel.render(self.state.results)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended and all its events were applied.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (None: no limit).

        Returns
        -------
        bool
            True if the run's end was applied.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.state.ended:
                return True
            if self.runner is not None and not self.runner.running:
                # the run is over: one last drain in case the pump is not running
                with self._lock:
                    events = self.runner.drain()
                    if events:
                        self.flush(events, False)
                    elif self.state.ended or not self.pump.alive:
                        return self.state.ended
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the pump and the renderer (the run itself is not stopped)."""
        self.pump.stop()
        self.preview_panel.close()

    def _ipython_display_(self) -> None:  # pragma: no cover - display hook
        display(self.widget)


def build_dashboard(config: RunConfig | None = None, **kwargs: Any) -> Dashboard:
    """Build the dashboard for ``config``.

    Parameters
    ----------
    config : RunConfig, optional
        Default ``RunConfig.from_env()``.
    **kwargs
        Passed to :class:`Dashboard`; ``detached`` defaults to the environment
        variable ``NX47_DETACHED`` (1/0).

    Returns
    -------
    Dashboard
    """
    config = RunConfig.from_env() if config is None else config
    if "detached" not in kwargs:
        kwargs["detached"] = os.environ.get("NX47_DETACHED", "").strip().lower() in _YES
    return Dashboard(config, **kwargs)
