"""``python -m nx47_pipeline.nnunet.trainer``: nnU-Net's own ``nnUNetv2_train``
command line with a trainer of ours whose length is set on the command line.

nnU-Net's stock trainers fix their epochs in the class (``nnUNetTrainer``:
1000 epochs of 250 iterations; ``nnUNetTrainer_1epoch``, ``_5epochs``, ...:
a few epochs, still 250 iterations each).  :class:`nnUNetTrainer_nx47`
takes them from ``--epochs``, ``--iterations`` and ``--val-iterations``,
and skips nnU-Net's final validation with ``--skip-final-validation`` (removed from the arguments before nnU-Net parses the rest), so a tiny
training on the CPU is one command::

    nnUNet_raw=RAW nnUNet_preprocessed=PRE nnUNet_results=RES \\
    python -m nx47_pipeline.nnunet.trainer 47 3d_fullres 0 -device cpu --epochs 1 --iterations 5

Every other argument is ``nnUNetv2_train``'s (``-p`` plans, ``--c``
continue, ``--npz`` ...).  The trainer is otherwise ``nnUNetTrainer``: the
same network (built from the plans), loss, augmentation and checkpoints, so
an imported result folder needs nothing of this module (``nx47
import-nnunet`` builds the network from the plans).  This module imports
nnunetv2 at the top: import it only where nnunetv2 is installed.
"""

from __future__ import annotations

import argparse
import sys

import torch
from nnunetv2.run import run_training
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINER_NAME = "nnUNetTrainer_nx47"


class nnUNetTrainer_nx47(nnUNetTrainer):  # noqa: N801 - nnU-Net's trainer naming
    """``nnUNetTrainer`` with its length from the class attributes below (set by :func:`main`)."""

    EPOCHS = 1000
    ITERATIONS = 250
    VAL_ITERATIONS = 50
    FINAL_VALIDATION = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(self.EPOCHS)
        self.num_iterations_per_epoch = int(self.ITERATIONS)
        self.num_val_iterations_per_epoch = int(self.VAL_ITERATIONS)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (sliding-window prediction of the fold's
        validation cases), skipped with ``--skip-final-validation``."""
        if self.FINAL_VALIDATION:
            super().perform_actual_validation(save_probabilities)


def _find_trainer(name: str, _find=run_training.recursive_find_trainer_class_by_name):
    return nnUNetTrainer_nx47 if name == TRAINER_NAME else _find(name)


def main(argv: list[str] | None = None) -> None:
    """Parse our length flags, then run ``nnUNetv2_train`` with the rest (``-tr`` defaults to ours)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--epochs", type=int, default=nnUNetTrainer_nx47.EPOCHS)
    p.add_argument("--iterations", type=int, default=nnUNetTrainer_nx47.ITERATIONS)
    p.add_argument("--val-iterations", type=int, default=nnUNetTrainer_nx47.VAL_ITERATIONS)
    p.add_argument("--skip-final-validation", action="store_true")
    ours, rest = p.parse_known_args(argv)
    for name, value in (("epochs", ours.epochs), ("iterations", ours.iterations),
                        ("val-iterations", ours.val_iterations)):
        if value < 1:
            raise SystemExit(f"--{name} must be >= 1, got {value}")
    nnUNetTrainer_nx47.EPOCHS = ours.epochs
    nnUNetTrainer_nx47.ITERATIONS = ours.iterations
    nnUNetTrainer_nx47.VAL_ITERATIONS = ours.val_iterations
    nnUNetTrainer_nx47.FINAL_VALIDATION = not ours.skip_final_validation
    if "-tr" not in rest:
        rest += ["-tr", TRAINER_NAME]
    run_training.recursive_find_trainer_class_by_name = _find_trainer
    sys.argv = ["nnUNetv2_train", *rest]
    run_training.run_training_entry()


if __name__ == "__main__":
    main()
