"""Model bundles and inference-only runs (``nx47 run --model``), under Kaggle
conditions: input mounted read-only, ``KAGGLE_KERNEL_RUN_TYPE=Batch``, output
to a writable folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.model.bundle import (FORMAT_VERSION, MANIFEST, BundleError, describe_bundle, export_bundle,
                                        load_bundle, sha256_file)
from nx47_pipeline.model.linear import LogisticModel
from nx47_pipeline.run.orchestrator import run_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import small_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRAINING = ("features", "search", "fit_prox", "unet")


def _read_only_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose files and folders cannot be written (as /kaggle/input)."""
    shutil.copytree(src, dst)
    for p in sorted(dst.rglob("*"), reverse=True) + [dst]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dst


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted((out / "test").glob("*.tif"))
            if not p.name.endswith("_prob.tif")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    data = root / "data"
    generate_demo_dataset(data, n_train=6, n_test=2, shape=40, seed=11)
    out = root / "train"
    result = run_pipeline(small_config(data, out, max_val_volumes=1))
    assert result.status == "ok", result.error
    bundle = export_bundle(out, root / "bundle")
    ro = _read_only_copy(data, root / "input")
    yield data, ro, out, bundle
    for p in [ro] + list(ro.rglob("*")):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_a_training_run_leaves_a_self_describing_bundle(trained):
    _, _, out, bundle = trained
    manifest = json.loads((out / "model" / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["files"]) >= {"model.npz"}
    assert manifest["search"]["low"] < manifest["search"]["high"]
    assert manifest["postprocess"]["min_component_voxels"] == small_config(Path("."), Path(".")).min_component_voxels
    # the thin-surface choice of the run's search travels with the bundle
    search = json.loads((out / "search" / "results.json").read_text())["best"]
    assert manifest["postprocess"]["thin"] is search["thin"]
    assert load_bundle(bundle).best["thin"] is search["thin"]
    # and so does its closing radius, one of the run's candidates
    assert manifest["postprocess"]["closing_radius"] == search["closing_radius"]
    assert search["closing_radius"] in [list(r) for r in small_config(Path("."), Path(".")).closing_radii()]
    assert load_bundle(bundle).closing_radius == tuple(search["closing_radius"])
    assert manifest["train_ids"] and manifest["val_ids"]
    assert isinstance(manifest["validation"]["mean_score"], float)
    # the export holds exactly the manifest and its files, and loads
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["model.json", *manifest["files"]])
    summary = load_bundle(bundle).summary()
    assert "linear model" in summary
    # the auto-context rounds travel with it and load as one model
    rounds = small_config(Path("."), Path(".")).context_rounds
    assert manifest["context"] == {"file": "context.json", "rounds": rounds}
    assert {f"context_{k}.npz" for k in range(1, rounds + 1)} | {"context.json"} <= set(manifest["files"])
    assert f"+ {rounds} auto-context rounds" in summary
    b = load_bundle(bundle)
    assert len(b.model.rounds) == rounds and b.predictor.halo == b.model.halo
    assert f"closing {'x'.join(str(v) for v in manifest['postprocess']['closing_radius'])}" in summary


def test_run_with_model_gives_the_training_runs_masks_on_read_only_input(trained, tmp_path, monkeypatch):
    _, ro, out, bundle = trained
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    result = run_pipeline(small_config(ro, tmp_path / "working", model_dir=str(bundle), max_val_volumes=1))
    assert result.status == "ok", result.error
    assert (tmp_path / "working" / "submission.zip").is_file()
    reference, got = _masks(out), _masks(tmp_path / "working")
    assert reference and set(got) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(got[name], reference[name])
    # the bundle's auto-context rounds predict, with the bundle's post-processing: no sweep of its own
    assert (out / "val" / "context_thresholds.json").exists()
    assert not (tmp_path / "working" / "val" / "context_thresholds.json").exists()
    stats = result.stats
    for stage in TRAINING:
        assert stats["stage_status"][stage] == "skipped"
    assert stats["stage_status"]["segment"] == "ok" and stats["stage_status"]["validate"] == "ok"
    assert stats["elapsed_s"] > 0 and "segment" in stats["stage_seconds"]  # its own time
    assert stats["model_dir"] == str(bundle)
    steps = [json.loads(line) for line in (tmp_path / "working" / "journal.jsonl").read_text().splitlines()]
    skips = {e["stage"]: e["payload"]["message"] for e in steps
             if e["kind"] == "STEP" and e["payload"]["status"] == "skipped"}
    assert skips == {s: f"model from {bundle}" for s in TRAINING}


