"""The 3D U-Net module and its masked BCE + Dice loss (torch, imported lazily)."""

from __future__ import annotations

import functools
import math

from nx47_pipeline.unet.backend import require_torch
from nx47_pipeline.unet.params import UNetParams


#: Prior probabilities are clamped to ``[PRIOR_EPS, 1 - PRIOR_EPS]`` (half a
#: uint8 step) before their logit is taken.
PRIOR_EPS = 0.5 / 255.0


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
        """Plain 3D U-Net: conv blocks, strided-conv down, transposed-conv up.

        With a second input channel (the prior probabilities) the output is
        the prior's logit plus the network's correction, and the head starts
        at zero: an untrained network reproduces the prior exactly, and
        training only moves it where the labels disagree with it."""

        def __init__(self, width: int, depth: int, norm: str, in_channels: int = 1) -> None:
            super().__init__()
            self.residual_prior = in_channels == 2
            chans = [width * 2**k for k in range(depth + 1)]
            self.encoders = nn.ModuleList()
            self.downs = nn.ModuleList()
            c_prev = in_channels
            for k in range(depth):
                self.encoders.append(ConvBlock(c_prev, chans[k], norm))
                self.downs.append(nn.Conv3d(chans[k], chans[k], 2, stride=2))
                c_prev = chans[k]
            self.bottleneck = ConvBlock(chans[depth - 1] if depth else in_channels, chans[depth], norm)
            self.ups = nn.ModuleList()
            self.decoders = nn.ModuleList()
            for k in reversed(range(depth)):
                self.ups.append(nn.ConvTranspose3d(chans[k + 1], chans[k], 2, stride=2))
                self.decoders.append(ConvBlock(2 * chans[k], chans[k], norm))
            self.head = nn.Conv3d(chans[0], 1, 1)
            if self.residual_prior:
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)

        def forward(self, x):
            prior_logit = None
            if self.residual_prior:
                # the channel holds 2p - 1 of the uint8-quantized prior p
                p = ((x[:, 1:2].float() + 1.0) * 0.5).clamp(PRIOR_EPS, 1.0 - PRIOR_EPS)
                prior_logit = torch.log(p) - torch.log1p(-p)
            skips = []
            for enc, down in zip(self.encoders, self.downs):
                x = enc(x)
                skips.append(x)
                x = down(x)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            out = self.head(x)
            return out if prior_logit is None else out + prior_logit

    return UNet3D


def build_unet(params: UNetParams):
    """Build the 3D U-Net described by ``params``.

    Parameters
    ----------
    params : UNetParams
        ``width``, ``depth``, ``norm`` and ``prior`` (the number of input
        channels) define the network.

    Returns
    -------
    torch.nn.Module
        Input ``(n, params.in_channels, d, h, w)`` float (with ``prior``
        the output is the prior's logit plus a correction that starts at
        zero), output ``(n, 1, d, h, w)`` logits;
        ``d, h, w`` must be divisible by ``2**depth``.
    """
    if not isinstance(params, UNetParams):
        raise TypeError(f"params must be a UNetParams, got {type(params).__name__}")
    torch = require_torch()
    cls = _model_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(params.seed))
        return cls(params.width, params.depth, params.norm, params.in_channels)


def input_tensor(torch, images, priors=None):
    """The network input ``(n, c, d, h, w)`` from uint8 tensors: intensities
    scaled to [-1, 1], then the uint8 prior probabilities (``255 * p``)
    scaled the same way when given."""
    x = (images.float() / 127.5 - 1.0).unsqueeze(1)
    if priors is None:
        return x
    return torch.cat([x, (priors.float() / 127.5 - 1.0).unsqueeze(1)], dim=1)


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


def skeleton_recall_loss(logits, skeleton, mask, *, eps: float = 1.0):
    """``1 - sum(p * s) / sum(s)`` over ``mask``: the share of the label's
    skeleton ``s`` (:func:`nx47_pipeline.unet.patches.surface_skeleton`) the
    probabilities ``p`` miss.  It punishes holes in thin surfaces, which cost
    the TopoScore and split sheets (VOI), far more than BCE or Dice do.

    Parameters
    ----------
    logits : torch.Tensor
        Raw network output.
    skeleton : torch.Tensor
        0/1 skeleton of the targets, same shape.
    mask : torch.Tensor
        Voxels that count, same shape.
    eps : float
        Smoothing; an empty skeleton gives 0.

    Returns
    -------
    torch.Tensor
        Scalar loss in [0, 1].
    """
    if logits.shape != skeleton.shape or logits.shape != mask.shape:
        raise ValueError(
            f"logits, skeleton and mask must have the same shape, got "
            f"{tuple(logits.shape)}, {tuple(skeleton.shape)}, {tuple(mask.shape)}"
        )
    torch = require_torch()
    s = skeleton.float() * mask.float()
    p = torch.sigmoid(logits.float())
    total = s.sum()
    return (total - (p * s).sum()) / (total + eps)
