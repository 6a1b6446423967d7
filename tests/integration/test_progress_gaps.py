"""While a stage computes, the journal never goes longer than the configured
``progress_max_gap_s`` without a PROGRESS_UPDATE of that stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.model.metric import score_volume
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.events import EventKind
from nx47_pipeline.telemetry.gaps import progress_gaps
from nx47_pipeline.telemetry.journal import read_journal

#: Tighter than the default (5 s) so that the stages of a small run last
#: several intervals: a stage that stopped reporting would exceed it.
GAP_S = 1.0


def test_no_stage_goes_longer_than_the_progress_gap_without_progress(tmp_path: Path):
    # the metric's numba kernels compile on their first call in a fresh
    # checkout (seconds, once per machine): not the pipeline's silence
    rng = np.random.default_rng(0)
    score_volume(rng.random((24, 24, 24)) > 0.6, rng.random((24, 24, 24)) > 0.6)
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=4, n_test=1, shape=64, seed=3)
    cfg = RunConfig(data_root=str(data), out_dir=str(tmp_path / "out"), use_unet=False, console=False,
                    budget_s=900.0, search_max_iter=20, fit_max_iter=40, samples_per_class=3000,
                    progress_max_gap_s=GAP_S)
    result = run_pipeline(cfg)
    assert result.status == "ok"
    events = read_journal(tmp_path / "out" / "journal.jsonl")
    gaps = {g.stage: g for g in progress_gaps(events, limit_s=cfg.progress_max_gap_s)}
    assert {"preflight", "features", "search", "fit_prox", "validate", "segment", "package"} <= set(gaps)
    # the test has teeth: the run's longest stages outlast the interval
    assert max(g.stage_s for g in gaps.values()) > 2 * GAP_S, {n: g.stage_s for n, g in gaps.items()}
    late = {name: (g.gap_s, g.after, g.before) for name, g in gaps.items() if g.gap_s > GAP_S}
    assert not late, f"stages silent for more than {GAP_S} s: {late}"
    # the heartbeat saw the same: never STALLED while the stages reported
    states = {e.payload.state for e in events if e.kind is EventKind.HEARTBEAT}
    assert "STALLED" not in states
