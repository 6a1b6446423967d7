"""The dashboard: controls, panels, runner and UI pump wired together.

``build_dashboard(config)`` is what ``dashboard.ipynb`` calls when it is shown
(Voila, Jupyter, Kaggle interactive); ``run_headless(config)`` is what it
calls when executed headless (papermill / nbclient, Kaggle commit runs).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import ipywidgets as W

from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import Event, EventKind

from .runner import DetachedRunner, Job, ThreadedRunner, UIPump, pid_alive, read_lock_pid
from .state import CoverageModel, DashboardState, LogEntry
from .views import (
    ChartsPanel,
    CoveragePanel,
    HeartbeatPanel,
    LogPanel,
    PreviewPanel,
    ProgressPanel,
    ResultsPanel,
    Syncer,
)

__all__ = ["Dashboard", "build_dashboard", "run_headless", "should_autorun", "is_headless",
           "config_from_parameters"]

_UNET_OPTIONS = [("auto (GPU only)", None), ("on", True), ("off", False)]

#: Environment variables that show an interactive front end is attached.
_INTERACTIVE_ENV = ("VOILA_KERNEL_ID", "VOILA_SERVER_URL", "VOILA_APP_PORT",
                    "JPY_SESSION_NAME", "VSCODE_PID", "COLAB_RELEASE_TAG")


def is_headless(environ: Mapping[str, str] | None = None) -> bool:
    """Guess whether nobody can click: True for papermill / nbclient runs.

    Rules, first match wins: ``NX47_AUTO_RUN`` (1/0) decides;
    ``KAGGLE_KERNEL_RUN_TYPE=Batch`` (a Kaggle commit run) is headless, any
    other value (``Interactive``) is not; a Voila kernel, a Jupyter server
    session (``JPY_SESSION_NAME``), VS Code or Colab is interactive; anything
    else (papermill, nbclient, ``jupyter nbconvert --execute``) is headless.
    """
    env = os.environ if environ is None else environ
    forced = env.get("NX47_AUTO_RUN", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    kaggle = env.get("KAGGLE_KERNEL_RUN_TYPE", "").strip()
    if kaggle:
        return kaggle.lower() == "batch"
    if any(env.get(name) for name in _INTERACTIVE_ENV):
        return False
    return True


def should_autorun(auto_run: bool | None = None,
                   environ: Mapping[str, str] | None = None) -> bool:
    """``auto_run`` if given, else :func:`is_headless`."""
    if auto_run is not None:
        return bool(auto_run)
    return is_headless(environ)


def config_from_parameters(*, data_root: str | None = None, out_dir: str | None = None,
                           max_train_volumes: int | None = None,
                           max_val_volumes: int | None = None, budget_s: float | None = None,
                           use_unet: bool | None = None,
                           environ: Mapping[str, str] | None = None) -> RunConfig:
    """The RunConfig of the notebook's ``parameters`` cell.

    A parameter left at None falls back to its ``NX47_*`` environment
    variable, then to the RunConfig default (``use_unet=None`` too: it does
    not override ``NX47_USE_UNET``).  Without ``out_dir`` / ``NX47_OUT_DIR``,
    a Kaggle notebook writes to ``/kaggle/working``.
    """
    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = dict(
        data_root=data_root, out_dir=out_dir, max_train_volumes=max_train_volumes,
        max_val_volumes=max_val_volumes, budget_s=budget_s)
    if use_unet is not None:
        overrides["use_unet"] = bool(use_unet)
    if out_dir is None and not env.get("NX47_OUT_DIR") and Path("/kaggle/working").is_dir():
        overrides["out_dir"] = "/kaggle/working"
    return RunConfig.from_env(env, **overrides)


def run_headless(config: RunConfig, *, stream=None) -> Any:
    """Run the pipeline in this thread, printing progress lines; block until it ends.

    Parameters
    ----------
    config : RunConfig
        The run.
    stream : text stream, optional
        Where progress lines go (default ``sys.stdout``, i.e. the notebook
        output that papermill saves).

    Returns
    -------
    RunResult
        From :func:`nx47_pipeline.run.orchestrator.run_pipeline`.

    Raises
    ------
    RuntimeError
        When the run left no ``submission.zip`` (the notebook run then fails
        visibly instead of looking successful).
    """
    from nx47_pipeline.run.orchestrator import run_pipeline

    stream = sys.stdout if stream is None else stream
    print(f"[nx47] headless run: data={config.data_root} out={config.out_dir} "
          f"max_train={config.max_train_volumes} max_val={config.max_val_volumes} "
          f"budget={config.budget_s:.0f}s", file=stream, flush=True)
    result = run_pipeline(config, console_stream=stream)
    print(f"[nx47] finished: status={result.status} submission={result.submission}",
          file=stream, flush=True)
    if result.submission is None:
        raise RuntimeError(f"the run in {config.out_dir} ended with status {result.status!r} "
                           f"and no submission.zip (see {config.out_dir}/journal.jsonl)")
    return result


def _discover(data_root: str) -> tuple[Any, Any]:
    """(root, inventory) from the discovery module (no demo data is generated
    here: a run does that when it starts)."""
    from nx47_pipeline.data.discovery import discover, resolve_data_root

    root = resolve_data_root(data_root)
    return root, discover(root)


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
        self._verified_for: str | None = None
        self._finished_seen = False

        # -- controls ---------------------------------------------------
        self.data_root = W.Text(value=str(config.data_root), description="Data root",
                                layout=W.Layout(width="480px"))
        self.scan_button = W.Button(description="Scan data", tooltip="discover the data root again")
        self.out_dir = W.Text(value=str(config.out_dir), description="Output",
                              layout=W.Layout(width="480px"))
        self.max_train = W.IntSlider(value=config.max_train_volumes, min=0, max=max(
            config.max_train_volumes, 1), description="Max train", continuous_update=True)
        self.max_val = W.IntSlider(value=config.max_val_volumes, min=0, max=max(
            config.max_val_volumes, 1), description="Max val", continuous_update=True)
        self.max_train.add_class("nx47-max-train")
        self.max_val.add_class("nx47-max-val")
        self.budget_min = W.BoundedFloatText(value=round(config.budget_s / 60.0, 2), min=0.1,
                                             max=7 * 24 * 60, step=1.0,
                                             description="Budget (min)",
                                             style={"description_width": "initial"})
        self.use_unet = W.Dropdown(options=_UNET_OPTIONS, value=config.use_unet,
                                   description="U-Net")
        self.auto_coverage = W.Checkbox(value=config.auto_coverage, indent=False,
                                        description="Auto coverage (largest that fits)",
                                        layout=W.Layout(width="auto"))
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

        # -- panels -----------------------------------------------------
        self.progress_panel = ProgressPanel(self.syncer)
        self.heartbeat_panel = HeartbeatPanel(self.syncer)
        self.coverage_panel = CoveragePanel(self.syncer)
        self.preview_panel = PreviewPanel(self.syncer, self.state.preview, lock=self._lock)
        self.log_panel = LogPanel(self.syncer, self.state.log,
                                  [k.value for k in EventKind], lock=self._lock)
        self.charts_panel = ChartsPanel(self.syncer)
        self.results_panel = ResultsPanel(self.syncer)

        controls = W.VBox([
            W.HBox([self.data_root, self.scan_button]),
            self.out_dir,
            W.HBox([self.max_train, self.max_val]),
            W.HBox([self.budget_min, self.use_unet]),
            W.HBox([self.auto_coverage, self.detached]),
            W.HBox([self.run_button, self.stop_button, self.attach_button]),
            self.status,
        ])
        self.widget = W.VBox([
            W.HTML("<h2 style='margin:4px 0'>NX47 — surface segmentation run</h2>"),
            W.HBox([controls, W.VBox([W.HTML("<h3 style='margin:8px 0 2px 0'>Coverage</h3>"),
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
        for w in (self.max_train, self.max_val, self.budget_min, self.auto_coverage):
            w.observe(self._on_coverage_control, names="value")
        self.scan_button.on_click(lambda _b: self.scan())
        self.run_button.on_click(lambda _b: self._guard(self.run))
        self.stop_button.on_click(lambda _b: self._guard(self.stop))
        self.attach_button.on_click(lambda _b: self._guard(self.attach))

        self.pump = UIPump(None, self.flush, interval=pump_interval)
        self.scan()
        self._render_all(tick=True)
        if auto_attach:
            self._auto_attach()
        if start_pump:
            self.pump.start()

    # ------------------------------------------------------------------
    def _guard(self, fn: Callable[[], Any]) -> None:
        """Run a button action; show an error in the status line instead of raising."""
        try:
            fn()
        except Exception as exc:
            self._set_status(f"<span style='color:#c62828'>{type(exc).__name__}: {exc}</span>")

    def _set_status(self, html_text: str) -> None:
        self.syncer.set(self.status, value=html_text)

    # -- coverage ----------------------------------------------------------
    def scan(self) -> None:
        """Discover the data root and bound the sliders by what was found."""
        from nx47_pipeline.run.budget import load_preflight_timings

        try:
            root, inv = _discover(self.data_root.value.strip() or "auto")
        except Exception as exc:
            with self._lock:
                self.coverage = None
                self.coverage_note = f"data root {self.data_root.value!r}: {exc}"
                self.coverage_panel.render(None, self.coverage_note)
            return
        n_pairs, n_test = len(inv.pairs), len(inv.test)
        timings = load_preflight_timings(self.out_dir.value) if self.out_dir.value else None
        with self._lock:
            self.coverage = CoverageModel(n_pairs=n_pairs, n_test=n_test,
                                          config=self.current_config(), timings=timings)
            issues = len(getattr(inv, "issues", []) or [])
            self.coverage_note = f"root: {root}" + (f" · {issues} issue(s) found" if issues else "")
            for s in (self.max_train, self.max_val):
                s.max = max(n_pairs, 1)
                if s.value > n_pairs:
                    s.value = n_pairs
            self._render_coverage()

    def _on_coverage_control(self, change: dict) -> None:
        with self._lock:
            if self.coverage is None:
                return
            self.coverage.config = self.coverage.config.replace(
                auto_coverage=bool(self.auto_coverage.value))
            self.coverage.update(max_train=self.max_train.value, max_val=self.max_val.value,
                                 budget_s=max(self.budget_min.value, 0.1) * 60.0)
            self._render_coverage()

    def _render_coverage(self) -> None:
        if self.coverage is None:
            self.coverage_panel.render(None, self.coverage_note)
            return
        try:
            self.coverage_panel.render(self.coverage, self.coverage_note)
        except Exception as exc:  # projection needs fields a stale timings file lacks
            self.coverage.timings = None
            self.coverage_panel.render(self.coverage, f"{self.coverage_note} · "
                                                      f"projection unavailable: {exc}")

    def refresh_timings(self) -> None:
        """Reload preflight timings from the output folder into the coverage panel."""
        from nx47_pipeline.run.budget import load_preflight_timings

        with self._lock:
            if self.coverage is None:
                return
            t = load_preflight_timings(self.out_dir.value)
            if t is not None:
                self.coverage.update(timings=t)
                self._render_coverage()

    def current_config(self) -> RunConfig:
        """A RunConfig from the controls (on top of the initial config)."""
        return self.config.replace(
            data_root=self.data_root.value.strip() or "auto",
            out_dir=self.out_dir.value.strip() or self.config.out_dir,
            max_train_volumes=int(self.max_train.value),
            max_val_volumes=int(self.max_val.value),
            budget_s=float(self.budget_min.value) * 60.0,
            use_unet=self.use_unet.value,
            auto_coverage=bool(self.auto_coverage.value),
        )

    # -- running -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def run(self) -> ThreadedRunner | DetachedRunner:
        """Start a run with the current controls (threaded or detached)."""
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
            self._set_buttons(running=True)
            self._set_status(f"running in a {mode} → {config.out_dir}")
            return self.runner

    def _reset_for_run(self, out_dir: str) -> None:
        self.state = DashboardState(out_dir=out_dir, clock=self.clock)
        self.preview_panel.state = self.state.preview
        self.log_panel.state = self.state.log
        self.state.log.set_filter(min_level=self.log_panel.level.value)
        self._verified_for = None
        self._finished_seen = False

    def stop(self, reason: str = "user pressed Stop") -> None:
        """Cancel the run (threaded: cancel token; detached: SIGTERM)."""
        if self.runner is None:
            return
        self.runner.stop(reason)
        self._set_status("stopping…")

    def attach(self, out_dir: str | os.PathLike | None = None) -> DetachedRunner:
        """Follow the journal of a run folder (running or finished)."""
        with self._lock:
            if self.running and isinstance(self.runner, ThreadedRunner):
                raise RuntimeError("a threaded run is in progress; stop it before attaching")
            folder = Path(out_dir if out_dir is not None else self.out_dir.value).resolve()
            if not (folder / "journal.jsonl").exists():
                raise FileNotFoundError(f"{folder}: no journal.jsonl, nothing to attach to")
            self.out_dir.value = str(folder)
            self._reset_for_run(str(folder))
            self.runner = DetachedRunner(folder)
            self.pump.set_source(self.runner.drain)
            live = self.runner.running
            self._set_buttons(running=live)
            self._set_status(f"attached to {folder} "
                             f"({'running, pid ' + str(self.runner.pid) if live else 'not running'})")
            return self.runner

    def _auto_attach(self) -> None:
        folder = Path(self.out_dir.value)
        if (folder / "journal.jsonl").exists() and pid_alive(read_lock_pid(folder)):
            self.detached.value = True
            self._guard(self.attach)
        elif (folder / "journal.jsonl").exists():
            self._set_status(f"{folder} holds a finished run: press "
                             f"'Attach to output folder' to open it")

    def _set_buttons(self, *, running: bool) -> None:
        self.syncer.set(self.run_button, disabled=running)
        self.syncer.set(self.stop_button, disabled=not running)

    # -- pump ---------------------------------------------------------------
    def flush(self, events: list[Event], tick: bool) -> None:
        """Apply a batch of events and render what changed (called by the pump)."""
        with self._lock:
            changed = self.state.apply_many(events) if events else set()
            kinds = {e.kind for e in events}
            if "progress" in changed:
                self.progress_panel.render(self.state.progress)
            if "heartbeat" in changed or tick:
                self.heartbeat_panel.render(self.state.heartbeat)
            if "preview" in changed:
                self.preview_panel.render()
            if "log" in changed:
                self.log_panel.render()
            if "charts" in changed:
                self.charts_panel.render(self.state.charts)
            if kinds & {EventKind.PREFLIGHT_OK, EventKind.BUDGET}:
                self.refresh_timings()
            for e in events:  # a resumed run's journal holds older runs first
                if e.kind is EventKind.RUN_START:
                    self._finished_seen = False
                    self._verified_for = None
                elif e.kind is EventKind.EXEC_COMPLETE:
                    self._finished_seen = True
            done = self._finished_seen or (self.runner is not None and not self.runner.running)
            if self._finished_seen and self.runner is not None:
                self._verify_once()
            if "results" in changed or self._finished_seen:
                self.results_panel.render(self.state.results)
            if done and not self.stop_button.disabled:
                self._set_buttons(running=False)
                self._set_status(f"run ended: {self.state.results.status or 'process exited'}")

    def _verify_once(self) -> None:
        out = self.state.results.out_dir or self.out_dir.value
        journal = Path(out) / "journal.jsonl"
        if self._verified_for == str(journal) or not journal.exists():
            return
        self._verified_for = str(journal)
        try:
            self.state.results.verify(journal)
        except Exception as exc:
            self.state.log.entries.append(LogEntry(-1, 0.0, "error", "VERIFY", "dashboard",
                                                   f"journal verification: {exc}"))
        self.refresh_timings()

    def _render_all(self, tick: bool = False) -> None:
        self.progress_panel.render(self.state.progress)
        self.heartbeat_panel.render(self.state.heartbeat)
        self.log_panel.render()
        self.charts_panel.render(self.state.charts)
        self.results_panel.render(self.state.results)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended and all its events were applied; True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._finished_seen:
                return True
            if self.runner is not None and not self.runner.running:
                # the run is over: one last drain in case the pump is not running
                with self._lock:
                    events = self.runner.drain()
                    if events:
                        self.flush(events, False)
                    elif self._finished_seen or not self.pump.alive:
                        return self._finished_seen
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the pump and the renderer (the run itself is not stopped)."""
        self.pump.stop()
        self.preview_panel.renderer.close()

    def _ipython_display_(self) -> None:  # pragma: no cover - display hook
        from IPython.display import display

        display(self.widget)


def build_dashboard(config: RunConfig | None = None, **kwargs: Any) -> Dashboard:
    """Build the dashboard for ``config`` (default ``RunConfig.from_env()``).

    Keyword arguments go to :class:`Dashboard`; ``detached`` defaults to the
    environment variable ``NX47_DETACHED`` (1/0).
    """
    config = RunConfig.from_env() if config is None else config
    if "detached" not in kwargs:
        kwargs["detached"] = os.environ.get("NX47_DETACHED", "").strip().lower() in (
            "1", "true", "yes", "on")
    return Dashboard(config, **kwargs)
