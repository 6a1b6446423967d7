"""The dashboard: settings, run controls, panels, run session and UI pump wired together.

``build_dashboard(config)`` is what ``dashboard.ipynb`` calls when it is shown
(Voila, Jupyter, Kaggle interactive).  What happens lives elsewhere: event
reducers in :mod:`nx47_widgets.state`, widget panels in
:mod:`nx47_widgets.views`, the controls' mapping to RunConfig in
:mod:`nx47_widgets.settings`, the page's run (start, attach, stop, how it
ended) in :mod:`nx47_widgets.session` with its runners
(:mod:`nx47_widgets.runner`: the protocol, :mod:`nx47_widgets.threaded`,
:mod:`nx47_widgets.detached`), the page's UI pump in :mod:`nx47_widgets.pump`,
the headless path in :mod:`nx47_widgets.notebook`.
"""

from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import ipywidgets as W
from IPython.display import display

from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import Event, EventKind

from nx47_widgets.notebook import page_query, served_by_voila
from nx47_widgets.detached import DetachedRunner
from nx47_widgets.pump import UIPump
from nx47_widgets.threaded import Job, ThreadedRunner
from nx47_widgets.guard import RunGuard, RunRefused
from nx47_widgets.session import RunSession
from nx47_widgets.settings import SettingsForm
from nx47_widgets.state import CoverageModel, DashboardState, scan_coverage
from nx47_widgets.state.runs import scan_runs
from nx47_widgets.views import RunControls, Syncer
from nx47_widgets.views.page import PAGE_CSS, PageBridge
from nx47_widgets.views.panels import Panels
from nx47_widgets.views.registry import Views
from nx47_widgets.views.runs import SORT_SCRIPT

__all__ = ["Dashboard", "build_dashboard", "RunRefused"]

#: Values of ``NX47_DETACHED`` that turn the "detached" toggle on.
_YES = ("1", "true", "yes", "on")

#: Kinds after which the preflight timings in the output folder may be new.
_TIMING_KINDS = frozenset({EventKind.PREFLIGHT_OK, EventKind.BUDGET})


