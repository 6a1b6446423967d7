"""How well the search's cheap ranking agrees with the exact score.

The search ranks every (model, threshold pair, closing radius) candidate by
``search.proxy_score`` -- the competition score (exact TopoScore) of its
post-processed mask on the central crop of each validation volume
(``search.rank_crop``) -- and scores only the ``top_k`` best in full.  This
benchmark scores *every* candidate both ways on held-out volumes of a
finished run (its validation pairs, and its test volumes where the demo
dataset keeps their labels in ``test_labels_hidden/``) and reports the rank
agreement (Spearman per volume and of the means), whether the exact best is
among the proxy's top ``k``, what choosing by the proxy loses (regret), and
the cost of each.

Command::

    python benchmarks/bench_rank.py --run RUN [--run RUN ...] --out benchmarks/results/rank.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import git_commit, load_note, machine, write_section  # noqa: E402

from nx47_pipeline.io.run_folder import RunFolder  # noqa: E402
from nx47_pipeline.io.volumes import read_volume  # noqa: E402
from nx47_pipeline.model.linear import LogisticModel  # noqa: E402
from nx47_pipeline.model.metric import score_volume  # noqa: E402
from nx47_pipeline.model.predict import linear_probabilities  # noqa: E402
from nx47_pipeline.model.predictor import PostChoice  # noqa: E402
from nx47_pipeline.model.search import _radii, grid_points, proxy_score, threshold_pairs  # noqa: E402


def held_out(run: Path, data: Path) -> list[tuple[str, Path, Path]]:
    """(id, image, label) of the run's validation pairs and of the test volumes with hidden labels."""
    val_ids = sorted(p.stem for p in (run / "val").glob("*.tif") if not p.stem.endswith("_prob"))
    out = [(v, data / "train_images" / f"{v}.tif", data / "train_labels" / f"{v}.tif") for v in val_ids]
    hidden = data / "test_labels_hidden"
    for lab in sorted(hidden.glob("*.tif")) if hidden.is_dir() else []:
        out.append((lab.stem, data / "test_images" / lab.name, lab))
    return out


def measure(run: Path, max_volumes: int = 0) -> dict:
    cfg = json.loads(RunFolder(run).config.read_text())
    data = Path(cfg["data_root"])
    if not data.is_absolute():
        data = (run.parent / data).resolve() if (run.parent / data).exists() else Path.cwd() / data
    points = grid_points(cfg["l1_grid"], cfg["l2_grid"])
    pairs = threshold_pairs(cfg["threshold_grid"], cfg["hysteresis_gap"])
    grid = cfg["closing_radius_grid"]
    radii = _radii([grid[i:i + 3] for i in range(0, len(grid), 3)])
    models = [LogisticModel.load(RunFolder(run).search / f"model_{g}.npz") for g in range(len(points))]
    cands = [(g, t, c) for g in range(len(points)) for t in range(len(pairs)) for c in range(len(radii))]
    min_size = int(cfg["min_component_voxels"])
    proxy, full, t_proxy, t_full, ids = [], [], 0.0, 0.0, []
    volumes = held_out(run, data)
    for vid, img, lab in volumes[:max_volumes] if max_volumes else volumes:
        image, label = read_volume(img, kind="image"), read_volume(lab, kind="label")
        probs = linear_probabilities(image, models)
        row_p, row_f = [], []
        for g, t, c in cands:
            low, high = pairs[t]
            t0 = time.process_time()
            row_p.append(proxy_score(probs[g], label, low=low, high=high, closing_radius=radii[c], min_size=min_size))
            t1 = time.process_time()
            mask = PostChoice(low=low, high=high, closing_radius=tuple(radii[c]), min_size=min_size).apply(probs[g])
            row_f.append(score_volume(mask, label).score)
            t_proxy += t1 - t0
            t_full += time.process_time() - t1
        proxy.append(row_p)
        full.append(row_f)
        ids.append(f"{vid} {image.shape[0]}x{image.shape[1]}x{image.shape[2]}")
    P, F = np.array(proxy), np.array(full)
    mp, mf = P.mean(axis=0), F.mean(axis=0)
    order = np.argsort(-mp)
    best = int(np.argmax(mf))
    res = {"run": str(run), "data": str(data), "volumes": ids, "n_candidates": len(cands),
           "spearman_per_volume": [float(spearmanr(P[i], F[i]).statistic) for i in range(len(P))],
           "spearman_of_means": float(spearmanr(mp, mf).statistic),
           "best_rank_by_proxy": int(np.where(order == best)[0][0]) + 1,
           "best_full": float(mf[best]), "top1_full": float(mf[order[0]]),
           "top4_best_full": float(mf[order[:4]].max()),
           "cpu_s_per_candidate_volume": {"proxy": t_proxy / P.size, "full": t_full / P.size}}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", type=Path, required=True)
    ap.add_argument("--label", action="append", default=None, help="a name per --run (e.g. 'variant a')")
    ap.add_argument("--max-volumes", type=int, default=0, help="at most this many held-out volumes per run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rank.md")
    args = ap.parse_args()
    labels = args.label or [r.name for r in args.run]
    rows = [(lab, measure(r.resolve(), args.max_volumes)) for lab, r in zip(labels, args.run)]
    L = ["## The search's ranking against the exact score", "",
         "Every candidate of a finished run's search (its 4 fitted models × 4 threshold pairs × 3 closing radii = "
         "48, dust at the run's minimum, no thinning, no plugs) scored two ways on held-out volumes (the run's "
         "validation pairs and the demo test volumes with hidden labels): the search's ranking score "
         "(`search.proxy_score`: the competition score, exact TopoScore included, on the central crop of "
         "`search.rank_crop`) and the competition score of the whole volume. The search keeps the proxy's "
         "top 4 (`search_top_k`) and scores those in full, so what matters is whether the exact best is among "
         "them and what picking the best of them loses. Command: `python benchmarks/bench_rank.py --run RUN "
         "--label NAME ...`.", "",
         "| run | held-out volumes | Spearman per volume | Spearman of the means | exact best's rank by the proxy "
         "| exact best (mean) | proxy's top 1 (exact) | best of the proxy's top 4 (exact) | CPU s per candidate "
         "and volume: proxy / full |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for lab, r in rows:
        sp = ", ".join(f"{v:.2f}" for v in r["spearman_per_volume"])
        c = r["cpu_s_per_candidate_volume"]
        L.append(f"| {lab} | {len(r['volumes'])} ({', '.join(v.split()[1] for v in r['volumes'])}) | {sp} "
                 f"| {r['spearman_of_means']:.2f} | {r['best_rank_by_proxy']} of {r['n_candidates']} "
                 f"| {r['best_full']:.4f} | {r['top1_full']:.4f} | {r['top4_best_full']:.4f} "
                 f"| {c['proxy']:.2f} / {c['full']:.2f} |")
    L += ["", f"Machine: {machine()}; commit {git_commit()}. {load_note()}", ""]
    write_section(args.out, L)
    return 0


if __name__ == "__main__":
    sys.exit(main())
