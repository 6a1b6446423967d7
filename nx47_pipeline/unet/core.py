"""Optional 3D U-Net stage: patches, model, masked loss, training, inference.

Everything here is plain functions that take callbacks; this module knows
nothing of telemetry.  The orchestrator turns ``on_file`` / ``on_batch`` /
``on_epoch`` / ``on_window`` into PROGRESS_UPDATE and METRIC events and
cancellation checks.  A callback may raise (for instance ``Cancelled``): the
exception propagates unchanged and the last completed epoch's checkpoint on
disk stays valid.

``import nx47_pipeline.unet.core`` does not import torch.  Every function that
needs it calls :func:`require_torch`, which raises :class:`UNetUnavailable`
with an actionable message when PyTorch is not installed.

Design notes (see ``docs/unet.md``):

* Labels: 0 background, 1 surface, 2 unlabelled.  Label 2 and padding
  (:data:`IGNORE`, the same value) are excluded from the loss.
* Intensities: uint8 patches are scaled to ``x / 127.5 - 1`` on the device.
* Checkpoints hold only tensors and plain Python values, so
  ``torch.load(path, weights_only=True)`` reads them.
* Randomness is derived from ``(seed, epoch)`` at the start of every epoch,
  so a resumed run draws the same batches as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from nx47_pipeline.io.atomic import atomic_path

__all__ = [
    "IGNORE",
    "UNetUnavailable",
    "require_torch",
    "torch_available",
    "cuda_available",
    "resolve_device",
    "UNetParams",
    "params_from_config",
    "PatchSet",
    "extract_patches",
    "split_patches",
    "build_unet",
    "masked_bce_dice_loss",
    "TrainResult",
    "train_unet",
    "load_unet",
    "predict_volume",
    "fuse_probabilities",
    "time_train_step",
    "estimate_cost",
    "REFERENCE_STEP_SECONDS",
]

#: Label value that is excluded from the loss (unlabelled voxels and padding).
IGNORE = 2

#: Name of the rolling checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "last.pt"

TORCH_HINT = (
    "the U-Net stage needs PyTorch: pip install torch==2.13.0 (CPU build) or "
    "use a Kaggle GPU image that ships torch; or run with --no-unet"
)


class UNetUnavailable(ImportError):
    """PyTorch (or the requested device) is not available for the U-Net."""


# ----------------------------------------------------------------------
# torch, devices
# ----------------------------------------------------------------------
def require_torch():
    """Import and return the ``torch`` module.

    Returns
    -------
    module
        The imported ``torch`` module.

    Raises
    ------
    UNetUnavailable
        When PyTorch cannot be imported; the message says how to install it
        or how to run without the U-Net.
    """
    try:
        import torch  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise UNetUnavailable(f"{TORCH_HINT} (import failed: {exc})") from exc
    return torch


def torch_available() -> bool:
    """Whether PyTorch can be imported (never raises)."""
    try:
        require_torch()
    except UNetUnavailable:
        return False
    return True


def cuda_available() -> bool:
    """Whether PyTorch is importable and sees a CUDA device (never raises)."""
    try:
        torch = require_torch()
    except UNetUnavailable:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver must not crash the planner
        return False


def resolve_device(spec: str = "auto") -> str:
    """Turn a device specification into a torch device string.

    Parameters
    ----------
    spec : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:<index>"``.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises
    ------
    ValueError
        When ``spec`` is not one of the forms above, or names CUDA on a
        machine without it.
    """
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {spec!r}")
    s = spec.strip().lower()
    if s == "auto":
        return "cuda" if cuda_available() else "cpu"
    if s == "cpu":
        return "cpu"
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not cuda_available():
            raise ValueError(
                f"device={spec!r} was requested but CUDA is not available on this "
                "machine; use device='auto' or 'cpu'"
            )
        if ":" in s:
            torch = require_torch()
            index = int(s[5:])
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) present"
                )
        return s
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {spec!r}")


# ----------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------
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
    """

    width: int = 16
    depth: int = 3
    norm: str = "group"
    patch: int = 64
    batch: int = 2
    lr: float = 1e-3
    epochs: int = 20
    steps_per_epoch: int | None = None
    val_fraction: float = 0.1
    overlap: float = 0.5
    tta_flip: bool = False
    amp: bool = True
    seed: int = 47
    label_guided_frac: float = 0.5
    patches_per_volume: int = 8

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
        return cls(**{k: v for k, v in data.items() if k in names})


