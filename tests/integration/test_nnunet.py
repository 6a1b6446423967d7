"""nnU-Net inside NX47: raw-data export, import of trained result folders,
the nnU-Net predictor against nnU-Net's own ``nnUNetPredictor``, ensembles.

The slow tests train a tiny nnU-Net once per session with nnU-Net's own
command line (``nnUNetv2_plan_and_preprocess``, then ``nnUNetv2_train``'s
entry with a trainer of few iterations: ``python -m
nx47_pipeline.nnunet.trainer``) on exported demo data, on the CPU.
nnU-Net's environment variables are given to those subprocesses only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.cli import main as cli_main
from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.model.bundle import BundleError, load_bundle
from nx47_pipeline.model.predictor import DeadlineExceeded, EnsemblePredictor, PostChoice, PredictorKind
from nx47_pipeline.nnunet.export import LABELS, export_nnunet
from nx47_pipeline.nnunet.train import small_configuration
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken

pytest.importorskip("nnunetv2")
torch = pytest.importorskip("torch")

NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net's variables set before the tests (none, normally): NX47 never sets them in its own process
ORIGINAL_ENV = {k for k in NNUNET_ENV if k in os.environ}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nnunet_demo") / "data"
    generate_demo_dataset(root, n_train=6, n_test=1, shape=(48, 48, 48), seed=3)
    return root


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def test_export_writes_nnunet_raw_data_with_nx47s_split(demo, tmp_path):
    assert cli_main(["nnunet-export", "--data", str(demo), "--out", str(tmp_path / "raw"),
                     "--max-train-volumes", "3", "--max-val-volumes", "2"]) == 0
    ds = tmp_path / "raw" / "Dataset047_Vesuvius"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "surface": 1, "ignore": 2} == LABELS
    assert meta["file_ending"] == ".tif" and meta["channel_names"] == {"0": "CT"}
    sel = select_coverage(discover(demo).pairs, max_train_volumes=3, max_val_volumes=2, seed=47)
    splits = json.loads((ds / "splits_final.json").read_text())
    assert splits == [{"train": [r.id for r in sel.train], "val": [r.id for r in sel.val]}]
    assert meta["numTraining"] == len(sel.train) + len(sel.val) == 5
    # scroll-aware: no validation volume shares a scroll with a training volume
    train_scrolls = {r.scroll_id for r in sel.train}
    assert not any(r.scroll_id in train_scrolls for r in sel.val if r.scroll_id is not None)
    for rec in [*sel.train, *sel.val]:
        img = ds / "imagesTr" / f"{rec.id}_0000.tif"
        np.testing.assert_array_equal(tifffile.imread(img), tifffile.imread(rec.image_path))
        np.testing.assert_array_equal(tifffile.imread(ds / "labelsTr" / f"{rec.id}.tif"),
                                      tifffile.imread(rec.label_path))
        assert json.loads((ds / "imagesTr" / f"{rec.id}.json").read_text()) == {"spacing": [1.0, 1.0, 1.0]}
        assert (ds / "labelsTr" / f"{rec.id}.json").exists()
    test_ids = [r.id for r in discover(demo).test]
    assert sorted(p.name for p in (ds / "imagesTs").glob("*_0000.tif")) == sorted(f"{i}_0000.tif" for i in test_ids)
    assert not any(k in os.environ for k in NNUNET_ENV if k not in ORIGINAL_ENV)


def test_export_refuses_a_folder_without_pairs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["nnunet-export", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "raw")]) == 2
    assert str(tmp_path / "empty") in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the seam without nnU-Net: ensembles, post-processing choice
# ---------------------------------------------------------------------------
class _Const:
    kind = PredictorKind.LINEAR

    def __init__(self, value):
        self.value = value

    def predict(self, volume, *, on_progress=None, cancel=None, deadline=None):
        if on_progress is not None:
            on_progress(1, 1, "const", 1.0)
        return np.full(volume.shape, self.value, dtype=np.float32)


def test_ensemble_is_the_weighted_mean_and_reports_progress():
    vol = np.zeros((4, 5, 6), np.uint8)
    seen = []
    ens = EnsemblePredictor(((_Const(0.2), 1.0), (_Const(0.8), 3.0)))
    prob = ens.predict(vol, on_progress=lambda *a: seen.append(a))
    np.testing.assert_allclose(prob, (0.2 * 1 + 0.8 * 3) / 4, rtol=1e-6)
    assert [s[3] for s in seen] == [0.5, 1.0]
    with pytest.raises(ValueError, match="weight"):
        EnsemblePredictor(((_Const(0.2), 0.0),))


def test_post_choice_from_best_takes_the_defaults_where_none_was_chosen():
    post = PostChoice.from_best({"low": 0.3, "high": 0.6}, closing_radius=(2, 1, 1), min_size=7)
    assert post == PostChoice(low=0.3, high=0.6, thin=False, closing_radius=(2, 1, 1), min_size=7, plug_size=0)
    prob = np.zeros((8, 8, 8), np.float32)
    prob[2:6, 2:6, 2:6] = 0.9
    assert post.apply(prob).sum() == 64 and post.apply(prob).dtype == np.uint8


def test_import_refuses_a_checkpoint_that_is_not_one_naming_it(tmp_path, capsys):
    res = tmp_path / "res"
    (res / "fold_0").mkdir(parents=True)
    (res / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"}}))
    (res / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (res / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    assert cli_main(["import-nnunet", "--results", str(res), "--out", str(tmp_path / "b")]) == 2
    assert str(res / "fold_0" / "checkpoint_final.pth") in capsys.readouterr().err
    (res / "plans.json").unlink()
    assert cli_main(["import-nnunet", "--results", str(res), "--out", str(tmp_path / "b")]) == 2
    assert str(res / "plans.json") in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------
# a tiny nnU-Net trained with nnU-Net's command line (slow)
# ---------------------------------------------------------------------------
TINY = "3d_nx47_tiny"  # NX47's small configuration (nnunet/train.py): 32^3 patch, 8-32 features


def _run(cmd, env, log: Path) -> None:
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """A tiny nnU-Net trained on exported demo data: ``{"results", "perturbed", "volume"}``."""
    base = tmp_path_factory.mktemp("nnunet_tiny")
    data = base / "data"
    generate_demo_dataset(data, n_train=4, n_test=1, shape=(48, 48, 48), seed=5)
    raw, pre, res = base / "raw", base / "pre", base / "res"
    export_nnunet(data, raw, max_train_volumes=3, max_val_volumes=1)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "2"}
    # nnU-Net's planner sizes threads by nnUNet_n_proc_DA: it must be >= 1 there
    _run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "47", "-c", "3d_fullres",
          "-np", "1"], {**env, "nnUNet_n_proc_DA": "1"}, base / "plan.log")
    plans_file = pre / "Dataset047_Vesuvius" / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"][TINY] = small_configuration(plans, TINY)
    plans_file.write_text(json.dumps(plans, indent=1))
    # nnU-Net took NX47's split from the raw folder
    assert (json.loads((pre / "Dataset047_Vesuvius" / "splits_final.json").read_text())
            == json.loads((raw / "Dataset047_Vesuvius" / "splits_final.json").read_text()))
    _run([sys.executable, "-m", "nx47_pipeline.nnunet.trainer", "47", TINY, "0", "-device", "cpu", "--epochs", "1",
          "--iterations", "3", "--val-iterations", "1", "--skip-final-validation"], env, base / "train.log")
    results = res / "Dataset047_Vesuvius" / f"nnUNetTrainer_nx47__nnUNetPlans__{TINY}"
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()
    # a second model: the same network, other weights (an ensemble's member)
    other = base / "res_other"
    shutil.copytree(results, other)
    ck = torch.load(other / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    gen = torch.Generator().manual_seed(0)
    ck["network_weights"] = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                             for k, v in ck["network_weights"].items()}
    torch.save(ck, other / "fold_0" / "checkpoint_final.pth")
    image = tifffile.imread(next((data / "test_images").glob("*.tif")))
    return {"results": results, "other": other, "volume": np.ascontiguousarray(image[:32, :40, 4:44]),
            "data": data}


def _reference(results: Path, volume: np.ndarray, *, tile_step: float, mirroring: bool) -> np.ndarray:
    """nnU-Net's own nnUNetPredictor on ``volume`` (surface probability)."""
    import nnunetv2.inference.predict_from_raw_data as pr
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # the checkpoint names nnUNetTrainer_nx47, which nnU-Net's class search cannot find; it builds the
    # network exactly as nnUNetTrainer (the trainer changes only the training length)
    find = pr.recursive_find_trainer_class_by_name
    pr.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer
    try:
        ref = pr.nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=mirroring,
                                 perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        ref.initialize_from_trained_model_folder(str(results), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    finally:
        pr.recursive_find_trainer_class_by_name = find
    _, probs = ref.predict_single_npy_array(volume[None].astype(np.float32), {"spacing": [1, 1, 1]}, None, None, True)
    return probs[1]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
@pytest.mark.parametrize("tile_step,mirroring", [(0.5, True), (0.75, False)])
def test_nnunet_bundle_equals_nnunets_own_predictor(trained, tmp_path, tile_step, mirroring):
    argv = ["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b"),
            "--tile-step", str(tile_step)] + ([] if mirroring else ["--no-mirroring"])
    assert cli_main(argv) == 0
    b = load_bundle(tmp_path / "b")
    assert b.kind == PredictorKind.NNUNET and b.predictor.kind == PredictorKind.NNUNET
    manifest = json.loads((tmp_path / "b" / "model.json").read_text())
    assert set(manifest["files"]) == {"nnunet/m0/plans.json", "nnunet/m0/dataset.json", "nnunet/m0/fold_0.pt"}
    vol = trained["volume"]
    seen = []
    ours = b.predictor.predict(vol, on_progress=lambda *a: seen.append(a))
    ref = _reference(trained["results"], vol, tile_step=tile_step, mirroring=mirroring)
    assert ours.shape == vol.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert 0.0 < float(ours.min()) and float(ours.max()) < 1.0
    n = b.predictor.n_windows(vol.shape)
    assert [s[0] for s in seen] == list(range(1, n + 1)) and {s[1] for s in seen} == {n} and n > 1
    assert b.predictor.n_mirrors == (8 if mirroring else 1)
    # the bundle's post-processing makes the mask
    mask = b.post.apply(ours)
    assert mask.shape == vol.shape and mask.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_an_ensemble_of_two_imports_is_their_weighted_mean(trained, tmp_path):
    for name, res in (("a", trained["results"]), ("b", trained["other"])):
        assert cli_main(["import-nnunet", "--results", str(res), "--out", str(tmp_path / name),
                         "--no-mirroring"]) == 0
    assert cli_main(["import-nnunet", "--member", f"{trained['results']}:1", "--member", f"{trained['other']}:3",
                     "--no-mirroring", "--out", str(tmp_path / "ens")]) == 0
    vol = trained["volume"]
    pa = load_bundle(tmp_path / "a").predictor.predict(vol)
    pb = load_bundle(tmp_path / "b").predictor.predict(vol)
    ens = load_bundle(tmp_path / "ens")
    assert ens.predictor.kind == PredictorKind.ENSEMBLE and ens.predictor.weights == (1.0, 3.0)
    assert np.abs(pa - pb).max() > 1e-3  # two different models
    np.testing.assert_allclose(ens.predictor.predict(vol), (pa + 3 * pb) / 4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_nnunet_prediction_stops_on_cancel_and_deadline(trained, tmp_path):
    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b")]) == 0
    pred = load_bundle(tmp_path / "b").predictor
    vol = trained["volume"]
    token = CancelToken()
    seen = []

    def cancel_after_first(done, total, what, frac):
        seen.append(done)
        token.cancel("Stop")

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        pred.predict(vol, on_progress=cancel_after_first, cancel=token)
    assert seen == [1]  # the next window is not started
    assert time.monotonic() - t0 < 60  # generous: one window of the tiny net, preprocessing included
    with pytest.raises(DeadlineExceeded):
        pred.predict(vol, deadline=time.monotonic() - 1)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_run_with_an_nnunet_bundle_drops_mirroring_when_the_windows_do_not_fit(trained, tmp_path):
    """``nx47 run --model`` with an nnU-Net bundle: validate and segment through its predictor; at an injected
    10 s per window pass, one validation and one test volume of 48^3 (8 windows of 32^3 each) with 8 mirrors
    (1280 s) do not fit the 900 s budget, without mirroring (160 s) they do: one BUDGET decision,
    mirroring dropped."""
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.run.orchestrator import run_pipeline

    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b")]) == 0
    out = tmp_path / "run"
    cfg = RunConfig(data_root=str(trained["data"]), out_dir=str(out), model_dir=str(tmp_path / "b"),
                    max_train_volumes=0, max_val_volumes=1, budget_s=900.0, console=False,
                    heartbeat_interval_s=0.2, progress_interval_s=0.0, nnunet_seconds_per_window=10.0)
    result = run_pipeline(cfg)
    assert result.status == "ok", result.error
    assert (out / "submission.zip").is_file()
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    nn = [e["payload"] for e in events if e["kind"] == "BUDGET" and e["payload"]["decision"].startswith("nnunet")]
    assert [p["decision"] for p in nn] == ["nnunet_mirroring"]
    assert nn[0]["extra"]["seconds_per_window"] == 10.0 and nn[0]["fits"] is True
    assert nn[0]["projected_s"] == 160.0
    assert result.stats["stage_status"]["segment"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_run_with_an_nnunet_bundle_chooses_its_post_processing_on_validation(trained, tmp_path):
    """``nx47 run --model`` with an nnU-Net bundle and validation pairs: the bundle's 0.5 / 0.5 is the
    start of a sweep on the validation maps (pairs x thinning x closing radii, then dust and plug sizes,
    METRIC ``model_threshold_score`` in stage validate, ``val/model_thresholds.json``); the test masks
    are the bundle's probabilities post-processed with the recorded choice."""
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.run.orchestrator import run_pipeline

    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b"),
                     "--no-mirroring"]) == 0
    out = tmp_path / "run"
    cfg = RunConfig(data_root=str(trained["data"]), out_dir=str(out), model_dir=str(tmp_path / "b"),
                    max_train_volumes=0, max_val_volumes=1, budget_s=3600.0, console=False,
                    heartbeat_interval_s=0.2, progress_interval_s=0.0)
    result = run_pipeline(cfg)
    assert result.status == "ok", result.error
    record = json.loads((out / "val" / "model_thresholds.json").read_text())
    assert record["search_pair"] == [0.5, 0.5] and len(record["volumes"]) == 1
    assert len(record["scores"]) >= 2 * len(cfg.closing_radii()) * 6  # every pair x thinning x radius
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    swept = [e for e in events if e["kind"] == "METRIC" and e["payload"]["name"] == "model_threshold_score"]
    assert len(swept) == len(record["scores"]) and {e["stage"] for e in swept} == {"validate"}
    assert {e["payload"]["extra"]["thin"] for e in swept} == {False, True}
    chosen = PostChoice(low=record["chosen"][0], high=record["chosen"][1], thin=record["chosen_thin"],
                        closing_radius=tuple(record["chosen_closing_radius"]), min_size=record["chosen_min_size"],
                        plug_size=record["chosen_plug_size"])
    b = load_bundle(tmp_path / "b")
    assert result.stats["best"]["low"] == chosen.low and result.stats["best"]["high"] == chosen.high
    assert result.stats["best"]["min_size"] == chosen.min_size
    for rec in discover(trained["data"]).test:
        prob = b.predictor.predict(tifffile.imread(rec.image_path))
        mask = tifffile.imread(out / "test" / f"{rec.id}.tif")
        np.testing.assert_array_equal(mask, chosen.apply(prob))
        if record["chosen"] != [0.5, 0.5]:
            assert not np.array_equal(mask, b.post.apply(prob))
    print(f"imported nnU-Net: chosen {chosen} at {record['chosen_score']:.3f} on validation, the bundle's "
          f"0.5 / 0.5 at {next(r['score'] for r in record['scores'] if [r['low'], r['high']] == [0.5, 0.5]):.3f}")


