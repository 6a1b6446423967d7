"""Supervised hyper-parameter search scored with the competition metric.

The grid is (L1 strength x L2 strength) for the ``fit_prox`` model times the
hysteresis threshold pair ``(high - gap, high)`` of the segmentation.  Each
(L1, L2) point is fitted once on the training sample (reduced iterations);
then every validation volume is passed through the filter bank once, every
fitted model is applied to it, and every threshold pair is post-processed and
scored with :func:`nx47_pipeline.model.metric.score_volume`.  Each fit and each
(model, threshold) evaluation is one progress unit.

Results are cached in ``dest`` (one model per fit, one JSON per validation
volume, ``results.json`` at the end), so a rerun resumes mid-grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.volumes import VolumeError, read_pair
from nx47_pipeline.model.features import feature_names
from nx47_pipeline.model.linear import LogisticModel, fit_prox
from nx47_pipeline.model.metric import score_volume
from nx47_pipeline.model.postprocess import postprocess
from nx47_pipeline.model.predict import linear_probabilities


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
    min_size: int = 100,
    max_iter: int = 150,
    tol: float = 1e-6,
    intercept_shift: float = 0.0,
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
    deadline : float, optional
        ``time.monotonic()`` value; the search stops early there and picks
        the best point seen (BUDGET is the caller's to publish via
        ``on_deadline``).

    Returns
    -------
    dict
        ``best`` (``l1``, ``l2``, ``low``, ``high``, ``score``,
        ``model_path``), ``results`` (mean score per grid point),
        ``fit_iters`` and ``fit_seconds`` (summed over fits), ``fit_converged``
        (how many fits converged before ``max_iter``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    points = grid_points(l1_grid, l2_grid)
    pairs = threshold_pairs(thresholds, gap)
    n_eval = len(points) * len(pairs)
    total = len(points) + len(val) * n_eval
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

    # 2. every validation volume through every model and threshold pair
    sums = np.zeros((len(points), len(pairs)))
    counts = 0
    done_units = len(points)
    for v, rec in enumerate(val):
        cache = dest / f"val_{rec.id}.json"
        scores = None
        if cache.exists():
            data = json.loads(cache.read_text())
            if data.get("n_models") == len(points):
                scores = np.asarray(data["scores"], dtype=float)
        if scores is None:
            if deadline is not None and time.monotonic() > deadline:
                if on_deadline:
                    on_deadline(f"{len(val) - v} of {len(val)} validation volumes not searched")
                break
            try:
                image, label = read_pair(rec.image_path, rec.label_path)
            except VolumeError as exc:
                if on_warning:
                    on_warning(str(exc), rec.id, exc.code)
                continue

            def on_p(d, t, what, _v=v):
                report(len(points) + _v * n_eval, total, file=rec.id, file_done=_v, file_total=len(val),
                       substep=what, substep_done=d, substep_total=t)

            probs = linear_probabilities(image, models, on_progress=on_p)
            scores = np.zeros((len(points), len(pairs)))
            for g in range(len(points)):
                for t_i, (low, high) in enumerate(pairs):
                    mask = postprocess(probs[g], low=low, high=high, closing_radius=closing_radius,
                                       min_size=min_size)
                    scores[g, t_i] = score_volume(mask, label).score
                    k = g * len(pairs) + t_i + 1
                    report(len(points) + v * n_eval + k, total, file=rec.id, file_done=v,
                           file_total=len(val), substep=f"grid point {k}/{n_eval}",
                           substep_done=k, substep_total=n_eval)
            del probs
            write_json(cache, {"n_models": len(points), "scores": scores.tolist()})
        sums += scores
        counts += 1
        for g, (l1, l2) in enumerate(points):
            for t_i, (low, high) in enumerate(pairs):
                metric("search_score", float(scores[g, t_i]),
                       {"volume_id": rec.id, "l1": l1, "l2": l2, "low": low, "high": high})
        done_units = len(points) + (v + 1) * n_eval
        report(done_units, total, file=rec.id, file_done=v + 1, file_total=len(val))

    results = []
    if counts:
        mean = sums / counts
        for g, (l1, l2) in enumerate(points):
            for t_i, (low, high) in enumerate(pairs):
                results.append({"l1": l1, "l2": l2, "low": low, "high": high, "score": float(mean[g, t_i])})
                metric("search_mean_score", float(mean[g, t_i]),
                       {"l1": l1, "l2": l2, "low": low, "high": high, "n_volumes": counts})
        # best score; ties go to the stronger regularisation (fewer features)
        order = sorted(range(len(results)), key=lambda i: (-round(results[i]["score"], 9),
                                                             -results[i]["l1"], -results[i]["l2"]))
        best_i = order[0]
        g_best = best_i // len(pairs)
        best = dict(results[best_i])
    else:
        if on_warning:
            on_warning("no validation volume could be scored; the search keeps the middle of the grid",
                       "search", "search_unscored")
        g_best = len(points) // 2
        low, high = pairs[len(pairs) // 2]
        best = {"l1": points[g_best][0], "l2": points[g_best][1], "low": low, "high": high, "score": None}
    best["model_path"] = str(dest / f"model_{g_best}.npz")
    write_json(dest / "results.json", {"best": best, "results": results, "n_val_scored": counts})
    report(total, total, message=f"best l1={best['l1']:g} l2={best['l2']:g} high={best['high']:g}")
    return {"best": best, "results": results, "fit_iters": fit_iters, "fit_seconds": fit_seconds,
            "fit_converged": fit_converged}
