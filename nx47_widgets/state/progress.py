"""The four progress bars (global, stage, sub-step, file) as a reducer."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nx47_pipeline.telemetry.events import Event, EventKind, Status, StepPhase
from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.preview import INFER_COMMAND
from nx47_widgets.state.timeline import Timeline

__all__ = ["BarState", "ProgressState", "STYLE_INFO", "STYLE_SUCCESS", "STYLE_WARNING",
           "STYLE_DANGER"]

#: Bar styles understood by ipywidgets' ``bar_style``.
STYLE_INFO = "info"
STYLE_SUCCESS = "success"
STYLE_WARNING = "warning"
STYLE_DANGER = "danger"


@dataclass
class BarState:
    """One progress bar: fraction in [0, 1], text and style.

    ``failed`` is sticky: once a bar is marked failed its style stays
    ``"danger"`` whatever progress arrives later, until :meth:`reset`.
    """

    value: float = 0.0
    text: str = ""
    style: str = STYLE_INFO
    failed: bool = False

    def set(self, value: float | None = None, text: str | None = None,
            style: str | None = None) -> None:
        """Update the bar; None leaves a field as it is (a failed bar keeps its style).

        Parameters
        ----------
        value : float, optional
            Fraction done, clipped to [0, 1]; non-finite values are ignored.
        text : str, optional
            Text shown next to the bar.
        style : str, optional
            One of the ``STYLE_*`` constants.
        """
        if value is not None and math.isfinite(value):
            self.value = min(1.0, max(0.0, float(value)))
        if text is not None:
            self.text = text
        if style is not None and not self.failed:
            self.style = style

    def fail(self, text: str | None = None) -> None:
        """Mark the bar failed (``"danger"`` until :meth:`reset`)."""
        self.failed = True
        self.style = STYLE_DANGER
        if text is not None:
            self.text = text

    def reset(self) -> None:
        """Back to an empty ``"info"`` bar."""
        self.value, self.text, self.style, self.failed = 0.0, "", STYLE_INFO, False

    def snapshot(self) -> tuple[float, str, str]:
        """``(value, text, style)``, the value rounded as the widget shows it."""
        return (round(self.value, 4), self.text, self.style)


def _counter_text(what: str, done: float, total: float, rate: float | None = None,
                  eta_s: float | None = None) -> str:
    parts = [what] if what else []
    if total:
        d = int(done) if float(done).is_integer() else round(done, 1)
        t = int(total) if float(total).is_integer() else round(total, 1)
        parts.append(f"{d} of {t}")
    if rate is not None and rate > 0:
        parts.append(f"{rate:.3g}/s")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " · ".join(parts)


class ProgressState:
    """Reducer for the four bars: global, stage, sub-step and file.

    The overall bar's ETA comes from the projection (:class:`Timeline`), not
    from the pipeline's rate-based guess.

    Attributes
    ----------
    timeline : Timeline
        Stages against the projection.
    """

    NAMES = ("global", "stage", "substep", "file")

    def __init__(self) -> None:
        self.bars: dict[str, BarState] = {n: BarState() for n in self.NAMES}
        self.version = 0
        self.finished: Status | None = None  # the run's status once it ended
        self.timeline = Timeline()
        self._global = 0.0
        self.command = "run"  # "infer": no projection; the ETA is the pipeline's chunk rate
        self._rate_eta: float | None = None

    def _snap(self) -> tuple:
        return tuple(self.bars[n].snapshot() for n in self.NAMES)

    def apply(self, event: Event) -> bool:
        """Apply one event; True when a bar changed.

        Parameters
        ----------
        event : Event
            Any event; kinds other than RUN_START, PROGRESS_UPDATE, STEP,
            ERROR, CANCELLED and EXEC_COMPLETE are ignored.

        Returns
        -------
        bool
            True when a bar's value, text or style changed.
        """
        before = self._snap()
        kind = event.kind
        timeline_changed = self.timeline.apply(event)
        if kind is EventKind.RUN_START:
            for b in self.bars.values():
                b.reset()
            self.finished = None
            self.command, self._rate_eta = "run", None
            self.bars["global"].set(0.0, "run started", STYLE_INFO)
        elif kind is EventKind.PROGRESS_UPDATE:
            self._progress(event.payload)
        elif kind is EventKind.STEP:
            self._step(event)
        elif kind is EventKind.ERROR:
            fl, st = self.bars["file"], self.bars["stage"]
            target = fl if fl.text or fl.value else st
            target.fail(f"error: {event.payload.message}")
        elif kind is EventKind.CANCELLED:
            self.bars["global"].set(None, f"cancelled: {event.payload.message}", STYLE_WARNING)
        elif kind is EventKind.EXEC_COMPLETE:
            self._complete(event.payload)
        elif kind is EventKind.CONFIG:
            self.command = str(event.payload.config.get("command") or "run")
            return timeline_changed
        elif kind is EventKind.BUDGET and self.finished is None and self._global:
            self.bars["global"].set(None, self._global_text())
        else:
            return timeline_changed
        changed = self._snap() != before or timeline_changed
        if changed:
            self.version += 1
        return changed

    def eta_text(self) -> str:
        """``"ETA 1m 20s (projection)"``, or why there is none yet."""
        eta = self.timeline.eta_s()
        if eta is None and self.command == INFER_COMMAND:  # no preflight: chunks are alike
            eta = self._rate_eta
            return "ETA -" if eta is None else f"ETA {format_duration(eta)} (chunk rate)"
        if eta is None:
            return "ETA after the preflight's projection"
        return f"ETA {format_duration(eta)} (projection)"

    def _global_text(self) -> str:
        return f"overall · {100 * self._global:.1f} % · {self.eta_text()}"

    def _progress(self, p) -> None:
        g, st, sub, fl = (self.bars[n] for n in self.NAMES)
        self._global = float(p.global_)
        self._rate_eta = p.eta_s
        g.set(p.global_, self._global_text())
        step_label = f"{p.step} (stage {p.step_index + 1} of {p.step_count})" \
            if p.step_count else p.step
        frac = p.step_done / p.step_total if p.step_total else 0.0
        st.set(frac, _counter_text(step_label, p.step_done, p.step_total))
        sub_frac = p.substep_done / p.substep_total if p.substep_total else 0.0
        sub.set(sub_frac, _counter_text(p.substep, p.substep_done, p.substep_total,
                                        p.rate if not p.file_total else None))
        file_frac = p.file_done / p.file_total if p.file_total else 0.0
        fl.set(file_frac, _counter_text(p.file, p.file_done, p.file_total,
                                        p.rate if p.file_total else None))

    def _step(self, event: Event) -> None:
        p, st = event.payload, self.bars["stage"]
        if p.phase == StepPhase.BEGIN:
            for name in ("stage", "substep", "file"):
                self.bars[name].reset()
            st.set(0.0, f"{event.stage}: started")
            return
        status = p.status
        took = f" in {format_duration(p.duration_s)}" if p.duration_s is not None else ""
        if status == Status.OK:
            st.set(1.0, f"{event.stage}: done{took}", STYLE_SUCCESS)
        elif status == Status.SKIPPED:
            st.set(1.0, f"{event.stage}: skipped {p.message}".strip(), STYLE_WARNING)
        elif status in (Status.BUDGET, Status.CANCELLED):
            st.set(None, f"{event.stage}: {status} {p.message}".strip(), STYLE_WARNING)
        else:
            st.fail(f"{event.stage}: {status} {p.message}".strip())

    def _complete(self, p) -> None:
        g = self.bars["global"]
        self.finished = p.status
        if p.status == Status.OK:
            g.set(1.0, f"finished in {format_duration(p.duration_s)}", STYLE_SUCCESS)
        elif p.status == Status.CANCELLED:
            g.set(None, f"cancelled after {format_duration(p.duration_s)}", STYLE_WARNING)
        else:
            g.fail(f"failed after {format_duration(p.duration_s)}")
