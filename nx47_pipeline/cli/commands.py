"""The ``nx47`` command line.

Commands
--------
run             run the pipeline (discovery -> ... -> submission.zip)
demo-data       generate the synthetic demo dataset in the Kaggle layout
verify-journal  check the hash chain of a journal.jsonl
score           score predicted masks against labels with the local metric
plan            project a run's duration from an earlier preflight
serve           serve dashboard.ipynb with Voila on 127.0.0.1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from nx47_pipeline.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the pipeline and write submission.zip",
        description=(
            "Run the whole pipeline: discovery, coverage audit, mandatory 5 %% preflight, "
            "features, hyper-parameter search, fit_prox, optional U-Net, validation, "
            "segmentation and packaging. Every option can also be set with an "
            "environment variable NX47_<FIELD> (see docs/architecture.md); flags win. "
            "Rerunning with the same --out resumes."
        ),
    )
    p.add_argument("--data", default=None, help="data root, or 'auto' (Kaggle mounts, then the demo dataset)")
    p.add_argument("--out", default=None, help="output folder (journal, artifacts, submission.zip)")
    p.add_argument("--max-train-volumes", type=int, default=None, help="training pairs to use (0 = all; default 24)")
    p.add_argument("--max-val-volumes", type=int, default=None, help="validation pairs to use (0 = all; default 8)")
    p.add_argument("--budget-s", type=float, default=None, help="runtime budget in seconds (default 32400 = 9 h)")
    p.add_argument("--auto-coverage", action=argparse.BooleanOptionalAction, default=None,
                   help="shrink coverage to the largest that fits the budget after the preflight")
    p.add_argument("--unet", dest="use_unet", action=argparse.BooleanOptionalAction, default=None,
                   help="train the optional 3D U-Net (default: on with CUDA, off on CPU)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--heartbeat-interval-s", type=float, default=None)
    p.add_argument("--quiet", action="store_true", help="no console progress lines")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any RunConfig field, e.g. --set fit_max_iter=200 (repeatable)")


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = {
        "data_root": args.data,
        "out_dir": args.out,
        "max_train_volumes": args.max_train_volumes,
        "max_val_volumes": args.max_val_volumes,
        "budget_s": args.budget_s,
        "auto_coverage": args.auto_coverage,
        "seed": args.seed,
        "heartbeat_interval_s": args.heartbeat_interval_s,
    }
    if args.quiet:
        overrides["console"] = False
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    config = RunConfig.from_env(**overrides)
    if args.use_unet is not None:
        config = config.replace(use_unet=args.use_unet)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from nx47_pipeline.telemetry.cancel import CancelToken
    from nx47_pipeline.run.orchestrator import run_pipeline

    try:
        config = _config_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"nx47 run: {exc}", file=sys.stderr)
        return 2
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


def cmd_demo(args: argparse.Namespace) -> int:
    from nx47_pipeline.data.demo import generate_demo_dataset, parse_shape

    try:
        shape = parse_shape(args.shape) if args.shape else None
    except ValueError as exc:
        print(f"nx47 demo-data: --shape: {exc}", file=sys.stderr)
        return 2
    root = generate_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, shape=shape, seed=args.seed)
    print(f"demo dataset written to {root}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from nx47_pipeline.telemetry.journal import verify_main

    return verify_main(args.path)


def cmd_score(argv: list[str]) -> int:
    from nx47_pipeline.model.metric import score_main

    return score_main(argv)


def cmd_plan(args: argparse.Namespace) -> int:
    from nx47_pipeline.run.budget import largest_fit, load_preflight_timings, project_run

    timings = load_preflight_timings(args.out)
    if timings is None:
        print(f"nx47 plan: {Path(args.out) / 'preflight' / 'timings.json'}: no preflight timings; "
              "run `nx47 run` once (the preflight runs first)", file=sys.stderr)
        return 2
    config = RunConfig.from_env(budget_s=args.budget_s)
    proj = project_run(timings, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, config=config)
    mt, mv, ps = largest_fit(timings, n_pairs=args.n_pairs, n_test=args.n_test, config=config)
    print(f"projected {proj.total_s / 60:.1f} min for {args.n_train} train / {args.n_val} val / {args.n_test} test "
          f"against {proj.usable_s / 60:.1f} min usable: {'fits' if proj.fits else 'does NOT fit'}")
    for k, v in proj.per_stage.items():
        print(f"  {k:<10} {v / 60:8.1f} min")
    print(f"largest coverage that fits ({args.n_pairs} pairs): {mt} train / {mv} val ({ps / 60:.1f} min)")
    return 0


def voila_command(notebook: Path, *, port: int, ip: str = "127.0.0.1") -> list[str]:
    """The Voila command line the project uses (binds ``ip``, 127.0.0.1 by default)."""
    return [
        sys.executable, "-m", "voila", str(notebook),
        "--no-browser", f"--port={port}", f"--Voila.ip={ip}",
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    import subprocess

    notebook = REPO_ROOT / "dashboard.ipynb"
    env = dict(os.environ)
    if args.data:
        env["NX47_DATA_ROOT"] = args.data
    if args.out:
        env["NX47_OUT_DIR"] = args.out
    if not env.get("NX47_DATA_ROOT"):
        from nx47_pipeline.data.discovery import resolve_data_root

        # the Kaggle mounts, else the demo dataset (generated when absent)
        env["NX47_DATA_ROOT"] = str(resolve_data_root("auto"))
    cmd = voila_command(notebook, port=args.port, ip=args.ip)
    print(f"NX47 dashboard: http://{args.ip}:{args.port}/  (data root: {env.get('NX47_DATA_ROOT', 'auto')})", flush=True)
    return subprocess.call(cmd, env=env, cwd=str(REPO_ROOT))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nx47",
        description="NX47: live-monitored 3D papyrus-surface segmentation (Vesuvius Challenge - Surface Detection).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    d = sub.add_parser("demo-data", help="generate the synthetic demo dataset (Kaggle layout)",
                       description="Generate scroll-like volumes with labels in the competition's layout and format.")
    d.add_argument("--out", required=True, help="folder to write (created)")
    d.add_argument("--n-train", type=int, default=12, help="training pairs (default 12)")
    d.add_argument("--n-test", type=int, default=2, help="test volumes (default 2)")
    d.add_argument("--shape", default=None, help="edge length (e.g. 320) or Z,Y,X; default: mixed small shapes")
    d.add_argument("--seed", type=int, default=47)
    v = sub.add_parser("verify-journal", help="verify the hash chain of a journal.jsonl",
                       description="Exit 0 and print the chain head if intact; non-zero naming the first bad line.")
    v.add_argument("path")
    sub.add_parser("score", help="score masks (folder or zip) against labels: --pred DIR|ZIP --labels DIR [--json]",
                   add_help=False)
    pl = sub.add_parser("plan", help="project a run's duration from an earlier preflight",
                        description="Uses <out>/preflight/timings.json written by an earlier run.")
    pl.add_argument("--out", required=True)
    pl.add_argument("--n-train", type=int, default=24)
    pl.add_argument("--n-val", type=int, default=8)
    pl.add_argument("--n-test", type=int, default=120)
    pl.add_argument("--n-pairs", type=int, default=786)
    pl.add_argument("--budget-s", type=float, default=None)
    s = sub.add_parser("serve", help="serve the dashboard with Voila on 127.0.0.1",
                       description="Generates the demo dataset if no data root is set, then serves dashboard.ipynb.")
    s.add_argument("--port", type=int, default=int(os.environ.get("NX47_PORT", "8866")))
    s.add_argument("--ip", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--data", default=None)
    s.add_argument("--out", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        return cmd_score(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "run": cmd_run,
        "demo-data": cmd_demo,
        "verify-journal": cmd_verify,
        "plan": cmd_plan,
        "serve": cmd_serve,
    }
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
