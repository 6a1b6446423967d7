"""Budget planner: projection from preflight rates, largest coverage that fits, deadlines."""

import dataclasses

import pytest

from nx47_pipeline.run.budget import (
    Deadlines,
    PreflightTimings,
    ceil_frac,
    largest_fit,
    load_preflight_timings,
    project_run,
    segment_reserve_s,
)
from nx47_pipeline.config import RunConfig


def _timings(**kw):
    base = dict(
        features_s_per_mvox=2.0, search_s_per_mvox=10.0, fit_s_per_iter_row=1e-6,
        validate_s_per_mvox=3.0, segment_s_per_mvox=3.0, fallback_s_per_mvox=0.2,
        package_s_per_volume=0.1, mvox_train=32.768, mvox_test=32.768,
        rows_per_volume=40000, grid_fits=4,
    )
    base.update(kw)
    return PreflightTimings(**base)


def test_projection_grows_with_coverage_and_names_every_stage():
    cfg = RunConfig()
    t = _timings()
    small = project_run(t, n_train=24, n_val=8, n_test=120, config=cfg)
    big = project_run(t, n_train=600, n_val=186, n_test=120, config=cfg)
    assert set(small.per_stage) >= {"features", "search", "fit_prox", "validate", "segment", "package"}
    assert big.total_s > small.total_s
    assert small.per_stage["segment"] == pytest.approx(big.per_stage["segment"])  # test set is fixed
    assert small.usable_s == pytest.approx(cfg.budget_s * 0.9)


def test_full_coverage_of_786_pairs_does_not_fit_nine_hours_but_capped_does():
    # rates of the order measured at 320^3 on 2 cores
    cfg = RunConfig()
    t = _timings(features_s_per_mvox=1.0, search_s_per_mvox=5.0)
    assert not project_run(t, n_train=629, n_val=157, n_test=120, config=cfg).fits
    assert project_run(t, n_train=24, n_val=8, n_test=120, config=cfg).fits


def test_largest_fit_fits_and_one_more_pair_does_not():
    cfg = RunConfig(budget_s=8 * 3600)
    t = _timings()
    n_train, n_val, projected = largest_fit(t, n_pairs=786, n_test=120, config=cfg)
    assert 0 < n_train < 786 and n_val >= 1
    assert projected <= cfg.budget_s * 0.9
    bigger = project_run(t, n_train=n_train + 2, n_val=n_val + 1, n_test=120, config=cfg)
    assert not bigger.fits


def test_largest_fit_is_monotonic_in_budget():
    t = _timings()
    sizes = [largest_fit(t, n_pairs=786, n_test=120, config=RunConfig(budget_s=b))[0]
             for b in (3600 * 6, 3600 * 8, 3600 * 12)]
    assert sizes == sorted(sizes)


def test_nothing_fits_a_tiny_budget():
    assert largest_fit(_timings(), n_pairs=786, n_test=120, config=RunConfig(budget_s=60))[:2] == (0, 0)


def test_deadlines_keep_back_the_segmentation_reserve():
    d = Deadlines(start=100.0, budget_s=1000.0, safety_margin_frac=0.1)
    d.reserve_s = segment_reserve_s(_timings(), n_test=10, mvox_test=1.0)
    assert d.hard == pytest.approx(1000.0)
    assert d.training < d.hard
    assert d.hard - d.training == pytest.approx(d.reserve_s)


def test_timings_round_trip_and_missing_file(tmp_path):
    t = _timings()
    t.save(tmp_path / "preflight" / "timings.json")
    assert load_preflight_timings(tmp_path) == t
    assert load_preflight_timings(tmp_path / "nowhere") is None


def test_ceil_five_percent():
    assert ceil_frac(786, 0.05) == 40  # the user's report: 40 preflight pairs for 786
    assert ceil_frac(32, 0.05) == 2
    assert ceil_frac(3, 0.05) == 1
    assert ceil_frac(0, 0.05) == 0


