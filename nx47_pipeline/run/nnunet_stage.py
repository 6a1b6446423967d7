"""The ``nnunet`` stage of ``nx47 run --model-kind nnunet``: nnU-Net's
planning, preprocessing and training of the run's split, reported as the
run's events, then the trained model as the run's bundle.

:func:`nnunet` drives :mod:`nx47_pipeline.nnunet.train` (subprocesses
handing off through files under ``<out>/nnunet/``) and turns the trainer's
reports into the run's events:

* PROGRESS_UPDATE per iteration (done = iterations trained, total = epochs x
  iterations per epoch; while nnU-Net plans and preprocesses, or an
  iteration takes long, the same value with the elapsed seconds, so the
  stage never goes silent);
* METRIC ``nnunet_batch_loss`` per iteration and, per epoch,
  ``nnunet_train_loss``, ``nnunet_val_loss``, ``nnunet_pseudo_dice`` and
  ``nnunet_lr``;
* BUDGET ``nnunet_epochs`` when the pace measured on the first iterations
  leaves time for fewer epochs than asked (nnU-Net's learning-rate
  schedule is then shortened to end on time), BUDGET ``deadline`` when the
  training stops at its deadline.

:func:`import_trained` writes the result folder as ``<out>/model`` (a
bundle of kind ``nnunet``); :func:`record_choice` writes the
post-processing chosen on validation into it, so ``nx47 run --model`` and
``nx47 infer --model`` segment as the run did.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from nx47_pipeline.data.discovery import VolumeRecord
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import MANIFEST
from nx47_pipeline.model.bundle import read_manifest
from nx47_pipeline.model.predictor import PostChoice, PredictorKind
from nx47_pipeline.nnunet.bundle import MemberSpec, import_nnunet
from nx47_pipeline.nnunet.predictor import windows_of
from nx47_pipeline.nnunet.train import EPOCHS_FILE, NnUNetFolders, TrainFailed, TrainSpec, prepare, train
from nx47_pipeline.run.context import Reporter, RunContext
from nx47_pipeline.telemetry.events import BudgetDecision, MetricName, StageName
from nx47_pipeline.unet.backend import resolve_device


class NnUNetUnavailable(RuntimeError):
    """nnunetv2 (or torch) is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Trained:
    """What the stage produced.

    Attributes
    ----------
    result : Path
        nnU-Net's result folder (``fold_0/checkpoint_final.pth``).
    seconds_per_window : float or None
        One inference window's seconds as the trainer measured them (from its
        record when an earlier run trained it; None when it recorded none).
    """

    result: Path
    seconds_per_window: float | None


def require_nnunet() -> None:
    """Raise :class:`NnUNetUnavailable` unless nnunetv2 and torch import."""
    try:
        for name in ("torch", "nnunetv2"):
            importlib.import_module(name)
    except ImportError as exc:
        raise NnUNetUnavailable(
            f"model kind nnunet needs nnU-Net v2 and PyTorch ({exc}): pip install torch==2.13.0 "
            "'nnunetv2==2.8.1' 'dynamic-network-architectures==0.4.4' (pip install -e '.[nnunet]'), or attach "
            "the Kaggle kit built with --with-nnunet") from None


def spec_of(ctx: RunContext) -> TrainSpec:
    """The run's :class:`~nx47_pipeline.nnunet.train.TrainSpec` (``nnunet_*`` fields, ``unet_device``)."""
    cfg = ctx.config
    return TrainSpec(configuration=cfg.nnunet_configuration, plans=cfg.nnunet_plans, epochs=cfg.nnunet_epochs,
                     iterations=cfg.nnunet_iterations, val_iterations=cfg.nnunet_val_iterations,
                     device="cuda" if resolve_device(cfg.unet_device) == "cuda" else "cpu", seed=cfg.seed)


