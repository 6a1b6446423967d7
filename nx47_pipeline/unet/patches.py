"""Training patches: label-guided crops of (image, label) pairs.

Labels: 0 background, 1 surface, 2 unlabelled.  Label 2 and padding
(:data:`IGNORE`, the same value) are excluded from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage as ndi

#: Label value that is excluded from the loss (unlabelled voxels and padding).
IGNORE = 2


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
    priors : np.ndarray or None
        ``(n, p, p, p)`` uint8 prior probabilities (``round(255 * p)``) of
        the ``fit_prox`` model, the U-Net's second input channel; None when
        the U-Net takes intensities only.
    """

    images: np.ndarray
    labels: np.ndarray
    volume_ids: list[str] = field(default_factory=list)
    origins: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    priors: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.shape != self.labels.shape or self.images.ndim != 4:
            raise ValueError(
                f"PatchSet images and labels must both be (n, p, p, p); got "
                f"{self.images.shape} and {self.labels.shape}"
            )
        if self.priors is not None and self.priors.shape != self.images.shape:
            raise ValueError(
                f"PatchSet priors must have the images' shape {self.images.shape}, got {self.priors.shape}"
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
            None if self.priors is None else self.priors[index],
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


def quantize_prior(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as the uint8 ``round(255 * p)`` that patches
    store (inference quantizes the same way, so both see the same values)."""
    return np.rint(np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _prior_of(prior: Callable[[np.ndarray], np.ndarray], region: np.ndarray, what: str) -> np.ndarray:
    """``prior(region)`` checked for ``region``'s shape and quantized."""
    prob = np.asarray(prior(region))
    if prob.shape != region.shape:
        raise ValueError(f"prior returned shape {prob.shape} for {what} of shape {region.shape}")
    return quantize_prior(prob)


def _prior_patch(image: np.ndarray, origin: np.ndarray, patch: int,
                 prior: Callable[[np.ndarray], np.ndarray], margin: int) -> np.ndarray:
    """``prior`` of the patch at ``origin``, computed on the patch and a
    ``margin`` of context (clipped to the volume, where the filters see the
    volume's own border as they do on the whole volume); padding is 0."""
    lo = np.maximum(origin - margin, 0)
    hi = np.minimum(origin + patch + margin, np.array(image.shape))
    region = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return _crop(_prior_of(prior, region, "a region"), origin - lo, patch, 0)


def extract_patches(
    volumes: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    patch: int,
    patches_per_volume: int,
    label_guided_frac: float,
    seed: int,
    on_file: Callable[[int, int, str], None] | None = None,
    n_volumes: int | None = None,
    prior: Callable[[np.ndarray], np.ndarray] | None = None,
    prior_margin: int = 16,
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
    prior : callable, optional
        ``prior(image_region) -> probabilities`` of the same shape (e.g. the
        ``fit_prox`` model's map); when given, every patch also gets its
        prior (``PatchSet.priors``), computed on the patch plus
        ``prior_margin`` voxels of context, not on the whole volume.
    prior_margin : int
        Context around each patch for ``prior`` (at least the reach of its
        filters: 4 sigma of the largest scale).

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
    if isinstance(prior_margin, bool) or int(prior_margin) != prior_margin or prior_margin < 0:
        raise ValueError(f"prior_margin must be an integer >= 0, got {prior_margin!r}")
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
    priors: list[np.ndarray] = []
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
        whole_prior = None
        if prior is not None and patches_per_volume * (patch + 2 * int(prior_margin)) ** 3 >= image.size:
            # the crops with their context would cost more than the volume once
            whole_prior = _prior_of(prior, image, f"volume {vid!r}")
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
            if whole_prior is not None:
                priors.append(_crop(whole_prior, origin, patch, 0))
            elif prior is not None:
                priors.append(_prior_patch(image, origin, patch, prior, int(prior_margin)))
            ids.append(str(vid))
            origins.append(origin.astype(np.int64))
        del image, label, fg, whole_prior
        if on_file is not None:
            on_file(done, int(total), str(vid))
    if not images:
        empty = np.zeros((0, patch, patch, patch), dtype=np.uint8)
        return PatchSet(empty, empty.copy(), [], np.zeros((0, 3), dtype=np.int64),
                        None if prior is None else empty.copy())
    return PatchSet(np.stack(images), np.stack(labels), ids, np.stack(origins),
                    np.stack(priors) if prior is not None else None)


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


def surface_skeleton(label: np.ndarray) -> np.ndarray:
    """The medial surface of the label-1 voxels of a 3D ``label``: the voxels
    whose distance to the nearest non-surface voxel is a maximum of their
    3x3x3 neighbourhood (the middle voxel or two of a sheet, whatever its
    orientation).  A subset of the label-1 voxels; the target of the
    skeleton-recall loss term.

    Parameters
    ----------
    label : np.ndarray
        3D labels (0, 1, :data:`IGNORE`).

    Returns
    -------
    np.ndarray
        bool, ``label``'s shape.
    """
    if label.ndim != 3:
        raise ValueError(f"label must be 3D, got shape {label.shape}")
    fg = label == 1
    if not fg.any():
        return fg
    dist = ndi.distance_transform_edt(fg)
    return fg & (dist >= ndi.maximum_filter(dist, size=3, mode="nearest"))
