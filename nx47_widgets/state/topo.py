"""TopoScore's parts per homology dimension for one validation volume.

The validate stage writes one record per validation volume, in
``<out>/val/<id>.json`` (next to the volume's mask ``val/<id>.tif``) and in
the run's GLOBAL_STATS / ``stats.json`` under ``validation.per_volume``::

    {"score": 0.61, "surface_dice": 0.72, "voi": 0.55, "topo": 0.48,
     "betti_pred": [5, 2, 0], "betti_gt": [4, 1, 0],
     "topo_matched": [3, 1, 0], "topo_f1": [0.667, 0.667, null],
     "topo_method": "betti matching (exact)"}

``betti_pred`` / ``betti_gt`` are the predicted / labelled feature counts per
dimension (0 components, 1 tunnels, 2 cavities) summed over the 8 octants,
``topo_matched`` the matched ones, ``topo_f1`` the F1 per dimension (null
where undefined: no feature in either mask).  ``topo`` is the weighted mean
of the defined F1s (weights :data:`TOPO_WEIGHTS` renormalised over them).

Older run folders hold only some of these keys (``score``, ``surface_dice``,
``voi``, ``topo``), or none: :func:`topo_breakdown` keeps what is there and
says what is not recorded; a value of the wrong shape is named, never raised.

:class:`ValidationScores` is a reducer like the others (GLOBAL_STATS gives
the run's records) and reads a volume's ``<id>.json`` next to its mask when
asked (again only when the file's ``stat`` changed): that file scores the
very mask the viewer shows, and exists while the run is still going.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nx47_pipeline.io.run_folder import STATS
from nx47_pipeline.model.metric import TOPO_WEIGHTS
from nx47_pipeline.telemetry.events import Event, EventKind
from nx47_widgets.loaders import read_document

__all__ = ["DIMENSIONS", "TOPO_KEYS", "TopoDim", "TopoBreakdown", "ValidationScores", "topo_breakdown"]

#: Homology dimensions of TopoScore and what their features are.
DIMENSIONS = ((0, "components"), (1, "tunnels"), (2, "cavities"))
#: The record's keys behind the table (per dimension: lists of three).
TOPO_KEYS = ("topo_matched", "betti_pred", "betti_gt", "topo_f1")


@dataclass(frozen=True)
class TopoDim:
    """One homology dimension of a volume's TopoScore (None: not recorded).

    Attributes
    ----------
    weight : float
        TopoScore's nominal weight of the dimension (0.34 / 0.33 / 0.33).
    share : float or None
        The weight renormalised over the defined dimensions (what TopoScore
        used); None when the dimension is undefined or the F1s are not recorded.
    f1_defined : bool or None
        False when F1 is undefined (no feature in either mask); None when the
        F1s are not recorded.
    """

    dim: int
    name: str
    weight: float
    matched: int | None = None
    predicted: int | None = None
    labelled: int | None = None
    f1: float | None = None
    f1_defined: bool | None = None
    share: float | None = None

    @property
    def spurious(self) -> int | None:
        """Predicted features that match no labelled one (predicted − matched)."""
        return None if self.predicted is None or self.matched is None else self.predicted - self.matched

    @property
    def missed(self) -> int | None:
        """Labelled features the prediction does not match (labelled − matched)."""
        return None if self.labelled is None or self.matched is None else self.labelled - self.matched

    @property
    def lost(self) -> float | None:
        """What this dimension takes off TopoScore: share × (1 − F1)."""
        return None if self.share is None or self.f1 is None else self.share * (1.0 - self.f1)


@dataclass(frozen=True)
class TopoBreakdown:
    """A volume's TopoScore by dimension, as far as its record holds it.

    Attributes
    ----------
    found : bool
        A record of the volume exists.
    source : str
        Where the record was read (``val/<id>.json`` or the run's statistics).
    dims : tuple of TopoDim
        One per dimension when any per-dimension value is recorded, else empty.
    missing : tuple of str
        Keys of :data:`TOPO_KEYS` (and ``topo_method``) the record lacks.
    problems : tuple of str
        Values of the wrong shape, named (``betti_pred: not three counts: 'x'``).
    error : str or None
        Why the volume could not be scored (a record with ``error``).
    """

    volume_id: str
    found: bool = False
    source: str = ""
    score: float | None = None
    surface_dice: float | None = None
    voi: float | None = None
    topo: float | None = None
    method: str | None = None
    dims: tuple[TopoDim, ...] = ()
    missing: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    error: str | None = None

    @property
    def recorded(self) -> bool:
        """True when the per-dimension parts are (at least partly) recorded."""
        return bool(self.dims)

    @property
    def lost(self) -> float | None:
        """Σ share × (1 − F1): what the dimensions take off TopoScore (1 − topo)."""
        parts = [d.lost for d in self.dims if d.f1_defined]
        if not self.dims or any(d.f1_defined is None for d in self.dims):
            return None
        return float(sum(parts)) if parts else 0.0

    @property
    def worst(self) -> TopoDim | None:
        """The dimension that takes most off TopoScore (None: nothing lost or unknown)."""
        lost = [d for d in self.dims if d.lost is not None and d.lost > 1e-9]
        return max(lost, key=lambda d: d.lost) if lost else None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _counts(record: dict, key: str, problems: list[str]) -> list[int] | None:
    v = record.get(key)
    if v is None:
        return None
    if (isinstance(v, (list, tuple)) and len(v) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
        return [int(x) for x in v]
    if (isinstance(v, (list, tuple)) and len(v) == 3
            and all(_number(x) is not None and float(x).is_integer() and x >= 0 for x in v)):
        return [int(x) for x in v]  # 3.0 from a JSON writer that keeps floats
    problems.append(f"{key}: not three counts: {v!r}"[:120])
    return None


def _f1s(record: dict, problems: list[str]) -> list[float | None] | None:
    v = record.get("topo_f1")
    if v is None:
        return None
    if (isinstance(v, (list, tuple)) and len(v) == 3
            and all(x is None or (_number(x) is not None and 0.0 <= x <= 1.0) for x in v)):
        return [None if x is None else float(x) for x in v]
    problems.append(f"topo_f1: not three F1 values (or null): {v!r}"[:120])
    return None


def topo_breakdown(volume_id: str, record: Any, source: str = "") -> TopoBreakdown:
    """TopoScore's parts per dimension from one volume's score record.

    Parameters
    ----------
    volume_id : str
    record : dict or None
        The volume's record (see the module's docstring); any keys may be
        missing, anything else than a dict counts as no record.
    source : str
        Where the record was read (shown with the table).

    Returns
    -------
    TopoBreakdown
    """
    if not isinstance(record, dict):
        return TopoBreakdown(volume_id=str(volume_id), source=source)
    problems: list[str] = []
    matched, pred, gt = (_counts(record, k, problems) for k in ("topo_matched", "betti_pred", "betti_gt"))
    f1 = _f1s(record, problems)
    if matched is not None and pred is not None and gt is not None \
            and any(matched[k] > min(pred[k], gt[k]) for k in range(3)):
        problems.append(f"topo_matched: {matched} exceeds predicted {pred} or labelled {gt}: "
                        "counts not shown")
        matched = pred = gt = None
        bad = {"topo_matched", "betti_pred", "betti_gt"}
    else:
        bad = set()
    method = record.get("topo_method")
    method = str(method) if isinstance(method, str) and method.strip() else None
    bad |= {p.split(":")[0] for p in problems}
    missing = [k for k, v in zip(TOPO_KEYS, (matched, pred, gt, f1)) if v is None and k not in bad]
    if method is None:
        missing.append("topo_method")
    dims: tuple[TopoDim, ...] = ()
    if any(v is not None for v in (matched, pred, gt, f1)):
        defined = [k for k in range(3) if f1 is not None and f1[k] is not None]
        wsum = sum(TOPO_WEIGHTS[k] for k in defined)
        dims = tuple(TopoDim(
            dim=k, name=name, weight=float(TOPO_WEIGHTS[k]),
            matched=None if matched is None else matched[k],
            predicted=None if pred is None else pred[k],
            labelled=None if gt is None else gt[k],
            f1=None if f1 is None else f1[k],
            f1_defined=None if f1 is None else f1[k] is not None,
            share=TOPO_WEIGHTS[k] / wsum if k in defined and wsum > 0 else None,
        ) for k, name in DIMENSIONS)
    return TopoBreakdown(
        volume_id=str(volume_id), found=True, source=source,
        score=_number(record.get("score")), surface_dice=_number(record.get("surface_dice")),
        voi=_number(record.get("voi")), topo=_number(record.get("topo")), method=method,
        dims=dims, missing=tuple(missing), problems=tuple(problems),
        error=str(record["error"]) if record.get("error") else None)


class ValidationScores:
    """The run's per-volume validation records, for the viewer's TopoScore table.

    Parameters
    ----------
    out_dir : str or Path, optional
        The run folder (relative mask paths are under it); RUN_START events
        replace it.
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.per_volume: dict[str, dict] = {}
        self._files: dict[str, tuple[tuple[int, int], Any]] = {}
        self.version = 0

    def apply(self, event: Event) -> bool:
        """Apply one event; True when the run's records changed (GLOBAL_STATS).

        Parameters
        ----------
        event : Event

        Returns
        -------
        bool
        """
        if event.kind is EventKind.RUN_START:
            if event.payload.out_dir:
                self.out_dir = Path(event.payload.out_dir)
            self.per_volume = {}
            self._files.clear()
            return False
        if event.kind is not EventKind.GLOBAL_STATS:
            return False
        validation = (event.payload.stats or {}).get("validation")
        per_volume = validation.get("per_volume") if isinstance(validation, dict) else None
        if not isinstance(per_volume, dict):
            return False
        self.per_volume = {str(k): v for k, v in per_volume.items()}
        self.version += 1
        return True

    def _read(self, path: Path) -> Any:
        """The JSON of ``path`` (None when absent), re-read only when its stat changed."""
        try:
            st = os.stat(path)
        except OSError:
            self._files.pop(str(path), None)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._files.get(str(path))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        data = read_document(path)
        self._files[str(path)] = (stamp, data)
        return data

    def record(self, volume_id: str, pred_path: str | os.PathLike | None = None) -> tuple[Any, str]:
        """The record of one validation volume and where it was read.

        ``<mask>.json`` next to the volume's mask ``pred_path`` (the scores of
        that very mask) comes first; else the run's GLOBAL_STATS record.

        Parameters
        ----------
        volume_id : str
        pred_path : str or path-like, optional
            The volume's mask (``val/<id>.tif``; relative: under the run folder).

        Returns
        -------
        (record, source) : (dict or None, str)
        """
        if pred_path:
            p = Path(pred_path)
            if not p.is_absolute() and self.out_dir is not None:
                p = self.out_dir / p
            p = p.with_suffix(".json")
            data = self._read(p)
            if isinstance(data, dict):
                try:
                    shown = str(p.relative_to(self.out_dir)) if self.out_dir is not None else str(p)
                except ValueError:
                    shown = str(p)
                return data, shown
        rec = self.per_volume.get(str(volume_id))
        if isinstance(rec, dict):
            return rec, f"the run's statistics ({STATS})"
        return None, ""

    def breakdown(self, volume_id: str, pred_path: str | os.PathLike | None = None) -> TopoBreakdown:
        """:func:`topo_breakdown` of the volume's :meth:`record`."""
        rec, source = self.record(volume_id, pred_path)
        return topo_breakdown(volume_id, rec, source)
