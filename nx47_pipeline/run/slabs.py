"""Connected components of a chunked volume on disk, slab by slab.

The post-processing of ``nx47 infer --scheduler`` keeps or drops whole
26- or 6-connected components by a sum over their voxels (hysteresis: a
strong voxel; cavities: a voxel on the volume's border; dust and hole
plugs: the voxel count).  :func:`filter_components` does it for a zarr
volume of any size with memory that does not grow with the volume's
length, neither on the client nor on a worker:

* the chunks are grouped in **slabs**, one chunk thick along axis 0, and
  swept in two passes; every step is a task on a worker and what one step
  hands to the next is a small file in a scratch folder, so the client
  holds the tasks of at most two slabs and a few counters;
* **forward**, slab after slab: each chunk is labelled (``scipy.ndimage.label``)
  and writes its labels on its faces and the sums of its labels that touch
  a face; each chunk pairs its face labels with the neighbours before it
  (faces, and for 26-connectivity the edges and corners too); one task per
  slab joins these pairs with the **frontier** of the slabs below (the
  components that reach the top face of the previous slab, with their sums
  so far) and writes the new frontier: only the labels on the slab's top
  face travel to the next step, never the labels of the volume below;
* **backward**, slab after slab from the top: a component that is still
  open at a slab's top face takes its final sum (and final id) from the
  slab above, so two branches that join only in a later slab (a U) are
  decided as one component; each chunk is labelled again and written with
  its decision to the output store.

The result equals the whole-volume labelling (``scipy.ndimage.label`` /
``cc3d`` with the same connectivity): :func:`label_components` writes the
labels themselves (each component one id), which the tests compare with
scipy's partition.  The tasks run on a Dask executor (the run's
:class:`~nx47_pipeline.run.executor.DaskExecutor`, tasks at most two slabs at a
time) or, without one, with ``dask.compute`` on Dask's current scheduler.
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from nx47_pipeline.model.postprocess import RIDGE_BIT, anisotropic_closing, thin_mask

#: Chunk offsets ``o`` of the neighbours that come before a chunk in the z-major order (o < 0
#: lexicographically): each pair of touching chunks is joined once, by the later one.
BEFORE = tuple(o for o in itertools.product((-1, 0, 1), repeat=3) if o < (0, 0, 0))

#: ``on_progress(phase, done, total)``: ``done`` of ``total`` rounds of the named phase are finished.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Grid:
    """The chunk grid of a volume: ``shape`` cut into ``chunks`` (z, y, x)."""

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]

    @property
    def nb(self) -> tuple[int, int, int]:
        """Chunks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))  # type: ignore[return-value]

    @property
    def stride(self) -> int:
        """Ids per chunk: a chunk's labels ``l`` are ``linear * stride + l`` in the whole volume."""
        return int(np.prod(self.chunks)) + 1

    def linear(self, idx: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(idx), self.nb))

    def region(self, idx: Sequence[int]) -> tuple[slice, slice, slice]:
        return tuple(slice(i * c, min(n, (i + 1) * c))  # type: ignore[return-value]
                     for i, c, n in zip(idx, self.chunks, self.shape))

    def slab(self, k: int) -> list[tuple[int, int, int]]:
        """The chunks of slab ``k`` (z-major)."""
        return [(k, j, i) for j in range(self.nb[1]) for i in range(self.nb[2])]

    def inside(self, idx: Sequence[int]) -> bool:
        return all(0 <= i < n for i, n in zip(idx, self.nb))


# ---------------------------------------------------------------------------
# one chunk: its binary mask, weights, labels and faces
# ---------------------------------------------------------------------------
def _grid(op: dict) -> Grid:
    return Grid(tuple(op["shape"]), tuple(op["chunks"]))


def _read(path: str, region) -> np.ndarray:
    import zarr  # noqa: PLC0415 - optional (the Dask stack)

    return np.asarray(zarr.open_array(path, mode="r")[region])


