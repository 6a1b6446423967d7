"""``nx47 infer``: segment a volume of any size with a model bundle, chunk by chunk."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from nx47_pipeline.model.bundle import BundleError
from nx47_pipeline.run.executor import DaskUnavailable
from nx47_pipeline.run.infer import infer
from nx47_pipeline.run.resume import FolderBusy
from nx47_pipeline.telemetry.cancel import CancelToken

NAME = "infer"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="segment a volume of any size (zarr, OME-Zarr, TIFF) with a model bundle",
                       description="Writes OUT/mask.zarr (uint8 0/1, the input's shape) and OUT/journal.jsonl; "
                                   "chunk by chunk, resumable after a kill; in process or on Dask distributed.")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="a model bundle (nx47 export-model)")
    p.add_argument("--input", required=True, metavar="PATH", help="zarr array, OME-Zarr group or TIFF")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--scheduler", default=None, help="'local' (a LocalCluster) or a Dask scheduler address")
    p.add_argument("--workers", type=int, default=2, help="worker processes of a local cluster (default 2)")
    p.add_argument("--chunk", type=int, default=128, help="chunk edge in voxels (default 128)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE", help="per-worker memory limit, e.g. 1GB")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    token = CancelToken()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: token.cancel(f"signal {signal.Signals(signum).name}"))
    try:
        res = infer(args.model, args.input, args.out, scheduler=args.scheduler, workers=args.workers,
                    chunk=args.chunk, memory_limit=args.memory_limit, console=not args.quiet, cancel=token)
    except (BundleError, FileNotFoundError, ValueError, DaskUnavailable, FolderBusy) as exc:
        print(f"nx47 infer: {exc}", file=sys.stderr)
        return 2
    print(f"nx47 infer: {res.status}; mask: {res.mask or 'none'}; {res.chunks} chunks "
          f"({res.chunks_resumed} resumed) in {res.seconds:.1f} s")
    if res.error:
        print(f"nx47 infer: {res.error}", file=sys.stderr)
    return {"ok": 0, "cancelled": 130}.get(str(res.status), 1)
