"""``nx47 infer``: segment a volume of any size with a model bundle, chunk by chunk.

1. **probability** — the volume is cut into ``chunk``-sided cores; each core
   is read with the bundle's predictor's ``halo`` (the linear model: the
   filter bank's reach, :func:`nx47_pipeline.model.features.halo_for`, so its
   probabilities equal the whole-volume ones; an nnU-Net: half its patch, so
   they equal them within the tolerance docs/scale.md states), turned into
   threshold classes (0 / 1 / 2, and the
   ridge bit when the bundle's post-processing thins the surface, with
   :data:`~nx47_pipeline.model.postprocess.RIDGE_HALO` more halo:
   :func:`nx47_pipeline.model.postprocess.threshold_classes`) and written to
   ``DIR/classes.zarr``; a marker ``DIR/chunks/<z>_<y>_<x>.done`` follows, so
   a rerun after ``kill -9`` skips finished chunks.  Chunks run in process,
   or as tasks on Dask distributed (``--scheduler``).
2. **postprocess** — hysteresis, thin surface (when the bundle's run chose
   it), closing, cavity filling, dust removal and hole plugging (the
   bundle's ``postprocess.min_size`` / ``plug_size``) on
   the whole volume: in process with numpy (the volume's classes must fit in
   memory), or slab by slab on Dask (:mod:`nx47_pipeline.run.slabs`: the
   component filters swept over slabs one chunk thick, the components open
   at a slab's top face carried to the next slab as a frontier, every
   intermediate mask a zarr store beside the result), giving the same mask:
   the client holds the tasks of two slabs at a time and a worker one chunk
   with its halo or one slab's face labels, whatever the volume's length
   (benchmarks/results/post_scale.md); PROGRESS_UPDATE at least every second.
   ``DIR/mask.zarr`` (uint8 0/1, the input's shape) is the result.

Events go to ``DIR/journal.jsonl`` (RUN_START, STEP, PROGRESS_UPDATE per
chunk naming the worker, HEARTBEAT, EXEC_COMPLETE), which ``nx47
verify-journal`` checks.  The input is a zarr array, an OME-Zarr group
(level 0) or a TIFF file.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from nx47_pipeline.io.atomic import write_text
from nx47_pipeline.io.run_folder import CHUNKS, CLASSES, INFER_KEY, MASK
from nx47_pipeline.io.volumes import open_volume
from nx47_pipeline.model.bundle import Bundle, load_bundle
from nx47_pipeline.model.postprocess import (
    RIDGE_HALO, plug_radius, postprocess_classes, surface_ridge, threshold_classes,
)
from nx47_pipeline.run.executor import chunk_grid, make_executor, worker_name
from nx47_pipeline.run.resume import acquire_lock, release_lock
from nx47_pipeline.run.slabs import Progress, Rounds, create_like, filter_components, map_chunks
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken
from nx47_pipeline.telemetry.events import StageName, Status
from nx47_pipeline.telemetry.facade import Telemetry

STAGES = ((StageName.PROBABILITY, 4.0), (StageName.POSTPROCESS, 1.0))


@dataclass(frozen=True)
class InferResult:
    status: Status
    mask: Path | None
    chunks: int
    chunks_resumed: int
    seconds: float
    error: str = ""


# ---------------------------------------------------------------------------
# one chunk (runs in process or on a Dask worker)
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _bundle(path: str, version: str) -> Bundle:
    """The bundle at ``path``, loaded once per worker process and ``version``
    (its files' hashes and post-processing: a bundle rewritten in place is
    loaded again)."""
    return load_bundle(path, device="cpu")


def chunk_task(job: dict[str, Any]) -> dict[str, Any]:
    """Classes of one core region, written to ``classes.zarr``; then its marker."""
    import zarr  # noqa: PLC0415

    t0 = time.monotonic()
    bundle = _bundle(job["bundle"], job["bundle_version"])
    vol = open_volume(job["input"])
    core = [slice(a, b) for a, b in job["core"]]
    h = job["halo"]
    outer = [slice(max(0, c.start - h), min(n, c.stop + h)) for c, n in zip(core, vol.shape)]
    block = np.asarray(vol[tuple(outer)])
    prob = bundle.predictor.predict(block)
    inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
    post = bundle.post
    low, high = post.low, post.high
    # the halo holds RIDGE_HALO voxels of exact probabilities around the core when thinning
    ridge = surface_ridge(prob, prob > low)[inner] if post.thin else None
    classes = threshold_classes(prob[inner], low=low, high=high, ridge=ridge)
    out = zarr.open_array(job["classes"], mode="r+")
    out[tuple(core)] = classes
    write_text(Path(job["marker"]), json.dumps({"core": job["core"], "worker": worker_name()}))
    return {"id": job["id"], "worker": worker_name(), "seconds": time.monotonic() - t0}


# ---------------------------------------------------------------------------
# post-processing
# ---------------------------------------------------------------------------
def _postprocess_dask(classes_path: Path, mask_path: Path, *, closing_radius: Sequence[int],
                      min_size: int, chunk: int, thin: bool = False, plug_size: int = 0, executor: Any = None,
                      on_progress: Progress | None = None) -> Rounds:
    """:func:`~nx47_pipeline.model.postprocess.postprocess_classes` of a classes store of any size,
    slab by slab on Dask (:mod:`nx47_pipeline.run.slabs`), into ``mask_path`` (chunks of ``chunk``).

    Hysteresis, cavities, dust and hole plugs are component filters swept
    over the slabs (a frontier of the components open at a slab's top face
    carried from one slab to the next); thinning, closing and the plugs'
    closing are local filters read with their halo.  Every step reads and
    writes a zarr store in ``mask_path.tmp/`` (removed at the end, the last one
    renamed to ``mask_path``): the client holds the tasks of two slabs at a
    time, a worker a chunk with its halo or one slab's face labels.
    ``executor`` and ``on_progress``: :class:`~nx47_pipeline.run.slabs.Rounds`, which is
    returned (its tasks and their seconds per kind).
    """
    import zarr  # noqa: PLC0415

    shape = tuple(zarr.open_array(str(classes_path), mode="r").shape)
    chunks = (int(chunk),) * 3
    s26 = np.ones((3, 3, 3), dtype=bool)
    s6 = ndimage.generate_binary_structure(3, 1)
    r = tuple(int(v) for v in closing_radius)
    scratch = Path(str(mask_path) + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rounds = Rounds(executor, on_progress)
    big = int(np.iinfo(np.int64).max)

    def store(name: str) -> str:
        path = scratch / name
        create_like(path, shape, chunks)
        return str(path)

    def components(phase: str, src: str, binary: str, structure, lo: int, hi: int, out: str,
                   base: str | None = None) -> tuple[str, int]:
        dst = store(f"{phase}.zarr")
        op = {"src": src, "binary": binary, "structure": structure, "shape": shape, "chunks": chunks,
              "out": out, "lo": lo, "hi": hi, "base": base, "dst": dst, "work": str(scratch / "work")}
        return dst, filter_components(op, rounds, phase=phase)

    def local(phase: str, src: str, kind: str, radius, **extra) -> tuple[str, int]:
        dst = store(f"{phase}.zarr")
        op = {"src": src, "kind": kind, "radius": radius, "shape": shape, "chunks": chunks, "dst": dst, **extra}
        return dst, map_chunks(op, rounds, phase=phase)

    try:
        mask, _ = components("hysteresis", str(classes_path), "weak", s26, 1, big, "select")
        mask, _ = local("closing", mask, "close", r, thin=bool(thin), classes=str(classes_path))
        mask, _ = components("cavities", mask, "background", s6, 0, 0, "union", base=mask)
        if min_size > 1:
            mask, _ = components("dust", mask, "foreground", s26, int(min_size), big, "select")
        if plug_size > 0:
            # plug_holes: the fills of a closing of radius plug_radius(r), labelled across chunks
            # (26-connected) like the dust removal; the fill components larger than plug_size stay out
            fill, n_fill = local("fill", mask, "fill", plug_radius(r))
            if n_fill:
                plugged, n_plugs = components("plugs", fill, "foreground", s26, 0, int(plug_size), "union",
                                              base=mask)
                if n_plugs:  # a plug may close the mouth of a cavity
                    mask, _ = components("cavities2", plugged, "background", s6, 0, 0, "union", base=plugged)
        shutil.rmtree(mask_path, ignore_errors=True)
        os.replace(mask, mask_path)
        return rounds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _post_progress(tel: Telemetry, *, plugs: bool, every_s: float = 1.0) -> Progress:
    """The post-processing's ``on_progress``: a PROGRESS_UPDATE when a phase begins or ends and at most
    every ``every_s`` seconds in between (it is called on each tick of the executor's loop, 0.5 s),
    the stage's fraction counted over the phases planned (hole plugs and the second cavity filling
    when the bundle plugs)."""
    planned = ["hysteresis: forward", "hysteresis: backward", "closing", "cavities: forward",
               "cavities: backward", "dust: forward", "dust: backward"]
    if plugs:
        planned += ["fill", "plugs: forward", "plugs: backward", "cavities2: forward", "cavities2: backward"]
    last = {"t": -np.inf, "phase": None}

    def report(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == last["phase"] and now - last["t"] < every_s and done not in (0, total):
            return
        last.update(t=now, phase=phase)
        i = planned.index(phase) if phase in planned else len(planned) - 1
        frac = (i + (done / total if total else 1.0)) / len(planned)
        tel.progress(step_done=min(frac, 1.0) * 0.999, step_total=1, substep=phase, substep_done=done,
                     substep_total=total, message=f"{phase}: slab round {done}/{total}")

    return report


def _postprocess_numpy(classes_path: Path, mask_path: Path, *, closing_radius: Sequence[int], min_size: int,
                       chunk: int, thin: bool = False, plug_size: int = 0) -> None:
    import zarr  # noqa: PLC0415

    classes = np.asarray(zarr.open_array(str(classes_path), mode="r")[...])
    mask = postprocess_classes(classes, closing_radius=closing_radius, min_size=min_size, thin=thin,
                               plug_size=plug_size)
    out = zarr.create_array(str(mask_path), shape=mask.shape, chunks=(chunk,) * 3, dtype="uint8", overwrite=True)
    out[...] = mask


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------
def infer(
    bundle: str | os.PathLike,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    chunk: int = 128,
    memory_limit: str | None = None,
    console: bool = True,
    console_stream: Any = None,
    cancel: CancelToken | None = None,
    heartbeat_interval_s: float = 15.0,
) -> InferResult:
    """Segment ``input_path`` with ``bundle`` into ``out_dir/mask.zarr`` (see the module docstring)."""
    import zarr  # noqa: PLC0415

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    b = load_bundle(bundle, device="cpu")
    # an nnU-Net bundle predicts each chunk with its halo (half a patch): within the tolerance of
    # docs/scale.md, not exactly, as its windows fall elsewhere than on the whole volume
    if b.unet is not None:
        raise ValueError(f"{bundle}: holds a U-Net; nx47 infer segments with linear bundles only "
                         "(the U-Net's sliding windows are not chunk-exact)")
    vol = open_volume(input_path)
    # run.lock: a second run refuses the folder, a dashboard tells a live run from a lost one
    # and its Stop signals this pid
    acquire_lock(out)
    try:
        tel = Telemetry(out_dir=out, stages=STAGES, console=console, console_stream=console_stream,
                        progress_interval_s=0.0, heartbeat_interval_s=heartbeat_interval_s, cancel=cancel,
                        config_dict={"command": "infer", "bundle": str(bundle), "input": str(input_path),
                                     "scheduler": scheduler or "", "workers": workers, "chunk": chunk,
                                     "memory_limit": memory_limit or "", "shape": list(vol.shape)})
        t0 = time.monotonic()
        tel.start(run_id=time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    except BaseException:
        release_lock(out)
        raise
    status, mask_path, error = Status.FAILED, None, ""
    n_chunks = n_resumed = 0
    executor = None
    try:
        classes_path = out / CLASSES
        thin = bool(b.best.get("thin"))
        # what the stored classes depend on: a bundle rewritten in place with other thresholds or thinning
        # (its manifest's files hashes and post-processing) starts afresh too
        meta = {"shape": list(vol.shape), "chunk": chunk, "bundle": str(Path(bundle).resolve()),
                "input": str(Path(input_path).resolve()), "files": b.manifest.get("files"),
                "post": {"low": b.best["low"], "high": b.best["high"], "thin": thin}}
        key_path = out / INFER_KEY
        if not key_path.exists() or json.loads(key_path.read_text()) != meta:
            for stale in (classes_path, out / CHUNKS, out / MASK):
                shutil.rmtree(stale, ignore_errors=True)
            zarr.create_array(str(classes_path), shape=tuple(vol.shape), chunks=(chunk,) * 3, dtype="uint8",
                              fill_value=0, overwrite=True)
            write_text(key_path, json.dumps(meta))
        (out / CHUNKS).mkdir(exist_ok=True)
        cores = chunk_grid(vol.shape, chunk)
        n_chunks = len(cores)
        # the model's context (the filter bank's reach, half an nnU-Net patch ...), and exact
        # probabilities around the core for the thinning
        halo = int(b.predictor.halo) + (RIDGE_HALO if thin else 0)
        jobs = []
        for core in cores:
            cid = "_".join(str(s.start) for s in core)
            marker = out / CHUNKS / f"{cid}.done"
            if marker.exists():
                n_resumed += 1
                continue
            jobs.append({"id": cid, "core": [(s.start, s.stop) for s in core], "halo": halo,
                         "bundle": str(Path(bundle).resolve()),
                         "bundle_version": json.dumps([meta["files"], meta["post"]], sort_keys=True),
                         "input": str(Path(input_path).resolve()),
                         "classes": str(classes_path), "marker": str(marker)})
        with tel.stage(StageName.PROBABILITY, total=n_chunks):
            tel.progress(step_done=n_resumed, step_total=n_chunks,
                         message=f"{n_chunks} chunks of {chunk}^3 (halo {halo}), {n_resumed} already done")
            executor = make_executor(scheduler, workers=workers, memory_limit=memory_limit)
            executor.monitor(out)
            done = n_resumed
            for _, res in executor.map(chunk_task, jobs):
                done += 1
                tel.progress(step_done=done, step_total=n_chunks, file=res["id"], file_done=done,
                             file_total=n_chunks, worker=res["worker"])
        with tel.stage(StageName.POSTPROCESS, total=1):
            tel.progress(step_done=0, step_total=1, message=f"hysteresis, {'thin surface, ' if thin else ''}"
                         f"closing, cavities, dust{', hole plugs' if b.plug_size else ''} (whole volume)")
            mask_path = out / MASK
            kw = {"closing_radius": b.closing_radius, "min_size": b.min_size, "chunk": chunk, "thin": thin,
                  "plug_size": b.plug_size}
            if scheduler:
                _postprocess_dask(classes_path, mask_path, executor=executor,
                                  on_progress=_post_progress(tel, plugs=b.plug_size > 0), **kw)
            else:
                _postprocess_numpy(classes_path, mask_path, **kw)
            tel.progress(step_done=1, step_total=1)
        status = Status.OK
    except Cancelled as exc:
        status, error = Status.CANCELLED, f"cancelled: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported, the command ends failed
        error = f"{type(exc).__name__}: {exc}"
        tel.error(f"infer failed: {error}", code="infer_failed")
    finally:
        if executor is not None:
            executor.close()
        seconds = time.monotonic() - t0
        tel.finish(status, submission=str(mask_path) if mask_path else None,
                   stats={"chunks": n_chunks, "chunks_resumed": n_resumed, "seconds": round(seconds, 3),
                          "mask": str(mask_path) if mask_path else None})
        release_lock(out)
    return InferResult(status, mask_path if status == Status.OK else None, n_chunks, n_resumed, seconds, error)