def test_the_u_net_leaves_time_to_validate_with_and_without_it():
    from nx47_pipeline.run.budget import SAFETY_FACTOR, UNetCost, validation_reserve_s
    from nx47_pipeline.unet.params import UNetParams

    t = _timings()
    cfg = RunConfig()
    linear = t.mvox_train * t.validate_s_per_mvox
    # fit_prox alone and with the U-Net, for every validation pair
    assert validation_reserve_s(t, n_val=4, config=cfg, unet=None) == pytest.approx(SAFETY_FACTOR * 4 * 2 * linear)
    cost = UNetCost(UNetParams(), seconds_per_patch_batch=2.0)
    with_unet = validation_reserve_s(t, n_val=4, config=cfg, unet=cost)
    assert with_unet > SAFETY_FACTOR * 4 * 2 * linear
    # shared by Dask workers, nothing without validation pairs or timings
    assert validation_reserve_s(t, n_val=4, config=RunConfig(scheduler="local", workers=4), unet=cost) \
        == pytest.approx(with_unet / 4)
    assert validation_reserve_s(t, n_val=0, config=cfg, unet=cost) == 0.0
    assert validation_reserve_s(None, n_val=4, config=cfg, unet=cost) == 0.0


def test_flip_tta_fits_when_its_extra_inference_takes_at_most_a_quarter_of_the_time_left():
    from nx47_pipeline.run.budget import SAFETY_FACTOR, TTA_MAX_SHARE, UNetCost, tta_fits
    from nx47_pipeline.unet.params import UNetParams

    t = _timings(mvox_train=0.9, mvox_test=0.9)
    cost = UNetCost(UNetParams(patch=48, batch=4, width=8), seconds_per_patch_batch=0.5)
    plain = cost.infer_s(0.9e6)
    fits, extra = tta_fits(cost, t, n_val=3, n_test=2, remaining_s=1e6)
    # eight mirrorings instead of one: seven more passes per volume
    assert fits and extra == pytest.approx(SAFETY_FACTOR * 5 * 7 * plain)
    assert tta_fits(cost, t, n_val=3, n_test=2, remaining_s=1.01 * extra / TTA_MAX_SHARE)[0]
    assert not tta_fits(cost, t, n_val=3, n_test=2, remaining_s=0.99 * extra / TTA_MAX_SHARE)[0]
    # more volumes cost more; nothing to size it with: off
    assert tta_fits(cost, t, n_val=30, n_test=2, remaining_s=1e6)[1] > extra
    assert tta_fits(cost, None, n_val=3, n_test=2, remaining_s=1e6)[0] is False


def test_a_thinning_post_processing_keeps_back_more_time_per_volume_than_the_preflight_measured():
    from nx47_pipeline.run import budget

    t = _timings()
    plain = budget.model_segment_need_s(t, mvox=32.8, rest_mvox=[32.8, 32.8])
    thin = budget.model_segment_need_s(t, mvox=32.8, rest_mvox=[32.8, 32.8], thin=True)
    # only the volume's own model time grows; the fallbacks kept for the rest do not
    assert thin - plain == pytest.approx(budget.SAFETY_FACTOR * 32.8 * 3.0 * (budget.THIN_SEGMENT_FACTOR - 1))
    plugged = budget.model_segment_need_s(t, mvox=32.8, rest_mvox=[32.8, 32.8], plug=True)
    assert plugged - plain == pytest.approx(budget.SAFETY_FACTOR * 32.8 * 3.0 * (budget.PLUG_SEGMENT_FACTOR - 1))


def test_the_search_work_counts_every_candidate_of_the_grids_and_the_dust_and_plug_choice():
    from nx47_pipeline.run.budget import search_units

    cfg = RunConfig()  # 2 x 2 fits, 4 thresholds, 3 radii, top 4, dust (100, 1000, 4000), plug (0, 64, 512)
    assert search_units(cfg, n_val=8) == 4 + 8 * (4 * 4 * 3 + 4) + 8 * (3 + 3 - 1)
    no_choice = cfg.replace(dust_size_grid=(100,), plug_size_grid=(0,))
    assert search_units(no_choice, n_val=8) == 4 + 8 * (4 * 4 * 3 + 4)
    assert search_units(cfg.replace(plug_size_grid=(0, 64, 512, 4096)), n_val=8) == search_units(cfg, n_val=8) + 8