def test_a_changed_nnunet_weight_file_is_refused_naming_it(tmp_path):
    """A bundle whose listed file changed is refused before anything loads (no training needed)."""
    b = tmp_path / "b"
    (b / "nnunet" / "m0").mkdir(parents=True)
    (b / "nnunet" / "m0" / "fold_0.pt").write_bytes(b"x")
    (b / "model.json").write_text(json.dumps({
        "format": "nx47-model-bundle", "format_version": 1, "kind": "nnunet", "nnunet": {"members": []},
        "search": {"low": 0.5, "high": 0.5}, "postprocess": {"closing_radius": [1, 2, 2], "min_component_voxels": 100},
        "files": {"nnunet/m0/fold_0.pt": "0" * 64}}))
    with pytest.raises(BundleError, match=str(b / "nnunet" / "m0" / "fold_0.pt")):
        load_bundle(b)


# ---------------------------------------------------------------------------
# the budget's drop order (injected seconds per window)
# ---------------------------------------------------------------------------
class _Member:
    """A stand-in nnU-Net member: windows from the tile step, 8 mirrors when mirroring."""

    kind = PredictorKind.NNUNET

    def __init__(self, name, *, tile_step=0.5, use_mirroring=True, n_folds=1):
        self.name, self.tile_step, self.use_mirroring, self.n_folds = name, tile_step, use_mirroring, n_folds

    def n_windows(self, shape):
        per_axis = {0.5: 3, 0.75: 2, 1.0: 1}[self.tile_step]
        return per_axis ** 3

    @property
    def n_mirrors(self):
        return 8 if self.use_mirroring else 1

    def with_settings(self, *, tile_step=None, use_mirroring=None):
        return _Member(self.name, tile_step=self.tile_step if tile_step is None else tile_step,
                       use_mirroring=self.use_mirroring if use_mirroring is None else use_mirroring,
                       n_folds=self.n_folds)


