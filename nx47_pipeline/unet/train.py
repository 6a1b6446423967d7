"""U-Net training with resumable checkpoints.

Checkpoints hold only tensors and plain Python values, so
``torch.load(path, weights_only=True)`` reads them.  The loss is BCE + Dice +
``skel_weight`` x skeleton recall; the learning rate follows
``params.lr_schedule`` over the planned steps or the time to the deadline,
whichever ends first; with validation patches each
epoch is scored by its validation Dice, smoothed over epochs (an exponential
moving average, ``params.val_smoothing``); the weights of the epoch with
the best smoothed Dice are kept (``best_model`` in the checkpoint, what
:func:`load_unet` returns) and training stops after ``params.patience``
epochs without a better one.  Randomness is derived
from ``(seed, epoch)`` at the start of every epoch, so a resumed run draws the
same batches as an uninterrupted one would.  Callbacks may raise (for
instance ``Cancelled``): the exception propagates unchanged and the last
completed epoch's checkpoint on disk stays valid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nx47_pipeline.io.atomic import atomic_path
from nx47_pipeline.unet.backend import require_torch, resolve_device
from nx47_pipeline.unet.net import build_unet, input_tensor, masked_bce_dice_loss, skeleton_recall_loss
from nx47_pipeline.unet.params import UNetParams
from nx47_pipeline.unet.patches import IGNORE, PatchSet, split_patches, surface_skeleton

#: Name of the rolling checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "last.pt"


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
        ``"completed"``, ``"early_stop"`` or ``"deadline"``.
    history : list of dict
        One entry per completed epoch: ``epoch``, ``train_loss``,
        ``val_loss`` and ``val_dice`` (None without validation),
        ``val_dice_smoothed`` (the moving average the best epoch and early
        stopping follow), ``lr`` (at the epoch's end), ``seconds``,
        ``batches``.
    best_epoch : int or None
        The epoch whose weights ``model`` holds when there was validation.
    checkpoint : Path or None
        ``last.pt`` of the last completed epoch, None if no epoch completed.
    """

    model: Any
    epochs_done: int
    stopped_reason: str
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    best_epoch: int | None = None


def _to_batch(torch, images: np.ndarray, labels: np.ndarray, device: str, skeletons: np.ndarray | None = None,
              priors: np.ndarray | None = None):
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    pr = None if priors is None else torch.from_numpy(np.ascontiguousarray(priors)).to(device)
    x = input_tensor(torch, x, pr)
    y = y.unsqueeze(1)
    sk = None
    if skeletons is not None:
        sk = torch.from_numpy(np.ascontiguousarray(skeletons)).to(device).unsqueeze(1)
    return x, (y == 1).float(), (y != IGNORE), sk


