"""An ``nx47 infer`` output folder opens like a run: the runs page lists it
(kind infer), the page replays its progress, log and outcome, and the slice
viewer shows the input and ``mask.zarr``, read one slice at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.model.bundle import export_bundle
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import ConfigPayload, EventKind, ProgressPayload, RunStartPayload
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_widgets import render
from nx47_widgets.app import Dashboard
from nx47_widgets.render import SliceRequest, VolumeCache, read_slices, render_slice
from nx47_widgets.state.outcome import Outcome
from nx47_widgets.state.runs import INFER, RUN, scan_runs
from nx47_widgets.views.runs import runs_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import small_config  # noqa: E402

zarr = pytest.importorskip("zarr")
REPO = Path(__file__).resolve().parents[2]
Z = 20


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small run, its bundle, a zarr input, and a real ``nx47 infer`` folder under ``runs/``."""
    root = tmp_path_factory.mktemp("infer-dash")
    data = root / "data"
    generate_demo_dataset(data, n_train=5, n_test=1, shape=48, seed=21)
    runs = root / "runs"
    result = run_pipeline(small_config(data, runs / "train", max_val_volumes=1))
    assert result.status == "ok", result.error
    bundle = export_bundle(runs / "train", root / "bundle")
    rec = discover(data).test[0]
    image = tifffile.imread(rec.image_path)
    store = root / "volume.zarr"
    zarr.create_array(str(store), shape=image.shape, chunks=(16, 16, 16), dtype="uint8")[...] = image
    out = runs / "inf"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "infer", "--model", str(bundle),
                           "--input", str(store), "--out", str(out), "--chunk", "16", "--quiet"],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"root": root, "runs": runs, "out": out, "store": store}


class Counting:
    """A lazily opened volume that records what each read returned."""

    def __init__(self, arr, log):
        self.arr, self.log = arr, log
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, sel):
        out = self.arr[sel]
        self.log.append(int(np.size(out)))
        return out


def test_the_runs_page_lists_an_infer_folder_with_its_kind_input_and_outcome(case):
    found = {s.folder.name: s for s in scan_runs(case["runs"])}
    assert set(found) == {"train", "inf"}
    inf = found["inf"]
    assert inf.kind == INFER and found["train"].kind == RUN
    assert inf.verdict.outcome is Outcome.OK and inf.duration_s is not None
    assert inf.infer["shape"] == [48, 48, 48] and inf.infer["input"] == str(case["store"])
    assert not (case["out"] / "run.lock").exists()  # released at the end
    html = runs_table(list(found.values()), links=True)
    assert "data-kind='infer'" in html and "volume.zarr 48×48×48" in html


def test_opening_an_infer_folder_replays_it_and_the_viewer_reads_one_slice_of_input_and_mask(
        case, monkeypatch):
    out, store = case["out"], case["store"]
    d = Dashboard(RunConfig(data_root=str(case["root"] / "none"), out_dir=str(out)), start_pump=False)
    try:
        assert d.session.folder == out.resolve()
        assert d.wait(60)
        st = d.state
        assert st.results.verdict.outcome is Outcome.OK and st.results.command == "infer"
        assert st.progress.bars["global"].value == 1.0
        assert any(e.kind == "EXEC_COMPLETE" for e in st.log.entries)
        card = d.panels.results.html.value
        assert "mask: <code class='nx47-submission'>" in card and "no validation score" not in card
        assert d.panels.results.download.layout.display == "none"  # a zarr folder is not downloaded
        assert not d.panels.cluster.shown  # in process: no cluster.json

        # the viewer: the input, with mask.zarr as the prediction
        pv = d.panels.preview
        assert pv.state.order == ["infer/volume.zarr"]
        p = pv.state.current
        assert p.image_path == str(store) and p.pred_path == str(out / "mask.zarr")
        assert not pv.overlays["pred"].disabled and pv.overlays["label"].disabled
        pv.state.select(axis="z", index=Z)
        req = pv.make_request()
        assert req.pred == str(out / "mask.zarr") and req.index == Z

        reads: list[int] = []
        real = render.open_volume
        here = threading.get_ident()  # the panel's own renderer thread may still be reading its slice
        monkeypatch.setattr(render, "open_volume",
                            lambda path: Counting(real(path), reads) if threading.get_ident() == here else real(path))
        cache = VolumeCache()
        img, label, pred, prob = read_slices(req, cache)
        mask = zarr.open_array(str(out / "mask.zarr"), mode="r")
        assert np.array_equal(pred, mask[Z] != 0) and pred.any()
        assert np.array_equal(img, zarr.open_array(str(store), mode="r")[Z])
        assert label is None and prob is None
        assert reads == [48 * 48, 48 * 48] and cache.loads == 0  # one slice each, never the volume
        y = read_slices(SliceRequest(image=req.image, axis="y", index=7, pred=req.pred), cache)[2]
        assert np.array_equal(y, mask[:, 7] != 0) and reads[-1] == 48 * 48
        assert render_slice(req, cache=cache).startswith(b"\x89PNG")
    finally:
        d.close()


def test_a_live_infer_folder_reads_running_and_shows_its_input_before_the_mask(case, tmp_path):
    out = tmp_path / "live"
    out.mkdir()
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="i", out_dir=str(out), pid=os.getpid()))
    # the command ran elsewhere with a relative input: infer_key.json has it resolved
    (out / "infer_key.json").write_text(json.dumps({"shape": [48, 48, 48], "chunk": 16, "bundle": "b",
                                                    "input": str(case["store"])}))
    bus.publish(EventKind.CONFIG, ConfigPayload(config={"command": "infer", "input": "volume.zarr",
                                                        "shape": [48, 48, 48], "chunk": 16}))
    bus.publish(EventKind.PROGRESS_UPDATE, ProgressPayload(step="probability", step_index=0, step_count=2,
                                                           step_done=5, step_total=27, global_=0.15,
                                                           eta_s=40.0))
    bus.close()
    holder = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    (out / "run.lock").write_text(str(holder.pid))
    try:
        [s] = scan_runs(out)
        assert s.kind == INFER and s.running
        d = Dashboard(RunConfig(data_root=str(tmp_path / "none"), out_dir=str(out)), start_pump=False)
        try:
            d.pump.pump_once()
            assert d.running and not d.state.ended
            assert "(chunk rate)" in d.state.progress.bars["global"].text
            pv = d.panels.preview
            p = pv.state.current
            assert p.image_path == str(case["store"]) and p.pred_path is None
            assert pv.overlays["pred"].disabled and "no mask yet" in pv.overlay_note.value
        finally:
            d.close()
    finally:
        holder.kill()
        holder.wait()
