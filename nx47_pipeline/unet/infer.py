"""U-Net inference: Gaussian-weighted sliding windows, optional flip TTA, fusion."""

from __future__ import annotations

from typing import Callable

import numpy as np

from nx47_pipeline.unet.backend import require_torch, resolve_device
from nx47_pipeline.unet.net import input_tensor
from nx47_pipeline.unet.params import UNetParams
from nx47_pipeline.unet.patches import quantize_prior


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
    prior: np.ndarray | None = None,
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
    prior : np.ndarray, optional
        Probabilities in [0, 1] of ``volume``'s shape (the ``fit_prox``
        map): the second input channel, required when ``params.prior``.
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
    if params.prior and prior is None:
        raise ValueError("params.prior is True: predict_volume needs prior, the fit_prox probability map")
    if prior is not None:
        prior = np.asarray(prior)
        if prior.shape != volume.shape:
            raise ValueError(f"prior has shape {prior.shape}, volume has shape {volume.shape}")
    dev = resolve_device(device)
    use_amp = bool(params.amp) and dev.startswith("cuda")
    p = params.patch
    shape = volume.shape
    pad = [(0, max(0, p - s)) for s in shape]
    work = np.pad(volume, pad, mode="edge") if any(b for _, b in pad) else volume
    pwork = None
    if params.prior:
        q = quantize_prior(prior)
        pwork = np.pad(q, pad, mode="edge") if any(b for _, b in pad) else q
    step = max(1, int(round(p * (1.0 - params.overlap))))
    grid = [_positions(s, p, step) for s in work.shape]
    corners = [(z, y, x) for z in grid[0] for y in grid[1] for x in grid[2]]
    total = len(corners)
    batch = max(1, int(params.batch))

    model = model.to(dev).eval()
    src = torch.from_numpy(np.ascontiguousarray(work)).to(dev)
    psrc = None if pwork is None else torch.from_numpy(np.ascontiguousarray(pwork)).to(dev)
    acc = torch.zeros(work.shape, dtype=torch.float32, device=dev)
    norm = torch.zeros(work.shape, dtype=torch.float32, device=dev)
    weight = torch.from_numpy(_gaussian_weights(p)).to(dev)
    flips = _FLIPS if params.tta_flip else _FLIPS[:1]
    with torch.inference_mode():
        for start in range(0, total, batch):
            chunk = corners[start : start + batch]
            x = torch.stack([src[z : z + p, y : y + p, w : w + p] for z, y, w in chunk])
            pr = None if psrc is None else torch.stack([psrc[z : z + p, y : y + p, w : w + p] for z, y, w in chunk])
            x = input_tensor(torch, x, pr)
            prob = torch.zeros((x.shape[0], 1) + x.shape[2:], dtype=torch.float32, device=dev)
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

