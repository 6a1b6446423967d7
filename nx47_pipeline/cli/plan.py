"""``nx47 plan``: project a run's duration from an earlier preflight."""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.config import RunConfig
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.run.budget import UNetCost, largest_fit, load_preflight_timings, plan_run
from nx47_pipeline.unet.params import params_from_config

NAME = "plan"


def add_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(NAME, help="project a run's duration from an earlier preflight",
                        description="Uses <out>/preflight/timings.json written by an earlier run. "
                                    "With NX47_USE_UNET=1 the U-Net's training and inference are projected too.")
    pl.add_argument("--out", required=True)
    pl.add_argument("--n-train", type=int, default=24)
    pl.add_argument("--n-val", type=int, default=8)
    pl.add_argument("--n-test", type=int, default=120)
    pl.add_argument("--n-pairs", type=int, default=786)
    pl.add_argument("--budget-s", type=float, default=None)


def main(args: argparse.Namespace) -> int:
    timings = load_preflight_timings(args.out)
    if timings is None:
        print(f"nx47 plan: {RunFolder(args.out).timings}: no preflight timings; "
              "run `nx47 run` once (the preflight runs first)", file=sys.stderr)
        return 2
    config = RunConfig.from_env(budget_s=args.budget_s)
    unet = (UNetCost(params_from_config(config), timings.unet_s_per_batch, config.unet_device)
            if config.use_unet else None)
    proj = plan_run(timings, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                    mvox_test=timings.mvox_test, config=config, unet=unet).projection
    mt, mv, ps = largest_fit(timings, n_pairs=args.n_pairs, n_test=args.n_test, config=config, unet=unet)
    print(f"projected {proj.total_s / 60:.1f} min for {args.n_train} train / {args.n_val} val / {args.n_test} test "
          f"against {proj.usable_s / 60:.1f} min usable: {'fits' if proj.fits else 'does NOT fit'}")
    for k, v in proj.per_stage.items():
        print(f"  {k:<10} {v / 60:8.1f} min")
    print(f"largest coverage that fits ({args.n_pairs} pairs): {mt} train / {mv} val ({ps / 60:.1f} min)")
    return 0
