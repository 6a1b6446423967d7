"""``nx47 infer``: chunked segmentation of a zarr or TIFF volume with a model
bundle equals the segmentation of ``nx47 run``; in process and on a Dask
LocalCluster of 2 worker processes; resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.model.bundle import export_bundle
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.events import EventKind
from nx47_pipeline.telemetry.gaps import progress_gaps
from nx47_pipeline.telemetry.journal import read_journal, verify_journal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import small_config  # noqa: E402
from waits import wait_until  # noqa: E402

zarr = pytest.importorskip("zarr")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = root / "data"
    generate_demo_dataset(data, n_train=5, n_test=1, shape=48, seed=21)
    out = root / "run"
    result = run_pipeline(small_config(data, out, max_val_volumes=1))
    assert result.status == "ok", result.error
    bundle = export_bundle(out, root / "bundle")
    rec = discover(data).test[0]
    image = tifffile.imread(rec.image_path)
    store = root / "volume.zarr"
    arr = zarr.create_array(str(store), shape=image.shape, chunks=(16, 16, 16), dtype="uint8")
    arr[...] = image
    reference = tifffile.imread(out / "test" / f"{rec.id}.tif")
    assert reference.any()
    return bundle, store, rec.image_path, reference


def _mask(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "mask.zarr"), mode="r")[...])


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


def test_chunked_infer_in_process_equals_the_runs_mask(case, tmp_path):
    from nx47_pipeline.run.infer import infer

    bundle, store, _, reference = case
    res = infer(bundle, store, tmp_path / "o", chunk=16, console=False)
    assert res.status == "ok", res.error
    assert res.chunks == 27
    got = _mask(tmp_path / "o")
    assert got.shape == reference.shape and got.dtype == np.uint8
    assert np.mean(got != reference) <= 1e-4
    assert verify_journal(tmp_path / "o" / "journal.jsonl").ok


def test_tiff_input_gives_the_same_mask(case, tmp_path):
    from nx47_pipeline.run.infer import infer

    bundle, _, tif, reference = case
    res = infer(bundle, tif, tmp_path / "o", chunk=24, console=False)
    assert res.status == "ok", res.error
    assert np.mean(_mask(tmp_path / "o") != reference) <= 1e-4


@pytest.mark.timeout(300)
def test_dask_local_cluster_of_two_workers_gives_the_same_mask_and_events_from_both(case, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("dask_image")
    from nx47_pipeline.run.infer import infer

    bundle, store, _, reference = case
    res = infer(bundle, store, tmp_path / "o", chunk=24, scheduler="local", workers=2, console=False)
    assert res.status == "ok", res.error
    assert np.mean(_mask(tmp_path / "o") != reference) <= 1e-4
    workers = {e["payload"].get("worker") for e in _events(tmp_path / "o")
               if e["kind"] == "PROGRESS_UPDATE" and e["stage"] == "probability" and e["payload"].get("worker")}
    assert len(workers) == 2, workers
    # the Dask panel's file: both workers with their memory limit, all tasks done, closed at the end
    cluster = json.loads((tmp_path / "o" / "cluster.json").read_text())
    assert cluster["closed"] is True and cluster["scheduler"] == "local"
    assert cluster["tasks_done"] == res.chunks and cluster["tasks_in_flight"] == 0
    assert cluster["dashboard_link"].startswith("http")
    # the post-processing reports each phase's slab rounds, never silent longer than the run's progress gap
    events = read_journal(tmp_path / "o" / "journal.jsonl")
    phases = {e.payload.substep for e in events if e.kind is EventKind.PROGRESS_UPDATE and e.stage == "postprocess"}
    assert {"hysteresis: forward", "closing", "cavities: backward", "dust: backward"} <= phases, phases
    gap = {g.stage: g for g in progress_gaps(events)}["postprocess"]
    assert gap.gap_s <= 5.0, (gap.gap_s, gap.after, gap.before)


@pytest.mark.timeout(300)
def test_infer_resumes_by_chunk_after_kill_9(case, tmp_path):
    bundle, store, _, reference = case
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "nx47_pipeline.cli", "infer", "--model", str(bundle), "--input", str(store),
           "--out", str(out), "--chunk", "8", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_until(lambda: len(list((out / "chunks").glob("*.done"))) >= 20, 120, "20 finished chunks")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # a marker being written at the kill is a hidden temporary file (".<name>.done.<random>.tmp.done")
    done_before = len([p for p in (out / "chunks").glob("*.done") if not p.name.startswith(".")])
    assert 20 <= done_before < 216, done_before
    again = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"({done_before} resumed)" in again.stdout
    assert np.mean(_mask(out) != reference) <= 1e-4
    assert verify_journal(out / "journal.jsonl").ok  # the chain continues across the kill


def test_postprocess_classes_equals_postprocess_on_probabilities():
    from nx47_pipeline.model.postprocess import postprocess, postprocess_classes, threshold_classes

    rng = np.random.default_rng(4)
    from scipy import ndimage

    prob = ndimage.gaussian_filter(rng.random((30, 34, 28)), 2.0)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    a = postprocess(prob, low=0.45, high=0.6, closing_radius=(1, 2, 2), min_size=30)
    b = postprocess_classes(threshold_classes(prob, low=0.45, high=0.6), closing_radius=(1, 2, 2), min_size=30)
    assert a.any() and np.array_equal(a, b)


def test_infer_holds_the_folder_lock_while_it_runs_and_refuses_a_busy_folder(case, tmp_path):
    from nx47_pipeline.run.infer import infer
    from nx47_pipeline.run.resume import FolderBusy, read_lock_pid

    bundle, store, _, _ = case
    out = tmp_path / "o"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        (out / "run.lock").write_text(str(other.pid))
        with pytest.raises(FolderBusy):
            infer(bundle, store, out, chunk=24, console=False)
        assert not (out / "journal.jsonl").exists()  # the other run's folder is left alone
    finally:
        other.kill()
        other.wait()
    res = infer(bundle, store, out, chunk=24, console=False)  # the holder is gone: the folder is free
    assert res.status == "ok", res.error
    assert read_lock_pid(out) is None


def test_postprocess_classes_with_the_ridge_bit_equals_thin_postprocess():
    from scipy import ndimage

    from nx47_pipeline.model.postprocess import postprocess, postprocess_classes, surface_ridge, threshold_classes

    rng = np.random.default_rng(5)
    prob = ndimage.gaussian_filter(rng.random((30, 34, 28)), 2.0)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    a = postprocess(prob, low=0.45, high=0.6, closing_radius=(1, 2, 2), min_size=30, thin=True)
    ridge = surface_ridge(prob, prob > 0.45)
    b = postprocess_classes(threshold_classes(prob, low=0.45, high=0.6, ridge=ridge), closing_radius=(1, 2, 2),
                            min_size=30, thin=True)
    assert a.any() and np.array_equal(a, b)
    assert not np.array_equal(a, postprocess(prob, low=0.45, high=0.6, closing_radius=(1, 2, 2), min_size=30))


@pytest.fixture(scope="module")
def thin_case(case, tmp_path_factory):
    """The bundle with thin-surface extraction on, and its whole-volume mask."""
    import shutil

    from nx47_pipeline.model.bundle import load_bundle
    from nx47_pipeline.model.postprocess import postprocess

    bundle, store, tif, _ = case
    thin = tmp_path_factory.mktemp("thin") / "bundle"
    shutil.copytree(bundle, thin)
    manifest = json.loads((thin / "model.json").read_text())
    manifest["postprocess"]["thin"] = True
    (thin / "model.json").write_text(json.dumps(manifest))
    b = load_bundle(thin, device="cpu")
    assert b.best["thin"] is True and "thin surface" in b.summary()
    prob = b.model.predict_volume(tifffile.imread(tif))
    # the bundle's own post-processing: its chosen dust size and hole plug size (not the fallback's)
    reference = postprocess(prob, low=b.best["low"], high=b.best["high"], closing_radius=b.closing_radius,
                            min_size=b.min_size, thin=True, plug_size=b.plug_size)
    plain = postprocess(prob, low=b.best["low"], high=b.best["high"], closing_radius=b.closing_radius,
                        min_size=b.min_size, plug_size=b.plug_size)
    assert reference.any() and not np.array_equal(reference, plain)  # thinning changes this mask
    return thin, store, reference


def test_chunked_infer_with_a_thinning_bundle_equals_the_whole_volume_mask(thin_case, tmp_path):
    from nx47_pipeline.run.infer import infer

    bundle, store, reference = thin_case
    res = infer(bundle, store, tmp_path / "o", chunk=16, console=False)
    assert res.status == "ok", res.error
    assert np.array_equal(_mask(tmp_path / "o"), reference)


@pytest.mark.timeout(300)
def test_dask_infer_with_a_thinning_bundle_equals_the_whole_volume_mask(thin_case, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("dask_image")
    from nx47_pipeline.run.infer import infer

    bundle, store, reference = thin_case
    res = infer(bundle, store, tmp_path / "o", chunk=16, scheduler="local", workers=2, console=False)
    assert res.status == "ok", res.error
    assert np.array_equal(_mask(tmp_path / "o"), reference)


def test_a_bundle_rewritten_in_place_with_thinning_is_not_resumed_from_the_plain_classes(case, thin_case, tmp_path):
    import shutil

    from nx47_pipeline.run.infer import infer

    bundle, store, _, _ = case
    _, _, thin_reference = thin_case
    same = tmp_path / "bundle"
    shutil.copytree(bundle, same)
    first = infer(same, store, tmp_path / "o", chunk=24, console=False)
    assert first.status == "ok" and not np.array_equal(_mask(tmp_path / "o"), thin_reference)
    manifest = json.loads((same / "model.json").read_text())
    manifest["postprocess"]["thin"] = True
    (same / "model.json").write_text(json.dumps(manifest))
    again = infer(same, store, tmp_path / "o", chunk=24, console=False)
    assert again.status == "ok" and again.chunks_resumed == 0
    assert np.array_equal(_mask(tmp_path / "o"), thin_reference)


#: A dust size that removes a component of the case's test mask (its run keeps it).
MIN_SIZE = 2000


@pytest.fixture(scope="module")
def plug_case(case, tmp_path_factory):
    """The bundle with a chosen dust size of :data:`MIN_SIZE` and hole plugs
    up to 512 voxels, and its whole-volume mask."""
    import shutil

    from nx47_pipeline.model.bundle import load_bundle
    from nx47_pipeline.model.postprocess import postprocess

    bundle, store, tif, _ = case
    plugged = tmp_path_factory.mktemp("plug") / "bundle"
    shutil.copytree(bundle, plugged)
    manifest = json.loads((plugged / "model.json").read_text())
    manifest["postprocess"].update(min_size=MIN_SIZE, plug_size=512)
    # the base model alone (its files stay listed) at the search's thresholds: its map has holes of that
    # size to plug on this volume, the auto-context rounds' has none
    manifest["context"] = None
    search = json.loads((bundle.parent / "run" / "search" / "results.json").read_text())["best"]
    manifest["search"].update(low=search["low"], high=search["high"])
    (plugged / "model.json").write_text(json.dumps(manifest))
    b = load_bundle(plugged, device="cpu")
    assert (b.min_size, b.plug_size) == (MIN_SIZE, 512) and "holes plugged up to 512 voxels" in b.summary()
    prob = b.model.predict_volume(tifffile.imread(tif))
    kw = dict(low=b.best["low"], high=b.best["high"], closing_radius=b.closing_radius, thin=b.best["thin"])
    reference = postprocess(prob, **kw, min_size=MIN_SIZE, plug_size=512)
    assert reference.any()
    assert not np.array_equal(reference, postprocess(prob, **kw, min_size=MIN_SIZE))  # the plugs change this mask
    assert not np.array_equal(reference, postprocess(prob, **kw, min_size=b.min_component_voxels, plug_size=512))
    return plugged, store, reference


def test_chunked_infer_follows_the_bundles_dust_and_plug_sizes(plug_case, tmp_path):
    from nx47_pipeline.run.infer import infer

    bundle, store, reference = plug_case
    res = infer(bundle, store, tmp_path / "o", chunk=16, console=False)
    assert res.status == "ok", res.error
    assert np.array_equal(_mask(tmp_path / "o"), reference)


@pytest.mark.timeout(300)
def test_dask_infer_plugs_holes_across_chunks_as_the_whole_volume_does(plug_case, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("dask_image")
    from nx47_pipeline.run.infer import infer

    bundle, store, reference = plug_case
    res = infer(bundle, store, tmp_path / "o", chunk=16, scheduler="local", workers=2, console=False)
    assert res.status == "ok", res.error
    assert np.array_equal(_mask(tmp_path / "o"), reference)
    events = _events(tmp_path / "o")
    assert any("hole plugs" in e["payload"].get("message", "") for e in events if e["kind"] == "PROGRESS_UPDATE")


def test_postprocess_classes_with_plugs_equals_postprocess_on_probabilities():
    from scipy import ndimage

    from nx47_pipeline.model.postprocess import postprocess, postprocess_classes, threshold_classes

    rng = np.random.default_rng(7)
    prob = ndimage.gaussian_filter(rng.random((30, 34, 28)), 2.0)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    a = postprocess(prob, low=0.45, high=0.6, closing_radius=(1, 1, 1), min_size=30, plug_size=40)
    b = postprocess_classes(threshold_classes(prob, low=0.45, high=0.6), closing_radius=(1, 1, 1), min_size=30,
                            plug_size=40)
    assert a.any() and np.array_equal(a, b)
    assert not np.array_equal(a, postprocess(prob, low=0.45, high=0.6, closing_radius=(1, 1, 1), min_size=30))