def _binary_weight(op: dict, idx) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(binary, weight, source)`` of chunk ``idx``: the voxels labelled, what each adds to its
    component's sum (None: 1, the voxel count) and the source block as read."""
    grid = _grid(op)
    region = grid.region(idx)
    src = _read(op["src"], region)
    kind = op["binary"]
    if kind == "weak":  # threshold classes: 1 and 2 weak, 2 strong (the ridge bit aside)
        level = src & 3
        return level >= 1, level >= 2, src
    if kind == "background":  # 6-connected background, weighted by the voxels on the volume's border
        border = np.zeros(src.shape, dtype=bool)
        for ax, s in enumerate(region):
            view = np.moveaxis(border, ax, 0)
            if s.start == 0:
                view[0] = True
            if s.stop == grid.shape[ax]:
                view[-1] = True
        return src == 0, border, src
    if kind == "foreground":
        return src > 0, None, src
    raise ValueError(f"binary must be 'weak', 'background' or 'foreground', got {kind!r}")


def _label(op: dict, idx) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, n, sums, binary, source)`` of chunk ``idx``: its local labels 1..n and the
    sum of the weights of each (index 0: the background)."""
    binary, weight, src = _binary_weight(op, idx)
    lab, n = ndimage.label(binary, structure=np.asarray(op["structure"], dtype=bool))
    sums = np.bincount(lab.ravel(), weights=None if weight is None else weight.ravel(), minlength=n + 1)
    return lab, int(n), np.rint(sums).astype(np.int64), binary, src


def _faces(grid: Grid, idx, lab: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The planes of ``lab`` on the faces chunk ``idx`` shares with a neighbour (``"p<axis><0|1>"``,
    low / high side), the sorted local labels on them, and those on the top face (axis 0, high)."""
    planes = {}
    for ax in range(3):
        for side in (0, 1):
            if 0 <= idx[ax] + (1 if side else -1) < grid.nb[ax]:
                planes[f"p{ax}{side}"] = np.ascontiguousarray(np.moveaxis(lab, ax, 0)[-1 if side else 0])
    ids = np.unique(np.concatenate([np.empty(0, lab.dtype)] + [p.ravel() for p in planes.values()]))
    top = planes.get("p01")
    top_ids = np.empty(0, lab.dtype) if top is None else np.unique(top)
    return planes, ids[ids > 0].astype(np.int64), top_ids[top_ids > 0].astype(np.int64)


def _boundary(planes, o: Sequence[int]) -> np.ndarray:
    """A chunk's labels on its boundary toward the neighbour at offset ``o``: a face plane, an edge
    line or a corner voxel (an array over the axes where ``o`` is 0)."""
    crossed = [a for a in range(3) if o[a]]
    a0 = crossed[0]
    plane = planes[f"p{a0}{0 if o[a0] < 0 else 1}"]
    rest = [a for a in range(3) if a != a0]
    return plane[tuple((0 if o[a] < 0 else -1) if o[a] else slice(None) for a in rest)]


def _pairs_toward(mine: np.ndarray, theirs: np.ndarray, o: Sequence[int], structure: np.ndarray) -> np.ndarray:
    """Local label pairs ``(mine, theirs)`` joined by ``structure`` across the boundary toward the
    neighbour at chunk offset ``o`` (``mine``, ``theirs``: :func:`_boundary` of each side)."""
    free = [a for a in range(3) if not o[a]]
    out = [np.empty((0, 2), np.int64)]
    for shifts in itertools.product((-1, 0, 1), repeat=len(free)):
        step = list(o)
        for a, s in zip(free, shifts):
            step[a] = s
        if not structure[tuple(1 + s for s in step)]:
            continue
        sa = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shifts, mine.shape))
        sb = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shifts, theirs.shape))
        p, q = np.ravel(mine[sa]), np.ravel(theirs[sb])
        keep = (p > 0) & (q > 0)
        out.append(np.stack([p[keep], q[keep]], axis=1).astype(np.int64))
    return np.unique(np.concatenate(out), axis=0)


# ---------------------------------------------------------------------------
# the tasks (one module-level function: items travel to the workers as dicts)
# ---------------------------------------------------------------------------
def _scan(op: dict, idx) -> dict:
    """Forward, one chunk: its face planes, face labels and their sums to ``s<chunk>.npz``."""
    grid = _grid(op)
    lab, n, sums, _, _ = _label(op, idx)
    planes, ids, top = _faces(grid, idx, lab)
    np.savez(Path(op["work"]) / f"s{grid.linear(idx)}.npz", face_ids=ids, face_sums=sums[ids], top_ids=top,
             **planes)
    return {"labels": n, "face": len(ids)}


