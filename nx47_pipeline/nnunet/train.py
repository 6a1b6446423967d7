"""nnU-Net trained inside an NX47 run (``nx47 run --model-kind nnunet``).

nnU-Net's own steps, each a subprocess handing off through files as
nnU-Net does, under ``<out>/nnunet/``:

1. :func:`prepare` -- the run's train / validation pairs as nnU-Net raw data
   (:func:`~nx47_pipeline.nnunet.export.write_raw`: the run's split is
   nnU-Net's fold 0), then ``nnUNetv2_plan_and_preprocess`` for
   ``3d_fullres``; NX47's small configurations (:data:`SMALL_CONFIGURATIONS`,
   for CPUs) are added to the plans afterwards, inheriting its preprocessed
   data.
2. :func:`train` -- ``python -m nx47_pipeline.nnunet.trainer`` (nnU-Net's
   ``nnUNetv2_train`` with our trainer), always with ``--c``: a training
   killed with the run continues from its last epoch.  The trainer reports
   on a pipe (one JSON object per line, see
   :mod:`nx47_pipeline.nnunet.trainer`); each report reaches ``on_event``.

While a subprocess runs, ``on_wait(elapsed_s)`` is called every
``poll_s`` (a stage keeps reporting progress) and ``check()`` may raise to
cancel: the subprocess is then terminated (killed after a grace period) and
the exception propagates.  A subprocess dies with the process that started
it (``PR_SET_PDEATHSIG`` on Linux), so ``kill -9`` of a run leaves no
training behind.  nnU-Net's environment variables are given to the
subprocesses only (:meth:`NnUNetFolders.env`), never set in this process.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nx47_pipeline.data.discovery import VolumeRecord
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import NNUNET_PLAN_LOG, NNUNET_PREPARED, NNUNET_TRAIN_LOG
from nx47_pipeline.nnunet.export import dataset_name, write_raw

#: ``nnunet_configuration`` values NX47 adds to nnU-Net's plans: patch edge,
#: features per stage, batch size, convolutions per stage.  They inherit
#: ``3d_fullres`` (its preprocessing and normalisation) with a network small
#: enough for a CPU; ``3d_nx47_tiny`` is the tests' and the benchmark's.
SMALL_CONFIGURATIONS: dict[str, tuple[int, tuple[int, ...], int, int]] = {
    "3d_nx47_tiny": (32, (8, 16, 32), 2, 1),
    "3d_nx47_cpu": (64, (16, 32, 64, 128), 2, 2),
}
#: The configuration nnU-Net plans and preprocesses.
PLANNED = "3d_fullres"
TRAINER = "nnUNetTrainer_nx47"
#: The pace and epochs the trainer decided, in ``fold_<k>/`` (:mod:`nx47_pipeline.nnunet.trainer`'s ``EPOCHS_FILE``).
EPOCHS_FILE = "nx47_epochs.json"
#: Seconds a terminated subprocess gets before it is killed.
GRACE_S = 5.0

WaitFn = Callable[[float], None]
EventFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainSpec:
    """What nnU-Net trains (the run's ``nnunet_*`` fields).

    Attributes
    ----------
    configuration : str
        A configuration of the plans (``3d_fullres``) or one of
        :data:`SMALL_CONFIGURATIONS`.
    plans : str
        The plans identifier (nnU-Net's ``-p``; ``nnUNetPlans``).
    epochs, iterations, val_iterations : int
        Epochs, training and validation iterations per epoch.
    device : str
        ``cpu`` or ``cuda``.
    seed : int
        Seeds every epoch's random generators (a continued training equals
        an uninterrupted one with in-process augmentation).
    dataset_id : int
        nnU-Net's dataset id.
    """

    configuration: str = PLANNED
    plans: str = "nnUNetPlans"
    epochs: int = 1000
    iterations: int = 250
    val_iterations: int = 50
    device: str = "cpu"
    seed: int = 47
    dataset_id: int = 47

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations", "val_iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"nnunet_{name} must be an integer >= 1, got {v!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if not self.configuration or not self.plans:
            raise ValueError(f"nnunet_configuration and nnunet_plans must be named, got "
                             f"{self.configuration!r} / {self.plans!r}")


@dataclass(frozen=True)
class NnUNetFolders:
    """nnU-Net's three folders under ``root`` (a run's ``nnunet/``)."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment with nnU-Net's folders (for a subprocess)."""
        return {**os.environ, "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results), **extra}

    def result_folder(self, spec: TrainSpec) -> Path:
        """The trained model's folder (``nx47 import-nnunet --results``)."""
        return (self.results / dataset_name(spec.dataset_id)
                / f"{TRAINER}__{spec.plans}__{spec.configuration}")

    def plans_file(self, spec: TrainSpec) -> Path:
        return self.preprocessed / dataset_name(spec.dataset_id) / f"{spec.plans}.json"


class TrainFailed(RuntimeError):
    """An nnU-Net step exited with an error; the message names its log."""


# ---------------------------------------------------------------------------
# subprocesses
# ---------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_process(cmd: Sequence[str], *, env: Mapping[str, str], log: Path, on_wait: WaitFn | None = None,
                check: Callable[[], None] | None = None, on_event: EventFn | None = None,
                poll_s: float = 0.25) -> None:
    """Run ``cmd`` with its output in ``log``; with ``on_event``, it gets
    ``--events FD`` appended and every JSON line on that descriptor is given to
    ``on_event``.

    Raises
    ------
    TrainFailed
        The command exited with a non-zero status (the message names ``log``
        and ends with its last lines).
    Exception
        Whatever ``check`` raises (the subprocess is stopped first).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    rfd = wfd = None
    cmd = list(cmd)
    if on_event is not None:
        rfd, wfd = os.pipe()
        cmd += ["--events", str(wfd)]
    t0 = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=(wfd,) if wfd is not None else (),
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if wfd is not None:
        os.close(wfd)
    buf, last = b"", 0.0
    try:
        while True:
            if rfd is not None:
                ready, _, _ = select.select([rfd], [], [], poll_s)
                if ready:
                    chunk = os.read(rfd, 65536)
                    if not chunk:  # the writer closed: wait for the exit
                        rfd = _close(rfd)
                    *lines, buf = (buf + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            on_event(json.loads(line))
            elif proc.poll() is None:
                time.sleep(poll_s)
            if rfd is None and proc.poll() is not None:
                break
            now = time.monotonic()
            if now - last >= poll_s:  # also while reports stream in
                last = now
                if check is not None:
                    check()
                if on_wait is not None:
                    on_wait(now - t0)
    except BaseException:
        _stop(proc)
        raise
    finally:
        _close(rfd)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        what = cmd[2] if cmd[1:2] == ["-m"] else cmd[0]  # python -m MODULE: the module
        raise TrainFailed(f"{what} exited with status {proc.returncode}; its output is in {log}:\n{tail}")


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
    return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------
def small_configuration(plans: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The plans entry of NX47's small configuration ``name`` (inherits ``3d_fullres``)."""
    patch, features, batch, convs = SMALL_CONFIGURATIONS[name]
    full = plans["configurations"][PLANNED]
    n = len(features)
    kw = dict(full["architecture"]["arch_kwargs"], n_stages=n, features_per_stage=list(features),
              kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
              n_conv_per_stage=[convs] * n, n_conv_per_stage_decoder=[convs] * (n - 1))
    return {"inherits_from": PLANNED, "patch_size": [patch] * 3, "batch_size": batch,
            "architecture": dict(full["architecture"], arch_kwargs=kw)}