def _ensemble():
    return EnsemblePredictor(((_Member("a"), 0.42), (_Member("b"), 0.18), (_Member("c"), 0.28)))


@pytest.mark.parametrize("budget_s,expected", [
    (3 * 27 * 8 * 1.0, ()),  # everything fits
    (3 * 27 * 1.0, ("nnunet_mirroring",)),
    (2 * 27 * 1.0, ("nnunet_mirroring", "nnunet_members")),
    (27 * 1.0, ("nnunet_mirroring", "nnunet_members", "nnunet_members")),
    (8 * 1.0, ("nnunet_mirroring", "nnunet_members", "nnunet_members", "nnunet_tile_step")),
    (1.0, ("nnunet_mirroring", "nnunet_members", "nnunet_members", "nnunet_tile_step", "nnunet_tile_step")),
])
def test_budget_drops_mirroring_then_lowest_weight_members_then_widens_the_tile_step(budget_s, expected):
    from nx47_pipeline.nnunet.budget import fit_to_budget

    events = []
    fit = fit_to_budget(_ensemble(), [(64, 64, 64)], seconds_per_window=1.0, budget_s=budget_s,
                        on_decision=lambda d, msg, **f: events.append((str(d), msg, f)))
    assert fit.decisions == expected == tuple(e[0] for e in events)
    assert fit.fits and fit.projected_s <= budget_s
    kept = [m.name for m, _ in (fit.predictor.members if isinstance(fit.predictor, EnsemblePredictor)
                                 else [(fit.predictor, 1.0)])]
    # the lowest weight (b, 0.18) goes first, then c (0.28): the highest weight stays
    assert kept == {3: ["a", "b", "c"], 2: ["a", "c"], 1: ["a"]}[3 - expected.count("nnunet_members")]
    if "nnunet_members" in expected:
        assert "weight 0.18" in events[1][1]
    for _, _, fields in events:
        assert fields["left_s"] == budget_s and fields["seconds_per_window"] == 1.0