def _pair(op: dict, idx) -> dict:
    """Forward, one chunk: the id pairs joining its labels with the neighbours before it, to ``p<chunk>.npy``."""
    grid = _grid(op)
    work = Path(op["work"])
    structure = np.asarray(op["structure"], dtype=bool)
    lin = grid.linear(idx)
    out = [np.empty((0, 2), np.int64)]
    with np.load(work / f"s{lin}.npz") as mine:
        own = {k: mine[k] for k in mine.files if k.startswith("p")}
    for o in BEFORE:
        nxt = tuple(i + d for i, d in zip(idx, o))
        # a neighbour that the structure cannot reach (an edge or a corner under 6-connectivity) is skipped
        if not grid.inside(nxt) or not structure[tuple(1 + d if d else slice(None) for d in o)].any():
            continue
        other = grid.linear(nxt)
        with np.load(work / f"s{other}.npz") as theirs:
            pairs = _pairs_toward(_boundary(own, o), _boundary(theirs, [-d for d in o]), o, structure)
        out.append(pairs + np.array([lin, other], np.int64) * grid.stride)
    pairs = np.concatenate(out)
    np.save(work / f"p{lin}.npy", pairs)
    return {"pairs": len(pairs)}


def _reduce(op: dict, k: int) -> dict:
    """Forward, slab ``k``: its face labels and pairs joined with the frontier of slab ``k - 1``;
    writes the slab's record ``r<k>.npz`` and the frontier ``f<k>.npz`` (the components reaching
    the slab's top face: their ids on that face, their roots and sums so far)."""
    grid = _grid(op)
    work = Path(op["work"])
    gids, sums, tops, pairs = [], [], [], [np.empty((0, 2), np.int64)]
    for idx in grid.slab(k):
        lin = grid.linear(idx)
        with np.load(work / f"s{lin}.npz") as f:
            gids.append(f["face_ids"] + lin * grid.stride)
            sums.append(f["face_sums"])
            tops.append(f["top_ids"] + lin * grid.stride)
        pairs.append(np.load(work / f"p{lin}.npy"))
    gid, gsum, top, pairs = (np.concatenate([np.empty(0, np.int64)] + gids), np.concatenate(
        [np.empty(0, np.int64)] + sums), np.concatenate([np.empty(0, np.int64)] + tops), np.concatenate(pairs))
    if k:
        with np.load(work / f"f{k - 1}.npz") as f:
            fr_gid, fr_root, roots, root_sums = f["gid"], f["root"], f["roots"], f["sums"]
        first = grid.linear((k, 0, 0)) * grid.stride
        below = pairs < first  # an end in slab k - 1: on its top face, replaced by its component's root
        if below.any():
            pos = np.searchsorted(fr_gid, pairs[below])
            if not np.array_equal(fr_gid[pos.clip(0, len(fr_gid) - 1)], pairs[below]):
                raise RuntimeError(f"slab {k}: a pair reaches below the frontier of slab {k - 1}")
            pairs[below] = fr_root[pos]
    else:
        roots = root_sums = np.empty(0, np.int64)
    nodes = np.concatenate([roots, gid])  # sorted: the roots are ids of slabs below
    node_sums = np.concatenate([root_sums, gsum])
    ends = np.searchsorted(nodes, pairs)
    if len(nodes):
        graph = sparse.coo_matrix((np.ones(len(ends), dtype=bool), (ends[:, 0], ends[:, 1])),
                                  shape=(len(nodes),) * 2)
        n_cls, comp = connected_components(graph, directed=False)
    else:
        n_cls, comp = 0, np.empty(0, np.int64)
    _, first_node = np.unique(comp, return_index=True)
    cls_id = nodes[first_node]  # each component's smallest id: one of its own labels, unique
    cls_sums = np.zeros(n_cls, np.int64)
    np.add.at(cls_sums, comp, node_sums)
    cls_open = np.zeros(n_cls, dtype=bool)
    top_cls = comp[np.searchsorted(nodes, top)]
    cls_open[top_cls] = True
    open_ids = cls_id[cls_open]
    order = np.argsort(open_ids)
    np.savez(work / f"f{k}.npz", gid=top, root=cls_id[top_cls], roots=open_ids[order],
             sums=cls_sums[cls_open][order])
    np.savez(work / f"r{k}.npz", gid=gid, node_cls=comp[len(roots):], prev_roots=roots, prev_cls=comp[:len(roots)],
             cls_id=cls_id, cls_sums=cls_sums, cls_open=cls_open)
    return {"nodes": len(nodes), "open": int(cls_open.sum())}