def prepare(folders: NnUNetFolders, spec: TrainSpec, train: Sequence[VolumeRecord], val: Sequence[VolumeRecord], *,
            on_wait: WaitFn | None = None, check: Callable[[], None] | None = None) -> Path:
    """Raw data of ``train`` / ``val`` and nnU-Net's plans and preprocessed data;
    returns the plans file.  Done once per selection: a rerun with the same
    pairs and configuration finds ``prepared.json`` and does nothing."""
    marker = folders.root / NNUNET_PREPARED
    key = {"train": [r.id for r in train], "val": [r.id for r in val], "plans": spec.plans,
           "configuration": spec.configuration, "dataset_id": spec.dataset_id}
    plans_file = folders.plans_file(spec)
    if marker.is_file() and plans_file.is_file() and read_json(marker) == key:
        return plans_file
    marker.unlink(missing_ok=True)
    write_raw(folders.raw / dataset_name(spec.dataset_id), train, val)
    # nnU-Net's planner sizes its threads by nnUNet_n_proc_DA: at least 1 there
    run_process([sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                 "-d", str(spec.dataset_id), "-c", PLANNED, "-np", "1", "--no_pbar"],
                env=folders.env(nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1"),
                log=folders.root / NNUNET_PLAN_LOG, on_wait=on_wait, check=check)
    plans = read_json(plans_file)
    if spec.configuration in SMALL_CONFIGURATIONS:
        plans["configurations"][spec.configuration] = small_configuration(plans, spec.configuration)
        write_json(plans_file, plans)
    elif spec.configuration not in plans.get("configurations", {}):
        raise TrainFailed(f"{plans_file}: no configuration {spec.configuration!r} (nnunet_configuration); it has "
                          f"{sorted(plans.get('configurations', {}))} and NX47 adds {sorted(SMALL_CONFIGURATIONS)}")
    write_json(marker, key)
    return plans_file


def train(folders: NnUNetFolders, spec: TrainSpec, *, deadline_unix: float | None = None, reserve_windows: int = 0,
          on_event: EventFn | None = None, on_wait: WaitFn | None = None,
          check: Callable[[], None] | None = None) -> Path:
    """Train (or continue training) fold 0; returns the result folder, whose
    ``fold_0/checkpoint_final.pth`` holds the weights.

    Parameters
    ----------
    deadline_unix : float, optional
        Unix time by which the training stops, less ``reserve_windows``
        inference windows at the pace the trainer measures.
    """
    result = folders.result_folder(spec)
    if (result / "fold_0" / "checkpoint_final.pth").is_file():
        return result
    cmd = [sys.executable, "-m", "nx47_pipeline.nnunet.trainer", str(spec.dataset_id), spec.configuration, "0",
           "-p", spec.plans, "-device", spec.device, "--c", "--epochs", str(spec.epochs),
           "--iterations", str(spec.iterations), "--val-iterations", str(spec.val_iterations),
           "--skip-final-validation", "--seed", str(spec.seed), "--reserve-windows", str(int(reserve_windows))]
    if deadline_unix is not None:
        cmd += ["--deadline", repr(float(deadline_unix))]
    # augmentation in process: a continued training repeats an uninterrupted one (and a CPU has no spare cores)
    extra = {"nnUNet_n_proc_DA": "0"} if spec.device == "cpu" else {}
    run_process(cmd, env=folders.env(**extra), log=folders.root / NNUNET_TRAIN_LOG, on_wait=on_wait,
                check=check, on_event=on_event)
    if not (result / "fold_0" / "checkpoint_final.pth").is_file():
        raise TrainFailed(f"{result / 'fold_0'}: the training ended without checkpoint_final.pth; see "
                          f"{folders.root / NNUNET_TRAIN_LOG}")
    return result


__all__ = ["EPOCHS_FILE", "GRACE_S", "NnUNetFolders", "SMALL_CONFIGURATIONS", "TrainFailed", "TrainSpec", "prepare",
           "run_process", "small_configuration", "train"]