def test_budget_that_nothing_fits_says_so():
    from nx47_pipeline.nnunet.budget import fit_to_budget

    fit = fit_to_budget(_ensemble(), [(64, 64, 64)] * 2, seconds_per_window=10.0, budget_s=5.0)
    assert not fit.fits and fit.projected_s == 20.0
    assert fit.decisions[-1] == "nnunet_tile_step"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_chunked_nnunet_probabilities_equal_the_whole_volume_within_the_stated_tolerance(trained, tmp_path):
    """``nx47 infer`` reads each chunk with the predictor's halo: half a patch for an nnU-Net. Each core's
    probabilities then equal the whole volume's within CHUNK_TOLERANCE (docs/scale.md), where the same
    cores predicted without a halo are far off; and ``nx47 infer`` itself gives the whole volume's mask
    on all but a few voxels at the thresholds."""
    from nx47_pipeline.data.demo import make_volume
    from nx47_pipeline.run.executor import chunk_grid

    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b"),
                     "--no-mirroring"]) == 0
    b = load_bundle(tmp_path / "b")
    patch = b.predictor.model.patch_size
    assert b.predictor.halo == max(patch) // 2 == 16
    vol = make_volume((80, 80, 80), seed=11)[0]
    whole = b.predictor.predict(vol)

    def chunked(halo: int) -> np.ndarray:
        out = np.zeros(vol.shape, np.float32)
        for core in chunk_grid(vol.shape, 40):
            outer = tuple(slice(max(0, c.start - halo), min(n, c.stop + halo)) for c, n in zip(core, vol.shape))
            inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
            out[core] = b.predictor.predict(np.ascontiguousarray(vol[outer]))[inner]
        return out

    by_chunks = chunked(b.predictor.halo)
    with_halo = np.abs(by_chunks - whole)
    without = np.abs(chunked(0) - whole)
    print(f"chunked vs whole, halo {b.predictor.halo}: mean {with_halo.mean():.5f} p99 "
          f"{np.percentile(with_halo, 99):.4f} max {with_halo.max():.4f}; no halo: mean {without.mean():.5f} "
          f"p99 {np.percentile(without, 99):.4f} max {without.max():.4f}")
    assert with_halo.mean() <= CHUNK_TOLERANCE
    assert without.mean() > 2.5 * with_halo.mean()  # the halo is what makes the chunks agree

    # nx47 infer end to end, chunk 40: its chunks' probabilities are those above, and its whole-volume
    # post-processing of them gives the bundle's mask of those probabilities
    tifffile.imwrite(tmp_path / "v.tif", vol)
    assert cli_main(["infer", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "v.tif"),
                     "--out", str(tmp_path / "o"), "--chunk", "40", "--quiet"]) == 0
    import zarr

    mask = np.asarray(zarr.open_array(str(tmp_path / "o" / "mask.zarr"), mode="r"))
    assert mask.shape == vol.shape
    np.testing.assert_array_equal(mask, b.post.apply(by_chunks))
    print(f"nx47 infer mask vs the whole volume's: {np.mean(mask != b.post.apply(whole)):.4f} of the voxels "
          f"differ; whole-volume probabilities within 0.05 of the 0.5 threshold: "
          f"{np.mean(np.abs(whole - 0.5) < 0.05):.3f}")


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's tiny training may land on any of them; a loaded 2-core host
def test_nx47_infer_of_an_nnunet_bundle_on_two_dask_workers_equals_in_process(trained, tmp_path):
    """The same chunks predicted by two worker processes of a LocalCluster (each loading the bundle) give the
    in-process run's classes and mask: each chunk's windows and their order are the chunk's own, whoever
    computes it."""
    import zarr

    from nx47_pipeline.data.demo import make_volume

    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b"),
                     "--no-mirroring"]) == 0
    tifffile.imwrite(tmp_path / "v.tif", make_volume((64, 64, 64), seed=12)[0])
    common = ["infer", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "v.tif"), "--chunk", "32",
              "--quiet"]
    assert cli_main([*common, "--out", str(tmp_path / "here")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "dask"), "--scheduler", "local", "--workers", "2",
                     "--memory-limit", "2GB"]) == 0
    for name in ("classes.zarr", "mask.zarr"):
        here = np.asarray(zarr.open_array(str(tmp_path / "here" / name), mode="r"))
        there = np.asarray(zarr.open_array(str(tmp_path / "dask" / name), mode="r"))
        assert here.shape == there.shape == (64, 64, 64)
        np.testing.assert_array_equal(there, here, err_msg=f"{name}: the Dask workers' differs")
    events = [json.loads(line) for line in (tmp_path / "dask" / "journal.jsonl").read_text().splitlines()]
    workers = {e["payload"].get("worker") for e in events if e["kind"] == "PROGRESS_UPDATE"} - {"", None}
    assert workers  # the chunks were predicted by the cluster's workers, not in this process


