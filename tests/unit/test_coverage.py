"""Coverage selection: caps, audit numbers, scroll-aware seeded split, env."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import coverage_audit, plan_counts, select_coverage
from nx47_pipeline.data.discovery import VolumeRecord, discover

#: Volumes per scroll in the competition's train.csv (806 rows) less the 20
#: rows without files (taken from the largest scroll here): 786 pairs.
REAL_SCROLLS = {"34117": 362, "35360": 176, "26010": 130, "26002": 88, "44430": 17, "53997": 13}


def _records(scroll_sizes: dict[str | None, int], start: int = 1_000_000) -> list[VolumeRecord]:
    recs, n = [], start
    for scroll, count in scroll_sizes.items():
        for _ in range(count):
            recs.append(VolumeRecord(
                id=str(n), image_path=Path(f"/d/train_images/{n}.tif"),
                label_path=Path(f"/d/train_labels/{n}.tif"), shape=(320, 320, 320),
                scroll_id=scroll, split="train",
            ))
            n += 7919
    return recs


@pytest.fixture(scope="module")
def real_like():
    recs = _records(REAL_SCROLLS)
    assert len(recs) == 786
    return recs


def test_default_caps_on_786_pairs(real_like):
    sel = select_coverage(real_like)
    a = sel.audit
    assert (len(sel.train), len(sel.val)) == (24, 8)
    assert a["pair_count_discovered"] == 786
    assert a["pair_count_selected_for_training"] == 32
    assert a["coverage_pct_selected_vs_discovered"] == 4.07
    assert (a["max_train_volumes"], a["max_val_volumes"], a["n_train"], a["n_val"]) == (24, 8, 24, 8)
    assert a["scroll_aware"] is True
    assert not set(a["train_scrolls"]) & set(a["val_scrolls"])
    assert {r.scroll_id for r in sel.val} == set(a["val_scrolls"])
    assert sel.warnings == []


def test_all_pairs_when_caps_are_zero(real_like):
    sel = select_coverage(real_like, max_train_volumes=0, max_val_volumes=0)
    a = sel.audit
    assert a["coverage_pct_selected_vs_discovered"] == 100.0
    assert a["pair_count_selected_for_training"] == 786
    assert {r.id for r in sel.train} | {r.id for r in sel.val} == {r.id for r in real_like}
    assert not {r.id for r in sel.train} & {r.id for r in sel.val}
    assert 0.15 <= len(sel.val) / 786 <= 0.25  # about 80/20 with whole scrolls
    assert not {r.scroll_id for r in sel.train} & {r.scroll_id for r in sel.val}


def test_one_side_all():
    recs = _records({"a": 30, "b": 12, "c": 5})
    sel = select_coverage(recs, max_train_volumes=0, max_val_volumes=4)
    assert len(sel.val) == 4
    assert len(sel.train) == 47 - 5  # every pair outside the held-out scroll
    assert sel.audit["val_scrolls"] == ["c"]  # the smallest scroll that fills val
    sel = select_coverage(recs, max_train_volumes=10, max_val_volumes=0)
    assert len(sel.train) == 10
    assert {r.scroll_id for r in sel.val} == set(sel.audit["val_scrolls"])
    assert len(sel.val) == sum(1 for r in recs if r.scroll_id in sel.audit["val_scrolls"])


def test_coverage_audit_arithmetic():
    a = coverage_audit(786, 24, 8, max_train_volumes=24, max_val_volumes=8)
    assert a["coverage_pct_selected_vs_discovered"] == 4.07
    assert a["pair_count_selected_for_training"] == 32
    assert coverage_audit(786, 629, 157, max_train_volumes=0, max_val_volumes=0)[
        "coverage_pct_selected_vs_discovered"] == 100.0
    assert coverage_audit(0, 0, 0, max_train_volumes=24, max_val_volumes=8)[
        "coverage_pct_selected_vs_discovered"] == 0.0
    keys = set(select_coverage(_records({"a": 3, "b": 3})).audit)
    assert set(a) == keys


@pytest.mark.parametrize(
    "n, caps, expected",
    [
        (786, (24, 8), (24, 8)),
        (786, (0, 0), (629, 157)),
        (786, (0, 8), (778, 8)),
        (786, (24, 0), (24, 762)),
        (6, (24, 8), (4, 2)),
        (2, (24, 8), (1, 1)),
        (2, (0, 0), (1, 1)),
        (1, (24, 8), (1, 0)),
        (0, (24, 8), (0, 0)),
        (40, (30, 30), (20, 20)),
    ],
)
def test_plan_counts(n, caps, expected):
    assert plan_counts(n, max_train_volumes=caps[0], max_val_volumes=caps[1]) == expected


def test_plan_counts_matches_selection_without_scrolls():
    for n in (2, 5, 33, 100):
        recs = _records({None: n})
        for caps in ((24, 8), (0, 0), (3, 0), (0, 3), (1, 1)):
            sel = select_coverage(recs, max_train_volumes=caps[0], max_val_volumes=caps[1])
            assert (len(sel.train), len(sel.val)) == plan_counts(
                n, max_train_volumes=caps[0], max_val_volumes=caps[1])


def test_bad_caps_are_named():
    with pytest.raises(ValueError, match="max_train_volumes.*-1"):
        plan_counts(10, max_train_volumes=-1, max_val_volumes=8)
    with pytest.raises(ValueError, match="max_val_volumes"):
        select_coverage([], max_val_volumes=-3)


def test_deterministic_and_order_independent(real_like):
    a = select_coverage(real_like, seed=3)
    shuffled = list(real_like)
    random.Random(1).shuffle(shuffled)
    b = select_coverage(shuffled, seed=3)
    assert a.train_ids == b.train_ids and a.val_ids == b.val_ids and a.audit == b.audit
    c = select_coverage(real_like, seed=4)
    assert c.train_ids != a.train_ids  # the seed matters
    assert a.train_ids == sorted(a.train_ids, key=int)


def test_raising_a_cap_extends_the_selection(real_like):
    small = select_coverage(real_like, max_train_volumes=24, max_val_volumes=8)
    big = select_coverage(real_like, max_train_volumes=48, max_val_volumes=8)
    assert small.audit["val_scrolls"] == big.audit["val_scrolls"]
    assert set(small.train_ids) <= set(big.train_ids)


def test_without_scroll_ids_split_per_volume_with_warning():
    sel = select_coverage(_records({None: 20}), max_train_volumes=10, max_val_volumes=4)
    assert (len(sel.train), len(sel.val)) == (10, 4)
    assert sel.audit["scroll_aware"] is False
    assert any("scroll ids unknown" in w for w in sel.warnings)
    one = select_coverage(_records({"26002": 10}), max_train_volumes=5, max_val_volumes=2)
    assert one.audit["scroll_aware"] is False
    assert any("26002" in w and "one scroll" in w for w in one.warnings)


def test_unknown_scrolls_stay_on_train_side():
    recs = _records({"a": 6, "b": 6}) + _records({None: 4}, start=9_000_000)
    sel = select_coverage(recs, max_train_volumes=0, max_val_volumes=0)
    assert all(r.scroll_id is not None for r in sel.val)
    assert sum(r.scroll_id is None for r in sel.train) == 4
    assert any("no scroll id" in w for w in sel.warnings)


def test_small_scroll_shortfall_is_reported():
    recs = _records({"a": 20, "b": 2})
    sel = select_coverage(recs, max_train_volumes=10, max_val_volumes=5)
    # holding out "a" would leave 2 train pairs: "b" (2 val pairs) is closer
    assert sel.audit["val_scrolls"] == ["b"]
    assert (len(sel.train), len(sel.val)) == (10, 2)
    assert any("10 train / 2 val instead of 10 / 5" in w for w in sel.warnings)


def test_duplicate_ids_rejected():
    recs = _records({"a": 2})
    with pytest.raises(ValueError, match="same id"):
        select_coverage(recs + recs[:1])


def test_demo_selection_is_scroll_aware(demo_root):
    inv = discover(demo_root)
    sel = select_coverage(inv.pairs)
    assert len(sel.train) >= 1 and len(sel.val) >= 1
    assert sel.audit["scroll_aware"] is True
    assert not {r.scroll_id for r in sel.train} & {r.scroll_id for r in sel.val}


# --- environment overrides (implemented in config.py) ---------------------
def test_env_overrides_new_and_legacy_names():
    cfg = RunConfig.from_env({})
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (24, 8)
    cfg = RunConfig.from_env({"NX47_MAX_TRAIN_VOLUMES": "48", "NX47_MAX_VAL_VOLUMES": "0"})
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (48, 0)
    cfg = RunConfig.from_env({"V138_MAX_TRAIN_VOLUMES": "0", "V138_MAX_VAL_VOLUMES": "12"})
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (0, 12)
    # the NX47_ name wins over the legacy one, explicit keywords over both
    env = {"NX47_MAX_TRAIN_VOLUMES": "10", "V138_MAX_TRAIN_VOLUMES": "99"}
    assert RunConfig.from_env(env).max_train_volumes == 10
    assert RunConfig.from_env(env, max_train_volumes=5).max_train_volumes == 5
    with pytest.raises(ValueError, match="V138_MAX_VAL_VOLUMES"):
        RunConfig.from_env({"V138_MAX_VAL_VOLUMES": "eight"})
    with pytest.raises(ValueError, match="max_val_volumes"):
        RunConfig.from_env({"NX47_MAX_VAL_VOLUMES": "-1"})


def test_env_caps_drive_the_audit(real_like):
    cfg = RunConfig.from_env({"V138_MAX_TRAIN_VOLUMES": "0", "V138_MAX_VAL_VOLUMES": "0"})
    sel = select_coverage(real_like, max_train_volumes=cfg.max_train_volumes,
                          max_val_volumes=cfg.max_val_volumes, seed=cfg.seed)
    assert sel.audit["coverage_pct_selected_vs_discovered"] == 100.0