def _resolve(op: dict, k: int) -> dict:
    """Backward, slab ``k``: final ids and sums of its components (the open ones from ``g<k>.npz``,
    written by slab ``k + 1``), per chunk to ``d<chunk>.npz``; those of the frontier below to ``g<k-1>.npz``."""
    grid = _grid(op)
    work = Path(op["work"])
    with np.load(work / f"r{k}.npz") as r:
        rec = {name: r[name] for name in r.files}
    final_id, final_sums, is_open = rec["cls_id"].copy(), rec["cls_sums"].copy(), rec["cls_open"]
    if is_open.any():
        with np.load(work / f"g{k}.npz") as g:
            roots, ids, sums = g["roots"], g["id"], g["sums"]
        pos = np.searchsorted(roots, final_id[is_open])
        if not np.array_equal(roots[pos.clip(0, len(roots) - 1)], final_id[is_open]):
            raise RuntimeError(f"slab {k}: a component open at its top face is missing from slab {k + 1}")
        final_id[is_open], final_sums[is_open] = ids[pos], sums[pos]
    if k:
        np.savez(work / f"g{k - 1}.npz", roots=rec["prev_roots"], id=final_id[rec["prev_cls"]],
                 sums=final_sums[rec["prev_cls"]])
    gid, node_cls = rec["gid"], rec["node_cls"]
    for idx in grid.slab(k):
        lin = grid.linear(idx)
        lo, hi = np.searchsorted(gid, [lin * grid.stride + 1, (lin + 1) * grid.stride])
        np.savez(work / f"d{lin}.npz", id=final_id[node_cls[lo:hi]], sums=final_sums[node_cls[lo:hi]])
    return {"components": len(final_id)}


def _apply(op: dict, idx) -> dict:
    """Backward, one chunk: labelled again, each label given its component's final sum (and id),
    the result written to ``op["dst"]``: the labels, the kept voxels, or those added to ``op["base"]``."""
    import zarr  # noqa: PLC0415 - optional (the Dask stack)

    grid = _grid(op)
    lin = grid.linear(idx)
    lab, n, sums, binary, src = _label(op, idx)
    _, ids, _ = _faces(grid, idx, lab)
    final_id = np.arange(n + 1, dtype=np.int64) + lin * grid.stride
    final_id[0] = 0
    with np.load(Path(op["work"]) / f"d{lin}.npz") as d:
        final_id[ids], sums[ids] = d["id"], d["sums"]
    region = grid.region(idx)
    out = zarr.open_array(op["dst"], mode="r+")
    if op["out"] == "labels":
        out[region] = final_id[lab]
        return {"selected": int(binary.sum())}
    keep = (sums >= op["lo"]) & (sums <= op["hi"])
    keep[0] = False
    sel = keep[lab]
    if op["out"] == "select":
        out[region] = sel.astype(np.uint8)
    elif op["out"] == "union":
        base = (src if op["base"] == op["src"] else _read(op["base"], region)) > 0
        out[region] = (base | sel).astype(np.uint8)
    else:
        raise ValueError(f"out must be 'labels', 'select' or 'union', got {op['out']!r}")
    return {"selected": int(sel.sum())}


def _local(op: dict, idx) -> dict:
    """One chunk of a local filter read with a halo (zeros beyond the volume, as the whole-volume
    filters pad): ``"close"`` (thinning inside the hysteresis mask by the ridge bit of
    ``op["classes"]`` when ``op["thin"]``, then the closing) or ``"fill"`` (what a closing adds)."""
    import zarr  # noqa: PLC0415 - optional (the Dask stack)

    grid = _grid(op)
    region = grid.region(idx)
    r = tuple(int(v) for v in op["radius"])
    halo = tuple(2 * v + (1 if op.get("thin") else 0) for v in r)

    def padded(path):
        outer = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(region, halo, grid.shape))
        block = _read(path, outer)
        return np.pad(block, [(h - (s.start - o.start), h - (o.stop - s.stop))
                              for s, o, h in zip(region, outer, halo)])

    mask = padded(op["src"]) > 0
    core = tuple(slice(h, h + s.stop - s.start) for s, h in zip(region, halo))
    if op["kind"] == "close":
        if op.get("thin"):
            mask = thin_mask(mask, (padded(op["classes"]) & RIDGE_BIT) > 0)
        res = anisotropic_closing(mask, radius=r)[core]
    elif op["kind"] == "fill":
        res = anisotropic_closing(mask, radius=r)[core] & ~mask[core]
    else:
        raise ValueError(f"kind must be 'close' or 'fill', got {op['kind']!r}")
    zarr.open_array(op["dst"], mode="r+")[region] = res.astype(np.uint8)
    return {"selected": int(res.sum())}


