"""Supervised hyper-parameter search scored with the competition metric.

The grid is (L1 strength x L2 strength) for the ``fit_prox`` model times the
hysteresis threshold pair ``(high - gap, high)`` times the closing radius of
the segmentation.  Each
(L1, L2) point is fitted once on the training sample (reduced iterations).
Then, on every validation volume, the filter bank runs once, every fitted
model is applied, and every (model, threshold, closing radius) candidate is ranked by the
competition score of its post-processed mask on the central crop of the
volume (:func:`proxy_score`: an eighth of the voxels at 320^3, the whole
volume up to 96^3).  The ``top_k`` best candidates by mean rank score are
post-processed and scored on the whole of every validation volume (a second
pass through the filter bank for their models only), each with and without
thin-surface extraction (``thin``: non-maximum suppression along the sheet
normal, :func:`~nx47_pipeline.model.postprocess.thin_surface`), and the best
of them wins.  Last, the dust size and the hole plug size of the winner's
post-processing are chosen on the same volumes (:func:`choose_postprocess`,
which the U-Net's own threshold sweep shares).  Post-processing and the metric cost far more than the filter bank at
320^3, so this is what bounds the search (docs/benchmarks.md).  A ranking by
voxel Dice alone (threshold, no post-processing) picked thresholds whose
closing merged close sheets: 0.48 against 0.63 on held-out variant b.  Each
fit, ranking, full evaluation and (dust / plug candidate, volume) scored is
one progress unit (:func:`search_units`).

Results are cached in ``dest`` (one model per fit, one ranking and one score
JSON per validation volume, the dust / plug scores in ``postprocess.json``,
``results.json`` at the end), so a rerun resumes mid-grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.run_folder import POSTPROCESS, SEARCH_RESULTS
from nx47_pipeline.io.volumes import VolumeError, read_pair
from nx47_pipeline.model.features import feature_names
from nx47_pipeline.model.linear import LogisticModel, fit_prox
from nx47_pipeline.model.metric import score_volume
from nx47_pipeline.model.postprocess import after_closing, post_steps, postprocess_steps, surface_ridge
from nx47_pipeline.model.predict import linear_probabilities
from nx47_pipeline.model.predictor import PostChoice


def grid_points(
    l1_grid: Sequence[float], l2_grid: Sequence[float]
) -> list[tuple[float, float]]:
    """All (l1, l2) pairs of the grid, in a fixed order."""
    if not l1_grid or not l2_grid:
        raise ValueError(f"l1_grid and l2_grid must be non-empty, got {list(l1_grid)!r} and {list(l2_grid)!r}")
    return [(float(a), float(b)) for a in l1_grid for b in l2_grid]


def threshold_pairs(thresholds: Sequence[float], gap: float) -> list[tuple[float, float]]:
    """(low, high) hysteresis pairs with ``low = max(high - gap, 0.01)``."""
    out = []
    for high in thresholds:
        if not 0.0 < high < 1.0:
            raise ValueError(f"thresholds must lie in (0, 1), got {high!r}")
        out.append((max(float(high) - gap, 0.01), float(high)))
    return out


#: Edge (voxels) below which the ranking crop is the whole volume.
RANK_CROP_MIN = 96


def rank_crop(shape) -> tuple[slice, ...]:
    """The central region the candidates are ranked on: half of each edge
    (an eighth of the voxels), or the whole edge when it is at most
    :data:`RANK_CROP_MIN`."""
    out = []
    for n in shape:
        m = n if n <= RANK_CROP_MIN else max(RANK_CROP_MIN, -(-n // 2))
        a = (n - m) // 2
        out.append(slice(a, a + m))
    return tuple(out)


def _radii(radii) -> list[list[int]]:
    """``radii`` as a list of distinct [z, y, x] lists (one radius or several)."""
    arr = np.asarray(radii)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.integer) \
            or (arr < 0).any():
        raise ValueError(f"closing_radii must be (z, y, x) triples of integers >= 0, got {radii!r}")
    return [list(r) for r in dict.fromkeys(tuple(r) for r in arr.tolist())]


def _sizes(name: str, sizes) -> list[int]:
    """``sizes`` as a list of distinct integers >= 0, in order (a ValueError naming ``name`` otherwise)."""
    try:
        out = [int(v) for v in sizes]
        bad = not out or any(isinstance(v, bool) or int(v) != v or v < 0 for v in sizes)
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 0, got {sizes!r}")
    return list(dict.fromkeys(out))


def choose_units(n_volumes: int, n_dust: int, n_plug: int) -> int:
    """Progress units of :func:`choose_postprocess`: one per (candidate,
    volume) scored -- ``n_dust`` dust sizes, then ``n_plug - 1`` more plug
    sizes -- and none when there is a single candidate."""
    n = n_dust + n_plug - 1
    return 0 if n <= 1 else n_volumes * n


def full_count(n_cands: int, top_k: int) -> int:
    """Candidates scored in full: the ``top_k`` best of ``n_cands`` (0 = all)."""
    return n_cands if not top_k else min(int(top_k), n_cands)


def search_units(*, n_points: int, n_val: int, n_thresholds: int, n_radii: int, top_k: int,
                 n_dust: int = 1, n_plug: int = 1) -> int:
    """The search's amount of work, its progress total: one unit per fit,
    per (volume, candidate) ranked, per (volume, candidate) scored in full
    (``top_k`` of them, 0 = all, :func:`full_count`), and per (candidate,
    volume) of the dust and plug size choice (:func:`choose_units`).
    :meth:`SearchGrid.units` counts a grid with it."""
    n_cands = n_points * n_thresholds * n_radii
    return n_points + n_val * (n_cands + full_count(n_cands, top_k)) + choose_units(n_val, n_dust, n_plug)


@dataclass(frozen=True)
class SearchGrid:
    """The candidates of a search, normalised once (:meth:`build`):
    :func:`run_search` runs them and :meth:`units` counts their work, so the
    amount of work a planner projects is the one the search reports.

    Attributes
    ----------
    points : tuple of (float, float)
        The (l1, l2) fits (:func:`grid_points`).
    pairs : tuple of (float, float)
        The hysteresis pairs (:func:`threshold_pairs`).
    radii : tuple of (int, int, int)
        The distinct closing radii.
    dust, plugs : tuple of int
        The distinct dust and hole plug sizes of the post-processing choice.
    top_k : int
        Candidates scored in full (0 = all).
    """

    points: tuple[tuple[float, float], ...]
    pairs: tuple[tuple[float, float], ...]
    radii: tuple[tuple[int, int, int], ...]
    dust: tuple[int, ...]
    plugs: tuple[int, ...]
    top_k: int

    @classmethod
    def build(cls, *, l1_grid: Sequence[float], l2_grid: Sequence[float], thresholds: Sequence[float],
              gap: float, closing_radius=(1, 2, 2), closing_radii: Sequence[Sequence[int]] | None = None,
              min_size: int = 100, dust_sizes: Sequence[int] | None = None,
              plug_sizes: Sequence[int] | None = None, top_k: int = 4) -> "SearchGrid":
        """The grid :func:`run_search` runs for these arguments (its own, see there);
        a ValueError names a bad one."""
        return cls(
            points=tuple(grid_points(l1_grid, l2_grid)),
            pairs=tuple(threshold_pairs(thresholds, gap)),
            radii=tuple(tuple(r) for r in _radii(closing_radius if closing_radii is None else closing_radii)),
            dust=tuple(_sizes("dust_sizes", (min_size,) if dust_sizes is None else dust_sizes)),
            plugs=tuple(_sizes("plug_sizes", (0,) if plug_sizes is None else plug_sizes)),
            top_k=int(top_k),
        )

    def units(self, n_val: int, *, n_points: int | None = None) -> int:
        """The search's amount of work on ``n_val`` validation volumes
        (:func:`search_units`); ``n_points``: fits made, when the deadline
        stopped the grid's fits early."""
        return search_units(n_points=len(self.points) if n_points is None else n_points, n_val=n_val,
                            n_thresholds=len(self.pairs), n_radii=len(self.radii), top_k=self.top_k,
                            n_dust=len(self.dust), n_plug=len(self.plugs))


