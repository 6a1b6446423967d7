"""Benchmark of the U-Net stage: training and inference throughput.

Usage::

    python benchmarks/bench_unet.py --out benchmarks/results/unet.md [--quick]
        [--device auto|cpu|cuda] [--patch N] [--width N] [--depth N]
        [--batch N] [--steps N] [--volume N]

Runs the real code paths: ``train_unet`` (one epoch of ``--steps`` batches
on random patches, timed batch by batch through ``on_batch``; the first
batch is reported apart as warm-up) and ``predict_volume`` on a synthetic
volume (timed through ``on_window``).  Inference time for a 320^3 volume is
extrapolated from the measured windows per second.  Finally the measured
step time is fed to ``UNetCost`` for the default run size, which is the
figure the budget planner uses to decide whether the U-Net is worth running.

Defaults: on CUDA, 128^3 patches (width 16, depth 4, batch 2, amp) and a
320^3 volume; on CPU, 64^3 patches (width 16, depth 3, batch 2) and a 128^3
volume (``--quick``: 32^3 patches and a 64^3 volume).  The device is named
in the output.  The network takes the prior channel (random maps here).
On the CPU one epoch of 56 patches is also timed for the earlier CPU
default (width 16, 64^3, batch 2, no prior) and for the device-sized one
the run uses now (``DEVICE_SIZES["cpu"]``), interleaved.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nx47_pipeline.unet as U  # noqa: E402
from nx47_pipeline.run.budget import UNetCost  # noqa: E402
from nx47_pipeline.unet.params import DEVICE_SIZES  # noqa: E402
from _common import ram_gib as _ram_gib, write_section  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_name(torch, device: str) -> str:
    if device.startswith("cuda"):
        return f"CUDA: {torch.cuda.get_device_name(torch.device(device))}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _windows(side: int, patch: int, overlap: float) -> int:
    step = max(1, int(round(patch * (1 - overlap))))
    per_axis = 1 if side <= patch else math.ceil((side - patch) / step) + 1
    return per_axis**3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--patch", type=int)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--volume", type=int)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)

    torch = U.require_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    device = U.resolve_device(args.device)
    cuda = device.startswith("cuda")
    patch = args.patch or (128 if cuda else (32 if args.quick else 64))
    depth = args.depth or (4 if cuda else 3)
    steps = args.steps or (20 if cuda else (6 if args.quick else 8))
    side = args.volume or (320 if cuda else (64 if args.quick else 128))
    params = U.UNetParams(
        width=args.width, depth=depth, patch=patch, batch=args.batch, epochs=1,
        steps_per_epoch=steps, val_fraction=0.0, amp=True, overlap=0.5,
    )
    n_params = sum(p.numel() for p in U.build_unet(params).parameters())

    # ---- training ---------------------------------------------------
    rng = np.random.default_rng(0)
    n = args.batch * steps
    images = rng.integers(0, 256, (n, patch, patch, patch), dtype=np.uint8)
    labels = rng.choice(np.array([0, 1, 2], np.uint8), size=images.shape, p=[0.4, 0.05, 0.55])
    priors = rng.integers(0, 256, images.shape, dtype=np.uint8)  # the fit_prox map's channel
    patches = U.PatchSet(images, labels, ["bench"] * n, np.zeros((n, 3), np.int64), priors)
    stamps: list[float] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def on_batch(*_):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        U.train_unet(patches, val=None, params=params, device=device,
                     checkpoint_dir=tmp, resume=False, on_batch=on_batch)
    t_train = time.perf_counter() - t0
    warm = stamps[0] - t0
    step_s = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    # ---- inference --------------------------------------------------
    model = U.build_unet(params)
    volume = rng.integers(0, 256, (side,) * 3, dtype=np.uint8)
    wstamps: list[tuple[float, int]] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def on_window(done, total):
        if cuda:
            torch.cuda.synchronize()
        wstamps.append((time.perf_counter(), done))

    t0 = time.perf_counter()
    prob = U.predict_volume(model, volume, params=params, device=device, on_window=on_window,
                            prior=rng.random(volume.shape, dtype=np.float32))
    t_infer = time.perf_counter() - t0
    assert prob.shape == volume.shape
    n_windows = wstamps[-1][1]
    if len(wstamps) > 1:
        win_per_s = (wstamps[-1][1] - wstamps[0][1]) / (wstamps[-1][0] - wstamps[0][0])
    else:
        win_per_s = n_windows / t_infer
    infer_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    w320 = _windows(320, patch, params.overlap)
    s320 = w320 / win_per_s

    # ---- loss terms: the same step without the skeleton-recall term ----
    plain = U.UNetParams(**{**params.to_dict(), "skel_weight": 0.0})
    skel = U.UNetParams(**{**params.to_dict(), "skel_weight": 1.0})
    ab = {"without": [], "with": []}
    for _ in range(2):  # interleaved, so a change of load hits both alike
        ab["without"].append(U.time_train_step(plain, device=device, repeats=3))
        ab["with"].append(U.time_train_step(skel, device=device, repeats=3))

    # ---- one CPU epoch: the earlier default vs the device-sized one ----
    # an epoch of 56 patches (7 training volumes x 8), as in the quality benchmark
    epoch_ab = None
    if not cuda:
        before = U.UNetParams(width=16, depth=3, patch=64, batch=2, prior=False, skel_weight=1.0, dice_weight=1.0)
        now = U.UNetParams(**DEVICE_SIZES["cpu"], depth=3)
        steps_ab = {"before": [], "now": []}
        for _ in range(2):
            steps_ab["before"].append(U.time_train_step(before, device=device, repeats=2))
            steps_ab["now"].append(U.time_train_step(now, device=device, repeats=3))
        epoch_ab = {k: (min(v), min(v) * math.ceil(56 / p.batch))
                    for (k, v), p in zip(steps_ab.items(), (before, now))}

    load_after = os.getloadavg()[0]

    # ---- projection for the default run ----------------------------
    default = U.UNetParams(width=args.width, depth=depth, patch=patch, batch=args.batch)
    projected = UNetCost(default, seconds_per_patch_batch=step_s).total_s(
        n_train_volumes=24, voxels_per_volume=320**3, n_infer_volumes=8 + 120,
    )

    vox = args.batch * patch**3
    lines = [
        f"## U-Net stage throughput ({patch}³ patches, {'CUDA' if cuda else 'CPU'})",
        "",
        f"Device: **{_device_name(torch, device)}**. Network: width {args.width}, depth {depth} "
        f"(GroupNorm), {n_params / 1e6:.2f} M parameters, batch {args.batch}, "
        f"mixed precision {'on' if cuda else 'off (CPU)'}. Training: `train_unet`, one epoch of "
        f"{steps} batches on random uint8 patches; inference: `predict_volume` on a {side}³ volume, "
        f"window {patch}³, overlap 0.5, Gaussian blending, no TTA.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| first training batch (warm-up, incl. model build) | {warm:.2f} s |",
        f"| training step (forward + backward + Adam), steady | {step_s:.3f} s |",
        f"| training throughput | {args.batch / step_s:.2f} patches/s ({vox / step_s / 1e6:.2f} Mvox/s) |",
        f"| training epoch total ({steps} batches + checkpoint) | {t_train:.2f} s |",
        f"| training step without / with the skeleton-recall term (`time_train_step`, "
        f"2 × 3 steps each, interleaved) | {min(ab['without']):.3f} / {min(ab['with']):.3f} s |",
        f"| inference: {n_windows} windows on {side}³ | {t_infer:.2f} s ({win_per_s:.2f} windows/s) |",
        f"| inference, one 320³ volume ({w320} windows, extrapolated) | {s320:.1f} s (×8 with flip TTA) |",
    ]
    if epoch_ab is not None:
        lines.append(
            f"| CPU epoch of 56 patches, earlier default (width 16, 64³, batch 2, 1 channel) / now "
            f"(width 8, 48³, batch 4, prior channel, BCE; `time_train_step` × batches, interleaved) | "
            f"{epoch_ab['before'][1]:.1f} s ({epoch_ab['before'][0]:.2f} s × 28) / "
            f"{epoch_ab['now'][1]:.1f} s ({epoch_ab['now'][0]:.2f} s × 14) |")
    if cuda:
        lines.append(f"| peak GPU memory, training / inference | {train_mem:.2f} / {infer_mem:.2f} GiB |")
    lines += [
        f"| `UNetCost`: 24 train volumes × 8 patches, {default.epochs} epochs, 128 volumes predicted | "
        f"{projected / 3600:.1f} h |",
        "",
    ]
    if not cuda:
        lines.append(
            "The CUDA figure (128³ patches on a GPU) is **not measured** here: no GPU was available "
            "to this run. `python benchmarks/bench_unet.py --device cuda --out ...` measures it on a "
            "GPU machine with the same code."
        )
        lines.append("")
    lines.append(
        f"Machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} cores, "
        f"{_ram_gib():.1f} GiB RAM, Python {platform.python_version()}, torch {torch.__version__}; "
        f"{_dt.date.today().isoformat()}, commit {_commit()}. 1-min load average "
        f"{load_before:.1f} before the run, {load_after:.1f} after (on a loaded machine CPU timings "
        "are upper bounds; two spinning torch threads slow down sharply when a core is taken, "
        "hence `--threads`)."
    )
    write_section(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