class Dashboard(RunGuard):
    """Widgets + states + run session + pump of one dashboard page.

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
        Open at once the run found in the output folder (live or ended).
    browser : bool
        Drive the browser page (address bar, tab title, downloads, keys): under Voila.
    named_folder : bool
        The page's address named the output folder (``?out=``): open only that.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The whole page.
    settings : SettingsForm
        The run settings' controls (``settings.out_dir``, ``settings.max_train``, ...).
    controls : RunControls
        Scan, Detached, Run, Stop, Attach, the status line and the problems
        (``controls.run_button``, ``controls.status``, ...).
    panels : Panels
        The panels (``panels.progress``, ``panels.preview``, ...).
    views : Views
        Which state each panel of the run shows; renders what changed.
    session : RunSession
        The run shown (``runner`` and ``state`` are its).
    coverage : CoverageModel or None
    pump : UIPump
    syncer : Syncer
        Counts widget trait changes.
    page : PageBridge
    """

    def __init__(self, config: RunConfig, *, job: Job | None = None, detached: bool = False,
                 clock: Callable[[], float] = time.time, pump_interval: float = 0.1,
                 start_pump: bool = True, auto_attach: bool = True, browser: bool = False,
                 named_folder: bool = False) -> None:
        self.config = config
        self._named_folder = named_folder
        self.clock = clock
        self.syncer = Syncer()
        self.session = RunSession(config.out_dir, job=job, clock=clock)
        self.coverage: CoverageModel | None = None
        self.coverage_note = ""
        self._lock = threading.RLock()
        self._offered: Path | None = None  # a running run elsewhere, offered for attach
        self._confirm_for: Path | None = None  # the ended run Run asked about
        self._refused = False  # the status line shows a RunRefused
        self._await_end = False  # the run's process is gone, its end not applied yet

        self.settings = SettingsForm(config)
        self.controls = RunControls(self.syncer, detached=detached)
        c = self.controls
        self.page = PageBridge(enabled=browser)
        self.views = Views()
        self.panels = Panels(self.syncer, self.session.state, lock=self._lock, page=self.page,
                             runs_root=str(Path(config.out_dir).expanduser().parent),
                             scan=scan_runs, on_open=lambda f: c.guard(lambda: self.attach(f)),
                             links=browser, views=self.views)
        self.panels.register(self.views, lambda: self.session.state)
        self.model_info = W.HTML()
        self.model_info.add_class("nx47-model-info")
        self.widget = _layout(self)

        # -- wiring -----------------------------------------------------
        self.settings.observe(self._on_coverage_control)
        self.settings.observe(self._on_model_control, fields=("model_dir",))
        self.settings.observe(self._on_folder_control, fields=("out_dir",))
        self.settings.observe(self._on_data_control, fields=("data_root",))
        self._on_model_control({})
        self.controls.on_click(scan=self.scan, run=self.press_run, stop=self.stop,
                               attach=self.attach)
        c.offer_button.on_click(lambda _b: c.guard(self.attach_offered))
        c.confirm_button.on_click(lambda _b: c.guard(self.confirm_run))
        c.cancel_button.on_click(lambda _b: self._cancel_confirmation())

        self.pump = UIPump(None, self.flush, interval=pump_interval)
        self.scan()
        self._render_run()
        self._check_folder()
        self.page.bind_keys()
        self.page.watch_server()
        self.page.watch_sizes(lambda sizes: _route_sizes(self, sizes))
        self.page.run(SORT_SCRIPT, keep=True)  # the runs table sorts by the column clicked
        self.panels.runs.refresh()
        if auto_attach:
            self._auto_attach()
        if start_pump:
            self.pump.start()

    # -- the run shown (compatibility names) -----------------------------------
    @property
    def runner(self) -> ThreadedRunner | DetachedRunner | None:
        return self.session.runner

    @property
    def state(self) -> DashboardState:
        return self.session.state

    @property
    def job(self) -> Job | None:
        """The threaded job (default: the pipeline)."""
        return self.session.job

    @job.setter
    def job(self, job: Job | None) -> None:
        self.session.job = job

    @property
    def running(self) -> bool:
        """True while a run (thread or process) is going on."""
        return self.session.running

    # -- coverage ----------------------------------------------------------
    def scan(self) -> None:
        """Discover the data root and bound the sliders by what was found."""
        with self._lock:
            self.coverage, self.coverage_note = scan_coverage(
                self.settings.data_root.value, self.settings.out_dir.value, self.settings.base)
            if self.coverage is not None:
                self.settings.bound_volumes(self.coverage.n_pairs)
                self.coverage.update(**self.settings.coverage_caps())
            self.panels.coverage.render(self.coverage, self.coverage_note)
            self.show_problems()

    def _on_model_control(self, change: dict) -> None:
        ok, text = self.settings.model_summary()
        colour = "#555" if ok else "#b00020"
        self.syncer.set(self.model_info,
                        value=f"<span style='color:{colour};font-size:12px'>{html.escape(text)}</span>")
        self.show_problems()

    def _on_coverage_control(self, change: dict) -> None:
        with self._lock:
            if self.coverage is not None:
                self.coverage.update(**self.settings.coverage_caps())
                self.panels.coverage.render(self.coverage, self.coverage_note)
            self.show_problems()

    def _on_data_control(self, change: dict) -> None:
        self.scan()

    def _on_folder_control(self, change: dict) -> None:
        if self._confirm_for is not None:
            self._cancel_confirmation()
        self._check_folder()
        self.refresh_timings()

    def refresh_timings(self) -> None:
        """Reload preflight timings from the output folder into the coverage panel."""
        with self._lock:
            if self.coverage is not None and self.coverage.reload_timings(self.settings.out_dir.value):
                self.panels.coverage.render(self.coverage, self.coverage_note)

    def current_config(self) -> RunConfig:
        """A RunConfig from the controls (on top of the initial config).

        Raises
        ------
        SettingsError
            When a control holds a value its field refuses.
        """
        return self.settings.read()

    # -- pump ---------------------------------------------------------------
    def flush(self, events: list[Event], tick: bool) -> None:
        """Apply a batch of events and render what changed (called by the pump).

        Parameters
        ----------
        events : list of Event
            The batch, in order.
        tick : bool
            True when the time-only displays (seconds since the last beat)
            are due for a refresh; the run folder's ``cluster.json`` is
            looked at then too (re-read only when it changed).
        """
        with self._lock:
            state = self.session.state
            if events:
                state.apply_many(events)
            self.session.check_end()
            if tick:
                state.cluster.poll(running=self.session.running and not state.ended)
            if any(e.kind in _TIMING_KINDS for e in events):
                self.refresh_timings()
            if state.ended and self.session.runner is not None \
                    and state.verify_journal_once(self.settings.out_dir.value):
                self.refresh_timings()
            self.views.render(tick=tick)
            self.follow_end(state, running=self.session.running)
            if tick and not self.session.running:
                self._check_folder()

    def _render_run(self, force: bool = False) -> None:
        """Look at the run's ``cluster.json``, then render the run's panels
        (``force``: all of them; else those whose state changed)."""
        st = self.session.state
        st.cluster.poll(running=self.session.running and not st.ended)
        self.views.render(force=force)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended and all its events were applied (see
        :meth:`RunSession.wait`) and rendered; True if the run's end was applied."""
        def flush_rest() -> bool:
            with self._lock:
                events = self.session.drain()
                if events:
                    self.flush(events, False)
                return bool(events)
        ended = self.session.wait(timeout, flush_rest, lambda: self.pump.alive)
        with self._lock:  # a pump flush that applied the end may still be rendering it: let it finish
            return ended

    def close(self) -> None:
        """Stop the pump and the renderer (the run itself is not stopped)."""
        self.pump.stop()
        self.panels.close()

    def _ipython_display_(self) -> None:  # pragma: no cover - display hook
        display(self.widget)


