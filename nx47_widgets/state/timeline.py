"""The stage timeline against the projection, and the ETA it gives.

After its preflight the pipeline publishes BUDGET ``projection``: the
projected seconds of each stage still to run (``extra.per_stage``).  After
each later stage it publishes BUDGET ``reprojection``: actual / projected
seconds so far (``extra.actual_over_projected``), which scales what is left.
The ETA is that scale times the projected seconds of the current stage's
unfinished part plus those of the stages after it.  Before the projection
there is no ETA ("after the preflight"): a rate-based guess over the first
seconds of a run is off by a factor of several.
"""

from __future__ import annotations

from typing import Any

from nx47_pipeline.telemetry.events import BudgetDecision, Event, EventKind, StageName, Status, StepPhase

__all__ = ["Timeline"]


class Timeline:
    """Per stage: projected seconds, actual seconds, status; and the ETA.

    Attributes
    ----------
    projected : dict of str to float
        Projected seconds per stage (from BUDGET ``projection``).
    actual : dict of str to float
        Seconds each finished stage took (STEP end).
    status : dict of str to Status
        Status of each finished stage.
    ratio : float
        Actual / projected seconds so far (1 until a reprojection).
    projected_total_s : float or None
        The projection of the rest of the run when it was made.
    """

    def __init__(self) -> None:
        self.version = 0
        self._reset()

    def _reset(self) -> None:
        self.projected: dict[str, float] = {}
        self.actual: dict[str, float] = {}
        self.status: dict[str, Status] = {}
        self.started: list[str] = []
        self.ratio = 1.0
        self.projected_total_s: float | None = None
        self.projection_t: float | None = None
        self.current: str | None = None
        self.fraction = 0.0

    def apply(self, event: Event) -> bool:
        """Apply one event; True when the timeline or the ETA changed.

        Parameters
        ----------
        event : Event
            RUN_START, STEP, PROGRESS_UPDATE and BUDGET are read.

        Returns
        -------
        bool
        """
        kind, p = event.kind, event.payload
        if kind is EventKind.RUN_START:
            self._reset()
        elif kind is EventKind.BUDGET:
            if not self._budget(event):
                return False
        elif kind is EventKind.STEP:
            name = str(event.stage)
            if p.phase == StepPhase.BEGIN:
                self.current, self.fraction = name, 0.0
                if name not in self.started:
                    self.started.append(name)
            else:
                self.status[name] = p.status
                if p.duration_s is not None:
                    self.actual[name] = float(p.duration_s)
                if self.current == name:
                    self.fraction = 1.0
        elif kind is EventKind.PROGRESS_UPDATE:
            self.current = str(p.step) or self.current
            self.fraction = (min(1.0, max(0.0, p.step_done / p.step_total))
                             if p.step_total else 0.0)
            return False  # the ETA is read by the progress reducer
        else:
            return False
        self.version += 1
        return True

    def _budget(self, event: Event) -> bool:
        p = event.payload
        extra: dict[str, Any] = p.extra or {}
        if p.decision == BudgetDecision.PROJECTION:
            per_stage = extra.get("per_stage") or {}
            self.projected = {str(k): float(v) for k, v in per_stage.items() if v is not None}
            self.projected_total_s = None if p.projected_s is None else float(p.projected_s)
            self.projection_t = event.t
            self.ratio = 1.0
            return True
        if p.decision == BudgetDecision.REPROJECTION:
            ratio = extra.get("actual_over_projected")
            if isinstance(ratio, (int, float)) and ratio > 0:
                self.ratio = float(ratio)
            return True
        return False

    @property
    def has_projection(self) -> bool:
        return bool(self.projected)

    def eta_s(self) -> float | None:
        """Seconds left by the projection (scaled by actual / projected so far).

        Returns
        -------
        float or None
            None before the projection.
        """
        if not self.projected:
            return None
        left = 0.0
        order = [str(s) for s in StageName]
        cur = self.current
        for name, secs in self.projected.items():
            if name in self.status:  # finished
                continue
            if name == cur:
                left += secs * (1.0 - self.fraction)
            elif cur in order and name in order and order.index(name) < order.index(cur):
                continue  # before the current stage: it did not run
            else:
                left += secs
        return max(0.0, self.ratio * left)

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage seen or projected: name, status, actual_s, projected_s.

        Returns
        -------
        list of dict
        """
        names = [str(s) for s in StageName
                 if str(s) in self.started or str(s) in self.projected or str(s) in self.status]
        out = []
        for n in names:
            out.append({"stage": n, "status": self.status.get(n),
                        "actual_s": self.actual.get(n), "projected_s": self.projected.get(n),
                        "running": n == self.current and n not in self.status})
        return out
