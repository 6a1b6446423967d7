"""Optional 3D U-Net stage: params, patches, net, train, infer.

Everything here is plain functions that take callbacks; this package knows
nothing of telemetry.  The run's stages turn ``on_file`` / ``on_batch`` /
``on_epoch`` / ``on_window`` into PROGRESS_UPDATE and METRIC events and
cancellation checks.  ``import nx47_pipeline.unet`` does not import torch
(:mod:`.backend` imports it lazily, with an actionable error).  The cost
model of training and inference lives with the rest of the planning math in
:mod:`nx47_pipeline.run.budget`.  Design notes: ``docs/unet.md``.
"""

from nx47_pipeline.unet.backend import (
    TORCH_HINT,
    UNetUnavailable,
    cuda_available,
    require_torch,
    resolve_device,
    torch_available,
)
from nx47_pipeline.unet.infer import fuse_probabilities, predict_volume
from nx47_pipeline.unet.net import build_unet, masked_bce_dice_loss, skeleton_recall_loss
from nx47_pipeline.unet.params import UNetParams, params_from_config
from nx47_pipeline.unet.patches import (
    IGNORE,
    PatchSet,
    extract_patches,
    quantize_prior,
    split_patches,
    surface_skeleton,
)
from nx47_pipeline.unet.train import CHECKPOINT_NAME, TrainResult, load_unet, time_train_step, train_unet

__all__ = [
    "IGNORE",
    "CHECKPOINT_NAME",
    "TORCH_HINT",
    "UNetUnavailable",
    "require_torch",
    "torch_available",
    "cuda_available",
    "resolve_device",
    "UNetParams",
    "params_from_config",
    "PatchSet",
    "quantize_prior",
    "extract_patches",
    "split_patches",
    "build_unet",
    "masked_bce_dice_loss",
    "skeleton_recall_loss",
    "surface_skeleton",
    "TrainResult",
    "train_unet",
    "load_unet",
    "predict_volume",
    "fuse_probabilities",
    "time_train_step",
]