def windows_for(plans_file: Path, configuration: str, shapes: Sequence[Sequence[int]], *,
                tile_step: float = 0.5) -> int:
    """Sliding windows (one pass, no mirroring) nnU-Net's predictor takes on
    volumes of ``shapes`` with the configuration's patch."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    patch = tuple(PlansManager(read_json(plans_file)).get_configuration(configuration).patch_size)
    return sum(windows_of(shape, patch, tile_step) for shape in shapes)


def nnunet(ctx: RunContext, report: Reporter, train_pairs: Sequence[VolumeRecord], val: Sequence[VolumeRecord], *,
           spec: TrainSpec, infer_shapes: Sequence[Sequence[int]], reserve_s: float,
           on_projection: Callable[[float], None] | None = None) -> Trained | None:
    """Plan, preprocess and train nnU-Net on ``train_pairs`` (``val``: its
    fold's validation), continuing a training an earlier run left.

    Parameters
    ----------
    infer_shapes : sequence of shapes
        The volumes the model will predict after training (validation and
        test): the trainer keeps their windows' time back from its deadline.
    reserve_s : float
        Seconds kept back besides those windows (post-processing, scoring,
        the fallback of every test volume, packaging).
    on_projection : callable, optional
        ``on_projection(seconds)``: the stage's projected length once the
        trainer has measured its pace (seconds so far plus the epochs left).

    Returns
    -------
    Trained or None
        None when the training ended without a single completed iteration
        (a WARNING says so; the run then segments with the fallback).
    """
    t0 = time.monotonic()
    folders = NnUNetFolders(ctx.folder.nnunet)
    check = ctx.cancel.raise_if_cancelled
    st: dict[str, Any] = {"done": 0, "total": spec.epochs * spec.iterations, "iterations": spec.iterations,
                          "epochs": spec.epochs, "what": "nnU-Net: planning and preprocessing", "spw": None,
                          "epochs_done": None, "iterated": False}

    def on_wait(elapsed: float) -> None:
        report.progress(st["done"], st["total"], substep=st["what"], message=f"{elapsed:.0f} s in this step")

    prepare(folders, spec, train_pairs, val, on_wait=on_wait, check=check)
    plans_file = folders.plans_file(spec)
    n_windows = windows_for(plans_file, spec.configuration, infer_shapes)
    deadline_unix = time.time() + (ctx.deadlines.hard - time.monotonic()) - reserve_s
    st["what"] = "nnU-Net: starting the training"

    def on_event(e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind == "start":
            st["iterations"], st["epochs"] = int(e["iterations"]), int(e["epochs"])
            st["total"] = st["epochs"] * st["iterations"]
            st["done"] = int(e["epoch"]) * st["iterations"]
            st["what"] = f"nnU-Net: epoch {int(e['epoch']) + 1}/{st['epochs']}"
        elif kind == "iteration":
            st["iterated"] = True
            st["done"] = int(e["epoch"]) * st["iterations"] + int(e["iteration"])
            st["what"] = f"nnU-Net: epoch {int(e['epoch']) + 1}/{st['epochs']} iteration"
            report.progress(st["done"], st["total"], substep=st["what"], substep_done=int(e["iteration"]),
                            substep_total=st["iterations"])
            report.metric(MetricName.NNUNET_BATCH_LOSS, float(e["loss"]), step=st["done"])
        elif kind == "timing":
            st["spw"] = float(e["seconds_per_window"])
        elif kind == "epochs":
            asked, epochs, s_epoch = int(e["asked"]), int(e["epochs"]), float(e["seconds_per_epoch"])
            st["epochs"], st["total"] = epochs, epochs * st["iterations"]
            fits = epochs >= asked
            report.budget(
                BudgetDecision.NNUNET_EPOCHS,
                f"nnU-Net: {e['seconds_per_iteration']:.2f} s an iteration, {s_epoch:.1f} s an epoch, "
                f"{st['spw'] or 0:.3f} s an inference window ({n_windows} windows of validation and test kept "
                f"back); {e['seconds_left'] / 60:.1f} min left for training: "
                + (f"the {asked} epochs fit ({asked * s_epoch / 60:.1f} min)" if fits else
                   f"{epochs} epochs instead of {asked} ({asked * s_epoch / 60:.1f} min); the learning-rate "
                   f"schedule ends at epoch {epochs}"),
                budget_s=ctx.config.budget_s, projected_s=asked * s_epoch, fits=fits,
                extra={"epochs": epochs, "asked": asked, "seconds_per_epoch": s_epoch,
                       "seconds_per_iteration": float(e["seconds_per_iteration"]), "seconds_per_window": st["spw"],
                       "reserve_windows": n_windows})
            if on_projection is not None:  # from here: the epochs left at the measured pace
                left = (epochs - st["done"] / max(st["iterations"], 1)) * s_epoch
                on_projection(time.monotonic() - t0 + max(left, 0.0))
        elif kind == "epoch":
            step = int(e["epoch"]) + 1
            report.metric(MetricName.NNUNET_TRAIN_LOSS, float(e["train_loss"]), step=step,
                          val_loss=float(e["val_loss"]), pseudo_dice=float(e["pseudo_dice"]), lr=float(e["lr"]),
                          seconds=float(e["seconds"]))
            report.metric(MetricName.NNUNET_VAL_LOSS, float(e["val_loss"]), step=step)
            report.metric(MetricName.NNUNET_PSEUDO_DICE, float(e["pseudo_dice"]), step=step)
            report.metric(MetricName.NNUNET_LR, float(e["lr"]), step=step)
            st["what"] = f"nnU-Net: epoch {min(step + 1, st['epochs'])}/{st['epochs']}"
        elif kind == "deadline":
            report.deadline_hit(StageName.NNUNET, f"training stopped in epoch {int(e['epoch']) + 1} of {st['epochs']} "
                                          f"(iteration {int(e['iteration'])}); the weights so far are used")
        elif kind == "done":
            st["epochs_done"] = int(e["epochs_done"])
            report.progress(st["total"], st["total"], substep=f"nnU-Net: {st['epochs_done']} epochs trained")

    result = train(folders, spec, deadline_unix=deadline_unix, reserve_windows=n_windows, on_event=on_event,
                   on_wait=on_wait, check=check)
    if st["spw"] is None:  # trained by an earlier run: the pace its trainer measured
        st["spw"] = (read_json(result / "fold_0" / EPOCHS_FILE) or {}).get("seconds_per_window")
        if on_projection is not None:
            on_projection(time.monotonic() - t0)
    if st["epochs_done"] is not None and not st["iterated"] and st["epochs_done"] == 0:
        report.warn("nnU-Net trained no iteration before its deadline; test volumes get the fallback "
                    "segmentation", subject=str(result), code="nnunet_untrained")
        # an untrained network is no result: a rerun in this folder trains again
        (result / "fold_0" / "checkpoint_final.pth").unlink(missing_ok=True)
        return None
    return Trained(result=result, seconds_per_window=st["spw"])


def import_trained(trained: Trained, dest: Path, *, post: PostChoice) -> Path:
    """``dest`` (the run's ``model/``) as the bundle of the trained model,
    written once (a resumed run finds it).  The bundle is imported beside
    the result folder, then its files are moved into ``dest``, the manifest
    last (``dest`` may already hold other things, such as torch's cache)."""
    if (dest / MANIFEST).is_file() and read_manifest(dest).get("kind") == str(PredictorKind.NNUNET):
        return dest
    staged = trained.result.parent / (trained.result.name + ".bundle")
    shutil.rmtree(staged, ignore_errors=True)
    import_nnunet([MemberSpec(trained.result)], staged, post=post)
    for name in [*read_manifest(staged)["files"], MANIFEST]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, dest / name)
    shutil.rmtree(staged, ignore_errors=True)
    return dest


def record_choice(dest: Path, post: PostChoice, *, train_ids: Sequence[str], val_ids: Sequence[str],
                  validation: dict[str, Any]) -> None:
    """Write the post-processing chosen on validation into the bundle at
    ``dest`` (``search``, ``postprocess`` with ``chosen_on_validation``, the
    split and the validation summary): a run with ``--model`` then keeps it."""
    manifest = read_manifest(dest)
    manifest["search"] = {**manifest.get("search", {}), "low": float(post.low), "high": float(post.high)}
    manifest["postprocess"] = {**manifest.get("postprocess", {}), "closing_radius": list(post.closing_radius),
                               "min_size": int(post.min_size), "plug_size": int(post.plug_size),
                               "thin": bool(post.thin), "chosen_on_validation": True}
    manifest.update(train_ids=list(train_ids), val_ids=list(val_ids), validation=validation)
    write_json(dest / MANIFEST, manifest)


__all__ = ["NnUNetUnavailable", "TrainFailed", "Trained", "import_trained", "nnunet", "record_choice", "require_nnunet", "spec_of",
           "windows_for"]