def params_from_config(config: Any, **overrides: Any) -> UNetParams:
    """:class:`UNetParams` from a ``RunConfig`` (its ``unet_*`` fields and
    ``seed``), with ``overrides`` applied last.

    Parameters
    ----------
    config : RunConfig
        Any object with ``unet_epochs``, ``unet_patch``, ``unet_batch``,
        ``unet_width``, ``unet_depth`` and ``seed`` attributes.
    **overrides
        Further :class:`UNetParams` fields (e.g. ``epochs`` from the budget
        planner, ``steps_per_epoch``, ``tta_flip``).
    """
    values = {
        "epochs": config.unet_epochs,
        "patch": config.unet_patch,
        "batch": config.unet_batch,
        "width": config.unet_width,
        "depth": config.unet_depth,
        "seed": config.seed,
    }
    names = {f.name for f in dataclasses.fields(UNetParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown UNetParams field(s) {unknown}")
    values.update(overrides)
    return UNetParams(**values)


# ----------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------
@dataclass(frozen=True)
class PatchSet:
    """Training patches kept in memory as uint8.

    Attributes
    ----------
    images : np.ndarray
        ``(n, p, p, p)`` uint8 intensities.
    labels : np.ndarray
        ``(n, p, p, p)`` uint8 labels: 0, 1, and :data:`IGNORE` (2) for
        unlabelled voxels and padding.
    volume_ids : list of str
        Source volume of every patch.
    origins : np.ndarray
        ``(n, 3)`` int corner of every patch in its source volume (may be
        negative where the volume was padded).
    """

    images: np.ndarray
    labels: np.ndarray
    volume_ids: list[str] = field(default_factory=list)
    origins: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))

    def __post_init__(self) -> None:
        if self.images.shape != self.labels.shape or self.images.ndim != 4:
            raise ValueError(
                f"PatchSet images and labels must both be (n, p, p, p); got "
                f"{self.images.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def patch(self) -> int:
        """Side of the patches."""
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray) -> "PatchSet":
        """The patches at ``index`` (copies)."""
        index = np.asarray(index, dtype=np.int64)
        return PatchSet(
            self.images[index],
            self.labels[index],
            [self.volume_ids[i] for i in index] if self.volume_ids else [],
            self.origins[index] if len(self.origins) else self.origins,
        )


