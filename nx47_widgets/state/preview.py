"""The slice previewer's state: volumes seen so far and the current selection.

A run's volumes come with PREVIEW events.  An ``nx47 infer`` run sends none:
its CONFIG (``command`` ``"infer"``) names the input volume, shown at once,
and its EXEC_COMPLETE names ``mask.zarr``, shown over it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nx47_pipeline.telemetry.events import Event, EventKind, PreviewPayload, Status
from nx47_widgets.loaders import read_infer_key

__all__ = ["AXES", "INFER_COMMAND", "INFER_SPLIT", "InferVolume", "PreviewState"]

#: Slicing axes, in array order.
AXES = ("z", "y", "x")
#: The ``command`` in the CONFIG event of an ``nx47 infer`` run.
INFER_COMMAND = "infer"
#: The ``split`` of the volume of an ``nx47 infer`` run.
INFER_SPLIT = "infer"


@dataclass(frozen=True)
class InferVolume:
    """The volume an ``nx47 infer`` run segments, with the fields of a PREVIEW
    payload the previewer reads (no label, no probability, no score)."""

    volume_id: str
    shape: list[int]
    image_path: str
    pred_path: str | None = None
    split: str = INFER_SPLIT
    label_path: str | None = None
    prob_path: str | None = None
    slices: dict[str, list[int]] = field(default_factory=dict)
    score: float | None = None


class PreviewState:
    """Volumes seen so far and the current selection of the slice previewer.

    While ``follow`` is True every PREVIEW event selects its volume (and a
    suggested slice); :meth:`take_control` (the user touched a control) stops
    that until :meth:`follow_live` is called.

    Parameters
    ----------
    out_dir : str or Path, optional
        The run folder (relative artifact paths are under it); RUN_START
        events replace it.
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.volumes: dict[str, PreviewPayload | InferVolume] = {}
        self.infer_key: str | None = None  # the key of the infer run's volume
        self.order: list[str] = []
        self.follow = True
        self.volume: str | None = None
        self.axis = "z"
        self.index = 0
        self.version = 0

    def key(self, payload: PreviewPayload | InferVolume) -> str:
        """The volume's key in the selector: ``"<split>/<volume_id>"``."""
        return f"{payload.split}/{payload.volume_id}"

    def apply(self, event: Event) -> bool:
        """Apply one event; True when there is a volume to look at (or its mask).

        Parameters
        ----------
        event : Event
            Any event; RUN_START sets the output folder, PREVIEW adds a volume,
            an infer run's CONFIG adds its input and its EXEC_COMPLETE its mask.

        Returns
        -------
        bool
            True when the previewer changed.
        """
        kind = event.kind
        if kind is EventKind.RUN_START:
            out = event.payload.out_dir
            if out:
                self.out_dir = Path(out)
            self.infer_key = None
            return False
        if kind is EventKind.PREVIEW:
            self._add(event.payload)
            return True
        if kind is EventKind.CONFIG and event.payload.config.get("command") == INFER_COMMAND:
            vol = self._infer_volume(event.payload.config)
            self.infer_key = self.key(vol)
            self._add(vol)
            return True
        if kind is EventKind.EXEC_COMPLETE and self.infer_key in self.volumes:
            p = event.payload
            if p.status == Status.OK and p.submission:
                self.volumes[self.infer_key] = replace(self.volumes[self.infer_key],
                                                       pred_path=str(p.submission))
                self.version += 1
                return True
        return False

    def _add(self, p: PreviewPayload | InferVolume) -> None:
        k = self.key(p)
        if k not in self.volumes:
            self.order.append(k)
        self.volumes[k] = p
        if self.follow or self.volume is None:
            self._select(k, self.axis if self.volume else "z", None)
        self.version += 1

    def _infer_volume(self, config: dict[str, Any]) -> InferVolume:
        """The input of an infer run; a relative input path (relative to where
        the command ran) is taken resolved from the folder's ``infer_key.json``."""
        path = str(config.get("input") or "")
        if not Path(path).is_absolute() and self.out_dir is not None:
            path = str((read_infer_key(self.out_dir) or {}).get("input") or path)
        shape = config.get("shape")
        shape = [int(n) for n in shape] if isinstance(shape, list) and len(shape) == 3 else [1, 1, 1]
        return InferVolume(volume_id=Path(path).name or "input", shape=shape, image_path=path)

    def _suggested(self, p: PreviewPayload | InferVolume, axis: str) -> int:
        idx = list((p.slices or {}).get(axis) or [])
        if idx:
            return int(idx[len(idx) // 2])
        size = self.axis_size(p, axis)
        return size // 2

    @staticmethod
    def axis_size(p: PreviewPayload | InferVolume, axis: str) -> int:
        """Number of slices of the volume ``p`` along ``axis``."""
        shape = list(p.shape) if p.shape else [1, 1, 1]
        return int(shape[AXES.index(axis)])

    def _select(self, key: str, axis: str, index: int | None) -> None:
        if key not in self.volumes:
            raise KeyError(f"volume {key!r} has not been previewed yet; known: {self.order}")
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        p = self.volumes[key]
        self.volume, self.axis = key, axis
        size = self.axis_size(p, axis)
        self.index = self._suggested(p, axis) if index is None else int(index)
        self.index = min(max(self.index, 0), max(size - 1, 0))

    def select(self, volume: str | None = None, axis: str | None = None,
               index: int | None = None) -> None:
        """User selection (stops live following).

        Parameters
        ----------
        volume : str, optional
            Key of a previewed volume (see :meth:`key`).
        axis : str, optional
            One of :data:`AXES`; a new volume or axis without ``index`` gets
            the suggested slice.
        index : int, optional
            Slice index (clipped to the axis).

        Raises
        ------
        KeyError
            For a volume that was not previewed.
        ValueError
            For an unknown axis.
        """
        self.take_control()
        vol = volume if volume is not None else self.volume
        if vol is None:
            return
        new_axis = axis if axis is not None else self.axis
        if index is None and (vol != self.volume or new_axis != self.axis):
            self._select(vol, new_axis, None)
        else:
            self._select(vol, new_axis, self.index if index is None else index)
        self.version += 1

    def take_control(self) -> None:
        """Stop following live previews."""
        if self.follow:
            self.follow = False
            self.version += 1

    def follow_live(self) -> None:
        """Follow live previews again (selects the latest volume)."""
        self.follow = True
        if self.order:
            self._select(self.order[-1], self.axis, None)
        self.version += 1

    def ordered(self, worst_first: bool = False) -> list[str]:
        """The volume keys in the order seen, or worst score first (unscored last)."""
        if not worst_first:
            return list(self.order)
        scored = sorted((k for k in self.order if self.volumes[k].score is not None),
                        key=lambda k: float(self.volumes[k].score))
        return scored + [k for k in self.order if self.volumes[k].score is None]

    def step_slice(self, delta: int) -> None:
        """Move ``delta`` slices along the axis (user action: stops following)."""
        if self.volume is not None:
            self.select(index=self.index + int(delta))

    def step_volume(self, delta: int, order: list[str] | None = None) -> None:
        """Select the volume ``delta`` places away in ``order`` (default: as seen)."""
        keys = order or self.order
        if not keys:
            return
        i = keys.index(self.volume) if self.volume in keys else -1
        self.select(volume=keys[(i + int(delta)) % len(keys)])

    @property
    def current(self) -> PreviewPayload | InferVolume | None:
        """The selected volume's payload, or None."""
        return None if self.volume is None else self.volumes[self.volume]

    def resolve(self, path: str | None) -> Path | None:
        """Absolute path of an artifact (relative paths are under the output folder).

        Parameters
        ----------
        path : str or None
            A path from a PREVIEW payload.

        Returns
        -------
        Path or None
        """
        if not path:
            return None
        pp = Path(path)
        if pp.is_absolute() or self.out_dir is None:
            return pp
        return self.out_dir / pp
