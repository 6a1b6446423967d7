"""The model seam: a :class:`Predictor` turns a volume into probabilities, a
:class:`PostChoice` turns probabilities into the submission mask.

Every consumer of a trained model goes through these two objects: the
validate and segment tasks (:class:`nx47_pipeline.run.tasks.Segmenter`),
the U-Net's threshold sweep, ``nx47 infer`` and model bundles
(:attr:`nx47_pipeline.model.bundle.Bundle.predictor` / ``.post``).

Kinds (:class:`PredictorKind`):

* ``linear`` -- the linear model on the filter bank (:class:`LinearPredictor`);
* ``linear+unet`` -- the same, fused with the project's U-Net;
* ``nnunet`` -- an imported nnU-Net v2 model
  (:class:`nx47_pipeline.nnunet.predictor.NnUNetPredictor`);
* ``ensemble`` -- the weighted mean of the probabilities of other predictors
  (:class:`EnsemblePredictor`).

A predictor's :meth:`Predictor.predict` reports progress through
``on_progress(done, total, what, frac)``, raises
:class:`~nx47_pipeline.telemetry.cancel.Cancelled` between steps once
``cancel`` is set and :class:`DeadlineExceeded` once ``deadline``
(``time.monotonic()``) has passed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from nx47_pipeline.model.postprocess import _check_3d, postprocess
from nx47_pipeline.model.predict import FracProgressFn, UNetPart, probability


class PredictorKind(str, enum.Enum):
    """What a predictor holds (``model.json``'s ``kind``; ``linear`` where absent)."""

    LINEAR = "linear"
    LINEAR_UNET = "linear+unet"
    NNUNET = "nnunet"
    ENSEMBLE = "ensemble"

    def __str__(self) -> str:
        return self.value


class DeadlineExceeded(RuntimeError):
    """A prediction passed its deadline before it finished."""


def check_stop(cancel: Any = None, deadline: float | None = None, what: str = "prediction") -> None:
    """Raise when ``cancel`` (a :class:`~nx47_pipeline.telemetry.cancel.CancelToken`
    or anything with ``raise_if_cancelled()``) is set, or ``deadline`` has passed."""
    if cancel is not None:
        cancel.raise_if_cancelled()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"{what}: deadline passed")


def _guarded(on_progress: FracProgressFn | None, cancel: Any, deadline: float | None,
             what: str) -> Callable[[int, int, str, float], None]:
    """A progress callback that checks ``cancel`` and ``deadline`` before reporting."""

    def on_p(done: int, total: int, step: str, frac: float) -> None:
        check_stop(cancel, deadline, what)
        if on_progress is not None:
            on_progress(done, total, step, frac)

    return on_p