def _route_sizes(d: Dashboard, sizes: dict) -> None:
    """The page reported the picture's and the charts' width (CSS px), its pixel ratio
    and the window's height: the QA canvas and the charts get as many pixels as they show."""
    dpr = float(sizes.get("dpr") or 1.0)
    if float(sizes.get("qa") or 0) > 0:
        d.panels.preview.set_width(float(sizes["qa"]), dpr, float(sizes.get("vh") or 0))
    if float(sizes.get("charts") or 0) > 0:
        with d._lock:
            d.panels.charts.set_size(float(sizes["charts"]), dpr, d.session.state.charts)


def _layout(d: Dashboard) -> W.VBox:
    """The page: controls and status on the left, live panels on the right."""
    s, c, p = d.settings, d.controls, d.panels
    form = W.VBox([
        W.HBox([s.data_root, c.scan_button]), s.out_dir, s.model_dir, d.model_info,
        W.HBox([s.max_train, s.max_val], layout=W.Layout(flex_flow="row wrap")),
        s.caps_hint, s.caps_note,
        W.HBox([s.budget_min, s.use_unet], layout=W.Layout(flex_flow="row wrap")),
        W.HBox([s.auto_coverage, c.detached], layout=W.Layout(flex_flow="row wrap")),
        W.HBox([c.run_button, c.stop_button, c.attach_button],
               layout=W.Layout(flex_flow="row wrap")),
        c.confirm_box, c.problems, c.status,
        W.HBox([c.offer_text, c.offer_button], layout=W.Layout(flex_flow="row wrap")),
    ])
    left = W.VBox([form, W.HTML("<h3 style='margin:8px 0 2px 0'>Coverage</h3>"),
                   p.coverage.widget, p.heartbeat.widget, p.cluster.widget,
                   W.HTML("<h3 style='margin:8px 0 2px 0'>Runs</h3>"), p.runs.widget])
    left.add_class("nx47-left")
    right = W.VBox([p.preview.widget, p.results.widget, p.charts.widget, p.log.widget])
    right.add_class("nx47-right")
    cols = W.Box([left, right])
    cols.add_class("nx47-cols")
    page = W.VBox([W.HTML(PAGE_CSS + "<h2 style='margin:4px 0'>NX47 — surface "
                          "segmentation run</h2>"), p.header.widget, cols, d.page.widget])
    page.add_class("nx47-dashboard")
    return page


def build_dashboard(config: RunConfig | None = None, *, environ: Mapping[str, str] | None = None,
                    **kwargs: Any) -> Dashboard:
    """Build the dashboard for ``config``.

    Under Voila the page's address may name a run folder (``?out=<folder>``):
    it replaces the output folder, and the run there is opened.

    Parameters
    ----------
    config : RunConfig, optional
        Default ``RunConfig.from_env()``.
    environ : mapping, optional
        The environment (default ``os.environ``): ``NX47_DETACHED``, and
        Voila's ``QUERY_STRING``.
    **kwargs
        Passed to :class:`Dashboard`; ``detached`` defaults to the environment
        variable ``NX47_DETACHED`` (1/0), ``browser`` to whether Voila serves the page.

    Returns
    -------
    Dashboard
    """
    env = os.environ if environ is None else environ
    config = RunConfig.from_env() if config is None else config
    query = page_query(env)
    if query.get("out"):
        config = config.replace(out_dir=query["out"])
        kwargs.setdefault("named_folder", True)
    if "detached" not in kwargs:
        kwargs["detached"] = env.get("NX47_DETACHED", "").strip().lower() in _YES
    kwargs.setdefault("browser", served_by_voila(env))
    return Dashboard(config, **kwargs)