#: Mean |chunked - whole| probability of an nnU-Net read with a halo of half its patch (measured on the
#: tiny session model, 80^3 in chunks of 40^3, three trainings: mean 0.008-0.014, max 0.22-0.50, against
#: mean 0.030-0.045 and max 0.67-0.92 without a halo; docs/scale.md). A chunk's windows are not placed
#: where the whole volume's are, and a barely trained network's output depends on where a voxel sits
#: in its window: single voxels can differ much, the map as a whole little.
CHUNK_TOLERANCE = 0.02


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kaggle_kit_with_nnunet_installs_offline_and_predicts_with_an_nnunet_bundle(trained, tmp_path):
    """``nx47 kaggle-kit --with-nnunet``: nnU-Net v2 and its dependencies as wheels (torch and torchvision
    left out: the Kaggle image has its own); in a fresh environment that has only torch and torchvision,
    the kit's own install line (no index) installs ``nx47[nnunet]`` and an nnU-Net bundle predicts as in
    this one."""
    from nx47_pipeline.cli.kaggle_kit import INSTALL_CELL

    kit = tmp_path / "kit"
    assert cli_main(["kaggle-kit", "--out", str(kit), "--with-nnunet"]) == 0
    wheels = sorted(p.name.lower() for p in (kit / "wheels").glob("*.whl"))
    for name in ("nx47-", "nnunetv2-", "dynamic_network_architectures-"):
        assert any(w.startswith(name) for w in wheels), (name, wheels)
    assert not any(w.startswith(("torch-", "torchvision-")) for w in wheels), wheels
    assert cli_main(["import-nnunet", "--results", str(trained["results"]), "--out", str(tmp_path / "b"),
                     "--no-mirroring"]) == 0
    vol = trained["volume"]
    np.save(tmp_path / "vol.npy", vol)
    here = load_bundle(tmp_path / "b").predictor.predict(vol)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # what the Kaggle image ships: torch and torchvision (here: the versions of this environment, from
    # the package index; torch the CPU build)
    from importlib import metadata

    image = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={metadata.version('torchvision')}"]
    subprocess.run([py, "-m", "pip", "install", "-q", *image], check=True, timeout=900, capture_output=True)
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NX47_", "PYTHON"))}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", NX47_KIT_DIR=str(kit))
    code = INSTALL_CELL + f"""
import numpy as np
from nx47_pipeline.model.bundle import load_bundle
p = load_bundle({str(tmp_path / 'b')!r}).predictor.predict(np.load({str(tmp_path / 'vol.npy')!r}))
np.save({str(tmp_path / 'there.npy')!r}, p)
"""
    run = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=1200, env=offline,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "installing nx47[nnunet]" in run.stdout
    np.testing.assert_allclose(np.load(tmp_path / "there.npy"), here, atol=1e-4, rtol=0)
