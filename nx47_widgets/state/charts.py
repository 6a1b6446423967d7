"""Series behind the charts, routed by :class:`MetricName`."""

from __future__ import annotations

from typing import Any

from nx47_pipeline.telemetry.events import Event, EventKind, MetricName, Split, StageName, Status, StepPhase

__all__ = ["ChartState"]

#: ``extra`` keys of a search METRIC that are not grid parameters.
_NOT_PARAMS = ("volume_id", "n_volumes")


class ChartState:
    """Series behind the charts, from METRIC / PREVIEW events.

    * ``objective``: fit_prox objective per iteration
      (:attr:`MetricName.FIT_PROX_OBJECTIVE`);
    * ``grid``: hyper-parameter grid points, one dict per point: its
      parameters and ``value`` (the search's own mean,
      :attr:`MetricName.SEARCH_MEAN_SCORE`, once known, else the running mean
      of the per-volume :attr:`MetricName.SEARCH_SCORE` seen so far);
    * ``loss``: the network's batch loss -- the U-Net's
      (:attr:`MetricName.UNET_BATCH_LOSS`) or, in a run that trains nnU-Net,
      nnU-Net's per iteration (:attr:`MetricName.NNUNET_BATCH_LOSS`);
      ``epoch_loss`` the per-epoch one (:attr:`MetricName.UNET_EPOCH_LOSS`,
      :attr:`MetricName.NNUNET_TRAIN_LOSS`); ``loss_stage`` the stage they
      come from (``unet`` or ``nnunet``); ``pseudo_dice`` nnU-Net's per epoch
      (:attr:`MetricName.NNUNET_PSEUDO_DICE`);
    * ``val_scores``: per-volume validation score (PREVIEW of split ``val``
      with a score, or :attr:`MetricName.VAL_SCORE` with a ``volume_id``);
    * ``other``: series of METRIC names this dashboard does not know, by name
      (kept, not charted);
    * ``stage_end``: how each stage ended (status, message), so an empty chart
      can say "skipped" instead of "no data yet"; ``running`` the stages that
      began and have not ended (an empty chart says the stage is running).

    Parameters
    ----------
    max_points : int
        Points kept per line series (the oldest go first).
    """

    def __init__(self, max_points: int = 2000) -> None:
        self.max_points = max_points
        self.objective: list[tuple[float, float]] = []
        self.grid: list[dict[str, Any]] = []
        self.loss: list[tuple[float, float]] = []
        self.epoch_loss: list[tuple[float, float]] = []
        self.loss_stage = str(StageName.UNET)
        self.pseudo_dice: list[tuple[float, float]] = []
        self._grid: dict[tuple, dict[str, Any]] = {}
        self.val_scores: dict[str, float] = {}
        self.other: dict[str, list[tuple[float, float]]] = {}
        self.stage_end: dict[str, tuple[Status, str]] = {}
        self.running: set[str] = set()
        self.version = 0

    @staticmethod
    def _push(series: list, point: tuple, cap: int) -> None:
        series.append(point)
        if len(series) > cap:
            del series[: len(series) - cap]

    def apply(self, event: Event) -> bool:
        """Apply one event; True when a charted series changed.

        Parameters
        ----------
        event : Event
            Any event; METRIC and PREVIEW are read.

        Returns
        -------
        bool
        """
        p = event.payload
        if event.kind is EventKind.STEP and p.phase == StepPhase.END:
            self.stage_end[str(event.stage)] = (p.status, p.message)
            self.running.discard(str(event.stage))
            self.version += 1
            return True
        if event.kind is EventKind.STEP and p.phase == StepPhase.BEGIN:
            if event.stage == StageName.NNUNET:
                self.loss_stage = str(StageName.NNUNET)
            self.stage_end.pop(str(event.stage), None)
            self.running.add(str(event.stage))
            self.version += 1
            return True
        if event.kind is EventKind.PREVIEW:
            if p.split == Split.VAL and p.score is not None:
                self.val_scores[p.volume_id] = float(p.score)
                self.version += 1
                return True
            return False
        if event.kind is not EventKind.METRIC:
            return False
        x = float(p.step) if p.step is not None else float(event.seq)
        value = float(p.value)
        try:
            name = MetricName(p.name)
        except ValueError:  # a name this dashboard does not know: kept, never charted
            self._push(self.other.setdefault(str(p.name), []), (x, value), self.max_points)
            return False
        if name in (MetricName.UNET_EPOCH_LOSS, MetricName.NNUNET_TRAIN_LOSS):
            self.epoch_loss.append((x, value))
            if not self.loss:
                return False
        elif name in (MetricName.UNET_BATCH_LOSS, MetricName.NNUNET_BATCH_LOSS):
            if name is MetricName.NNUNET_BATCH_LOSS:
                self.loss_stage = str(StageName.NNUNET)
            self._push(self.loss, (x, value), self.max_points)
        elif name is MetricName.NNUNET_PSEUDO_DICE:
            self.pseudo_dice.append((x, value))
        elif name in (MetricName.SEARCH_SCORE, MetricName.SEARCH_MEAN_SCORE):
            self._grid_point(name, value, p.extra or {})
        elif name is MetricName.FIT_PROX_OBJECTIVE:
            self._push(self.objective, (x, value), self.max_points)
        elif name is MetricName.VAL_SCORE and (p.extra or {}).get("volume_id") is not None:
            self.val_scores[str(p.extra["volume_id"])] = value
        else:
            return False
        self.version += 1
        return True

    def _grid_point(self, name: MetricName, value: float, extra: dict[str, Any]) -> None:
        params = {k: v for k, v in extra.items() if k not in _NOT_PARAMS}
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        cell = self._grid.get(key)
        if cell is None:
            cell = self._grid[key] = {**params, "value": 0.0, "n": 0, "final": False}
            self.grid.append(cell)
        if name is MetricName.SEARCH_MEAN_SCORE:  # the search's own mean over volumes
            cell.update(value=value, final=True)
        elif not cell["final"]:  # running mean of per-volume scores until then
            cell["n"] += 1
            cell["value"] += (value - cell["value"]) / cell["n"]

    @property
    def loss_title(self) -> str:
        """Whose loss the loss chart shows: ``U-Net`` or ``nnU-Net``."""
        return "nnU-Net" if self.loss_stage == StageName.NNUNET else "U-Net"

    def empty_text(self, stage: str) -> str:
        """What an empty chart of ``stage`` says: why it has no data."""
        end = self.stage_end.get(stage)
        if end is None and stage in self.running:
            return f"no data yet: {stage} is running (its points arrive as they are computed)"
        if end is None:
            return "no data yet: the stage has not run"
        status, message = end
        if status is Status.OK:
            return f"no data: {stage} ended without reporting any" + (f" ({message})" if message else "")
        return f"{stage} {status}" + (f": {message}" if message else "")