_TASKS = {"scan": _scan, "pair": _pair, "reduce": _reduce, "resolve": _resolve, "apply": _apply, "local": _local}


def run_task(item: dict) -> dict:
    """Run one task item ``{"task": name, "op": ..., "at": chunk index or slab}`` (on a worker);
    its result names the task and its ``seconds``."""
    t0 = time.perf_counter()
    res = _TASKS[item["task"]](item["op"], item["at"])
    return {**res, "task": item["task"], "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------
# the driver: rounds of independent tasks
# ---------------------------------------------------------------------------
class Rounds:
    """Runs rounds of independent task items and reports progress.

    Parameters
    ----------
    executor : object, optional
        With a ``map(fn, items, check=..., count=False)`` (the run's
        :class:`~nx47_pipeline.run.executor.DaskExecutor`): tasks go through
        it, and ``on_progress`` is also called on each of its ticks while a round
        runs.  None: ``dask.compute`` on Dask's current scheduler (a
        distributed Client set as default, or the synchronous one in tests).
    on_progress : callable, optional
        ``on_progress(phase, done, total)`` (:data:`Progress`); it may raise
        (e.g. :class:`~nx47_pipeline.telemetry.cancel.Cancelled`) to stop.
    batch : int
        Most tasks submitted at once: a round of more (two slabs of a
        scroll's cross-section: 2 x 62 x 64 chunks of 128^3) runs in
        batches, so the client's tasks do not grow with the cross-section either.
    """

    def __init__(self, executor: Any = None, on_progress: Progress | None = None, *, batch: int = 512) -> None:
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch!r}")
        self.executor = executor
        self.on_progress = on_progress
        self.batch = int(batch)
        self.phase, self.done, self.total = "", 0, 0
        #: per task kind: tasks run, their seconds in all and the longest one's
        self.tasks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.longest: dict[str, float] = {}
        #: the most labels one slab's reduce joined (its frontier's roots and the slab's face labels)
        self.largest_slab = 0

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total = phase, 0, total
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.phase, self.done, self.total)

    def run(self, items: list[dict]) -> list[dict]:
        """Run ``items`` (independent of each other) and return their results in order."""
        results: list[dict] = []
        for start in range(0, len(items), self.batch):
            part = items[start:start + self.batch]
            if self.executor is not None:
                got: list[dict] = [{}] * len(part)
                for i, res in self.executor.map(run_task, part, check=self._report, count=False):
                    got[i] = res
            else:
                import dask  # noqa: PLC0415 - optional, lazy

                got = list(dask.compute(*[dask.delayed(run_task, pure=False)(it) for it in part]))
            results += got
        for res in results:
            kind, sec = res.get("task", "?"), float(res.get("seconds", 0.0))
            self.tasks[kind] = self.tasks.get(kind, 0) + 1
            self.seconds[kind] = self.seconds.get(kind, 0.0) + sec
            self.longest[kind] = max(self.longest.get(kind, 0.0), sec)
            self.largest_slab = max(self.largest_slab, int(res.get("nodes", 0)))
        self.done += 1
        self._report()
        return results


def _unlink(work: Path, names: list[str]) -> None:
    for name in names:
        (work / name).unlink(missing_ok=True)


