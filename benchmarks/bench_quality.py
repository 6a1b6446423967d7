"""Segmentation quality on held-out data of two generator variants.

For each generator variant (``a``: the demo data the project is tuned on;
``b``: a held-out variant with other sheet spacing, thickness, noise,
lighting and label offset) a dataset is written with
``nx47 demo-data --variant V``; its test volumes' labels
(``test_labels_hidden/``) are never seen by training.  Methods:

* ``otsu``: a global Otsu threshold per test volume (the baseline);
* ``fit_prox``: ``nx47 run --no-unet`` (default settings);
* ``fit_prox (bad inputs)``: the same with half of the training pairs made
  unusable (truncated image files), so fewer pairs train the model;
* ``unet``: ``nx47 run --unet --budget-s 600`` on the CPU (``--no-unet-run``
  skips it).

Each submission is scored with ``nx47 score --json`` against the hidden
labels: the table gives the mean Surface Dice, VOI score, TopoScore and
score.  An ablation re-runs the post-processing of the fit_prox run's own
probability maps (``test/<id>_prob.tif``) with each step removed, then with
each closing radius, dust size and hole plug size of the run's grids.

``--cross`` adds the cross-generator rows: the fit_prox (and U-Net) model
trained on one variant's data, exported with ``nx47 export-model``, segments
the other variant's test volumes (``nx47 run --data OTHER --model BUNDLE``)
and is scored there (``nx47 score``): "fit_prox trained on a, tested on b"
and the reverse.

Run: ``python benchmarks/bench_quality.py --out benchmarks/results/quality.md
[--shape 128] [--no-unet-run] [--cross]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from _common import git_commit, load_note, machine, write_section  # noqa: E402
from nx47_pipeline.data.discovery import discover  # noqa: E402
from nx47_pipeline.io.jsonio import read_json  # noqa: E402
from nx47_pipeline.io.volumes import read_volume  # noqa: E402
from nx47_pipeline.model.metric import score_volumes  # noqa: E402
from nx47_pipeline.model.postprocess import ablation_steps, otsu_baseline, postprocess, postprocess_steps  # noqa: E402
from nx47_pipeline.model.postprocess import radius_text, uint8_to_probability  # noqa: E402
from nx47_pipeline.config import RunConfig  # noqa: E402
from nx47_pipeline.run.stages import closing_of, min_size_of, plug_size_of  # noqa: E402

PARTS = ("surface_dice", "voi", "topo", "score")


def nx47(*args: str, env: dict | None = None, timeout: float = 7200) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NX47_")}
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", *args], cwd=str(REPO), env=full,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0,):
        raise RuntimeError(f"nx47 {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def mean_parts(result: dict) -> dict[str, float]:
    rows = list(result["per_volume"].values())
    out = {}
    for k in PARTS:
        key = "voi_score" if k == "voi" and "voi_score" in rows[0] else k
        vals = [r.get(key) for r in rows if isinstance(r.get(key), (int, float))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def score_zip(zip_path: Path, labels: Path) -> dict[str, float]:
    res = json.loads(nx47("score", "--pred", str(zip_path), "--labels", str(labels), "--json").stdout)
    return mean_parts(res)


def otsu_scores(data: Path, truth: dict[str, np.ndarray]) -> dict[str, float]:
    triples = [(rec.id, otsu_baseline(read_volume(rec.image_path, kind="image")), truth[rec.id])
               for rec in discover(data).test]
    return mean_parts(score_volumes(triples))


def break_half(src: Path, dst: Path) -> int:
    """Copy ``src`` and truncate every other training image: fewer usable pairs."""
    shutil.copytree(src, dst)
    imgs = sorted((dst / "train_images").glob("*.tif"))
    for p in imgs[1::2]:
        raw = p.read_bytes()
        p.write_bytes(raw[: len(raw) // 3])
    return len(imgs[1::2])


def unet_note(run: Path) -> str:
    """What the U-Net run's journal says about its training and whether it was kept."""
    said = []
    for line in (run / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        msg = str(e.get("payload", {}).get("message", ""))
        if e["kind"] == "WARNING" and e["payload"].get("code") in ("unet_not_better", "unet_untrained"):
            said.append(msg)
        elif e["kind"] == "BUDGET" and e.get("stage") == "unet" and "training stopped" in msg:
            said.append(msg)
    epochs = sum(1 for line in (run / "journal.jsonl").read_text().splitlines()
                 if '"unet_epoch_loss"' in line and json.loads(line)["kind"] == "METRIC")
    said.insert(0, f"{epochs} epochs trained")
    linear = {p.stem: read_json(p)["score"] for p in (run / "val" / "linear").glob("*.json")}
    both = {p.stem: read_json(p)["score"] for p in (run / "val").glob("*.json") if p.stem in linear}
    if both and not any("below fit_prox" in m for m in said):
        said.append(f"validation score with the U-Net {np.mean(list(both.values())):.3f}, fit_prox alone "
                    f"{np.mean([linear[k] for k in both]):.3f} on {len(both)} volumes: the U-Net is kept")
    return "; ".join(said)


def chosen_post(run: Path) -> str:
    """The post-processing the run chose on validation (its bundle's thresholds, ``thin``, closing
    radius, dust size and hole plug size)."""
    m = read_json(run / "model" / "model.json")
    if not m:
        return "—"
    search, post = m.get("search", {}), m.get("postprocess", {})
    min_size = post.get("min_size", post.get("min_component_voxels"))
    return (f"{search['low']:.2f} / {search['high']:.2f}" + (", thin" if post.get("thin") else "")
            + f", closing {radius_text(post['closing_radius'])}, min_size {min_size}"
            + f", plug_size {post.get('plug_size', 0)}")


def test_labels(data: Path) -> dict[str, np.ndarray]:
    """The hidden test labels of ``data``, by volume id."""
    return {r.id: read_volume(data / "test_labels_hidden" / f"{r.id}.tif", kind="label") for r in discover(data).test}


def ceiling(run: Path, truth: dict[str, np.ndarray]) -> float | None:
    """The score of the test labels themselves as the probability map (1 on the
    surface, 0 elsewhere) through the post-processing ``run`` chose (``thin``,
    closing radius, dust size): what a perfect model would score with it."""
    m = read_json(run / "model" / "model.json")
    if not m:
        return None
    post = m.get("postprocess", {})
    triples = [(vid, postprocess((lab == 1).astype(np.float32), low=0.35, high=0.5, thin=bool(post.get("thin")),
                                 closing_radius=tuple(post["closing_radius"]),
                                 min_size=int(post.get("min_size", post.get("min_component_voxels", 100))),
                                 plug_size=int(post.get("plug_size", 0))), lab)
               for vid, lab in truth.items()]
    return mean_parts(score_volumes(triples))["score"]


def ablation(run: Path, truth: dict[str, np.ndarray]) -> list[tuple[str, dict[str, float]]]:
    """The fit_prox run's test probabilities through the post-processing with each step off
    (the thresholds, closing radius, dust size and plug size its search chose), then with
    each closing radius, each dust size and each plug size of the run's grids (the other
    choices kept); last, the test labels themselves as the probability map (1 on the
    surface, 0 elsewhere) through the default steps with no closing and with each radius:
    what the closing costs a perfect map."""
    best = read_json(run / "search" / "results.json")["best"]
    cfg = RunConfig.from_dict(read_json(run / "config.json"))
    radius, radii = closing_of(cfg, best), cfg.closing_radii()
    min_size, plug_size = min_size_of(cfg, best), plug_size_of(best)
    probs = {vid: uint8_to_probability(read_volume(run / "test" / f"{vid}_prob.tif", kind="image"))
             for vid in truth}

    def score(maps, steps, r, low, high, dust=min_size, plug=plug_size):
        triples = [(vid, postprocess_steps(maps[vid], low=low, high=high, closing_radius=r, min_size=dust,
                                           plug_size=plug, steps=steps), truth[vid])
                   for vid in maps]
        return mean_parts(score_volumes(triples))

    lo, hi = best["low"], best["high"]
    out = [(name, score(probs, steps, radius, lo, hi)) for name, steps in ablation_steps()]
    default = ablation_steps()[0][1]
    out += [(f"default steps, closing {radius_text(r)}", score(probs, default, r, lo, hi)) for r in radii]
    out += [(f"default steps, dust {d}", score(probs, default, radius, lo, hi, dust=d)) for d in cfg.dust_sizes()]
    out += [(f"default steps, plug {q}", score(probs, default, radius, lo, hi, plug=q)) for q in cfg.plug_sizes()]
    perfect = {vid: (lab == 1).astype(np.float32) for vid, lab in truth.items()}
    no_closing = tuple(s for s in default if s != "closing")
    out.append(("test labels as the map, no closing", score(perfect, no_closing, radius, 0.35, 0.5)))
    out += [(f"test labels as the map, closing {radius_text(r)}", score(perfect, default, r, 0.35, 0.5))
            for r in radii]
    return out


def ablation_caption(run: Path) -> str:
    """What the ablation's default row holds: the fit_prox run's own choice."""
    best = read_json(run / "search" / "results.json")["best"]
    cfg = RunConfig.from_dict(read_json(run / "config.json"))
    return (f"{best['low']:.2f} / {best['high']:.2f}, closing {radius_text(closing_of(cfg, best))}, "
            f"min_size {min_size_of(cfg, best)}, plug_size {plug_size_of(best)}")


def cross_run(tmp: Path, run: Path, other_data: Path, name: str) -> tuple[dict[str, float], str]:
    """``run``'s model exported (``nx47 export-model``), run on ``other_data`` (``nx47 run --model``)
    and scored on its hidden test labels (``nx47 score``); the mean parts and what the bundle chose."""
    bundle = tmp / f"bundle-{name}"
    if not (bundle / "model.json").exists():
        shutil.rmtree(bundle, ignore_errors=True)
        nx47("export-model", "--run", str(run), "--out", str(bundle))
    out = tmp / f"cross-{name}"
    if not (out / "submission.zip").exists():
        nx47("run", "--data", str(other_data), "--model", str(bundle), "--out", str(out),
             "--max-train-volumes", "0", "--max-val-volumes", "3", "--quiet")
    return score_zip(out / "submission.zip", other_data / "test_labels_hidden"), chosen_post(run)


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (as typed in a command)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality.md")
    ap.add_argument("--shape", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=12)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--seed", type=int, default=202, help="dataset seed (the project tunes on seed 47)")
    ap.add_argument("--no-unet-run", action="store_true")
    ap.add_argument("--variants", default="a,b",
                    help="comma-separated generator variants to run (default a,b)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep datasets and runs here; a rerun reuses the finished ones (e.g. to redo the ablation)")
    ap.add_argument("--cross", action="store_true",
                    help="also test each variant's models on the other variant's test volumes (needs both variants)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {"a", "b"})
    if not variants or unknown:
        ap.error(f"--variants must name a and/or b, got {args.variants!r}")
    if args.cross and sorted(set(variants)) != ["a", "b"]:
        ap.error("--cross needs both variants (--variants a,b)")
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tmp = args.work or Path(tempfile.mkdtemp(prefix="nx47-quality-"))
    tmp.mkdir(parents=True, exist_ok=True)

    def run_once(out: Path, *argv: str) -> None:
        if not (out / "submission.zip").exists():
            nx47("run", "--out", str(out), *argv)

    tables: dict[str, list[tuple[str, dict[str, float], str, float | None]]] = {}
    unet_notes: dict[str, str] = {}
    ablations: dict[str, list] = {}
    for variant in variants:
        data = tmp / f"data-{variant}"
        if not (data / "test_labels_hidden").is_dir():
            nx47("demo-data", "--out", str(data), "--n-train", str(args.n_train), "--n-test", str(args.n_test),
                 "--shape", str(args.shape), "--seed", str(args.seed), "--variant", variant)
        labels = data / "test_labels_hidden"
        truth = test_labels(data)
        rows = [("otsu", otsu_scores(data, truth), "—", None)]
        run = tmp / f"fit-{variant}"
        run_once(run, "--data", str(data), "--no-unet", "--max-train-volumes", "0", "--max-val-volumes", "3",
                 "--quiet")
        rows.append(("fit_prox", score_zip(run / "submission.zip", labels), chosen_post(run), ceiling(run, truth)))
        ablations[variant] = ablation(run, truth)
        bad = tmp / f"data-{variant}-bad"
        n_bad = break_half(data, bad) if not bad.is_dir() else len(sorted((bad / "train_images").glob("*.tif"))[1::2])
        bad_run = tmp / f"fit-{variant}-bad"
        run_once(bad_run, "--data", str(bad), "--no-unet", "--max-train-volumes", "0", "--max-val-volumes", "3",
                 "--quiet")
        rows.append((f"fit_prox ({n_bad} of {args.n_train} training images truncated)",
                     score_zip(bad_run / "submission.zip", labels), chosen_post(bad_run), ceiling(bad_run, truth)))
        if not args.no_unet_run:
            urun = tmp / f"unet-{variant}"
            run_once(urun, "--data", str(data), "--unet", "--budget-s", "600", "--max-train-volumes", "0",
                     "--max-val-volumes", "3", "--quiet")
            rows.append(("unet (CPU, --budget-s 600)", score_zip(urun / "submission.zip", labels),
                         chosen_post(urun), ceiling(urun, truth)))
            unet_notes[variant] = unet_note(urun)
        tables[variant] = rows
    cross: list[tuple[str, dict[str, float], str, dict[str, float]]] = []
    if args.cross:
        models = [("fit_prox", "fit")] + ([] if args.no_unet_run else [("unet", "unet")])
        for train_v, test_v in (("a", "b"), ("b", "a")):
            own = {name: m for name, m, _, _ in tables[test_v]}
            for label, prefix in models:
                m, post = cross_run(tmp, tmp / f"{prefix}-{train_v}", tmp / f"data-{test_v}",
                                    f"{prefix}-{train_v}-on-{test_v}")
                same = own.get("fit_prox" if prefix == "fit" else "unet (CPU, --budget-s 600)")
                if prefix == "unet" and not (read_json(tmp / f"unet-{train_v}" / "model" / "model.json") or {}).get("unet"):
                    label = "unet run (U-Net dropped on validation: fit_prox alone)"
                cross.append((f"{label} trained on {train_v}, tested on {test_v}", m, post, same))
    which = " and ".join(f"variant {v}" for v in variants)
    lines = [f"## Segmentation quality on held-out data ({args.shape}³, {which}, seed {args.seed})", "",
             f"Each variant: {args.n_train} training pairs and {args.n_test} test volumes written by "
             f"`nx47 demo-data --variant V --seed {args.seed}` (the project is tuned on variant a, seed 47); "
             "test labels are never seen by training. Mean over the test volumes of the local competition "
             "metric's parts. Command: `python benchmarks/bench_quality.py "
             f"--out {display_path(args.out)} --shape {args.shape} --n-train {args.n_train} "
             f"--n-test {args.n_test} --seed {args.seed}"
             f"{' --no-unet-run' if args.no_unet_run else ''}"
             f"{'' if variants == ['a', 'b'] else ' --variants ' + ','.join(variants)}"
             f"{' --cross' if args.cross else ''}`.", ""]
    for variant, rows in tables.items():
        lines += [f"**Variant {variant}**", "",
                  "| method | Surface Dice | VOI score | TopoScore | score "
                  "| low / high, thin, closing, min_size, plug_size (chosen on validation) "
                  "| perfect map, same post-processing |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for name, m, post, top in rows:
            lines.append(f"| {name} | {m['surface_dice']:.3f} | {m['voi']:.3f} | {m['topo']:.3f} | "
                         f"**{m['score']:.3f}** | {post} | {'—' if top is None else f'{top:.3f}'} |")
        lines.append("")
    lines += ["Last column of these tables: the test labels themselves as the probability map through the "
              "post-processing that method chose (its thinning, closing radius, dust size and hole plug size): "
              "the score a perfect model would get with it.", ""]
    if cross:
        lines += ["**Cross-generator**: each model exported from its run (`nx47 export-model`), run on the "
                  "other variant's data (`nx47 run --model BUNDLE`, its own post-processing) and scored on "
                  "that variant's hidden test labels (`nx47 score`); last column: the model trained on the "
                  "test variant itself (the tables above).", "",
                  "| model | Surface Dice | VOI score | TopoScore | score "
                  "| low / high, thin, closing, min_size, plug_size (chosen on its own validation) "
                  "| trained on the test variant |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for name, m, post, same in cross:
            own = "—" if same is None else f"{same['score']:.3f}"
            lines.append(f"| {name} | {m['surface_dice']:.3f} | {m['voi']:.3f} | {m['topo']:.3f} | "
                         f"**{m['score']:.3f}** | {post} | {own} |")
        lines.append("")
    for variant, note in unet_notes.items():
        lines += [f"U-Net run, variant {variant}: {note}", ""]
    lines += ["Post-processing ablation on the fit_prox run's own test probabilities (thresholds, "
              "closing radius, min_size and plug_size from its search — "
              + "; ".join(f"{v}: {ablation_caption(tmp / f'fit-{v}')}" for v in variants)
              + " —; then each closing radius, each dust size (min_size) and each plug size (plug_size) of "
              "the run's grids, the other choices kept; last, the test labels themselves as the probability "
              "map, through the default steps):", "",
              "| post-processing | " + " | ".join(f"variant {v} score" for v in variants) + " |",
              "| --- |" + " ---: |" * len(variants)]
    for i, (name, _) in enumerate(ablations[variants[0]]):
        lines.append(f"| {name} | " + " | ".join(f"{ablations[v][i][1]['score']:.3f}" for v in variants) + " |")
    lines += ["", f"Machine: {machine()}. Date: {started}. Commit: {git_commit()}. {load_note()}", ""]
    write_section(args.out, lines)
    if args.work is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