def _crop(volume: np.ndarray, origin: np.ndarray, patch: int, fill: int) -> np.ndarray:
    """Patch at ``origin`` (may lie partly outside: filled with ``fill``)."""
    out = np.full((patch,) * 3, fill, dtype=np.uint8)
    src = []
    dst = []
    for axis in range(3):
        lo = int(origin[axis])
        hi = lo + patch
        s_lo, s_hi = max(lo, 0), min(hi, volume.shape[axis])
        src.append(slice(s_lo, s_hi))
        dst.append(slice(s_lo - lo, s_hi - lo))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def extract_patches(
    volumes: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    patch: int,
    patches_per_volume: int,
    label_guided_frac: float,
    seed: int,
    on_file: Callable[[int, int, str], None] | None = None,
    n_volumes: int | None = None,
) -> PatchSet:
    """Draw cubic patches from a stream of labelled volumes.

    Volumes are consumed one at a time (a generator that reads each file
    keeps only one volume in memory); only the patches are kept.

    Parameters
    ----------
    volumes : iterable of (str, np.ndarray, np.ndarray)
        ``(volume_id, image uint8 (z, y, x), label (z, y, x))`` tuples.
    patch : int
        Side of the cubic patches.
    patches_per_volume : int
        Patches drawn from each volume.
    label_guided_frac : float
        Share of each volume's patches centred on a random label-1 voxel
        (the rest have a uniformly random corner).  A volume without label-1
        voxels gets only random patches.
    seed : int
        Seed; the same stream and seed give the same patches.
    on_file : callable, optional
        ``on_file(done, total, volume_id)`` after each volume (``total`` is
        ``n_volumes``, ``len(volumes)`` when available, else 0).
    n_volumes : int, optional
        Number of volumes in the stream, for progress.

    Returns
    -------
    PatchSet
        Patches; labels keep 2 as the ignore value, and padding (volumes
        smaller than ``patch``) is labelled 2 as well, image padding is 0.
    """
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch!r}")
    if patches_per_volume < 1:
        raise ValueError(f"patches_per_volume must be >= 1, got {patches_per_volume!r}")
    if not 0 <= label_guided_frac <= 1:
        raise ValueError(f"label_guided_frac must be in [0, 1], got {label_guided_frac!r}")
    total = n_volumes
    if total is None:
        try:
            total = len(volumes)  # type: ignore[arg-type]
        except TypeError:
            total = 0
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    origins: list[np.ndarray] = []
    n_guided_wanted = int(round(patches_per_volume * label_guided_frac))
    for done, item in enumerate(volumes, start=1):
        try:
            vid, image, label = item
        except (TypeError, ValueError):
            raise ValueError(
                f"volumes must yield (id, image, label) tuples; item {done} is {type(item).__name__}"
            ) from None
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim != 3 or image.shape != label.shape:
            raise ValueError(
                f"volume {vid!r}: image and label must be 3D with the same shape, got "
                f"{image.shape} and {label.shape}"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"volume {vid!r}: image must be uint8, got {image.dtype}")
        label = label.astype(np.uint8, copy=False)
        rng = np.random.default_rng([int(seed), done])
        shape = np.array(image.shape)
        fg = np.flatnonzero(label == 1) if n_guided_wanted else np.empty(0, dtype=np.int64)
        n_guided = n_guided_wanted if fg.size else 0
        for k in range(patches_per_volume):
            if k < n_guided:
                centre = np.array(np.unravel_index(fg[rng.integers(fg.size)], image.shape))
                origin = centre - patch // 2
                # keep the patch inside the volume where the volume allows it
                origin = np.clip(origin, 0, np.maximum(shape - patch, 0))
            else:
                high = np.maximum(shape - patch, 0) + 1
                origin = rng.integers(0, high)
            # volumes smaller than the patch: centre them in the padded patch
            origin = np.where(shape < patch, -((patch - shape) // 2), origin)
            images.append(_crop(image, origin, patch, 0))
            labels.append(_crop(label, origin, patch, IGNORE))
            ids.append(str(vid))
            origins.append(origin.astype(np.int64))
        del image, label, fg
        if on_file is not None:
            on_file(done, int(total), str(vid))
    if not images:
        empty = np.zeros((0, patch, patch, patch), dtype=np.uint8)
        return PatchSet(empty, empty.copy(), [], np.zeros((0, 3), dtype=np.int64))
    return PatchSet(np.stack(images), np.stack(labels), ids, np.stack(origins))


def split_patches(patches: PatchSet, *, fraction: float, seed: int) -> tuple[PatchSet, PatchSet]:
    """Hold out about ``fraction`` of the patches for validation.

    Whole source volumes are held out when the set comes from several
    volumes (so validation patches never overlap training ones); otherwise
    individual patches are.  At least one patch stays on each side when the
    set has two or more patches.

    Returns
    -------
    (PatchSet, PatchSet)
        ``(train, val)``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    n = len(patches)
    if n < 2:
        raise ValueError(f"need at least 2 patches to split, got {n}")
    rng = np.random.default_rng([int(seed), 7])
    unique = sorted(set(patches.volume_ids)) if patches.volume_ids else []
    if len(unique) >= 2:
        n_val_vol = min(len(unique) - 1, max(1, int(round(fraction * len(unique)))))
        held = set(rng.permutation(unique)[:n_val_vol].tolist())
        is_val = np.array([v in held for v in patches.volume_ids])
    else:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        is_val = np.zeros(n, dtype=bool)
        is_val[rng.permutation(n)[:n_val]] = True
    return patches.subset(np.flatnonzero(~is_val)), patches.subset(np.flatnonzero(is_val))


# ----------------------------------------------------------------------
# model
# ----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _model_classes():
    """Define the nn.Module classes once torch is imported."""
    torch = require_torch()
    nn = torch.nn

    def norm_layer(kind: str, channels: int):
        if kind == "instance":
            return nn.InstanceNorm3d(channels, affine=True)
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)

    class ConvBlock(nn.Sequential):
        def __init__(self, c_in: int, c_out: int, norm: str) -> None:
            super().__init__(
                nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
                norm_layer(norm, c_out),
                nn.LeakyReLU(0.01, inplace=True),
                nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
                norm_layer(norm, c_out),
                nn.LeakyReLU(0.01, inplace=True),
            )

    class UNet3D(nn.Module):
        """Plain 3D U-Net: conv blocks, strided-conv down, transposed-conv up."""

        def __init__(self, width: int, depth: int, norm: str) -> None:
            super().__init__()
            chans = [width * 2**k for k in range(depth + 1)]
            self.encoders = nn.ModuleList()
            self.downs = nn.ModuleList()
            c_prev = 1
            for k in range(depth):
                self.encoders.append(ConvBlock(c_prev, chans[k], norm))
                self.downs.append(nn.Conv3d(chans[k], chans[k], 2, stride=2))
                c_prev = chans[k]
            self.bottleneck = ConvBlock(chans[depth - 1] if depth else 1, chans[depth], norm)
            self.ups = nn.ModuleList()
            self.decoders = nn.ModuleList()
            for k in reversed(range(depth)):
                self.ups.append(nn.ConvTranspose3d(chans[k + 1], chans[k], 2, stride=2))
                self.decoders.append(ConvBlock(2 * chans[k], chans[k], norm))
            self.head = nn.Conv3d(chans[0], 1, 1)

        def forward(self, x):
            skips = []
            for enc, down in zip(self.encoders, self.downs):
                x = enc(x)
                skips.append(x)
                x = down(x)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet3D


def build_unet(params: UNetParams):
    """Build the 3D U-Net described by ``params``.

    Parameters
    ----------
    params : UNetParams
        ``width``, ``depth`` and ``norm`` define the network.

    Returns
    -------
    torch.nn.Module
        Input ``(n, 1, d, h, w)`` float, output ``(n, 1, d, h, w)`` logits;
        ``d, h, w`` must be divisible by ``2**depth``.
    """
    if not isinstance(params, UNetParams):
        raise TypeError(f"params must be a UNetParams, got {type(params).__name__}")
    torch = require_torch()
    cls = _model_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(params.seed))
        return cls(params.width, params.depth, params.norm)


def masked_bce_dice_loss(logits, target, mask, *, dice_weight: float = 1.0, eps: float = 1.0):
    """Binary cross-entropy + soft Dice, both restricted to ``mask``.

    Parameters
    ----------
    logits : torch.Tensor
        Raw network output, any shape.
    target : torch.Tensor
        0/1 targets, same shape.
    mask : torch.Tensor
        Bool or 0/1 tensor, same shape: voxels that count (label != 2 and
        not padding).
    dice_weight : float
        Weight of the Dice term.
    eps : float
        Smoothing of the Dice ratio.

    Returns
    -------
    torch.Tensor
        Scalar loss (float32).  With an empty mask the loss is 0 and still
        connected to ``logits`` (its gradient is zero).
    """
    torch = require_torch()
    if logits.shape != target.shape or logits.shape != mask.shape:
        raise ValueError(
            f"logits, target and mask must have the same shape, got "
            f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
        )
    logits = logits.float()
    m = mask.float()
    t = target.float() * m
    n = m.sum()
    if float(n) == 0.0:
        return logits.sum() * 0.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
    bce = (bce * m).sum() / n
    p = torch.sigmoid(logits) * m
    dice = 1.0 - (2.0 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    return bce + dice_weight * dice


# ----------------------------------------------------------------------
# training
# ----------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of :func:`train_unet`.

    Attributes
    ----------
    model : torch.nn.Module
        The network as it was when training stopped (after a deadline stop
        it includes the batches of the unfinished epoch).
    epochs_done : int
        Completed epochs, counting those of a resumed checkpoint.
    stopped_reason : str
        ``"completed"`` or ``"deadline"``.
    history : list of dict
        One entry per completed epoch: ``epoch``, ``train_loss``,
        ``val_loss`` (None without validation), ``seconds``, ``batches``.
    checkpoint : Path or None
        ``last.pt`` of the last completed epoch, None if no epoch completed.
    """

    model: Any
    epochs_done: int
    stopped_reason: str
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None


def _to_batch(torch, images: np.ndarray, labels: np.ndarray, device: str):
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    x = (x.float() / 127.5 - 1.0).unsqueeze(1)
    y = y.unsqueeze(1)
    return x, (y == 1).float(), (y != IGNORE)


def _train_step(torch, model, optimizer, scaler, x, t, m, use_amp: bool):
    """One optimisation step (mixed precision on CUDA); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
        logits = model(x)
    loss = masked_bce_dice_loss(logits, t, m)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _atomic_save(torch, obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _architecture(p: UNetParams) -> tuple:
    return (p.width, p.depth, p.norm)


def _evaluate(torch, model, val: PatchSet, batch: int, device: str, use_amp: bool) -> float:
    model.eval()
    total = 0.0
    count = 0
    with torch.inference_mode():
        for start in range(0, len(val), batch):
            x, t, m = _to_batch(
                torch, val.images[start : start + batch], val.labels[start : start + batch], device
            )
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = masked_bce_dice_loss(logits, t, m)
            total += float(loss) * x.shape[0]
            count += x.shape[0]
    model.train()
    return total / max(count, 1)


def train_unet(
    train: PatchSet,
    *,
    val: PatchSet | None,
    params: UNetParams,
    device: str = "auto",
    checkpoint_dir: str | Path,
    resume: bool = True,
    deadline: float | None = None,
    on_batch: Callable[[int, int, int, int, float], None] | None = None,
    on_epoch: Callable[[int, int, float, float | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train the U-Net on patches, with per-epoch checkpoints and a deadline.

    Parameters
    ----------
    train : PatchSet
        Training patches (side must equal ``params.patch``).
    val : PatchSet or None
        Validation patches.  When None and ``params.val_fraction > 0`` a
        share of ``train`` is held out (see :func:`split_patches`); when
        None and ``val_fraction == 0`` there is no validation.
    params : UNetParams
        Network and training hyper-parameters.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<n>"``.
    checkpoint_dir : str or Path
        Folder of ``last.pt`` (created if missing).
    resume : bool
        Continue from ``last.pt`` when present (epoch count, weights,
        optimiser, history).  The checkpoint's architecture must match.
    deadline : float, optional
        ``clock()`` value; checked before every batch.  When reached,
        training stops with ``stopped_reason="deadline"``.  The unfinished
        epoch is not checkpointed: ``last.pt`` keeps the last completed
        epoch, and the returned model holds the latest weights.
    on_batch : callable, optional
        ``on_batch(epoch, epochs, batch, n_batches, loss)`` after every
        batch; ``epoch`` and ``batch`` count from 1.
    on_epoch : callable, optional
        ``on_epoch(epoch, epochs, train_loss, val_loss)`` after each epoch's
        checkpoint is written.
    clock : callable
        Monotonic clock (injectable for tests).

    Returns
    -------
    TrainResult

    Notes
    -----
    An exception raised by a callback propagates unchanged; the checkpoint
    of the last completed epoch is left intact.
    """
    torch = require_torch()
    if not isinstance(params, UNetParams):
        raise TypeError(f"params must be a UNetParams, got {type(params).__name__}")
    if len(train) == 0:
        raise ValueError("train has no patches; extract some with extract_patches first")
    if train.patch != params.patch:
        raise ValueError(f"train patches have side {train.patch}, params.patch is {params.patch}")
    if val is not None and len(val) and val.patch != params.patch:
        raise ValueError(f"val patches have side {val.patch}, params.patch is {params.patch}")
    if val is None and params.val_fraction > 0 and len(train) >= 2:
        train, val = split_patches(train, fraction=params.val_fraction, seed=params.seed)
    dev = resolve_device(device)
    use_amp = bool(params.amp) and dev.startswith("cuda")
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / CHECKPOINT_NAME

    model = build_unet(params).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_epoch = 0
    if resume and ckpt_path.exists():
        state = _read_checkpoint(torch, ckpt_path, dev)
        saved = UNetParams.from_dict(state["params"])
        if _architecture(saved) != _architecture(params):
            raise ValueError(
                f"checkpoint {ckpt_path} holds width/depth/norm {_architecture(saved)}, "
                f"params ask for {_architecture(params)}; use another checkpoint_dir or "
                "resume=False"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        history = [dict(h) for h in state.get("history", [])]
    saved_path: Path | None = ckpt_path if ckpt_path.exists() and start_epoch > 0 else None

    n = len(train)
    n_batches = params.steps_per_epoch or max(1, math.ceil(n / params.batch))
    epochs = int(params.epochs)
    model.train()
    for epoch in range(start_epoch, epochs):
        t0 = clock()
        rng = np.random.default_rng([int(params.seed), epoch, 1])
        torch.manual_seed(int(params.seed) * 1000 + epoch)
        need = n_batches * params.batch
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
        running = 0.0
        for b in range(n_batches):
            if deadline is not None and clock() >= deadline:
                return TrainResult(model, epoch, "deadline", history, saved_path)
            idx = np.sort(order[b * params.batch : (b + 1) * params.batch])
            images = train.images[idx]
            labels = train.labels[idx]
            flips = tuple(a + 1 for a in range(3) if rng.random() < 0.5)
            if flips:
                images = np.flip(images, axis=flips)
                labels = np.flip(labels, axis=flips)
            x, t, m = _to_batch(torch, images, labels, dev)
            loss = _train_step(torch, model, optimizer, scaler, x, t, m, use_amp)
            value = float(loss.detach())
            running += value
            if on_batch is not None:
                on_batch(epoch + 1, epochs, b + 1, n_batches, value)
        train_loss = running / n_batches
        val_loss = None
        if val is not None and len(val) and not (deadline is not None and clock() >= deadline):
            val_loss = _evaluate(torch, model, val, params.batch, dev, use_amp)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(train_loss),
                "val_loss": None if val_loss is None else float(val_loss),
                "seconds": float(clock() - t0),
                "batches": int(n_batches),
            }
        )
        _atomic_save(
            torch,
            {
                "format": "nx47-unet-1",
                "epoch": epoch + 1,
                "params": params.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if use_amp else {},
                "history": history,
            },
            ckpt_path,
        )
        saved_path = ckpt_path
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, float(train_loss), val_loss)
    return TrainResult(model, max(epochs, start_epoch), "completed", history, saved_path)


