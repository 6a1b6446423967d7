#!/usr/bin/env python3
"""Benchmark of the nnU-Net predictor: sliding windows per second, with and without mirroring.

Usage::

    python benchmarks/bench_nnunet.py --out benchmarks/results/nnunet.md [--quick]
        [--device cpu|cuda] [--threads N] [--plans PLANS_JSON] [--planner CLASS]
        [--plan-shape N] [--work-dir DIR]

Two plans are timed through NX47's inference path, ``NnUNetPredictor.predict``
of a bundle written by ``import_nnunet`` (``nx47 import-nnunet``) and read
by ``load_bundle``:

* **tiny**: the configuration the slow tests train
  (``tests/integration/test_nnunet.py``): the planned ``3d_fullres`` with a
  32^3 patch and a 3-stage network of 8/16/32 features, one convolution per
  stage;
* **default**: the ``3d_fullres`` that nnU-Net plans for the competition's
  volumes.  Two demo pairs of ``--plan-shape``^3 voxels (320, the shape of
  most competition volumes) are written with the demo generator, exported
  with ``export_nnunet`` (``nx47 nnunet-export``) and planned by
  ``nnUNetv2_plan_and_preprocess -c 3d_fullres --no_pp`` in a subprocess
  (nnU-Net's environment variables are given to that subprocess only).
  ``--plans`` takes an existing plans file instead (its folder must hold
  the ``dataset.json`` nnU-Net copies there).

The weights are not trained: each plan's network is built as
``nnUNetTrainer`` builds it before its first epoch (``get_network_from_plans``
with its He initialisation), saved as a fold-0 checkpoint of a result folder
and imported; a forward pass costs the same whatever the weights.  Each plan
predicts a random uint8 volume of one row of windows (tile step 0.5), once
with mirroring (8 forward passes per window) and once without.  A window's
time is the interval between two of the predictor's progress reports (the
device is synchronised before each time stamp), so it counts the predictor's
own work per window (copy, forward passes, Gaussian weighting, summing); the
first window, which also holds preprocessing and warm-up, is reported apart.
The median of the other windows is projected to one 320^3 volume (windows
from ``n_windows``, i.e. after nnU-Net's padding, one fold).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _common import git_commit, machine, write_section  # noqa: E402

from nx47_pipeline.data.demo import generate_demo_dataset  # noqa: E402
from nx47_pipeline.model.bundle import load_bundle  # noqa: E402
from nx47_pipeline.nnunet.bundle import CHECKPOINT, MemberSpec, import_nnunet  # noqa: E402
from nx47_pipeline.nnunet.train import small_configuration  # noqa: E402
from nx47_pipeline.nnunet.export import dataset_name, export_nnunet  # noqa: E402

DATASET_ID = 47
#: The side of the volume the projection is for (most competition volumes are 320^3).
SIDE = 320
TILE_STEP = 0.5
#: The name of the tiny configuration added to the plans (the slow tests' name).
TINY = "3d_nx47_tiny"  # the package's (nnunet/train.py), the tests' tiny network
#: Windows per measurement, ``(plain, mirrored)``, by plan, device and ``--quick``.
WINDOWS = {
    ("tiny", "cpu", False): (40, 16), ("tiny", "cpu", True): (16, 6),
    ("default", "cpu", False): (4, 3), ("default", "cpu", True): (3, 2),
    ("tiny", "cuda", False): (200, 100), ("tiny", "cuda", True): (50, 20),
    ("default", "cuda", False): (24, 12), ("default", "cuda", True): (8, 4),
}


def _require_torch():
    """torch and nnunetv2, or an exit that says how to install them."""
    try:
        import torch  # noqa: PLC0415

        importlib.import_module("nnunetv2")
    except ImportError as exc:
        raise SystemExit(f"bench_nnunet: needs torch and nnunetv2 ({exc}); install them with "
                         "`pip install -e .[nnunet]` (scripts/_venv.sh installs it with the torch pin)") from None
    return torch


def plan(work: Path, *, side: int, planner: str) -> tuple[Path, float]:
    """Plan ``3d_fullres`` with nnU-Net for two demo pairs of ``side``^3 voxels.

    Parameters
    ----------
    work : Path
        Folder for the demo data and nnU-Net's raw and preprocessed folders.
    side : int
        Edge of the demo volumes.
    planner : str
        nnU-Net's experiment planner class (``-pl``).

    Returns
    -------
    (Path, float)
        The plans file written by nnU-Net (``dataset.json`` beside it) and
        the seconds taken (data, export, fingerprint and planning).
    """
    t0 = time.perf_counter()
    data, raw, pre = work / "data", work / "raw", work / "pre"
    generate_demo_dataset(data, n_train=2, n_test=0, shape=(side,) * 3, seed=47, n_ghost=0, n_deprecated=0)
    export_nnunet(data, raw, dataset_id=DATASET_ID, max_train_volumes=1, max_val_volumes=1)
    exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    if not exe.exists():
        exe = Path(shutil.which("nnUNetv2_plan_and_preprocess") or exe)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(work / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}
    log = work / "plan.log"
    with open(log, "w") as fh:
        proc = subprocess.run([str(exe), "-d", str(DATASET_ID), "-c", "3d_fullres", "--no_pp", "-npfp", "1",
                               "-pl", planner, "--no_pbar"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=3600)
    folder = pre / dataset_name(DATASET_ID)
    found = sorted(p for p in folder.glob("*.json")
                   if p.name not in ("dataset.json", "dataset_fingerprint.json", "splits_final.json"))
    if proc.returncode != 0 or len(found) != 1:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench_nnunet: nnU-Net's planning failed (exit {proc.returncode}, plans {found}); "
                         f"log {log}:\n{tail}")
    return found[0], time.perf_counter() - t0


def initial_weights(plans: dict, dataset_json: dict, configuration: str) -> dict:
    """The state dict of ``configuration``'s network as ``nnUNetTrainer`` builds it
    before training (``get_network_from_plans``, He initialisation, deep supervision on)."""
    import torch  # noqa: PLC0415
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: PLC0415
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    torch.manual_seed(0)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    net = get_network_from_plans(
        cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
        determine_num_input_channels(pm, cm, dataset_json), pm.get_label_manager(dataset_json).num_segmentation_heads,
        allow_init=True, deep_supervision=True)
    return net.state_dict()


def bundle_for(work: Path, plans: dict, dataset_json: dict, configuration: str):
    """An imported bundle's predictor for ``configuration`` with untrained weights.

    A result folder (``plans.json``, ``dataset.json``,
    ``fold_0/checkpoint_final.pth`` with the keys nnU-Net's trainer writes and
    NX47's import reads) is written under ``work``, imported with
    :func:`import_nnunet` and loaded with :func:`load_bundle`.
    """
    import torch  # noqa: PLC0415

    res, out = work / f"results_{configuration}", work / f"bundle_{configuration}"
    for folder in (res, out):  # a kept --work-dir: written afresh
        shutil.rmtree(folder, ignore_errors=True)
    (res / "fold_0").mkdir(parents=True)
    (res / "plans.json").write_text(json.dumps(plans, indent=1))
    (res / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    torch.save({"network_weights": initial_weights(plans, dataset_json, configuration),
                "init_args": {"configuration": configuration}, "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2)}, res / "fold_0" / CHECKPOINT)
    import_nnunet([MemberSpec(res)], out, tile_step=TILE_STEP)
    return load_bundle(out, device="cpu").predictor


def row_shape(predictor, n: int) -> tuple[int, ...]:
    """A volume shape of ``n`` windows in a row along the first axis (the patch across the others)."""
    patch = [int(p) for p in predictor.model.patch_size]
    shape = list(patch)
    shape[0] = patch[0] + int(round((n - 1) * patch[0] * predictor.tile_step))
    return tuple(shape)


def time_windows(torch, predictor, n: int, device: str, rng: np.random.Generator) -> dict:
    """Predict a random volume of ``n`` windows; seconds per window from the progress reports.

    Returns
    -------
    dict
        ``windows`` (predicted), ``first_s`` (start to the first report:
        preprocessing, warm-up and the first window), ``window_s`` (the
        median of the later windows' intervals), ``intervals``, ``total_s``.
    """
    shape = row_shape(predictor, n)
    volume = rng.integers(0, 256, shape, dtype=np.uint8)
    cuda = device.startswith("cuda")
    stamps: list[float] = []

    def on_progress(done, total, what, frac):
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    prob = predictor.predict(volume, on_progress=on_progress)
    total = time.perf_counter() - t0
    assert prob.shape == volume.shape and len(stamps) == predictor.n_windows(shape) * predictor.n_folds
    intervals = np.diff(stamps).tolist()
    return {"windows": len(stamps), "first_s": stamps[0] - t0,
            "window_s": statistics.median(intervals) if intervals else stamps[0] - t0,
            "intervals": intervals, "total_s": total}


def describe(predictor) -> dict:
    """Patch, network class, stages, features and parameters of ``predictor``'s model."""
    parts = predictor.model.parts()
    cm = parts["configuration_manager"]
    kw = cm.network_arch_init_kwargs
    return {"patch": tuple(int(p) for p in cm.patch_size), "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
            "stages": int(kw["n_stages"]), "features": [int(f) for f in kw["features_per_stage"]],
            "params_m": sum(p.numel() for p in parts["network"].parameters()) / 1e6}


def _duration(seconds: float) -> str:
    """``seconds`` as ``"812 s"``, with minutes or hours beside from ten minutes up."""
    if seconds < 600:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds:.0f} s ({seconds / 60:.0f} min)"
    return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"


def _device_name(torch, device: str) -> str:
    threads = torch.get_num_threads()
    if device.startswith("cuda"):
        return f"CUDA: {torch.cuda.get_device_name(torch.device(device))} ({threads} torch CPU threads)"
    return f"CPU: {machine().split(',')[0]}, {threads} torch thread{'s' if threads != 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown section to write")
    ap.add_argument("--quick", action="store_true", help="fewer windows per measurement")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the network runs (default cpu)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--plans", type=Path, help="an nnU-Net plans file to use instead of planning "
                    "(dataset.json beside it)")
    ap.add_argument("--planner", default="ExperimentPlanner",
                    help="nnU-Net's planner class (-pl; default ExperimentPlanner, nnU-Net's default)")
    ap.add_argument("--plan-shape", type=int, default=SIDE, help=f"edge of the demo volumes planned on (default {SIDE})")
    ap.add_argument("--work-dir", type=Path, help="keep the demo data, plans and bundles here (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.plan_shape < 32:
        ap.error(f"--plan-shape must be >= 32, got {args.plan_shape}")

    torch = _require_torch()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_nnunet: --device cuda, but torch sees no CUDA device "
                         f"(torch {torch.__version__}); run it on a GPU machine with a CUDA build of torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="nx47_bench_nnunet_")
        work = Path(tmp.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        if args.plans:
            plans_file, plan_s = args.plans, None
            planned_on = f"the plans file given (`{args.plans.name}`)"
        else:
            print(f"[bench_nnunet] planning 3d_fullres on two {args.plan_shape}^3 demo pairs ...", file=sys.stderr)
            plans_file, plan_s = plan(work / "plan", side=args.plan_shape, planner=args.planner)
            planned_on = (f"`nnUNetv2_plan_and_preprocess -c 3d_fullres -pl {args.planner}` on two exported "
                          f"{args.plan_shape}³ demo pairs ({plan_s:.0f} s with data generation)")
        plans = json.loads(plans_file.read_text())
        dataset_json = json.loads((plans_file.parent / "dataset.json").read_text())
        plans["configurations"][TINY] = small_configuration(plans, TINY)
        results = []
        for name, configuration in (("tiny", TINY), ("default", "3d_fullres")):
            predictor = bundle_for(work, plans, dataset_json, configuration)
            predictor.model.to(device)
            info = describe(predictor)
            n_plain, n_mirror = WINDOWS[(name, device, args.quick)]
            timings = {}
            for mirroring, n in ((False, n_plain), (True, n_mirror)):
                p = predictor.with_settings(use_mirroring=mirroring)
                print(f"[bench_nnunet] {name}: {n} windows, mirroring {'on' if mirroring else 'off'} ...",
                      file=sys.stderr, flush=True)
                load = os.getloadavg()[0]
                timings[mirroring] = {**time_windows(torch, p, n, device, rng), "mirrors": p.n_mirrors, "load": load}
                print(f"[bench_nnunet]   {timings[mirroring]['window_s']:.3f} s/window", file=sys.stderr, flush=True)
            results.append({"name": name, "configuration": configuration, **info,
                            "w320": predictor.n_windows((SIDE,) * 3), "timings": timings})
    finally:
        if tmp is not None:
            tmp.cleanup()
    load_after = os.getloadavg()[0]

    lines = [
        f"## nnU-Net predictor: sliding windows per second ({'CUDA' if device == 'cuda' else 'CPU'})",
        "",
        f"Device: **{_device_name(torch, device)}**. NX47's `NnUNetPredictor.predict` of a bundle written by "
        "`import_nnunet` and read by `load_bundle`, tile step 0.5, one fold, a random uint8 volume of one row "
        "of windows"
        + (", the network under autocast (as nnU-Net on CUDA), the windows summed on the CPU" if device == "cuda"
           else "")
        + f". The default plan is nnU-Net's own: {planned_on}. The weights are **untrained** (each network "
        "as `nnUNetTrainer` builds it before its first epoch, He initialisation): a forward pass costs the same "
        "whatever the weights. A window's time is the interval between two progress reports (the device "
        "synchronised before each), median of the windows after the first; the first (preprocessing, "
        "warm-up) is shown apart. Mirroring: 8 forward passes per window (axes 0, 1, 2).",
        "",
        "| plan | patch | network | windows of a 320³ volume | mirroring | windows timed | first window, s "
        "| s/window (median) | windows/s | s per forward pass | one 320³ volume | load |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        net = (f"{r['network']}, {r['stages']} stages, {'/'.join(map(str, r['features']))} features, "
               f"{r['params_m']:.2f} M parameters")
        for mirroring in (False, True):
            t = r["timings"][mirroring]
            lines.append(
                f"| {r['name']} (`{r['configuration']}`) | {'×'.join(map(str, r['patch']))} | {net} | {r['w320']} "
                f"| {'on (8)' if mirroring else 'off (1)'} | {t['windows']} (median of {len(t['intervals'])}) "
                f"| {t['first_s']:.2f} | {t['window_s']:.3f} | {1 / t['window_s']:.3g} "
                f"| {t['window_s'] / t['mirrors']:.3f} | {_duration(r['w320'] * t['window_s'])} | {t['load']:.1f} |")
    lines += [
        "",
        "One 320³ volume: windows × s/window (one fold; each further fold or ensemble member adds as much; "
        "preprocessing and the export of the probabilities not counted). *s per forward pass* is s/window over "
        "the mirror count: the figure `--set nnunet_seconds_per_window=S` gives the run's budget "
        "(`nnunet/budget.py` counts windows × mirrors × folds). *load*: the 1-minute load average when the "
        "measurement started.",
        "",
    ]
    if device == "cpu":
        lines += [
            "No GPU was available to this run: the CUDA figures are **not measured**, and the `--device cuda` "
            "path has not been run on hardware yet. `python benchmarks/bench_nnunet.py --device cuda --out ...` "
            "measures them on a GPU machine with the same code and names the card.",
            "",
        ]
    lines.append(
        f"Machine: {machine()}, torch {torch.__version__}, nnunetv2 {version('nnunetv2')}, "
        f"dynamic-network-architectures {version('dynamic-network-architectures')}; "
        f"{_dt.date.today().isoformat()}, commit {git_commit()}. 1-minute load average {load_before:.2f} before the "
        f"run, {load_after:.2f} after, on {os.cpu_count()} cores (on a loaded machine CPU timings are upper bounds).")
    write_section(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
