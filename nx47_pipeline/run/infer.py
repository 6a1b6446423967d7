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
   memory), or with Dask arrays and a chunked labelling (block labels joined across
   chunk faces by label pairs found on the workers; every intermediate mask
   spilled to a zarr store beside the result instead of held in memory), giving
   the same mask: memory per worker is a few chunks, the client's the
   components that cross chunk faces (benchmarks/results/post_scale.md).
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
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from nx47_pipeline.io.atomic import write_text
from nx47_pipeline.io.run_folder import CHUNKS, CLASSES, INFER_KEY, MASK
from nx47_pipeline.io.volumes import open_volume
from nx47_pipeline.model.bundle import Bundle, load_bundle
from nx47_pipeline.model.postprocess import (
    RIDGE_BIT, RIDGE_HALO, anisotropic_closing, plug_radius, postprocess_classes, surface_ridge, thin_mask,
    threshold_classes,
)
from nx47_pipeline.run.executor import chunk_grid, make_executor, worker_name
from nx47_pipeline.run.resume import acquire_lock, release_lock
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
def _face_pairs(a: np.ndarray, b: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Label pairs ``(p, q)``, ``p != q``, of two facing planes ``a`` | ``b`` joined by ``structure``
    (3x3x3, axis 0 across the face)."""
    n_y, n_x = a.shape
    out = [np.empty((0, 2), a.dtype)]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if not structure[2, 1 + dy, 1 + dx]:
                continue
            p = a[max(0, -dy):n_y - max(0, dy), max(0, -dx):n_x - max(0, dx)].ravel()
            q = b[max(0, dy):n_y + min(0, dy), max(0, dx):n_x + min(0, dx)].ravel()
            keep = (p > 0) & (q > 0) & (p != q)
            out.append(np.stack([p[keep], q[keep]], axis=1))
    return np.unique(np.concatenate(out), axis=0)


def _block_labels(b: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return ndimage.label(b, structure=structure)[0].astype(np.int32)


def _block_face_pairs(a: np.ndarray, b: np.ndarray, axis: int, off_a: int, off_b: int,
                      structure: np.ndarray) -> np.ndarray:
    """Global label pairs joined across the face between block ``a`` and the next block ``b`` along
    ``axis`` (each block's local labels shifted by its offset): a few pairs, whatever the block size."""
    pa = np.moveaxis(a, axis, 0)[-1].astype(np.int64)
    pb = np.moveaxis(b, axis, 0)[0].astype(np.int64)
    pa = np.where(pa > 0, pa + off_a, 0)
    pb = np.where(pb > 0, pb + off_b, 0)
    return _face_pairs(pa, pb, np.moveaxis(structure, axis, 0))


def _relabel_block(local: np.ndarray, offset: int, src: np.ndarray, dst: np.ndarray, dtype) -> np.ndarray:
    """A block's local labels as global ones: shifted by the block's offset, then its labels that
    join other blocks' (``src``, this block's only) replaced by their component's root (``dst``)."""
    b = np.where(local > 0, local.astype(dtype) + dtype(offset), dtype(0))
    if len(src):
        i = np.searchsorted(src, b).clip(0, len(src) - 1)
        b = np.where(src[i] == b, dst[i], b)
    return b


def _label_dask(binary, structure: np.ndarray):
    """Connected components of a chunked boolean dask array: ``(labels, bound)``.

    Labels are > 0 on the foreground, unique across the volume but not
    consecutive; ``bound`` is an upper bound of them.  Each block is labelled
    with ``scipy.ndimage.label``: once for the label counts (the block
    offsets), once for the pairs of labels joined across each face between
    two neighbouring blocks — found on the workers, so only those pairs (a few
    per component crossing a face) reach the client, never a face's planes —
    and again wherever the result is computed.  The client joins the pairs
    (a sparse graph of the components crossing faces) and gives each block
    only its own part of the relabel table.  No labels of the whole volume
    are held anywhere: 768^3 under a 1 GB limit per worker had the workers
    restarted for memory when they were.  dask-image's ``ndmeasure.label`` is
    not used: with the current dask it relabels a block again for every later
    use, so its cost grew quadratically with the number of chunks.
    """
    import dask  # noqa: PLC0415
    import dask.array as da  # noqa: PLC0415

    structure = np.asarray(structure, dtype=bool)
    local = binary.map_blocks(_block_labels, structure, dtype=np.int32)
    nb = local.numblocks
    counts = local.map_blocks(lambda b: np.full((1,) * b.ndim, b.max(initial=0), np.int64),
                              chunks=tuple((1,) * n for n in nb), dtype=np.int64).compute()
    offsets = (np.cumsum(counts.ravel()) - counts.ravel()).reshape(nb)
    bound = int(counts.sum())
    dtype = np.int32 if bound < np.iinfo(np.int32).max else np.int64
    blocks = local.to_delayed()
    face_tasks = []
    for idx in np.ndindex(*nb):
        for ax in range(binary.ndim):
            if idx[ax] + 1 < nb[ax]:
                nxt = tuple(v + (1 if a == ax else 0) for a, v in enumerate(idx))
                face_tasks.append(dask.delayed(_block_face_pairs, pure=True)(
                    blocks[idx], blocks[nxt], ax, int(offsets[idx]), int(offsets[nxt]), structure))
    pairs = [np.empty((0, 2), np.int64), *dask.compute(*face_tasks)]
    pairs = np.concatenate(pairs)
    src = np.empty(0, dtype)
    dst = np.empty(0, dtype)
    if len(pairs):
        ids, inv = np.unique(pairs, return_inverse=True)
        inv = inv.reshape(pairs.shape)
        graph = sparse.coo_matrix((np.ones(len(inv), dtype=bool), (inv[:, 0], inv[:, 1])),
                                  shape=(len(ids),) * 2)
        _, comp = connected_components(graph, directed=False)
        root = np.full(comp.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(root, comp, ids)
        src, dst = ids.astype(dtype), root[comp].astype(dtype)
    blocks = local.to_delayed()
    rows = np.empty(nb, dtype=object)
    for idx in np.ndindex(*nb):
        lo, hi = int(offsets[idx]), int(offsets[idx] + counts[idx])
        a, b = np.searchsorted(src, [lo + 1, hi + 1])  # this block's labels are lo + 1 .. hi
        shape = tuple(local.chunks[ax][i] for ax, i in enumerate(idx))
        rows[idx] = da.from_delayed(dask.delayed(_relabel_block, pure=True)(
            blocks[idx], lo, src[a:b].copy(), dst[a:b].copy(), dtype), shape=shape, dtype=dtype)
    return da.block(rows.tolist()), bound


def _sizes_dask(lab) -> tuple[np.ndarray, np.ndarray]:
    """The labels of a chunked label array and their voxel counts ``(ids, sizes)``, counted block
    by block as sparse (label, count) lists: nothing the length of every label is made per block."""
    import dask  # noqa: PLC0415

    def count(b):
        ids, n = np.unique(b[b > 0], return_counts=True)
        return ids.astype(np.int64), n.astype(np.int64)

    parts = dask.compute(*[dask.delayed(count, pure=True)(blk) for blk in lab.to_delayed().ravel()])
    ids = np.concatenate([np.empty(0, np.int64)] + [p[0] for p in parts])
    n = np.concatenate([np.empty(0, np.int64)] + [p[1] for p in parts])
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq, np.bincount(inv.ravel(), weights=n, minlength=len(uniq)).astype(np.int64)


def _spill(mask, scratch: Path, name: str):
    """``mask`` written to ``scratch/name`` (a zarr store on disk) and read back lazily: what a
    later step reads twice comes from disk, block by block, instead of a whole-volume boolean mask
    persisted in the workers' memory."""
    import dask.array as da  # noqa: PLC0415

    path = scratch / name
    mask.astype(np.uint8).to_zarr(str(path), overwrite=True)
    return da.from_zarr(str(path)) > 0


def _fill_cavities_dask(mask, s6: np.ndarray, scratch: Path, name: str):
    """:func:`~nx47_pipeline.model.postprocess.fill_cavities` of a chunked mask: the background
    components (6-connected, labelled across chunks) that touch no face are filled."""
    import dask.array as da  # noqa: PLC0415 - optional, lazy

    bg = ~mask
    lab_bg, _ = _label_dask(bg, s6)
    faces = [lab_bg[0], lab_bg[-1], lab_bg[:, 0], lab_bg[:, -1], lab_bg[:, :, 0], lab_bg[:, :, -1]]
    border_ids = np.unique(np.concatenate([np.ravel(f) for f in da.compute(*[da.unique(f) for f in faces])]))
    return _spill(mask | (bg & ~da.isin(lab_bg, border_ids)), scratch, name)


def _postprocess_dask(classes_path: Path, mask_path: Path, *, closing_radius: Sequence[int],
                      min_size: int, chunk: int, thin: bool = False, plug_size: int = 0) -> None:
    import dask  # noqa: PLC0415 - optional, lazy
    import dask.array as da  # noqa: PLC0415

    c = da.from_zarr(str(classes_path))
    s26 = np.ones((3, 3, 3), dtype=bool)
    s6 = np.zeros((3, 3, 3), dtype=bool)
    s6[1, 1, :] = s6[1, :, 1] = s6[:, 1, 1] = True
    # every intermediate mask goes to disk (scratch zarr stores beside the result) and the labellings
    # are recomputed block by block where they are read: memory per worker is a few blocks, the
    # client's the components crossing chunk faces, whatever the volume's size
    scratch = Path(str(mask_path) + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        level = c & 3
        lab, _ = _label_dask(level >= 1, s26)
        # per block, then merged on the client: lab[c == 2].compute() gathers every class-2 voxel's label
        # in one task on one worker (768^3 under a 1 GB limit: KilledWorker)
        strong_ids = np.unique(np.concatenate([np.empty(0, np.int64)] + list(dask.compute(*[
            dask.delayed(lambda lb, cb: np.unique(lb[cb == 2]).astype(np.int64))(lb, cb)
            for lb, cb in zip(lab.to_delayed().ravel(), level.to_delayed().ravel())]))))
        r = tuple(int(v) for v in closing_radius)
        mask = da.isin(lab, strong_ids[strong_ids > 0])
        if thin:  # the ridge inside the mask, dilated once (6-connected) inside it: one voxel of overlap
            mask = da.map_overlap(lambda m, cb: thin_mask(m, (cb & RIDGE_BIT) > 0), mask, c, depth=1,
                                  boundary=0, dtype=bool)
        mask = _spill(da.map_overlap(lambda b: anisotropic_closing(b, radius=r), mask,
                                     depth={i: 2 * v for i, v in enumerate(r)}, boundary=0, dtype=bool),
                      scratch, "closed.zarr")
        del lab
        mask = _fill_cavities_dask(mask, s6, scratch, "filled.zarr")
        lab2, n2 = _label_dask(mask, s26)
        if min_size > 1 and n2:
            ids, sizes = _sizes_dask(lab2)
            small = ids[sizes < min_size]
            if len(small):
                mask = _spill(mask & ~da.isin(lab2, small), scratch, "dust.zarr")
        del lab2
        if plug_size > 0:
            # plug_holes: the fills of a closing of radius plug_radius(r), labelled across chunks
            # (26-connected) like the dust removal; the fill components larger than plug_size stay out
            pr = plug_radius(r)
            fill = _spill(da.map_overlap(lambda b: anisotropic_closing(b, radius=pr), mask,
                                         depth={i: 2 * v for i, v in enumerate(pr)}, boundary=0,
                                         dtype=bool) & ~mask, scratch, "fill.zarr")
            lab3, n3 = _label_dask(fill, s26)
            if n3:
                ids, sizes = _sizes_dask(lab3)
                big = ids[sizes > plug_size]
                plugs = _spill(fill & ~da.isin(lab3, big), scratch, "plugs.zarr")
                if bool(plugs.any().compute()):
                    mask = _fill_cavities_dask(mask | plugs, s6, scratch, "plugged.zarr")  # a plug may close a mouth
            del lab3, fill
        mask.astype(np.uint8).rechunk(chunk).to_zarr(str(mask_path), overwrite=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
            post = _postprocess_dask if scheduler else _postprocess_numpy
            mask_path = out / MASK
            post(classes_path, mask_path, closing_radius=b.closing_radius, min_size=b.min_size,
                 chunk=chunk, thin=thin, plug_size=b.plug_size)
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