def test_the_preflight_rates_are_worked_out_once_from_what_it_measured():
    from nx47_pipeline.run.preflight import Measured, TrainingMeasured

    shared = dict(mvox_train=2.0, val_mvox=4.0, n_validated=2, validate_s=8.0, test_mvox=3.0, n_test=2,
                  segment_s=12.0, fallback_s=0.6, fallback_mvox=3.0, package_s=0.4)
    training = TrainingMeasured(features_s=6.0, n_volumes=3, rows=300, search_s=10.0, fit_s=2.0, fit_iters=40,
                                grid_fits=4, fits_converged=4, final_fit_iters=7.0)
    t = Measured(**shared, training=training, unet_s_per_batch=0.5).timings(data_root="/d")
    assert (t.features_s_per_mvox, t.search_s_per_mvox, t.fit_s_per_iter_row) == pytest.approx((1.0, 2.0, 2.0 / 12000))
    assert (t.validate_s_per_mvox, t.segment_s_per_mvox, t.fallback_s_per_mvox) == pytest.approx((2.0, 2.0, 0.2))
    assert (t.package_s_per_volume, t.rows_per_volume, t.grid_fits) == (0.2, 100.0, 4)
    assert (t.search_iters_converged, t.fit_iters_converged, t.unet_s_per_batch, t.data_root) == (10.0, 7.0, 0.5, "/d")
    # a fit that ran to its cap: the real run is projected at its own cap
    capped = dataclasses.replace(training, fits_converged=3, final_fit_iters=None)
    t = Measured(**shared, training=capped).timings(data_root=None)
    assert t.search_iters_converged is None and t.fit_iters_converged is None
    # the inference chain (a run with --model): the same shared rates, training rates 0; with no
    # validation volume the segment rate stands in for validation
    inf = Measured(**{**shared, "n_validated": 0, "val_mvox": 0.0, "validate_s": 0.0}).timings(data_root=None)
    assert (inf.features_s_per_mvox, inf.search_s_per_mvox, inf.fit_s_per_iter_row, inf.grid_fits) == (0, 0, 0, 0)
    assert inf.validate_s_per_mvox == pytest.approx(12.0 / 3.0) and inf.segment_s_per_mvox == pytest.approx(2.0)


def test_an_imported_models_sweep_is_timed_by_the_inference_preflight_and_projected_in_validate():
    """A run with an nnU-Net bundle (``--model``): the preflight's sweep on its validation volume gives the
    rate, and the sweep on the searched validation volumes goes to validate; without it (a linear bundle)
    the inference run's validate holds no sweep."""
    from nx47_pipeline.run.budget import plan_run, sweep_s
    from nx47_pipeline.run.preflight import Measured

    shared = dict(mvox_train=2.0, val_mvox=2.0, n_validated=1, validate_s=8.0, test_mvox=3.0, n_test=1,
                  segment_s=12.0, fallback_s=0.6, fallback_mvox=3.0, package_s=0.4)
    t = Measured(**shared, sweep_s=10.0, sweep_mvox=2.0).timings(data_root=None)
    assert t.context_sweep_s_per_mvox == pytest.approx(5.0)
    assert Measured(**shared).timings(data_root=None).context_sweep_s_per_mvox == 0.0
    cfg = RunConfig(search_max_val_volumes=8, model_dir="/bundle")
    a = project_run(t, n_train=0, n_val=20, n_test=10, config=cfg, model_sweep=True)
    b = project_run(t, n_train=0, n_val=20, n_test=10, config=cfg)
    assert a.per_stage["validate"] - b.per_stage["validate"] == pytest.approx(8 * 2.0 * 5.0)
    assert sweep_s(t, n_val=20, config=cfg) == pytest.approx(80.0) and sweep_s(None, n_val=20, config=cfg) == 0.0
    plan = plan_run(t, n_train=0, n_val=20, n_test=10, mvox_test=3.0, config=cfg, model_sweep=True)
    assert plan.projected_s["validate"] == pytest.approx(a.per_stage["validate"])


def test_the_auto_context_rounds_are_projected_in_fit_prox_and_validate():
    """Their fit on at most context_max_volumes training volumes goes to fit_prox,
    their threshold sweep on the searched validation volumes to validate;
    rounds off (or fewer than 2 training volumes) cost nothing."""
    t = _timings(context_s_per_mvox=2.0, context_sweep_s_per_mvox=5.0)
    on = RunConfig(context_rounds=2, context_max_volumes=12, search_max_val_volumes=8)
    off = dataclasses.replace(on, context_rounds=0)
    a = project_run(t, n_train=600, n_val=150, n_test=120, config=on)
    b = project_run(t, n_train=600, n_val=150, n_test=120, config=off)
    assert a.per_stage["fit_prox"] - b.per_stage["fit_prox"] == pytest.approx(12 * t.mvox_train * 2.0)
    assert a.per_stage["validate"] - b.per_stage["validate"] == pytest.approx(8 * t.mvox_train * 5.0)
    one = project_run(t, n_train=1, n_val=150, n_test=120, config=on)
    assert one.per_stage["fit_prox"] == pytest.approx(
        project_run(t, n_train=1, n_val=150, n_test=120, config=off).per_stage["fit_prox"])