def test_a_run_with_model_falls_back_with_the_bundles_settings_and_keeps_its_own_config(trained, tmp_path,
                                                                                        monkeypatch):
    """The bundle's closing radius and dust size reach the fallback segmentation
    as a value of the run (PostDefaults), not by replacing the run's config:
    the config is the same frozen object, and config.json the one given."""
    from nx47_pipeline.io.volumes import read_volume
    from nx47_pipeline.model.postprocess import fallback_segment
    from nx47_pipeline.run import budget, orchestrator

    data, _, _, bundle = trained
    b = load_bundle(bundle)
    config = small_config(data, tmp_path / "w", model_dir=str(bundle), max_val_volumes=1, closing_radius=(0, 0, 0),
                          min_component_voxels=b.min_component_voxels + 400)
    assert config.closing_radius != b.closing_radius
    # no model segmentation fits: every test volume gets the fallback
    monkeypatch.setattr(budget, "model_segment_need_s", lambda *a, **kw: float("inf"))
    ctx = orchestrator.make_context(config)
    result = orchestrator._execute(ctx)
    assert result.status == "ok", result.error
    assert ctx.config is config
    with pytest.raises(AttributeError, match="fixed for the run"):
        ctx.config = config.replace(closing_radius=b.closing_radius)
    assert json.loads((tmp_path / "w" / "config.json").read_text()) == config.to_dict()
    images = sorted((data / "test_images").glob("*.tif"))
    assert result.stats["counts"]["fallback_volumes"] == len(images) > 0
    differs = False
    for path in images:
        vol = read_volume(path, kind="image")
        mask = tifffile.imread(tmp_path / "w" / "test" / path.name)
        np.testing.assert_array_equal(mask, fallback_segment(vol, closing_radius=b.closing_radius,
                                                             min_size=b.min_component_voxels))
        differs |= not np.array_equal(mask, fallback_segment(vol, closing_radius=config.closing_radius,
                                                             min_size=config.min_component_voxels))
    assert differs  # the config's settings would have given other masks