def _train_step(torch, model, optimizer, scaler, x, t, m, use_amp: bool, skel=None, skel_weight: float = 0.0,
                dice_weight: float = 1.0):
    """One optimisation step (mixed precision on CUDA); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
        logits = model(x)
    loss = masked_bce_dice_loss(logits, t, m, dice_weight=dice_weight)
    if skel is not None and skel_weight > 0:
        loss = loss + skel_weight * skeleton_recall_loss(logits, skel, m)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def lr_at(params: UNetParams, step: int, total_steps: int, time_frac: float = 0.0) -> float:
    """The learning rate of optimisation step ``step`` (from 0) of
    ``total_steps``; with a deadline, ``time_frac`` is the share of the time
    to it already spent, and the schedule follows whichever of the two is
    further along, so the rate has decayed when the deadline stops training."""
    if params.lr_schedule == "constant" or total_steps <= 0:
        return float(params.lr)
    progress = max(min(step, total_steps) / total_steps, min(max(float(time_frac), 0.0), 1.0))
    return float(params.lr) * max(0.0, 1.0 - progress) ** 0.9


def skeletons_of(labels: np.ndarray) -> np.ndarray:
    """:func:`~nx47_pipeline.unet.patches.surface_skeleton` of every patch, uint8."""
    return np.stack([surface_skeleton(lab) for lab in labels]).astype(np.uint8) if len(labels) else \
        np.zeros_like(labels)


def _atomic_save(torch, obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _architecture(p: UNetParams) -> tuple:
    return (p.width, p.depth, p.norm, p.prior)


def _evaluate(torch, model, val: PatchSet, batch: int, device: str, use_amp: bool) -> tuple[float, float]:
    """Mean BCE + Dice loss and the Dice of the thresholded (p > 0.5)
    predictions over the labelled voxels of the validation patches."""
    model.eval()
    total = 0.0
    count = 0
    inter = pred_sum = true_sum = 0.0
    with torch.inference_mode():
        for start in range(0, len(val), batch):
            x, t, m, _ = _to_batch(
                torch, val.images[start : start + batch], val.labels[start : start + batch], device,
                priors=None if val.priors is None else val.priors[start : start + batch],
            )
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = masked_bce_dice_loss(logits, t, m)
            total += float(loss) * x.shape[0]
            count += x.shape[0]
            pred = (logits.float() > 0) & m
            truth = (t > 0.5) & m
            inter += float((pred & truth).sum())
            pred_sum += float(pred.sum())
            true_sum += float(truth.sum())
    model.train()
    dice = 2.0 * inter / (pred_sum + true_sum) if pred_sum + true_sum > 0 else 1.0
    return total / max(count, 1), dice


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
        epoch; the returned model holds the best epoch's weights with
        validation, else the latest weights.
    on_batch : callable, optional
        ``on_batch(epoch, epochs, batch, n_batches, loss)`` after every
        batch; ``epoch`` and ``batch`` count from 1.
    on_epoch : callable, optional
        ``on_epoch(epoch, epochs, train_loss, val_loss)`` after each epoch's
        checkpoint is written.  Training stops early (``"early_stop"``)
        after ``params.patience`` epochs without a better smoothed
        validation Dice.
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
    for name, ps in (("train", train), ("val", val)):
        if ps is not None and len(ps) and (ps.priors is not None) != bool(params.prior):
            raise ValueError(
                f"{name} patches {'have' if ps.priors is not None else 'have no'} priors but params.prior is "
                f"{params.prior}; extract them with extract_patches(prior=...) for prior=True"
            )
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
    best: dict[str, Any] = {"dice": -1.0, "epoch": None, "state": None, "since": 0, "smoothed": None}
    if resume and ckpt_path.exists():
        state = _read_checkpoint(torch, ckpt_path, dev)
        saved = UNetParams.from_dict(state["params"])
        if _architecture(saved) != _architecture(params):
            raise ValueError(
                f"checkpoint {ckpt_path} holds width/depth/norm/prior {_architecture(saved)}, "
                f"params ask for {_architecture(params)}; use another checkpoint_dir or "
                "resume=False"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        history = [dict(h) for h in state.get("history", [])]
        if state.get("best_model") is not None:
            best.update(dice=float(state.get("best_dice", -1.0)), epoch=state.get("best_epoch"),
                        state=state["best_model"], since=int(state.get("best_since", 0)),
                        smoothed=state.get("val_dice_smoothed"))
    saved_path: Path | None = ckpt_path if ckpt_path.exists() and start_epoch > 0 else None
    has_val = val is not None and len(val) > 0

    def result(reason: str, epochs_done: int) -> TrainResult:
        if has_val and best["state"] is not None:
            model.load_state_dict(best["state"])
        return TrainResult(model, epochs_done, reason, history, saved_path,
                           best["epoch"] if has_val else None)

    skels = skeletons_of(train.labels) if params.skel_weight > 0 else None
    n = len(train)
    n_batches = params.steps_per_epoch or max(1, math.ceil(n / params.batch))
    epochs = int(params.epochs)
    total_steps = epochs * n_batches
    t_start = clock()
    span = None if deadline is None else deadline - t_start
    model.train()
    for epoch in range(start_epoch, epochs):
        if params.patience and has_val and best["since"] >= params.patience:
            return result("early_stop", epoch)
        t0 = clock()
        rng = np.random.default_rng([int(params.seed), epoch, 1])
        torch.manual_seed(int(params.seed) * 1000 + epoch)
        need = n_batches * params.batch
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
        running = 0.0
        lr = float(params.lr)
        for b in range(n_batches):
            now = clock()
            if deadline is not None and now >= deadline:
                return result("deadline", epoch)
            lr = lr_at(params, epoch * n_batches + b, total_steps,
                       (now - t_start) / span if span and span > 0 else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = np.sort(order[b * params.batch : (b + 1) * params.batch])
            images = train.images[idx]
            labels = train.labels[idx]
            sk = skels[idx] if skels is not None else None
            pr = train.priors[idx] if train.priors is not None else None
            flips = tuple(a + 1 for a in range(3) if rng.random() < 0.5)
            if flips:
                images = np.flip(images, axis=flips)
                labels = np.flip(labels, axis=flips)
                sk = np.flip(sk, axis=flips) if sk is not None else None
                pr = np.flip(pr, axis=flips) if pr is not None else None
            x, t, m, s = _to_batch(torch, images, labels, dev, sk, pr)
            loss = _train_step(torch, model, optimizer, scaler, x, t, m, use_amp, s, params.skel_weight,
                               params.dice_weight)
            value = float(loss.detach())
            running += value
            if on_batch is not None:
                on_batch(epoch + 1, epochs, b + 1, n_batches, value)
        train_loss = running / n_batches
        val_loss = val_dice = None
        if has_val and not (deadline is not None and clock() >= deadline):
            val_loss, val_dice = _evaluate(torch, model, val, params.batch, dev, use_amp)
            a = float(params.val_smoothing)
            best["smoothed"] = val_dice if best["smoothed"] is None else a * val_dice + (1 - a) * best["smoothed"]
            if best["smoothed"] > best["dice"]:
                best.update(dice=best["smoothed"], epoch=epoch + 1, since=0,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
            else:
                best["since"] += 1
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(train_loss),
                "val_loss": None if val_loss is None else float(val_loss),
                "val_dice": None if val_dice is None else float(val_dice),
                "val_dice_smoothed": None if val_dice is None else float(best["smoothed"]),
                "lr": lr,
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
                "best_model": best["state"],
                "best_dice": float(best["dice"]),
                "best_epoch": best["epoch"],
                "best_since": int(best["since"]),
                "val_dice_smoothed": None if best["smoothed"] is None else float(best["smoothed"]),
            },
            ckpt_path,
        )
        saved_path = ckpt_path
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, float(train_loss), val_loss)
    return result("completed", max(epochs, start_epoch))


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
        A ``last.pt`` file, or the folder that holds it.  With validation
        during training, the best epoch's weights are loaded.
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
    # the best validation epoch's weights when training kept them
    model.load_state_dict(state["best_model"] if state.get("best_model") is not None else state["model"])
    return model.to(dev).eval(), params


def time_train_step(params: UNetParams, *, device: str = "auto", repeats: int = 2,
                    on_progress: Callable[[int, int, str], None] | None = None) -> float:
    """Measure the seconds of one training batch (forward + backward + step).

    Runs one warm-up batch and ``repeats`` timed ones on random data; meant
    for a preflight so :func:`estimate_cost` gets a measured figure.
    ``on_progress(done, total, what)`` before each batch (a few seconds each
    on a CPU).
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
    priors = rng.integers(0, 256, shape, dtype=np.uint8) if params.prior else None
    x, t, m, sk = _to_batch(torch, images, labels, dev, skeletons_of(labels) if params.skel_weight > 0 else None,
                            priors)

    def step():
        _train_step(torch, model, opt, scaler, x, t, m, use_amp, sk, params.skel_weight, params.dice_weight)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    tick = on_progress or (lambda done, total, what: None)
    tick(0, repeats + 1, "warm-up batch")
    step()
    t0 = time.perf_counter()
    for i in range(repeats):
        tick(i + 1, repeats + 1, f"timed batch {i + 1}/{repeats}")
        step()
    return (time.perf_counter() - t0) / repeats

