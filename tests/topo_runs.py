"""A finished run folder whose validation volumes carry known TopoScore parts,
for the QA viewer's "TopoScore by dimension" table (in-process and browser tests).

Three validation volumes (masks in ``val/``, images and labels in a tiny
generated data root):

* ``A``: its record in ``val/<A>.json`` next to its mask and in the run's
  statistics; dimension 2 undefined (no cavity in either mask);
* ``B``: its record only in the run's statistics (no ``.json`` next to the mask);
* ``C``: an older run's record (score and its three parts only): "not recorded".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.volumes import read_volume, write_volume
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import (
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    PreviewPayload,
    RunStartPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink

METHOD = "betti matching (exact)"


def _topo(f1):
    w = (0.34, 0.33, 0.33)
    defined = [k for k in range(3) if f1[k] is not None]
    return sum(w[k] * f1[k] for k in defined) / sum(w[k] for k in defined) if defined else 1.0


def records() -> list[dict]:
    """The per-volume records of A, B and C (in that order)."""
    f1_a = [2 * 3 / (5 + 4), 2 * 1 / (2 + 3), None]
    a = {"score": 0.61, "surface_dice": 0.72, "voi": 0.55, "topo": _topo(f1_a),
         "betti_pred": [5, 2, 0], "betti_gt": [4, 3, 0], "topo_matched": [3, 1, 0],
         "topo_f1": f1_a, "topo_method": METHOD}
    f1_b = [1.0, 0.5 / (1 + 0.5), 2 * 1 / (1 + 2)]
    b = {"score": 0.74, "surface_dice": 0.80, "voi": 0.70, "topo": _topo(f1_b),
         "betti_pred": [2, 1, 1], "betti_gt": [2, 0, 2], "topo_matched": [2, 0, 1],
         "topo_f1": f1_b, "topo_method": METHOD}
    c = {"score": 0.42, "surface_dice": 0.50, "voi": 0.45, "topo": 0.30}
    return [a, b, c]


def make_topo_run(base: Path) -> tuple[Path, Path, list[str]]:
    """A finished run folder ``base/run`` (data root ``base/data``).

    Returns
    -------
    (data_root, out, ids) : the ids of A, B and C.
    """
    data = base / "data"
    generate_demo_dataset(data, n_train=3, n_test=1, shape=24, seed=11)
    pairs = discover(data).pairs[:3]
    out = base / "run"
    ids = [p.id for p in pairs]
    recs = records()
    events = [(EventKind.RUN_START, RunStartPayload(run_id="topo", out_dir=str(out), pid=1))]
    for pair, rec in zip(pairs, recs):
        lab = read_volume(pair.label_path, kind="label")
        write_volume(out / "val" / f"{pair.id}.tif", (lab == 1).astype(np.uint8))
        write_volume(out / "val" / f"{pair.id}_prob.tif", (lab == 1).astype(np.uint8) * 200)
        events.append((EventKind.PREVIEW, PreviewPayload(
            volume_id=pair.id, split="val", shape=list(lab.shape), image_path=str(pair.image_path),
            label_path=str(pair.label_path), pred_path=f"val/{pair.id}.tif",
            prob_path=f"val/{pair.id}_prob.tif", score=rec["score"])))
    write_json(out / "val" / f"{ids[0]}.json", recs[0])  # A: next to its mask
    write_json(out / "val" / f"{ids[2]}.json", recs[2])  # C: an older run's record
    stats = {"status": "ok", "validation": {"mean_score": float(np.mean([r["score"] for r in recs])),
                                            "per_volume": dict(zip(ids, recs))}}
    events += [(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats=stats)),
               (EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=3.0))]
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    for kind, payload in events:
        bus.publish(kind, payload)
    bus.close()
    write_json(out / "stats.json", stats)
    return data, out, ids