def test_a_tampered_bundle_is_refused_by_file_name(trained, tmp_path):
    data, _, _, bundle = trained
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    raw = bytearray((bad / "model.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "model.npz").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"model\.npz.*sha256"):
        load_bundle(bad)
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(data),
                           "--out", str(tmp_path / "o"), "--model", str(bad), "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert str(bad / "model.npz") in proc.stderr
    assert not (tmp_path / "o" / "submission.zip").exists()
    # unknown format version, and not a bundle at all
    other = tmp_path / "v9"
    shutil.copytree(bundle, other)
    m = json.loads((other / MANIFEST).read_text())
    m["format_version"] = 9
    (other / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 9"):
        load_bundle(other)
    m["format_version"] = FORMAT_VERSION
    m["postprocess"]["thin"] = "yes"
    (other / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"model\.json: postprocess\.thin must be true or false"):
        load_bundle(other)
    del m["postprocess"]["thin"]  # a bundle from before the choice: no thinning
    (other / MANIFEST).write_text(json.dumps(m))
    assert load_bundle(other).best["thin"] is False
    with pytest.raises(BundleError, match="model.json"):
        load_bundle(tmp_path)


def test_a_bundle_trained_on_another_filter_bank_is_refused_by_file_name(trained, tmp_path):
    _, ro, _, bundle = trained
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    model = LogisticModel.load(old / "model.npz")
    keep = [i for i, n in enumerate(model.feature_names) if not n.startswith("gradcurv")]
    LogisticModel(coef=model.coef[keep], intercept=model.intercept, mean=model.mean[keep],
                  scale=model.scale[keep], feature_names=[model.feature_names[i] for i in keep],
                  scales=model.scales).save(old / "model.npz")
    m = json.loads((old / MANIFEST).read_text())
    m["files"]["model.npz"] = sha256_file(old / "model.npz")
    (old / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"model\.npz: trained on other features.*gradcurv"):
        load_bundle(old)
    # the dashboard's bundle check and `nx47 run --model` refuse it before any work, naming the file
    with pytest.raises(BundleError, match=r"model\.npz: trained on other features"):
        describe_bundle(old)
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(ro), "--out",
                           str(tmp_path / "r"), "--model", str(old), "--quiet"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "model.npz: trained on other features" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r" / "journal.jsonl").exists()


def test_export_model_command(trained, tmp_path):
    _, _, out, _ = trained
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "export-model", "--run", str(out),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "thresholds" in proc.stdout
    again = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "export-model", "--run", str(out),
                            "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.timeout(900)
def test_kaggle_kit_installs_offline_in_a_fresh_venv_and_runs_with_the_model(trained, tmp_path):
    """Exactly the Kaggle flow: build the kit, a fresh virtual environment,
    ``pip install --no-index --find-links KIT/wheels nx47`` with no package
    index reachable, then ``nx47 run --data <read-only> --out X --model BUNDLE``."""
    _, ro, out, bundle = trained
    kit = tmp_path / "kit"
    build = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "kaggle-kit", "--out", str(kit)],
                           capture_output=True, text=True, timeout=600, cwd=REPO)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = sorted(p.name for p in (kit / "wheels").glob("*.whl"))
    assert any(w.startswith("nx47-") for w in wheels)
    assert not any(w.startswith("torch-") for w in wheels)
    for dep in ("numpy", "scipy", "scikit_image", "tifffile", "connected_components_3d", "edt",
                "surface_distance"):
        assert any(w.lower().startswith(dep) for w in wheels), (dep, wheels)
    nb = json.loads((kit / "nx47-kaggle.ipynb").read_text())
    assert "--no-index" in "".join(nb["cells"][0]["source"])
    assert (kit / "README.md").is_file()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NX47_", "PYTHON"))}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", KAGGLE_KERNEL_RUN_TYPE="Batch")
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                           str(kit / "wheels"), "nx47"], capture_output=True, text=True, timeout=600,
                          env=offline, cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr[-3000:]
    work = tmp_path / "working"
    run = subprocess.run([str(venv / "bin" / "nx47"), "run", "--data", str(ro), "--out", str(work),
                          "--model", str(bundle), "--max-val-volumes", "1", "--quiet"],
                         capture_output=True, text=True, timeout=600, env=offline, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (work / "submission.zip").is_file()
    reference, got = _masks(out), _masks(work)
    for name in reference:
        np.testing.assert_array_equal(got[name], reference[name])


def test_dashboard_model_control_shows_the_bundle_or_why_it_is_refused(trained, tmp_path):
    from nx47_widgets.app import build_dashboard
    from nx47_pipeline.config import RunConfig

    _, ro, _, bundle = trained
    d = build_dashboard(RunConfig(data_root=str(ro), out_dir=str(tmp_path / "o")))
    try:
        assert "train a model now" in d.model_info.value
        d.settings.model_dir.value = str(bundle)
        assert "thresholds" in d.model_info.value and "validation score" in d.model_info.value
        assert d.current_config().model_dir == str(bundle)
        bad = tmp_path / "bad"
        shutil.copytree(bundle, bad)
        (bad / "model.npz").write_bytes(b"not a model")
        d.settings.model_dir.value = str(bad)
        assert str(bad / "model.npz") in d.model_info.value and "sha256" in d.model_info.value
    finally:
        d.close()


@pytest.mark.timeout(300)
def test_kit_notebook_runs_headless_with_model_dir_on_read_only_input(trained, tmp_path, monkeypatch):
    """The kit's notebook under papermill, as a Kaggle commit: MODEL_DIR set,
    input read-only, KAGGLE_KERNEL_RUN_TYPE=Batch; it writes submission.zip."""
    import papermill as pm

    from nx47_pipeline.cli.kaggle_kit import kit_notebook

    _, ro, out, bundle = trained
    nb_path = tmp_path / "nx47-kaggle.ipynb"
    nb_path.write_text(json.dumps(kit_notebook(REPO / "dashboard.ipynb")))
    for k in [k for k in os.environ if k.startswith(("NX47_", "VOILA_", "JPY_", "KAGGLE_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("NX47_HEARTBEAT_INTERVAL_S", "1")
    work = tmp_path / "working"
    pm.execute_notebook(str(nb_path), str(tmp_path / "executed.ipynb"), cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False, request_save_on_cell_execute=False,
                        parameters={"DATA_ROOT": str(ro), "OUT_DIR": str(work), "MODEL_DIR": str(bundle),
                                    "MAX_VAL_VOLUMES": 1})
    assert (work / "submission.zip").is_file()
    stats = json.loads((work / "stats.json").read_text())
    assert stats["status"] == "ok" and stats["model_dir"] == str(bundle)
    assert all(stats["stage_status"][s] == "skipped" for s in TRAINING)
    reference, got = _masks(out), _masks(work)
    for name in reference:
        np.testing.assert_array_equal(got[name], reference[name])


@pytest.fixture(scope="module")
def sized(trained, tmp_path_factory):
    """A training run on the same data whose grids hold one dust size (300)
    and one plug size (512), neither the run's ``min_component_voxels``
    (20) nor "no plugging": the search's choice, its masks, its bundle."""
    data = trained[0]
    root = tmp_path_factory.mktemp("sized")
    out = root / "train"
    result = run_pipeline(small_config(data, out, max_val_volumes=1, dust_size_grid=(300,), plug_size_grid=(512,)))
    assert result.status == "ok", result.error
    return data, out, export_bundle(out, root / "bundle")


def _whole_volume_masks(out: Path, folder: str, min_size: int, plug_size: int) -> dict[str, np.ndarray]:
    """The run's masks recomputed from its model with the given dust and plug sizes."""
    from nx47_pipeline.model.postprocess import postprocess, uint8_to_probability

    m = json.loads((out / "model" / MANIFEST).read_text())
    model = load_bundle(out / "model").model  # with its auto-context rounds
    stats = json.loads((out / "stats.json").read_text())
    ids = ([p.stem for p in (out / folder).glob("*.json") if not p.stem.startswith(("context_", "unet_"))]
           if folder == "val"
           else [n[:-4] for n in _masks(out)])
    images = {r["volume_id"]: r["image_path"] for r in
              (json.loads(line)["payload"] for line in (out / "journal.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "PREVIEW") if r.get("volume_id") in ids}
    out_masks = {}
    sweep = json.loads((out / "val" / "context_thresholds.json").read_text())
    for vid in ids:
        if folder == "val" and sweep["chosen"] != sweep["search_pair"]:
            # the auto-context sweep chose another pair: the validation masks were made again from the
            # maps the run kept (uint8)
            prob = uint8_to_probability(tifffile.imread(out / "val" / f"{vid}_prob.tif"))
        else:
            prob = model.predict_volume(tifffile.imread(images[vid]))
        out_masks[vid] = postprocess(prob, low=m["search"]["low"], high=m["search"]["high"],
                                     thin=m["postprocess"]["thin"],
                                     closing_radius=tuple(m["postprocess"]["closing_radius"]),
                                     min_size=min_size, plug_size=plug_size)
    assert out_masks and stats["best"]["min_size"] == m["postprocess"]["min_size"]
    return out_masks


def test_the_chosen_dust_and_plug_sizes_reach_the_masks_the_bundle_and_run_with_model(sized, tmp_path):
    data, out, bundle = sized
    search = json.loads((out / "search" / "results.json").read_text())["best"]
    assert (search["min_size"], search["plug_size"]) == (300, 512)
    manifest = json.loads((out / "model" / MANIFEST).read_text())
    post = manifest["postprocess"]
    assert (post["min_size"], post["plug_size"], post["min_component_voxels"]) == (300, 512, 20)
    b = load_bundle(bundle)
    assert (b.min_size, b.plug_size, b.best["min_size"], b.best["plug_size"]) == (300, 512, 300, 512)
    assert b.min_component_voxels == 20  # the fallback's
    assert "dust below 300 voxels removed; holes plugged up to 512 voxels" in b.summary()
    # validation and test masks are the model's maps through the chosen sizes, not the configured ones
    for folder in ("val", "test"):
        expected = _whole_volume_masks(out, folder, 300, 512)
        assert any(not np.array_equal(expected[v], _whole_volume_masks(out, folder, 20, 0)[v]) for v in expected)
        for vid, mask in expected.items():
            np.testing.assert_array_equal(tifffile.imread(out / folder / f"{vid}.tif"), mask)
    # an inference-only run follows the bundle's sizes
    result = run_pipeline(small_config(data, tmp_path / "working", model_dir=str(bundle), max_val_volumes=1))
    assert result.status == "ok", result.error
    assert (result.stats["best"]["min_size"], result.stats["best"]["plug_size"]) == (300, 512)
    reference, got = _masks(out), _masks(tmp_path / "working")
    assert reference and set(got) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(got[name], reference[name])


def test_a_bundle_without_dust_and_plug_sizes_keeps_the_runs_dust_size_and_plugs_nothing(sized, tmp_path):
    _, _, bundle = sized
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["postprocess"]["min_size"], manifest["postprocess"]["plug_size"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    b = load_bundle(old)
    assert (b.min_size, b.plug_size, b.best["min_size"], b.best["plug_size"]) == (20, 0, 20, 0)
    assert "dust below" not in b.summary() and "plug" not in b.summary()
    manifest["postprocess"]["plug_size"] = -1
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="postprocess.plug_size must be an integer >= 0"):
        load_bundle(old)
