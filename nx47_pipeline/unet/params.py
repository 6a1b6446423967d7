"""U-Net hyper-parameters (:class:`UNetParams`) and their mapping from a RunConfig."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from nx47_pipeline.unet.backend import resolve_device


@dataclass(frozen=True, kw_only=True)
class UNetParams:
    """Hyper-parameters of the U-Net stage.

    Attributes
    ----------
    width : int
        Channels of the first level; level ``k`` has ``width * 2**k``.
    depth : int
        Number of down-sampling steps (``depth + 1`` resolution levels);
        ``patch`` must be divisible by ``2**depth``.
    norm : str
        ``"group"`` (GroupNorm, up to 8 groups) or ``"instance"``.
    patch : int
        Side of the cubic training patch and inference window.
    batch : int
        Patches per training batch and windows per inference batch.
    lr : float
        Adam learning rate.
    epochs : int
        Total epochs (a resumed run continues up to this number).
    steps_per_epoch : int or None
        Batches per epoch; ``None`` means one pass over the patches.
    val_fraction : float
        Share of the training patches held out (by source volume when there
        are several) when ``train_unet`` gets no ``val`` set; 0 disables it.
    overlap : float
        Overlap of inference windows, in ``[0, 1)``.
    tta_flip : bool
        Average the 8 mirrorings of each window at inference.
    amp : bool
        Mixed precision (float16 autocast + gradient scaling); effective on
        CUDA only.
    seed : int
        Seed of patch sampling, initialisation and batch order.
    label_guided_frac : float
        Share of patches centred on a label-1 voxel.
    patches_per_volume : int
        Patches drawn from each training volume.
    skel_weight : float
        Weight of the skeleton-recall term next to BCE (0 = off, the
        default: with the prior channel it lowered the validation score,
        docs/model.md).
    dice_weight : float
        Weight of the soft Dice term next to BCE (0 = BCE alone, the
        default for the same reason: Dice and skeleton recall reward recall,
        and the thicker masks merge close sheets).
    lr_schedule : str
        ``"poly"`` (``lr * (1 - progress) ** 0.9``, progress being the share
        of the planned steps done or, with a deadline, of the time to it
        spent, whichever is larger) or ``"constant"``.
    patience : int
        Early stop: epochs without a better validation Dice before training
        stops (0 = never).  With validation, the weights of the best epoch
        are the ones used.
    val_smoothing : float
        Weight of the newest epoch in the exponential moving average of the
        validation Dice that early stopping and the choice of the best
        epoch follow (in (0, 1]; 1 = the raw Dice).  The Dice of a few
        validation patches jumps from epoch to epoch: on the raw Dice one
        lucky epoch could stop training 10 epochs later and be kept, while
        the smoothed Dice waits for a run of better epochs (docs/unet.md).
    prior : bool
        Give the network the ``fit_prox`` probability map as a second input
        channel next to the intensities (a cascade: the U-Net learns to
        correct the linear model rather than to find the surface from
        nothing).  Training patches then carry ``priors`` and inference
        needs the map.  Checkpoints written before this field existed load
        with ``prior=False``.
    """

    width: int = 16
    depth: int = 3
    norm: str = "group"
    patch: int = 64
    batch: int = 2
    lr: float = 1e-3
    epochs: int = 60
    steps_per_epoch: int | None = None
    val_fraction: float = 0.1
    overlap: float = 0.5
    tta_flip: bool = False
    amp: bool = True
    seed: int = 47
    label_guided_frac: float = 0.5
    patches_per_volume: int = 8
    skel_weight: float = 0.0
    dice_weight: float = 0.0
    lr_schedule: str = "poly"
    patience: int = 10
    val_smoothing: float = 0.3
    prior: bool = True

    def __post_init__(self) -> None:
        for name in ("width", "depth", "patch", "batch", "epochs", "patches_per_volume"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.norm not in ("group", "instance"):
            raise ValueError(f"norm must be 'group' or 'instance', got {self.norm!r}")
        if self.patch % (2**self.depth) != 0:
            raise ValueError(
                f"patch must be divisible by 2**depth = {2**self.depth} "
                f"(depth={self.depth}), got patch={self.patch!r}"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch!r}")
        if self.lr_schedule not in ("poly", "constant"):
            raise ValueError(f"lr_schedule must be 'poly' or 'constant', got {self.lr_schedule!r}")
        if not self.dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight!r}")
        if not self.skel_weight >= 0:
            raise ValueError(f"skel_weight must be >= 0, got {self.skel_weight!r}")
        if isinstance(self.patience, bool) or int(self.patience) != self.patience or self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {self.patience!r}")
        if not 0 < self.val_smoothing <= 1:
            raise ValueError(f"val_smoothing must be in (0, 1], got {self.val_smoothing!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if not 0 <= self.label_guided_frac <= 1:
            raise ValueError(
                f"label_guided_frac must be in [0, 1], got {self.label_guided_frac!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dictionary (stored in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetParams":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("prior", False)  # checkpoints from before the prior channel
        return cls(**values)

    @property
    def in_channels(self) -> int:
        """Input channels of the network: intensities, and the prior map."""
        return 2 if self.prior else 1


#: Patch side, batch and width when the RunConfig leaves them at 0, by
#: device kind.  On a CPU a narrow network on smaller patches makes about
#: ten times more optimisation steps in the same time than the CUDA sizes,
#: which is what a 10-minute budget needs (docs/model.md).
DEVICE_SIZES: dict[str, dict[str, int]] = {
    "cpu": {"patch": 48, "batch": 4, "width": 8},
    "cuda": {"patch": 64, "batch": 2, "width": 16},
}


def params_from_config(config: Any, **overrides: Any) -> UNetParams:
    """:class:`UNetParams` from a ``RunConfig`` (its ``unet_*`` fields and
    ``seed``), with ``overrides`` applied last.

    Parameters
    ----------
    config : RunConfig
        Any object with ``unet_epochs``, ``unet_patch``, ``unet_batch``,
        ``unet_width``, ``unet_depth`` and ``seed`` attributes (and
        ``unet_device``); a patch, batch or width of 0 takes the value of
        :data:`DEVICE_SIZES` for the device the run resolves to.
    **overrides
        Further :class:`UNetParams` fields (e.g. ``epochs`` from the budget
        planner, ``steps_per_epoch``, ``tta_flip``).
    """
    try:
        kind = "cuda" if resolve_device(getattr(config, "unet_device", "auto")).startswith("cuda") else "cpu"
    except ValueError:  # CUDA asked for but absent: the training stage reports it
        kind = "cpu"
    sizes = DEVICE_SIZES[kind]
    values = {
        "epochs": config.unet_epochs,
        "patch": config.unet_patch or sizes["patch"],
        "batch": config.unet_batch or sizes["batch"],
        "width": config.unet_width or sizes["width"],
        "depth": config.unet_depth,
        "seed": config.seed,
    }
    names = {f.name for f in dataclasses.fields(UNetParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown UNetParams field(s) {unknown}")
    values.update(overrides)
    return UNetParams(**values)

