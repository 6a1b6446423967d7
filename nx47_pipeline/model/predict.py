"""The one path from a volume to a probability map and a mask.

Every consumer goes through these functions: the search (several linear
models on one validation volume), validation and segmentation (the fitted
model, fused with the U-Net when it is trained), and ``nx47 infer``-style
callers of :func:`segment_volume`.

* :func:`linear_probabilities` computes the filter bank once per z-slab and
  applies each linear model to it.
* :func:`probability` adds the optional U-Net (:class:`UNetPart`) and fuses.
* :func:`segment_volume` post-processes the probabilities into the uint8 0/1
  submission mask.

The models' intercepts already carry the class-prior correction
(:func:`nx47_pipeline.model.linear.prior_shift`, applied by ``fit_prox``), so
nothing here adjusts probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import expit

from nx47_pipeline.model.features import feature_names as _feature_names
from nx47_pipeline.model.features import iter_feature_slabs
from nx47_pipeline.model.postprocess import _check_3d, postprocess
from nx47_pipeline.unet.infer import fuse_probabilities
from nx47_pipeline.unet.infer import predict_volume as unet_predict_volume

#: ``on_progress(done, total, what)``; may raise to cancel.
ProgressFn = Callable[[int, int, str], None]
#: ``on_progress(done, total, what, frac)``: ``frac`` is the fraction of the
#: volume's whole probability work done.
FracProgressFn = Callable[[int, int, str, float], None]


def linear_probabilities(
    volume: np.ndarray,
    models: Sequence[Any],
    *,
    slab: int = 32,
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """Probabilities of one or more linear models on a volume, computing the
    filter bank once per z-slab.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume.
    models : sequence of LogisticModel
        Fitted models sharing one filter bank (``scales``).
    slab : int
        z-slab thickness; memory holds one slab of features at a time.
    on_progress : callable, optional
        ``on_progress(done_z, total_z, what)`` after every slab.

    Returns
    -------
    ndarray, float32, shape (len(models), Z, Y, X)
    """
    volume = _check_3d("volume", np.asarray(volume))
    if not models:
        raise ValueError("models must hold at least one model, got an empty sequence")
    scales = tuple(models[0].scales)
    expected = _feature_names(scales)
    weights = []
    for k, model in enumerate(models):
        if tuple(model.scales) != scales:
            raise ValueError(f"models[{k}] uses scales {tuple(model.scales)}, models[0] uses {scales}")
        if list(model.feature_names) != expected:
            raise ValueError(
                f"models[{k}] features do not match the filter bank of scales "
                f"{scales}: {list(model.feature_names)[:3]}... vs {expected[:3]}..."
            )
        w, b = model.raw_weights()
        weights.append((w.astype(np.float32), np.float32(b)))
    out = np.empty((len(models),) + volume.shape, dtype=np.float32)
    for z0, z1, feats in iter_feature_slabs(volume, scales=scales, slab=slab, on_progress=on_progress):
        flat = feats.reshape(feats.shape[0], -1).T
        for k, (w32, b32) in enumerate(weights):
            d = flat @ w32  # gemv
            d += b32
            expit(d, out=d)
            out[k, z0:z1] = d.reshape(feats.shape[1:])
    return out


@dataclass(frozen=True)
class UNetPart:
    """A trained U-Net and how to apply it next to the linear model.

    Attributes
    ----------
    net : torch.nn.Module
        From :func:`nx47_pipeline.unet.train_unet` or ``load_unet``.
    params : UNetParams
        Its hyper-parameters (patch, overlap, batch, TTA).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
    fuse : str
        How the two maps combine (:func:`nx47_pipeline.unet.fuse_probabilities`).
    """

    net: Any
    params: Any
    device: str = "auto"
    fuse: str = "mean"


def probability(
    volume: np.ndarray,
    model: Any,
    *,
    unet: UNetPart | None = None,
    slab: int = 32,
    on_progress: FracProgressFn | None = None,
) -> np.ndarray:
    """Probability map of ``model`` on ``volume``, fused with ``unet`` when given.

    ``on_progress(done, total, what, frac)`` reports sub-steps; the linear
    model takes the first half of ``frac`` and the U-Net's sliding windows
    the second when the U-Net is on.

    Returns
    -------
    ndarray, float32, shape of ``volume``
    """
    share = 0.5 if unet is not None else 1.0

    def on_slab(done: int, total: int, what: str) -> None:
        if on_progress is not None:
            on_progress(done, total, what, share * done / max(total, 1))

    prob = model.predict_volume(volume, slab=slab, on_progress=on_slab)
    if unet is None:
        return prob

    def on_window(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total, "U-Net windows", share + (1 - share) * done / max(total, 1))

    up = unet_predict_volume(unet.net, volume, params=unet.params, device=unet.device, on_window=on_window,
                             prior=prob if unet.params.prior else None)
    return fuse_probabilities(prob, up, mode=unet.fuse)


def segment_volume(
    volume: np.ndarray,
    model: Any,
    *,
    low: float = 0.35,
    high: float = 0.5,
    closing_radius: Sequence[int] = (1, 2, 2),
    min_size: int = 100,
    thin: bool = False,
    slab: int = 32,
    unet: UNetPart | None = None,
    on_progress: ProgressFn | None = None,
    return_prob: bool = False,
    plug_size: int = 0,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one volume with a fitted model (and the U-Net when given).

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume.
    model : LogisticModel or ContextModel
        From :func:`nx47_pipeline.model.linear.fit_prox` (with its
        auto-context rounds: :func:`nx47_pipeline.model.context.fit_context`).
    low, high, closing_radius, min_size, thin, plug_size
        See :func:`nx47_pipeline.model.postprocess.postprocess`.
    slab : int
        z-slab thickness for the feature computation.
    unet : UNetPart, optional
        Fused with the linear model's probabilities.
    on_progress : callable, optional
        ``on_progress(done, total, what)``: once per feature slab (per window
        batch for the U-Net), then once for post-processing; may raise to
        cancel.
    return_prob : bool
        Also return the float32 probability map.

    Returns
    -------
    mask : ndarray of uint8 in {0, 1}, shape of ``volume``
    prob : ndarray of float32, only when ``return_prob``
    """
    volume = _check_3d("volume", volume)
    if isinstance(slab, bool) or int(slab) != slab or slab < 1:
        raise ValueError(f"slab must be a positive integer, got {slab!r}")
    n_slabs = -(-volume.shape[0] // int(slab))
    seen = {"windows": 0}

    def on_p(done: int, total: int, what: str, frac: float) -> None:
        if on_progress is None:
            return
        if what == "U-Net windows":  # after the linear model's slabs
            seen["windows"] = total
            on_progress(n_slabs + done, n_slabs + total + 1, what)
        else:
            on_progress(done, n_slabs + 1, what)

    prob = probability(volume, model, unet=unet, slab=slab, on_progress=on_p)
    mask = postprocess(prob, low=low, high=high, closing_radius=closing_radius, min_size=min_size, thin=thin,
                       plug_size=plug_size)
    if on_progress is not None:
        total = n_slabs + seen["windows"] + 1
        on_progress(total, total, "postprocess")
    return (mask, prob) if return_prob else mask