@runtime_checkable
class Predictor(Protocol):
    """A volume -> probability map of the surface class.

    ``predict(volume, *, on_progress=None, cancel=None, deadline=None)``
    returns float32 probabilities in [0, 1] of ``volume``'s shape.
    ``halo`` is the context, in voxels on every side, a block needs for its
    core's probabilities to be those of the whole volume (``nx47 infer``
    reads chunks with it).
    """

    kind: PredictorKind

    @property
    def halo(self) -> int: ...

    def predict(self, volume: np.ndarray, *, on_progress: FracProgressFn | None = None, cancel: Any = None,
                deadline: float | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class LinearPredictor:
    """The linear model (:class:`~nx47_pipeline.model.linear.LogisticModel`, or a
    :class:`~nx47_pipeline.model.context.ContextModel` with its auto-context rounds),
    fused with ``unet`` when given (:func:`nx47_pipeline.model.predict.probability`)."""

    model: Any
    unet: UNetPart | None = None
    slab: int = 32

    @property
    def kind(self) -> PredictorKind:
        return PredictorKind.LINEAR if self.unet is None else PredictorKind.LINEAR_UNET

    @property
    def halo(self) -> int:
        """The filter bank's reach (exact); with a U-Net, also half its window."""
        reach = int(self.model.halo)
        if self.unet is not None:
            reach = max(reach, -(-int(self.unet.params.patch) // 2))
        return reach

    def predict(self, volume: np.ndarray, *, on_progress: FracProgressFn | None = None, cancel: Any = None,
                deadline: float | None = None) -> np.ndarray:
        check_stop(cancel, deadline, "linear model")
        return probability(volume, self.model, unet=self.unet, slab=self.slab,
                           on_progress=_guarded(on_progress, cancel, deadline, "linear model"))


@dataclass(frozen=True)
class EnsemblePredictor:
    """The weighted mean of its members' probabilities.

    Attributes
    ----------
    members : tuple of (Predictor, float)
        Each member and its weight (> 0); the weights need not sum to 1.
    """

    members: tuple[tuple[Any, float], ...]

    kind = PredictorKind.ENSEMBLE

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        for k, (_, w) in enumerate(self.members):
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0:
                raise ValueError(f"member {k}: weight must be a number > 0, got {w!r}")

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(w) for _, w in self.members)

    @property
    def halo(self) -> int:
        return max(int(m.halo) for m, _ in self.members)

    def predict(self, volume: np.ndarray, *, on_progress: FracProgressFn | None = None, cancel: Any = None,
                deadline: float | None = None) -> np.ndarray:
        volume = _check_3d("volume", volume)
        total_w = float(sum(self.weights))
        n = len(self.members)
        acc = np.zeros(volume.shape, dtype=np.float64)
        for k, (member, w) in enumerate(self.members):
            def on_p(done, total, what, frac, _k=k):
                if on_progress is not None:
                    on_progress(done, total, f"member {_k + 1}/{n}: {what}", (_k + frac) / n)

            acc += (float(w) / total_w) * member.predict(volume, on_progress=on_p, cancel=cancel,
                                                         deadline=deadline)
        return acc.astype(np.float32)


@dataclass(frozen=True)
class PostChoice:
    """The post-processing chosen for a model: probabilities -> uint8 0/1 mask
    (:func:`nx47_pipeline.model.postprocess.postprocess`).

    Attributes
    ----------
    low, high : float
        Hysteresis pair.
    thin : bool
        Thin-surface extraction after the thresholds.
    closing_radius : tuple of int
        (z, y, x) radius of the anisotropic closing.
    min_size : int
        Components below this many voxels are removed.
    plug_size : int
        Holes up to this many voxels are plugged (0: none).
    """

    low: float
    high: float
    thin: bool = False
    closing_radius: tuple[int, int, int] = (1, 2, 2)
    min_size: int = 100
    plug_size: int = 0

    @classmethod
    def from_best(cls, best: Mapping[str, Any], *, closing_radius: Sequence[int] = (1, 2, 2),
                  min_size: int = 100) -> "PostChoice":
        """The choice recorded in ``best`` (the search's or a bundle's);
        ``closing_radius`` and ``min_size`` where it names none (records from
        before they were chosen), no hole plugging where it names no plug size."""
        cr = best.get("closing_radius")
        ms = best.get("min_size")
        return cls(low=float(best["low"]), high=float(best["high"]), thin=bool(best.get("thin", False)),
                   closing_radius=tuple(int(v) for v in (closing_radius if cr is None else cr)),
                   min_size=int(min_size if ms is None else ms), plug_size=int(best.get("plug_size") or 0))

    def apply(self, prob: np.ndarray, *, ridge: np.ndarray | None = None,
              on_progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
        """The mask of ``prob`` (uint8 0/1, ``prob``'s shape); ``on_progress(done, total, step)``
        before each post-processing step."""
        return postprocess(prob, low=self.low, high=self.high, closing_radius=self.closing_radius,
                           min_size=self.min_size, thin=self.thin, ridge=ridge, plug_size=self.plug_size,
                           on_progress=on_progress)

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``best``-style JSON values."""
        return {"low": self.low, "high": self.high, "thin": self.thin,
                "closing_radius": list(self.closing_radius), "min_size": self.min_size,
                "plug_size": self.plug_size}


__all__ = ["PredictorKind", "DeadlineExceeded", "check_stop", "Predictor", "LinearPredictor", "EnsemblePredictor",
           "PostChoice"]