class _Packed:
    """A mask (bits) and a label (two bit planes: 1 and 2) of one volume,
    1/4 byte per voxel: what :func:`choose_postprocess` keeps of each
    validation volume between candidates."""

    def __init__(self, mask: np.ndarray, label: np.ndarray) -> None:
        self.shape = mask.shape
        self.mask = np.packbits(mask.astype(bool, copy=False), axis=None)
        self.fg = np.packbits(label == 1, axis=None)
        self.ignore = np.packbits(label == 2, axis=None)

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(bits, count=n).view(bool).reshape(self.shape)

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        label = self._unpack(self.fg).astype(np.uint8)
        label[self._unpack(self.ignore)] = 2
        return self._unpack(self.mask), label


def choose_postprocess(
    volumes: Sequence[str],
    load: Callable[[int, Callable[[int, int, str], None]], tuple[np.ndarray, np.ndarray] | None],
    *,
    low: float,
    high: float,
    thin: bool,
    closing_radius: Sequence[int],
    dust_sizes: Sequence[int],
    plug_sizes: Sequence[int],
    min_size: int,
    plug_size: int = 0,
    known: Mapping[tuple[int, int], Mapping[str, float]] | None = None,
    cache: str | Path | None = None,
    deadline: float | None = None,
    on_progress: Callable[[float, float, str], None] | None = None,
    on_metric: Callable[[float, dict], None] | None = None,
    on_deadline: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The dust size and hole plug size of the post-processing, chosen on
    validation volumes by the competition score.

    Called after the thresholds, ``thin`` and the closing radius are chosen
    (by :func:`run_search` and by the U-Net's threshold sweep).  A greedy
    coordinate pass over every volume in full: first each of ``dust_sizes``
    (the ``min_size`` of the dust removal) with ``plug_sizes[0]``, then each
    other of ``plug_sizes`` (:func:`~nx47_pipeline.model.postprocess.plug_holes`)
    with the chosen dust size; each candidate is the mean
    :func:`~nx47_pipeline.model.metric.score_volume` score of its masks on
    every volume, and ties go to the earlier (cheaper) value.  The mask up
    to the closing and cavity filling is computed once per volume and kept
    packed (a bit per voxel); the candidates only redo dust removal and
    plugging (:func:`~nx47_pipeline.model.postprocess.after_closing`).

    Parameters
    ----------
    volumes : sequence of str
        Ids of the validation volumes.
    load : callable
        ``load(i, on_progress)`` -> ``(prob, label)`` of ``volumes[i]``, or
        None when it cannot be read (the volume is left out);
        ``on_progress(done, total, what)`` reports its sub-steps.
    low, high, thin, closing_radius
        The post-processing chosen before.
    dust_sizes, plug_sizes : sequence of int
        Candidates, in order of preference on ties (>= 0 voxels).
    min_size, plug_size : int
        Kept when no candidate could be scored on every volume (the
        deadline, or no readable volume).
    known : mapping, optional
        ``{(min_size, plug_size): {volume id: score}}`` already scored
        (e.g. the search's own candidate): not scored again.
    cache : path, optional
        JSON file of the scores so far; a rerun with the same inputs
        resumes from it.
    deadline : float, optional
        ``time.monotonic()`` value: checked before each volume of each
        candidate; past it the pass stops with the best candidate scored on
        every volume so far (``on_deadline`` says what was left).
    on_progress : callable, optional
        ``on_progress(done, total, what)`` after each (candidate, volume)
        and for the sub-steps of loading a volume (total
        :func:`choose_units`); it may raise to cancel.
    on_metric : callable, optional
        ``on_metric(mean, extra)`` per candidate scored on every volume,
        ``extra``: ``low``, ``high``, ``thin``, ``closing_radius``,
        ``min_size``, ``plug_size``, ``n_volumes``.

    Returns
    -------
    dict
        ``min_size``, ``plug_size``, ``score`` (mean of the chosen
        candidate, None when none was scored), ``scores`` (every candidate
        scored on every volume: ``min_size``, ``plug_size``, ``score``),
        ``volumes`` (the ids scored), ``complete`` (False when the deadline
        stopped the pass).
    """
    dust = _sizes("dust_sizes", dust_sizes)
    plugs = _sizes("plug_sizes", plug_sizes)
    try:
        radius = _radii(closing_radius)
    except ValueError:
        radius = []
    if len(radius) != 1 or np.ndim(closing_radius) != 1:
        raise ValueError(f"closing_radius must be 3 integers >= 0, got {closing_radius!r}")
    radius = radius[0]
    steps = tuple(s for s in post_steps(thin) if s not in ("dust", "plug"))  # refuses a thin that is not a bool
    thin = bool(thin)
    ids = [str(v) for v in volumes]
    report = on_progress or (lambda *a: None)
    cands0 = [(d, plugs[0]) for d in dust]
    total = choose_units(len(ids), len(dust), len(plugs))
    fallback = {"min_size": int(min_size), "plug_size": int(plug_size), "score": None, "scores": [],
                "volumes": [], "complete": True}
    if total == 0:  # a single candidate: nothing to choose
        return {**fallback, "min_size": dust[0], "plug_size": plugs[0]}
    key = {"low": float(low), "high": float(high), "thin": thin, "closing_radius": radius, "volumes": ids}
    scores: dict[tuple[int, int], dict[str, float]] = {}
    cache = Path(cache) if cache is not None else None
    if cache is not None and cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            for row in saved.get("scores", []):
                scores[(int(row["min_size"]), int(row["plug_size"]))] = {str(k): float(v)
                                                                         for k, v in row["per_volume"].items()}
    for cand, per in (known or {}).items():
        c = (int(cand[0]), int(cand[1]))
        scores.setdefault(c, {}).update({str(k): float(v) for k, v in per.items() if str(k) in ids})
    packed: dict[str, _Packed] = {}
    unreadable: set[str] = set()
    state = {"done": 0, "stopped": False}

    def save() -> None:
        if cache is not None:
            write_json(cache, {"key": key, "scores": [
                {"min_size": c[0], "plug_size": c[1], "per_volume": per} for c, per in scores.items()]})

    def base(i: int) -> _Packed | None:
        vid = ids[i]
        if vid not in packed and vid not in unreadable:
            at = state["done"]

            def sub(d: int, t: int, what: str) -> None:
                report(at + 0.9 * d / max(t, 1), total, f"{vid}: {what}")

            pair = load(i, sub)
            if pair is None:
                unreadable.add(vid)
                return None
            prob, label = pair
            report(at + 0.9, total, f"{vid}: post-processing up to the closing")
            mask = postprocess_steps(prob, low=low, high=high, closing_radius=radius, min_size=0, steps=steps,
                                     on_progress=lambda d, t, what: report(
                                         at + 0.9, total, f"{vid}: post-processing up to the closing: {what}"))
            packed[vid] = _Packed(mask, label)
            del prob, label, mask
        return packed.get(vid)

    def evaluate(cands: list[tuple[int, int]]) -> None:
        for c in cands:
            per = scores.setdefault(c, {})
            for i, vid in enumerate(ids):
                if vid in per or vid in unreadable:
                    state["done"] += 1
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    state["stopped"] = True
                    return
                b = base(i)
                if b is not None:
                    mask, label = b.get()
                    mask = after_closing(mask, closing_radius=radius, min_size=c[0], plug_size=c[1],
                                         tick=lambda what, _c=c, _v=vid: report(
                                             state["done"] + 0.9, total, f"dust {_c[0]}, plug {_c[1]}: {_v}: {what}"))
                    per[vid] = float(score_volume(mask, label, on_progress=lambda d, t, what: report(
                        state["done"] + 0.9 + 0.1 * d / t, total, f"dust {c[0]}, plug {c[1]}: {vid}: {what}")).score)
                    del mask, label
                    save()
                state["done"] += 1
                report(state["done"], total, f"dust {c[0]}, plug {c[1]}: {vid}")

    def complete(c: tuple[int, int]) -> bool:
        readable = [v for v in ids if v not in unreadable]
        return bool(readable) and all(v in scores.get(c, {}) for v in readable)

    def mean(c: tuple[int, int]) -> float:
        return float(np.mean([scores[c][v] for v in ids if v not in unreadable]))

    def pick(cands: list[tuple[int, int]]) -> tuple[int, int] | None:
        done = [c for c in cands if complete(c)]
        # ties go to the earlier (cheaper) candidate
        return max(done, key=lambda c: (round(mean(c), 9), -cands.index(c))) if done else None

    evaluate(cands0)
    chosen = pick(cands0)
    cands1: list[tuple[int, int]] = []
    if chosen is not None and not state["stopped"]:
        cands1 = [(chosen[0], p) for p in plugs]
        evaluate(cands1[1:])
        chosen = pick(cands1) or chosen
    tried = list(dict.fromkeys(cands0 + cands1))
    rows = [{"min_size": c[0], "plug_size": c[1], "score": mean(c)} for c in tried if complete(c)]
    used = [v for v in ids if v not in unreadable]
    if on_metric:
        for row in rows:
            on_metric(row["score"], {"low": float(low), "high": float(high), "thin": thin,
                                     "closing_radius": list(radius), "min_size": row["min_size"],
                                     "plug_size": row["plug_size"], "n_volumes": len(used)})
    if state["stopped"] and on_deadline:
        on_deadline(f"dust / plug size choice stopped after {len(rows)} of "
                    f"{len(dust) + len(plugs) - 1} candidates")
    report(total, total, "dust / plug sizes chosen")
    if chosen is None:
        return {**fallback, "complete": not state["stopped"], "volumes": used}
    return {"min_size": chosen[0], "plug_size": chosen[1], "score": mean(chosen), "scores": rows,
            "volumes": used, "complete": not state["stopped"]}


def proxy_score(prob: np.ndarray, label: np.ndarray, *, low: float, high: float, closing_radius,
                min_size: int, on_progress: Callable[[float, float, str], None] | None = None) -> float:
    """Ranking score of one candidate: the competition score of its
    post-processed mask on the central crop (:func:`rank_crop`).
    ``on_progress(done, 1, what)`` before each post-processing step and after
    each part of the score."""
    tick = on_progress or (lambda done, total, what: None)
    crop = rank_crop(prob.shape)
    mask = PostChoice(low=low, high=high, closing_radius=tuple(closing_radius), min_size=min_size).apply(
        prob[crop], on_progress=lambda d, t, what: tick(0.3 * d / max(t, 1), 1, f"post-processing: {what}"))
    return float(score_volume(mask, label[crop], on_progress=lambda d, t, what: tick(
        0.3 + 0.7 * d / max(t, 1), 1, f"score: {what}")).score)


def run_search(
    X: np.ndarray,
    y: np.ndarray,
    val: Sequence[Any],
    *,
    dest: str | Path,
    l1_grid: Sequence[float],
    l2_grid: Sequence[float],
    thresholds: Sequence[float],
    gap: float,
    scales: Sequence[float],
    closing_radius=(1, 2, 2),
    closing_radii: Sequence[Sequence[int]] | None = None,
    min_size: int = 100,
    dust_sizes: Sequence[int] | None = None,
    plug_sizes: Sequence[int] | None = None,
    max_iter: int = 150,
    tol: float = 1e-6,
    intercept_shift: float = 0.0,
    top_k: int = 4,
    thin_options: Sequence[bool] = (False, True),
    deadline: float | None = None,
    progress: Callable[..., None] | None = None,
    on_metric: Callable[[str, float, dict], None] | None = None,
    on_warning: Callable[[str, str, str], None] | None = None,
    on_deadline: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the grid search.

    Parameters
    ----------
    X, y : ndarray
        Training sample (rows x features) and labels in {0, 1}.
    val : sequence of VolumeRecord
        Validation pairs (``id``, ``image_path``, ``label_path``).
    dest : path
        Cache folder.
    intercept_shift : float
        Added to each fitted model's intercept: the logit correction from
        the class-balanced sample's prior to the labelled voxels' prior.
    top_k : int
        Candidates scored with the competition metric: every (model,
        threshold) candidate is first ranked on every validation volume by
        :func:`proxy_score` (the competition score on the central crop);
        the ``top_k`` best by mean proxy are then post-processed and scored
        in full, and the best of those wins.  0 scores every candidate.
    closing_radius : (int, int, int)
        The closing radius when ``closing_radii`` is not given.
    closing_radii : sequence of (int, int, int), optional
        Closing radii to choose from: each is a dimension of the candidates
        like the threshold pair (ranked, then scored in full); ties go to
        the earlier one.
    min_size : int
        Dust size of the candidates' post-processing (the grid is ranked
        and scored with it, and no plugging).
    dust_sizes, plug_sizes : sequence of int, optional
        After the best (model, thresholds, radius, thin) is found, its dust
        size and hole plug size are chosen from these on the validation
        volumes scored in full (:func:`choose_postprocess`; ``search/postprocess.json``
        caches the scores).  Default: ``(min_size,)`` and ``(0,)``, no choice.
    thin_options : sequence of bool
        The full scoring tries each top candidate with each of these
        ``thin`` settings of the post-processing (``(False,)``: never thin).
    deadline : float, optional
        ``time.monotonic()`` value; the search stops early there and picks
        the best point seen (BUDGET is the caller's to publish via
        ``on_deadline``).

    Returns
    -------
    dict
        ``best`` (``l1``, ``l2``, ``low``, ``high``, ``thin``,
        ``closing_radius``, ``min_size``, ``plug_size``, ``score`` -- the
        mean validation score of that whole choice --, ``model_path``), ``results`` (mean score per grid point),
        ``fit_iters`` and ``fit_seconds`` (summed over fits), ``fit_converged``
        (how many fits converged before ``max_iter``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    thins = sorted({bool(t) for t in thin_options})
    if not thins or any(not isinstance(t, (bool, np.bool_)) for t in thin_options):
        raise ValueError(f"thin_options must be a non-empty sequence of True / False, got {thin_options!r}")
    grid = SearchGrid.build(l1_grid=l1_grid, l2_grid=l2_grid, thresholds=thresholds, gap=gap,
                            closing_radius=closing_radius, closing_radii=closing_radii, min_size=min_size,
                            dust_sizes=dust_sizes, plug_sizes=plug_sizes, top_k=top_k)
    radii = [list(r) for r in grid.radii]  # lists: the caches hold them as JSON
    dust, plugs = list(grid.dust), list(grid.plugs)
    points, pairs = list(grid.points), list(grid.pairs)
    total = grid.units(len(val))
    report = progress or (lambda *a, **k: None)
    metric = on_metric or (lambda *a: None)

    # 1. one fit per (l1, l2)
    models = []
    fit_iters = 0
    fit_seconds = 0.0
    fit_converged = 0
    for g, (l1, l2) in enumerate(points):
        path = dest / f"model_{g}.npz"
        meta_path = dest / f"model_{g}.json"
        if path.exists() and meta_path.exists():
            models.append(LogisticModel.load(path))
            meta = json.loads(meta_path.read_text())
            fit_iters += meta["n_iter"]
            fit_seconds += meta["seconds"]
            fit_converged += meta.get("stopped_reason") == "converged"
            report(g + 1, total, substep=f"fit {g + 1}/{len(points)} (cached)")
            continue
        if deadline is not None and time.monotonic() > deadline and models:
            if on_deadline:
                on_deadline(f"{len(points) - g} of {len(points)} grid fits skipped")
            break

        def on_iter(i, n, objective, _g=g):
            report(_g + i / max(n, 1), total, substep=f"fit l1={l1:g} l2={l2:g}",
                   substep_done=i, substep_total=n)

        report(g, total, substep=f"fit l1={l1:g} l2={l2:g}: standardising {len(y)} samples",
               substep_done=0, substep_total=max_iter)
        res = fit_prox(X, y, l1=l1, l2=l2, max_iter=max_iter, tol=tol, deadline=deadline,
                       on_iter=on_iter, feature_names=feature_names(scales), scales=tuple(scales),
                       intercept_shift=intercept_shift)
        res.model.save(path)
        write_json(meta_path, {"n_iter": res.n_iter, "seconds": res.seconds, "l1": l1, "l2": l2,
                                 "stopped_reason": res.stopped_reason})
        fit_iters += res.n_iter
        fit_seconds += res.seconds
        fit_converged += res.stopped_reason == "converged"
        models.append(res.model)
        report(g + 1, total, substep=f"fit {g + 1}/{len(points)}")
    points = points[: len(models)]

    # 2. rank every (model, threshold) candidate on the central crop of every
    #    validation volume, 3. score the top_k with the competition metric
    cands = [(g, t_i, c_i) for g in range(len(points)) for t_i in range(len(pairs)) for c_i in range(len(radii))]
    k_full = full_count(len(cands), top_k)
    total = grid.units(len(val), n_points=len(points))
    proxy_sum = np.zeros(len(cands))
    n_ranked = 0
    ranked_ids: list[str] = []

    def read(rec):
        """The (image, label) of ``rec``; None (and a warning naming it) when unreadable."""
        try:
            return read_pair(rec.image_path, rec.label_path)
        except VolumeError as exc:
            if on_warning:
                on_warning(str(exc), rec.id, exc.code)
            return None
    for v, rec in enumerate(val):
        cache = dest / f"rank_{rec.id}.json"
        data = json.loads(cache.read_text()) if cache.exists() else None
        if data is None or data.get("n_models") != len(points) or data.get("radii") != radii:
            if deadline is not None and time.monotonic() > deadline and n_ranked:
                if on_deadline:
                    on_deadline(f"{len(val) - v} of {len(val)} validation volumes not searched")
                break
            pair = read(rec)
            if pair is None:
                continue
            image, label = pair

            def on_p(d, t, what, _v=v):
                report(len(points) + _v * len(cands), total, file=rec.id, file_done=_v, file_total=len(val),
                       substep=f"rank: {what}", substep_done=d, substep_total=t)

            probs = linear_probabilities(image, models, on_progress=on_p)
            proxy = []
            for j, (g, t_i, c_i) in enumerate(cands):
                def on_c(d, t, what, _v=v, _j=j):
                    report(len(points) + _v * len(cands) + _j + d / max(t, 1e-9), total, file=rec.id,
                           file_done=_v, file_total=len(val), substep=f"rank: candidate {_j + 1}/{len(cands)}: {what}",
                           substep_done=_j, substep_total=len(cands))

                proxy.append(proxy_score(probs[g], label, low=pairs[t_i][0], high=pairs[t_i][1],
                                         closing_radius=radii[c_i], min_size=min_size, on_progress=on_c))
                report(len(points) + v * len(cands) + j + 1, total, file=rec.id, file_done=v,
                       file_total=len(val), substep=f"rank: candidate {j + 1}/{len(cands)}",
                       substep_done=j + 1, substep_total=len(cands))
            data = {"n_models": len(points), "radii": radii, "proxy": proxy}
            del probs
            write_json(cache, data)
        proxy_sum += np.asarray(data["proxy"], dtype=float)
        n_ranked += 1
        ranked_ids.append(rec.id)
        report(len(points) + (v + 1) * len(cands), total, file=rec.id, file_done=v + 1, file_total=len(val),
               substep="rank")
    order = sorted(range(len(cands)), key=lambda i: -proxy_sum[i])
    chosen = sorted(order[:k_full])  # candidate indices scored in full
    chosen_models = sorted({cands[i][0] for i in chosen})
    full = [(i, t) for i in chosen for t in thins]  # (candidate, thin) scored in full
    sums = np.zeros(len(full))
    counts = 0
    per_volume: dict[str, list[float]] = {}  # the full scores of each volume that counts
    base = len(points) + len(val) * len(cands)
    for v, rec in enumerate(r for r in val if r.id in ranked_ids):
        cache = dest / f"val_{rec.id}.json"
        data = json.loads(cache.read_text()) if cache.exists() else None
        fresh = False  # scored now: each candidate's METRIC went out as soon as it was scored

        def publish(j: int, score: float, _id=rec.id) -> None:
            i, thin = full[j]
            g, t_i, c_i = cands[i]
            metric("search_score", float(score),
                   {"volume_id": _id, "l1": points[g][0], "l2": points[g][1],
                    "low": pairs[t_i][0], "high": pairs[t_i][1], "thin": thin, "closing_radius": radii[c_i],
                    "min_size": int(min_size), "plug_size": 0})
        if data is None or data.get("candidates") != [list(cands[i]) for i in chosen] \
                or data.get("thin") != thins or data.get("radii") != radii:
            fresh = True
            if deadline is not None and time.monotonic() > deadline and counts:
                if on_deadline:
                    on_deadline(f"{len(ranked_ids) - v} of {len(ranked_ids)} validation volumes not scored")
                break
            pair = read(rec)
            if pair is None:
                continue
            image, label = pair

            def on_q(d, t, what, _v=v):
                report(base + _v * k_full, total, file=rec.id, file_done=_v, file_total=len(ranked_ids),
                       substep=f"score: {what}", substep_done=d, substep_total=t)

            probs = linear_probabilities(image, [models[g] for g in chosen_models], on_progress=on_q)
            # the ridge of each model's map once, for every pair of it (thin_surface tests the same voxels)
            ridges = {}
            if True in thins:
                low_min = min(pairs[cands[i][1]][0] for i in chosen)
                for j, g in enumerate(chosen_models):
                    ridges[g] = surface_ridge(probs[j], probs[j] > low_min, on_step=lambda name, _j=j: report(
                        base + v * k_full, total, file=rec.id, file_done=v, file_total=len(ranked_ids),
                        substep=f"thin-surface ridge {_j + 1}/{len(chosen_models)}: {name}"))
            scores = []
            for j, (i, thin) in enumerate(full):
                g, t_i, c_i = cands[i]
                low, high = pairs[t_i]

                def on_score(d, t, what, _j=j):
                    report(base + v * k_full + (_j + d / t) * k_full / len(full), total, file=rec.id,
                           file_done=v, file_total=len(ranked_ids), substep=f"candidate {_j + 1}/{len(full)}: {what}",
                           substep_done=_j, substep_total=len(full))

                mask = PostChoice(low=low, high=high, thin=thin, closing_radius=tuple(radii[c_i]),
                                  min_size=min_size).apply(
                    probs[chosen_models.index(g)], ridge=ridges.get(g),
                    on_progress=lambda d, t, what, _s=on_score: _s(0.2 * d / max(t, 1), 1,
                                                                    f"post-processing: {what}"))
                scores.append(score_volume(mask, label, on_progress=lambda d, t, what, _s=on_score: _s(
                    0.2 + 0.8 * d / t, 1, what)).score)
                publish(j, scores[-1])
                report(base + v * k_full + (j + 1) * k_full / len(full), total, file=rec.id, file_done=v,
                       file_total=len(ranked_ids), substep=f"candidate {j + 1}/{len(full)}", substep_done=j + 1,
                       substep_total=len(full))
            del probs, ridges
            data = {"candidates": [list(cands[i]) for i in chosen], "thin": thins, "radii": radii,
                    "scores": scores}
            write_json(cache, data)
        sums += np.asarray(data["scores"], dtype=float)
        counts += 1
        per_volume[rec.id] = [float(x) for x in data["scores"]]
        if not fresh:  # from the cache: published now
            for j in range(len(full)):
                publish(j, data["scores"][j])
        report(base + (v + 1) * k_full, total, file=rec.id, file_done=v + 1, file_total=len(ranked_ids))

    results = []
    if counts:
        mean = sums / counts
        for j, (i, thin) in enumerate(full):
            g, t_i, c_i = cands[i]
            (l1, l2), (low, high) = points[g], pairs[t_i]
            results.append({"l1": l1, "l2": l2, "low": low, "high": high, "thin": thin,
                            "closing_radius": radii[c_i], "score": float(mean[j]),
                            "proxy": float(proxy_sum[i] / max(n_ranked, 1))})
            metric("search_mean_score", float(mean[j]),
                   {"l1": l1, "l2": l2, "low": low, "high": high, "thin": thin, "closing_radius": radii[c_i],
                    "min_size": int(min_size), "plug_size": 0, "n_volumes": counts})
        # best score; ties go to the stronger regularisation (fewer features), then to no thinning
        # (cheaper), then to the earlier closing radius
        best_j = sorted(range(len(results)), key=lambda j: (-round(results[j]["score"], 9), -results[j]["l1"],
                                                             -results[j]["l2"], results[j]["thin"],
                                                             cands[full[j][0]][2]))[0]
        g_best = cands[full[best_j][0]][0]
        best = {**results[best_j], "min_size": int(min_size), "plug_size": 0}
        # 4. the dust size, then the hole plug size, of that choice on the volumes scored in full
        by_id = {rec.id: rec for rec in val}
        ids = list(per_volume)

        def load(i, on_p):
            pair = read(by_id[ids[i]])
            if pair is None:
                return None
            return linear_probabilities(pair[0], [models[g_best]], on_progress=on_p)[0], pair[1]

        at = total - choose_units(len(val), len(dust), len(plugs))  # after the fits, rankings and full scores
        post = choose_postprocess(
            ids, load, low=best["low"], high=best["high"], thin=best["thin"],
            closing_radius=best["closing_radius"], dust_sizes=dust, plug_sizes=plugs, min_size=min_size,
            known={(int(min_size), 0): {v: per_volume[v][best_j] for v in ids}},
            cache=dest / POSTPROCESS, deadline=deadline,
            on_progress=lambda d, t, what: report(at + d, total, substep=f"dust / plug: {what}"),
            on_metric=lambda value, extra: metric("postprocess_score", value, extra),
            on_deadline=on_deadline)
        best["min_size"], best["plug_size"] = int(post["min_size"]), int(post["plug_size"])
        if post["score"] is not None:
            best["score"] = float(post["score"])
    else:
        if on_warning:
            on_warning("no validation volume could be scored; the search keeps the middle of the grid",
                       "search", "search_unscored")
        g_best = len(points) // 2
        low, high = pairs[len(pairs) // 2]
        best = {"l1": points[g_best][0], "l2": points[g_best][1], "low": low, "high": high, "thin": False,
                "closing_radius": radii[0], "min_size": int(min_size), "plug_size": 0, "score": None}
        post = None
    proxies = [{"l1": points[g][0], "l2": points[g][1], "low": pairs[t_i][0], "high": pairs[t_i][1],
                "closing_radius": radii[c_i], "proxy": float(proxy_sum[i] / max(n_ranked, 1))}
               for i, (g, t_i, c_i) in enumerate(cands)]
    best["model_path"] = str(dest / f"model_{g_best}.npz")
    write_json(dest / SEARCH_RESULTS, {"best": best, "results": results, "n_val_scored": counts,
                                       "ranked": proxies, "top_k": k_full,
                                       "postprocess": post and {k: post[k] for k in ("scores", "volumes",
                                                                                      "complete")}})
    report(total, total, message=f"best l1={best['l1']:g} l2={best['l2']:g} high={best['high']:g}"
                                 f"{' thin' if best['thin'] else ''} closing {tuple(best['closing_radius'])}"
                                 f" dust {best['min_size']} plug {best['plug_size']}")
    return {"best": best, "results": results, "fit_iters": fit_iters, "fit_seconds": fit_seconds,
            "fit_converged": fit_converged}