def filter_components(op: dict, rounds: Rounds, *, phase: str) -> int:
    """Run the component filter ``op`` over its volume slab by slab (see the module docstring).

    ``op`` holds ``src`` (zarr path), ``binary`` (``"weak"``, ``"background"``
    or ``"foreground"``), ``structure`` (3x3x3 bool), ``shape``, ``chunks``,
    ``out`` (``"labels"``, ``"select"`` or ``"union"``), ``lo`` / ``hi`` (the
    kept components' sums), ``base`` (for ``"union"``), ``dst`` (an existing
    zarr array of ``shape`` chunked by ``chunks``) and ``work`` (a scratch
    folder, emptied at the end).  Returns the voxels selected (for
    ``"labels"``: the foreground).
    """
    grid = _grid(op)
    nb0 = grid.nb[0]
    work = Path(op["work"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def items(task, k):
        if task in ("reduce", "resolve"):
            return [{"task": task, "op": op, "at": k}]
        return [{"task": task, "op": op, "at": idx} for idx in grid.slab(k)]

    try:
        rounds.begin(f"{phase}: forward", nb0 + 2)
        for r in range(nb0 + 2):  # round r: reduce slab r - 2 (first: the longest task), pairs of r - 1, scan r
            todo = [*(items("reduce", r - 2) if 0 <= r - 2 < nb0 else []),
                    *(items("pair", r - 1) if 0 <= r - 1 < nb0 else []), *(items("scan", r) if r < nb0 else [])]
            rounds.run(todo)
            if r >= 2:
                done = [grid.linear(idx) for idx in grid.slab(r - 2)]
                _unlink(work, [f"s{lin}.npz" for lin in done] + [f"p{lin}.npy" for lin in done] + [f"f{r - 3}.npz"])
        rounds.begin(f"{phase}: backward", nb0 + 1)
        selected = 0
        for r in range(nb0 + 1):  # round r: resolve slab nb0 - 1 - r, write slab nb0 - r
            k = nb0 - 1 - r
            todo = [*(items("resolve", k) if k >= 0 else []), *(items("apply", k + 1) if k + 1 < nb0 else [])]
            selected += sum(res.get("selected", 0) for res in rounds.run(todo))
            if k + 1 < nb0:
                _unlink(work, [f"d{grid.linear(idx)}.npz" for idx in grid.slab(k + 1)]
                        + [f"r{k + 1}.npz", f"g{k + 1}.npz"])
        return selected
    finally:
        shutil.rmtree(work, ignore_errors=True)


def map_chunks(op: dict, rounds: Rounds, *, phase: str) -> int:
    """The local filter ``op`` (:func:`_local`'s) chunk by chunk, one slab per round; returns the
    voxels set in ``op["dst"]``."""
    grid = _grid(op)
    rounds.begin(phase, grid.nb[0])
    return sum(res.get("selected", 0) for k in range(grid.nb[0])
               for res in rounds.run([{"task": "local", "op": op, "at": idx} for idx in grid.slab(k)]))


def create_like(path: str | Path, shape: Sequence[int], chunks: Sequence[int], dtype: Any = "uint8"):
    """An empty zarr array at ``path`` (replaced), ``shape`` in ``chunks``."""
    import zarr  # noqa: PLC0415 - optional (the Dask stack)

    return zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0,
                             overwrite=True)


def label_components(src: str | Path, dst: str | Path, *, structure: np.ndarray, work: str | Path,
                     executor: Any = None) -> int:
    """Connected components of the non-zero voxels of the zarr array ``src``, slab by slab.

    Parameters
    ----------
    src : str or path
        A 3-D zarr array; its chunks are the grid.
    dst : str or path
        Written: an int64 zarr array of the same shape and chunks, 0 on the
        background and one id per component (ids not consecutive).
    structure : ndarray
        3x3x3 connectivity (``scipy.ndimage.generate_binary_structure``).
    work : str or path
        Scratch folder (created, removed at the end).
    executor : object, optional
        See :class:`Rounds`.

    Returns
    -------
    int
        An upper bound of the ids.
    """
    import zarr  # noqa: PLC0415 - optional (the Dask stack)

    arr = zarr.open_array(str(src), mode="r")
    if arr.ndim != 3:
        raise ValueError(f"src must be a 3-D zarr array, got shape {arr.shape!r}")
    structure = np.asarray(structure, dtype=bool)
    if structure.shape != (3, 3, 3):
        raise ValueError(f"structure must be 3x3x3, got shape {structure.shape!r}")
    grid = Grid(tuple(arr.shape), tuple(arr.chunks))
    create_like(dst, grid.shape, grid.chunks, "int64")
    op = {"src": str(src), "binary": "foreground", "structure": structure, "shape": grid.shape,
          "chunks": grid.chunks, "out": "labels", "dst": str(dst), "work": str(work)}
    filter_components(op, Rounds(executor), phase="label")
    return int(np.prod(grid.nb)) * grid.stride


__all__ = ["Grid", "Rounds", "filter_components", "label_components", "map_chunks", "run_task"]
