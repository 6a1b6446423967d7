"""Slice previewer at competition size: decode + render latency of a 320³ slice,
and of the QA canvas's panels (:func:`nx47_widgets.render.render_panels`: the
whole slice at one pixel per voxel, overlay or four side-by-side panels).

Writes a CT-like uint8 volume, its label (0/1/2), a predicted mask and a
probability volume as LZW TIFFs, then times :func:`nx47_widgets.render.render_slice`
for the first request (volumes decoded), for new slices of the cached volumes
on each axis, and for the PNG cache of :class:`nx47_widgets.render.AsyncRenderer`.

Run: ``python benchmarks/bench_preview.py --out benchmarks/results/preview.md [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from nx47_pipeline.io.volumes import write_volume  # noqa: E402
from nx47_widgets.render import AsyncRenderer, SliceRequest, VolumeCache, render_panels, render_slice  # noqa: E402
from _common import git_commit, machine, write_section, load_note  # noqa: E402


def make_volumes(folder: Path, n: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    sheet = np.sin(x / 9.0 + 2 * np.sin(z / 23.0)) * 0.5 + 0.5
    img = np.clip(60 + 120 * sheet + rng.normal(0, 20, sheet.shape), 0, 255).astype(np.uint8)
    label = (sheet > 0.93).astype(np.uint8)
    label[:, :, : n // 3] = 2
    pred = (sheet > 0.9).astype(np.uint8)
    prob = np.clip(sheet * 255, 0, 255).astype(np.uint8)
    paths = {}
    for name, arr in (("image", img), ("label", label), ("pred", pred), ("prob", prob)):
        p = folder / f"{name}.tif"
        write_volume(p, arr)
        paths[name] = str(p)
    return paths


def ms(samples: list[float]) -> str:
    return f"{1000 * statistics.median(samples):.0f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 128 if args.quick else 320
    overlays = ("label", "pred", "prob", "error")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_volumes(Path(tmp), n)
        size_mb = sum(os.path.getsize(p) for p in paths.values()) / 2**20

        def req(axis: str, index: int) -> SliceRequest:
            return SliceRequest(image=paths["image"], label=paths["label"], pred=paths["pred"],
                                prob=paths["prob"], axis=axis, index=index, overlays=overlays,
                                opacity=0.5, min_size=256)

        cache = VolumeCache()
        t0 = time.perf_counter()
        png = render_slice(req("z", n // 2), cache=cache)
        first = time.perf_counter() - t0
        per_axis = {}
        for axis in ("z", "y", "x"):
            samples = []
            for k in range(5):
                t0 = time.perf_counter()
                render_slice(req(axis, (k * 37) % n), cache=cache)
                samples.append(time.perf_counter() - t0)
            per_axis[axis] = samples

        # the QA canvas: the whole slice's PNGs (overlay: one; side by side: four)
        panels = {}
        for layout in ("overlay", "side"):
            samples = []
            for k in range(5):
                t0 = time.perf_counter()
                out = render_panels(SliceRequest(**{**req("z", (k * 41) % n).__dict__, "layout": layout}),
                                    cache=cache)
                samples.append(time.perf_counter() - t0)
            panels[layout] = (samples, sum(len(b) for _, b in out), len(out))

        done = threading.Event()
        lat: list[float] = []
        r = AsyncRenderer(lambda _r, _p: done.set(), cache=cache)
        t0 = time.perf_counter()
        r.request(req("z", 3))
        done.wait(60)
        uncached_async = time.perf_counter() - t0
        for _ in range(20):
            done.clear()
            t0 = time.perf_counter()
            r.request(req("z", 3))  # served from the PNG cache, synchronously
            lat.append(time.perf_counter() - t0)
        r.close()
        rss = psutil.Process().memory_info().rss / 2**20

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Slice previewer",
        "",
        f"Machine: {machine()}. Date: {now}. Commit: {git_commit()}. " + load_note(),
        "",
        f"Four {n}³ uint8 LZW TIFFs (image, label, prediction, probability; {size_mb:.0f} MiB "
        "on disk), every overlay on (label, prediction, probability heat, error map), "
        f"PNG upscaled to at least 256 px. Rendering runs on the previewer's own thread; the "
        "kernel only waits for the PNG-cache lookup. The QA canvas's panels are the whole "
        "slice at one pixel per voxel (the browser zooms and pans them): zooming and panning "
        "send drawing commands only, no pixels.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| first slice (decodes the four volumes) | {first * 1000:.0f} ms |",
        f"| new z slice, volumes cached (median of 5) | {ms(per_axis['z'])} |",
        f"| new y slice, volumes cached (median of 5) | {ms(per_axis['y'])} |",
        f"| new x slice, volumes cached (median of 5) | {ms(per_axis['x'])} |",
        f"| AsyncRenderer, new slice, request to PNG | {uncached_async * 1000:.0f} ms |",
        f"| AsyncRenderer, PNG cache hit (median of 20) | {1e6 * statistics.median(lat):.0f} µs |",
        f"| PNG size | {len(png) / 1024:.0f} KiB |",
        f"| QA canvas, new z slice, overlay: 1 PNG of the whole slice (median of 5) | "
        f"{ms(panels['overlay'][0])}, {panels['overlay'][1] / 1024:.0f} KiB |",
        f"| QA canvas, new z slice, side by side: {panels['side'][2]} PNGs (median of 5) | "
        f"{ms(panels['side'][0])}, {panels['side'][1] / 1024:.0f} KiB |",
        f"| process RSS (4 volumes cached) | {rss:.0f} MiB |",
        "",
    ]
    write_section(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
