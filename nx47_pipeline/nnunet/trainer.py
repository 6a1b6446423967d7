"""``python -m nx47_pipeline.nnunet.trainer``: nnU-Net's own ``nnUNetv2_train``
command line with a trainer of ours whose length is set on the command line
and which reports to an NX47 run.

nnU-Net's stock trainers fix their epochs in the class (``nnUNetTrainer``:
1000 epochs of 250 iterations; ``nnUNetTrainer_1epoch``, ``_5epochs``, ...:
a few epochs, still 250 iterations each).  :class:`nnUNetTrainer_nx47`
takes them from ``--epochs``, ``--iterations`` and ``--val-iterations``,
and skips nnU-Net's final validation with ``--skip-final-validation`` (removed from the arguments before nnU-Net parses the rest), so a tiny
training on the CPU is one command::

    nnUNet_raw=RAW nnUNet_preprocessed=PRE nnUNet_results=RES \\
    python -m nx47_pipeline.nnunet.trainer 47 3d_fullres 0 -device cpu --epochs 1 --iterations 5

Every other argument is ``nnUNetv2_train``'s (``-p`` plans, ``--c``
continue, ``--npz`` ...).  The network, loss, augmentation and checkpoints
are ``nnUNetTrainer``'s, so an imported result folder needs nothing of this
module (``nx47 import-nnunet`` builds the network from the plans).

What an NX47 run adds (``nx47 run --model-kind nnunet``,
:mod:`nx47_pipeline.nnunet.train`):

* ``--events FD``: one JSON object per line on that file descriptor --
  ``start`` (epochs, iterations, patch, batch), ``timing`` (seconds per
  iteration and per inference window, measured after the first iterations),
  ``epochs`` (after the first whole epoch: the epochs trained, those asked
  or fewer when the deadline cannot hold them),
  ``iteration`` (loss), ``epoch`` (train and validation loss, pseudo-Dice,
  learning rate, seconds), ``deadline`` and ``done``;
* ``--deadline T`` (Unix time) and ``--reserve-windows N``: the training
  stops at ``T - N x`` (seconds per window), with ``checkpoint_final.pth``
  holding the weights it has; when the measured pace cannot finish the
  asked epochs, fewer epochs are trained so that nnU-Net's learning-rate
  schedule still ends (recorded in ``nx47_epochs.json`` of the output
  folder, so a continued training keeps the same schedule);
* ``--seed S``: every random generator is seeded from ``(S, epoch)`` at the
  start of each epoch and the checkpoint is written after every epoch
  (atomically), so a training killed and continued with ``--c`` from its
  last epoch gives the weights of one never stopped (with nnU-Net's
  augmentation in process, ``nnUNet_n_proc_DA=0``).

This module imports nnunetv2 at the top: import it only where nnunetv2 is
installed, in a process whose nnU-Net variables are set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
from nnunetv2.run import run_training
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.nnunet.train import EPOCHS_FILE

TRAINER_NAME = "nnUNetTrainer_nx47"
#: Iterations timed before the pace is reported and the epochs decided.
TIMED_ITERATIONS = 3


class _Halt(Exception):
    """The deadline: stop the loop, keep the weights."""


class nnUNetTrainer_nx47(nnUNetTrainer):  # noqa: N801 - nnU-Net's trainer naming
    """``nnUNetTrainer`` with its length and reporting from the class attributes below (set by :func:`main`)."""

    EPOCHS = 1000
    ITERATIONS = 250
    VAL_ITERATIONS = 50
    FINAL_VALIDATION = True
    EVENTS_FD: int | None = None
    DEADLINE: float | None = None  # Unix time
    RESERVE_WINDOWS = 0
    SEED: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(self.EPOCHS)
        self.num_iterations_per_epoch = int(self.ITERATIONS)
        self.num_val_iterations_per_epoch = int(self.VAL_ITERATIONS)
        self.save_every = 1
        self._events = os.fdopen(self.EVENTS_FD, "w", buffering=1) if self.EVENTS_FD is not None else None
        self._deadline = self.DEADLINE

    # -- reporting ---------------------------------------------------------
    def _emit(self, kind: str, **fields) -> None:
        if self._events is not None:
            self._events.write(json.dumps({"type": kind, **fields}) + "\n")

    def _seed(self, epoch: int) -> None:
        if self.SEED is None:
            return
        s = (int(self.SEED) * 100_003 + int(epoch)) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    # -- nnU-Net's hooks ---------------------------------------------------
    def on_train_start(self):
        self._seed(-1)  # the network's initial weights (a continued training loads its own)
        super().on_train_start()
        path = os.path.join(self.output_folder, EPOCHS_FILE)
        decided = read_json(path)
        if decided:  # a continued training keeps the epochs chosen before
            self._set_epochs(int(decided["epochs"]))

    def _set_epochs(self, n: int) -> None:
        """Train ``n`` epochs; nnU-Net's polynomial learning rate then ends at epoch ``n``."""
        self.num_epochs = int(n)
        self.lr_scheduler.max_steps = int(n)

    def on_epoch_start(self):
        self._seed(self.current_epoch)
        super().on_epoch_start()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary name and renamed (a kill never leaves half a file)."""
        tmp = filename + ".partial"
        super().save_checkpoint(tmp)
        if os.path.exists(tmp):
            os.replace(tmp, filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (sliding-window prediction of the fold's
        validation cases), skipped with ``--skip-final-validation``."""
        if self.FINAL_VALIDATION:
            super().perform_actual_validation(save_probabilities)

    # -- the loop ----------------------------------------------------------
    def _window_seconds(self) -> float:
        """One inference window: the network on one patch, no gradients (best of two)."""
        was = self.network.training
        self.network.eval()
        x = torch.zeros((1, self.num_input_channels, *self.configuration_manager.patch_size), device=self.device)
        best = math.inf
        with torch.no_grad():
            for _ in range(2):
                t0 = time.perf_counter()
                self.network(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                best = min(best, time.perf_counter() - t0)
        self.network.train(was)
        return best

    def _report_pace(self, s_iter: float, s_window: float) -> None:
        """Report the pace of the first iterations and one inference window;
        the deadline keeps the reserved windows back from here."""
        self._pace = (s_iter, s_window)
        self._emit("timing", seconds_per_iteration=s_iter, seconds_per_window=s_window)
        if self._deadline is not None:
            self._deadline -= int(self.RESERVE_WINDOWS) * s_window

    def _decide_epochs(self, s_epoch: float) -> None:
        """After this process's first whole epoch (``s_epoch`` seconds, its
        validation and checkpoint included): when the deadline cannot hold
        the epochs asked, train fewer.  Recorded in ``EPOCHS_FILE``, which a
        continued training reads instead of deciding again."""
        path = os.path.join(self.output_folder, EPOCHS_FILE)
        if self._deadline is None or os.path.isfile(path):
            return
        s_iter, s_window = getattr(self, "_pace", (float("nan"), float("nan")))
        left = self._deadline - time.time()
        epochs = min(self.current_epoch + max(int(left // max(s_epoch, 1e-9)), 0), self.num_epochs)
        epochs = max(epochs, self.current_epoch, 1)
        self._emit("epochs", epochs=epochs, asked=self.num_epochs, seconds_per_epoch=s_epoch,
                   seconds_per_iteration=s_iter, seconds_left=left)
        if epochs < self.num_epochs:
            self._set_epochs(epochs)
        write_json(path, {"epochs": epochs, "asked": int(self.EPOCHS), "seconds_per_epoch": s_epoch,
                          "seconds_per_iteration": s_iter, "seconds_per_window": s_window})

    def _check_deadline(self, epoch: int, iteration: int) -> None:
        if self._deadline is not None and time.time() > self._deadline:
            self._emit("deadline", epoch=epoch, iteration=iteration)
            raise _Halt

    def run_training(self):
        """nnU-Net's epoch loop (its hooks in its order) with a report per
        iteration and per epoch, the pace measured on the first iterations,
        the epochs decided after the first whole epoch and the deadline
        checked before every iteration."""
        self.on_train_start()
        self._emit("start", epoch=self.current_epoch, epochs=self.num_epochs,
                   iterations=self.num_iterations_per_epoch, val_iterations=self.num_val_iterations_per_epoch,
                   patch=[int(v) for v in self.configuration_manager.patch_size], batch=int(self.batch_size),
                   device=str(self.device))
        timed = decided = False
        try:
            while self.current_epoch < self.num_epochs:
                epoch = self.current_epoch
                t_epoch = time.time()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for it in range(self.num_iterations_per_epoch):
                    self._check_deadline(epoch, it)
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self._emit("iteration", epoch=epoch, iteration=it + 1,
                               iterations=self.num_iterations_per_epoch, loss=float(outputs[-1]["loss"]))
                    if not timed and it + 1 == min(TIMED_ITERATIONS, self.num_iterations_per_epoch):
                        timed = True
                        self._report_pace((time.time() - t_epoch) / (it + 1), self._window_seconds())
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val)
                log = self.logger
                self._emit("epoch", epoch=epoch, epochs=self.num_epochs,
                           train_loss=float(log.get_value("train_losses", step=-1)),
                           val_loss=float(log.get_value("val_losses", step=-1)),
                           pseudo_dice=float(np.nanmean(log.get_value("dice_per_class_or_region", step=-1))),
                           lr=float(self.optimizer.param_groups[0]["lr"]), seconds=time.time() - t_epoch)
                self.on_epoch_end()
                if timed and not decided:
                    decided = True
                    self._decide_epochs(time.time() - t_epoch)
        except _Halt:
            pass
        self.on_train_end()
        self._emit("done", epochs_done=int(self.current_epoch), epochs=int(self.num_epochs))


def _find_trainer(name: str, _find=run_training.recursive_find_trainer_class_by_name):
    return nnUNetTrainer_nx47 if name == TRAINER_NAME else _find(name)


def main(argv: list[str] | None = None) -> None:
    """Parse our flags, then run ``nnUNetv2_train`` with the rest (``-tr`` defaults to ours)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--epochs", type=int, default=nnUNetTrainer_nx47.EPOCHS)
    p.add_argument("--iterations", type=int, default=nnUNetTrainer_nx47.ITERATIONS)
    p.add_argument("--val-iterations", type=int, default=nnUNetTrainer_nx47.VAL_ITERATIONS)
    p.add_argument("--skip-final-validation", action="store_true")
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--deadline", type=float, default=None)
    p.add_argument("--reserve-windows", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    ours, rest = p.parse_known_args(argv)
    for name, value in (("epochs", ours.epochs), ("iterations", ours.iterations),
                        ("val-iterations", ours.val_iterations)):
        if value < 1:
            raise SystemExit(f"--{name} must be >= 1, got {value}")
    if ours.reserve_windows < 0:
        raise SystemExit(f"--reserve-windows must be >= 0, got {ours.reserve_windows}")
    t = nnUNetTrainer_nx47
    t.EPOCHS, t.ITERATIONS, t.VAL_ITERATIONS = ours.epochs, ours.iterations, ours.val_iterations
    t.FINAL_VALIDATION = not ours.skip_final_validation
    t.EVENTS_FD, t.DEADLINE, t.RESERVE_WINDOWS, t.SEED = ours.events, ours.deadline, ours.reserve_windows, ours.seed
    if "-tr" not in rest:
        rest += ["-tr", TRAINER_NAME]
    run_training.recursive_find_trainer_class_by_name = _find_trainer
    sys.argv = ["nnUNetv2_train", *rest]
    run_training.run_training_entry()


if __name__ == "__main__":
    main()
