"""``nx47 run``: run the pipeline and write submission.zip."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from nx47_pipeline.config import MODEL_KINDS, RunConfig, read_config_file
from nx47_pipeline.data.demo import ensure_demo_dataset
from nx47_pipeline.data.discovery import resolve_data_root
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.model.bundle import describe_bundle
from nx47_pipeline.run.executor import DaskUnavailable, require_dask
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.cancel import CancelToken

NAME = "run"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="run the pipeline and write submission.zip",
        description=(
            "Run the whole pipeline: discovery, coverage audit, mandatory 5 %% preflight, "
            "features, hyper-parameter search, fit_prox, optional U-Net, validation, "
            "segmentation and packaging. Every option can also be set with an "
            "environment variable NX47_<FIELD> (see docs/architecture.md) or in a --config file; "
            "precedence: defaults < NX47_* environment < --config file < flags. "
            "Rerunning with the same --out resumes."
        ),
    )
    p.add_argument("--config", default=None, metavar="FILE",
                   help="read the configuration from this JSON file of RunConfig fields (a run folder's "
                        "config.json); over NX47_* variables, under the other flags")
    p.add_argument("--data", default=None, help="data root, or 'auto' (Kaggle mounts, then the demo dataset)")
    p.add_argument("--out", default=None, help="output folder (journal, artifacts, submission.zip)")
    p.add_argument("--max-train-volumes", type=int, default=None, help="training pairs to use (0 = all; default 24)")
    p.add_argument("--max-val-volumes", type=int, default=None, help="validation pairs to use (0 = all; default 8)")
    p.add_argument("--budget-s", type=float, default=None, help="runtime budget in seconds (default 32400 = 9 h)")
    p.add_argument("--auto-coverage", action=argparse.BooleanOptionalAction, default=None,
                   help="shrink coverage to the largest that fits the budget after the preflight")
    p.add_argument("--unet", dest="use_unet", action=argparse.BooleanOptionalAction, default=None,
                   help="train the optional 3D U-Net (default: on with CUDA, off on CPU)")
    p.add_argument("--model-kind", dest="model_kind", default=None, choices=MODEL_KINDS,
                   help="what the run trains: linear (fit_prox, its auto-context rounds, the optional U-Net; the "
                        "default) or nnunet (nnU-Net v2 planned, preprocessed and trained in the run; fields "
                        "nnunet_configuration, nnunet_plans, nnunet_epochs, nnunet_iterations with --set)")
    p.add_argument("--model", dest="model_dir", default=None, metavar="BUNDLE",
                   help="inference only: segment with this model bundle (nx47 export-model) instead of training")
    p.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                   help="run per-volume work as Dask tasks: 'local' (a LocalCluster of worker processes) or a "
                        "scheduler address such as tcp://host:8786 (default: in this process, Dask not imported)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="without --scheduler: per-volume tasks (features, validate, segment) at once on threads "
                        "of this process (default 0 = auto: 2 when 2 cores are available, else 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --scheduler local: worker processes; with an address: workers to wait for (default 2)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--heartbeat-interval-s", type=float, default=None)
    p.add_argument("--quiet", action="store_true", help="no console progress lines")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any RunConfig field, e.g. --set fit_max_iter=200 (repeatable)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``nx47 run``: defaults < ``NX47_*`` environment
    variables < the ``--config`` file < the other flags.

    Raises
    ------
    ValueError
        A bad flag value, or a bad ``--config`` file (naming it).
    """
    flags = {
        "data_root": args.data,
        "out_dir": args.out,
        "max_train_volumes": args.max_train_volumes,
        "max_val_volumes": args.max_val_volumes,
        "budget_s": args.budget_s,
        "auto_coverage": args.auto_coverage,
        "seed": args.seed,
        "heartbeat_interval_s": args.heartbeat_interval_s,
        "model_dir": args.model_dir,
        "model_kind": args.model_kind,
        "scheduler": args.scheduler,
        "workers": args.workers,
        "threads": args.threads,
    }
    if args.quiet:
        flags["console"] = False
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        flags[key.strip()] = value
    overrides = read_config_file(args.config) if args.config else {}
    overrides.update((key, value) for key, value in flags.items() if value is not None)
    config = RunConfig.from_env(**overrides)
    if args.use_unet is not None:
        config = config.replace(use_unet=args.use_unet)
    return config


def ensure_data_root(data_root: str) -> str:
    """``data_root`` resolved; for ``auto``/``demo`` with nothing found, the
    demo dataset is generated here, explicitly (resolving never generates)."""
    try:
        return str(resolve_data_root(data_root))
    except FileNotFoundError:
        if str(data_root).strip().lower() not in ("auto", "demo"):
            raise
        return str(ensure_demo_dataset())


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        config = config.replace(data_root=ensure_data_root(config.data_root))
        if config.model_dir:  # refuse a bad bundle before any work, naming the file
            describe_bundle(config.model_dir)
        if config.scheduler:
            require_dask()
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, DaskUnavailable) as exc:
        print(f"nx47 run: {exc}", file=sys.stderr)
        return 2
    # torch keeps a compiler cache in the system temp folder by default; this
    # process is the run's own, so its environment keeps that cache inside
    # the output folder (a run inside a notebook kernel leaves the kernel's
    # environment alone)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                          str(RunFolder(Path(config.out_dir).expanduser().resolve()).unet / "torch-cache"))
    token = CancelToken()

    def on_signal(signum, frame):  # SIGINT / SIGTERM: cooperative stop
        token.cancel(f"signal {signal.Signals(signum).name}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    try:
        result = run_pipeline(config, cancel=token)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"nx47 run: {exc}", file=sys.stderr)
        return 2
    if result.error:
        print(f"nx47 run: {result.error}", file=sys.stderr)
    print(f"nx47 run: {result.status}; submission: {result.submission or 'none'}; output: {result.out_dir}")
    return result.exit_code