def _read_checkpoint(torch, path: Path, device: str) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or not {"model", "params", "epoch"} <= set(state):
        raise ValueError(f"checkpoint {path} is not an NX47 U-Net checkpoint")
    return state


def load_unet(checkpoint: str | Path, *, device: str = "cpu"):
    """Load a U-Net checkpoint written by :func:`train_unet`.

    Parameters
    ----------
    checkpoint : str or Path
        A ``last.pt`` file, or the folder that holds it.
    device : str
        Where to place the model (see :func:`resolve_device`).

    Returns
    -------
    (torch.nn.Module, UNetParams)
        The model in eval mode and the parameters it was trained with.
    """
    torch = require_torch()
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    dev = resolve_device(device)
    state = _read_checkpoint(torch, path, dev)
    params = UNetParams.from_dict(state["params"])
    model = build_unet(params)
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), params


# ----------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------
def _positions(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    pos = list(range(0, size - patch + 1, step))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


def _gaussian_weights(patch: int, sigma_frac: float = 0.125) -> np.ndarray:
    c = (patch - 1) / 2.0
    g = np.exp(-0.5 * ((np.arange(patch) - c) / (sigma_frac * patch)) ** 2)
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


_FLIPS = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]


def predict_volume(
    model,
    volume: np.ndarray,
    *,
    params: UNetParams,
    device: str = "auto",
    on_window: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sliding-window probabilities for a whole volume.

    Parameters
    ----------
    model : torch.nn.Module
        A network from :func:`build_unet` / :func:`load_unet` (moved to the
        device here).
    volume : np.ndarray
        3D uint8 intensities, any shape.
    params : UNetParams
        ``patch`` (window side), ``overlap``, ``batch`` (windows per
        forward pass), ``tta_flip`` (average the 8 mirrorings), ``amp``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<n>"``.
    on_window : callable, optional
        ``on_window(done, total)`` after each batch of windows.

    Returns
    -------
    np.ndarray
        float32 probabilities in [0, 1], exactly ``volume.shape``.

    Notes
    -----
    Volumes smaller than a window are edge-padded.  Overlapping windows are
    blended with a Gaussian importance map (sigma = patch / 8).
    """
    torch = require_torch()
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    if volume.dtype != np.uint8:
        raise ValueError(f"volume must be uint8, got {volume.dtype}")
    dev = resolve_device(device)
    use_amp = bool(params.amp) and dev.startswith("cuda")
    p = params.patch
    shape = volume.shape
    pad = [(0, max(0, p - s)) for s in shape]
    work = np.pad(volume, pad, mode="edge") if any(b for _, b in pad) else volume
    step = max(1, int(round(p * (1.0 - params.overlap))))
    grid = [_positions(s, p, step) for s in work.shape]
    corners = [(z, y, x) for z in grid[0] for y in grid[1] for x in grid[2]]
    total = len(corners)
    batch = max(1, int(params.batch))

    model = model.to(dev).eval()
    src = torch.from_numpy(np.ascontiguousarray(work)).to(dev)
    acc = torch.zeros(work.shape, dtype=torch.float32, device=dev)
    norm = torch.zeros(work.shape, dtype=torch.float32, device=dev)
    weight = torch.from_numpy(_gaussian_weights(p)).to(dev)
    flips = _FLIPS if params.tta_flip else _FLIPS[:1]
    with torch.inference_mode():
        for start in range(0, total, batch):
            chunk = corners[start : start + batch]
            x = torch.stack([src[z : z + p, y : y + p, w : w + p] for z, y, w in chunk])
            x = (x.float() / 127.5 - 1.0).unsqueeze(1)
            prob = torch.zeros_like(x)
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                    out = model(xi)
                out = torch.sigmoid(out.float())
                prob += torch.flip(out, axes) if axes else out
            prob = prob[:, 0] / len(flips)
            for k, (z, y, w) in enumerate(chunk):
                acc[z : z + p, y : y + p, w : w + p] += prob[k] * weight
                norm[z : z + p, y : y + p, w : w + p] += weight
            if on_window is not None:
                on_window(min(start + batch, total), total)
    out = (acc / norm).clamp_(0.0, 1.0)
    out = out[: shape[0], : shape[1], : shape[2]].cpu().numpy().astype(np.float32, copy=False)
    return np.ascontiguousarray(out)


def fuse_probabilities(prox_prob: np.ndarray, unet_prob: np.ndarray, *, mode: str = "mean") -> np.ndarray:
    """Combine the ``fit_prox`` and U-Net probability volumes.

    Parameters
    ----------
    prox_prob, unet_prob : np.ndarray
        Probabilities of the same shape.
    mode : str
        ``"mean"`` (voxel-wise average) or ``"replace"`` (U-Net only).

    Returns
    -------
    np.ndarray
        float32 probabilities in [0, 1].
    """
    if mode not in ("mean", "replace"):
        raise ValueError(f"mode must be 'mean' or 'replace', got {mode!r}")
    a = np.asarray(prox_prob, dtype=np.float32)
    b = np.asarray(unet_prob, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"prox_prob has shape {a.shape} but unet_prob has shape {b.shape}")
    if mode == "replace":
        return np.clip(b, 0.0, 1.0)
    return np.clip((a + b) * 0.5, 0.0, 1.0)


# ----------------------------------------------------------------------
# budget
# ----------------------------------------------------------------------
#: Seconds of one training batch for the reference shape (width 16, depth 3,
#: patch 64, batch 2) when nothing better is known.  CPU: 3.8 s measured on a
#: shared 2-core x86_64 machine (benchmarks/results/unet.md).  CUDA: not
#: measured in this project; 0.1 s is a guess for a T4/P100.  Prefer a
#: measurement with :func:`time_train_step`.
REFERENCE_STEP_SECONDS = {"cpu": 3.8, "cuda": 0.1}
_REFERENCE = UNetParams()


def time_train_step(params: UNetParams, *, device: str = "auto", repeats: int = 2) -> float:
    """Measure the seconds of one training batch (forward + backward + step).

    Runs one warm-up batch and ``repeats`` timed ones on random data; meant
    for a preflight so :func:`estimate_cost` gets a measured figure.
    """
    torch = require_torch()
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    dev = resolve_device(device)
    use_amp = bool(params.amp) and dev.startswith("cuda")
    model = build_unet(params).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=params.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(params.seed)
    shape = (params.batch,) + (params.patch,) * 3
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 3, shape, dtype=np.uint8)
    x, t, m = _to_batch(torch, images, labels, dev)

    def step():
        _train_step(torch, model, opt, scaler, x, t, m, use_amp)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def estimate_cost(
    *,
    n_train_volumes: int,
    voxels_per_volume: float,
    params: UNetParams,
    seconds_per_patch_batch: float | None,
    n_infer_volumes: int = 0,
    device: str = "auto",
) -> float:
    """Rough seconds for U-Net training plus inference.

    Formula (``s`` = seconds of one training batch)::

        batches_per_epoch = steps_per_epoch
                            or ceil(n_train_volumes * patches_per_volume / batch)
        train   = epochs * batches_per_epoch * s * (1 + val_fraction / 3)
        windows = prod over axes of (ceil((side - patch) / step) + 1),
                  side = voxels_per_volume ** (1/3), step = patch * (1 - overlap)
        infer   = n_infer_volumes * ceil(windows / batch) * (s / 2) * (8 if tta_flip else 1)
        total   = train + infer

    A forward pass of a window batch is taken as half a training step
    (forward + backward + update); the CPU benchmark measured 0.35-0.55,
    GPUs are usually nearer 1/3, so the figure errs on the long side.  Validation
    batches are counted as a third of a step.  Without ``seconds_per_patch_batch`` the figure is
    :data:`REFERENCE_STEP_SECONDS` for ``device`` scaled by
    ``(patch / 64)**3 * (batch / 2) * (width / 16)**2`` (convolution cost
    grows with the voxels and the square of the channels).

    Parameters
    ----------
    n_train_volumes : int
        Training volumes (patches drawn from each: ``patches_per_volume``).
    voxels_per_volume : float
        Voxels of a typical volume (320**3 on Kaggle).
    params : UNetParams
        Hyper-parameters.
    seconds_per_patch_batch : float or None
        Measured seconds of one training batch (:func:`time_train_step`).
    n_infer_volumes : int
        Volumes to predict (validation + test).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available): which
        reference figure to use when ``seconds_per_patch_batch`` is None.

    Returns
    -------
    float
        Projected seconds.
    """
    if n_train_volumes < 0:
        raise ValueError(f"n_train_volumes must be >= 0, got {n_train_volumes!r}")
    if n_infer_volumes < 0:
        raise ValueError(f"n_infer_volumes must be >= 0, got {n_infer_volumes!r}")
    if not voxels_per_volume > 0:
        raise ValueError(f"voxels_per_volume must be > 0, got {voxels_per_volume!r}")
    if seconds_per_patch_batch is None:
        if str(device) == "auto":
            kind = "cuda" if cuda_available() else "cpu"
        else:
            kind = "cuda" if str(device).startswith("cuda") else "cpu"
        s = REFERENCE_STEP_SECONDS[kind] * (
            (params.patch / _REFERENCE.patch) ** 3
            * (params.batch / _REFERENCE.batch)
            * (params.width / _REFERENCE.width) ** 2
        )
    else:
        if not seconds_per_patch_batch > 0:
            raise ValueError(
                f"seconds_per_patch_batch must be > 0 or None, got {seconds_per_patch_batch!r}"
            )
        s = float(seconds_per_patch_batch)
    per_epoch = params.steps_per_epoch or math.ceil(
        n_train_volumes * params.patches_per_volume / params.batch
    )
    train = params.epochs * per_epoch * s * (1.0 + params.val_fraction / 3.0)
    side = float(voxels_per_volume) ** (1.0 / 3.0)
    step = max(1.0, round(params.patch * (1.0 - params.overlap)))
    per_axis = math.ceil(max(0.0, side - params.patch) / step) + 1
    windows = per_axis**3
    infer = (
        n_infer_volumes
        * math.ceil(windows / params.batch)
        * (s / 2.0)
        * (8 if params.tta_flip else 1)
    )
    return float(train + infer)
