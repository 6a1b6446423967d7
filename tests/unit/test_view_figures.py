"""Charts with axes that fit the data, the worst volume on top and legible text;
the run header's numbers from a run's events."""

from __future__ import annotations

import io

import pytest
from PIL import Image


from nx47_pipeline.telemetry.events import (
    BudgetDecision,
    BudgetPayload,
    Event,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    MetricPayload,
    RunStartPayload,
)

from nx47_widgets.state import DashboardState
from nx47_widgets.state.header import header_info
from nx47_widgets.views.header import header_html
from nx47_widgets.views.mpl import FONT_PX, chart_figure, figure_png, snapshot


def ev(kind, payload, *, stage="", t=0.0, ts=1000.0, seq=0):
    return Event(seq=seq, ts=ts, t=t, kind=kind, stage=stage, payload=payload)


def _metric(name, value, step, stage="fit_prox"):
    return ev(EventKind.METRIC, MetricPayload(name=name, value=value, step=step), stage=stage)


def test_a_single_fit_prox_point_gets_a_linear_axis_around_it():
    st = DashboardState()
    st.apply(_metric("fit_prox_objective", 1.0, 0))
    ax = chart_figure(snapshot(st.charts)).axes[0]
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "linear" and lo < 1.0 < hi and 0.15 <= hi - lo <= 0.3  # ±10 %, not 0.96-1.04
    assert ax.get_xlim() == (-1.0, 1.0) and any("1" in t.get_text() for t in ax.texts)


def test_objective_axes_fit_the_data_log_only_over_a_decade():
    st = DashboardState()
    for i, v in enumerate((2.0, 1.9, 1.85, 1.84)):
        st.apply(_metric("fit_prox_objective", v, i))
    ax = chart_figure(snapshot(st.charts)).axes[0]
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "linear" and 1.80 < lo < 1.84 and 2.0 < hi < 2.04
    st = DashboardState()
    for i, v in enumerate((100.0, 10.0, 1.0, 0.5)):
        st.apply(_metric("fit_prox_objective", v, i))
    assert chart_figure(snapshot(st.charts)).axes[0].get_yscale() == "log"


def test_validation_bars_draw_the_worst_volume_at_the_top():
    st = DashboardState()
    for i, (vid, score) in enumerate((("good", 0.9), ("worst", 0.2), ("middle", 0.5))):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="val_score", value=score, step=i,
                                                    extra={"volume_id": vid}), stage="validate"))
    ax = next(a for a in chart_figure(snapshot(st.charts)).axes if a.get_title().startswith("validation"))
    ax.figure.canvas.draw()
    # the label drawn highest on the figure (largest display y) is the worst volume
    top = max(ax.get_yticklabels(), key=lambda t: t.get_window_extent().y0)
    assert top.get_text() == "worst" and ax.yaxis_inverted()


@pytest.mark.parametrize("width,dpr", [(800, 1.0), (958, 1.0), (780, 2.0)])
def test_the_png_has_the_displayed_size_times_the_ratio_and_text_of_10_px_or_more(width, dpr):
    st = DashboardState()
    st.apply(_metric("fit_prox_objective", 1.0, 0))
    fig = chart_figure(snapshot(st.charts), width, dpr)
    size = Image.open(io.BytesIO(figure_png(fig))).size
    assert abs(size[0] - width * dpr) <= 1
    # one point per CSS pixel: font sizes are CSS pixels
    assert fig.dpi == pytest.approx(72 * dpr) and min(FONT_PX.values()) >= 10
    texts = [t for ax in fig.axes for t in (ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts)
             if t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= 10


def test_the_header_of_a_running_then_finished_run():
    st = DashboardState(clock=lambda: 1100.0)
    st.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/x/run", pid=1), ts=1000.0))
    st.apply(ev(EventKind.BUDGET, BudgetPayload(decision=BudgetDecision.PROJECTION, message="p",
                                                projected_s=300.0, extra={"per_stage": {"search": 300.0}}),
                stage="budget", ts=1001.0))
    info = header_info(st, now=1100.0)
    assert info.state == "running" and info.elapsed_s == 100.0 and info.eta_s == 300.0
    assert info.score is None and info.fallback is None
    html = header_html(info)
    assert "data-state='running'" in html and "data-elapsed='100.000'" in html and "data-eta='300.000'" in html
    st.apply(ev(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats={
        "validation": {"mean_score": 0.5, "per_volume": {"a": {}, "b": {}}},
        "counts": {"test": 3, "fallback_volumes": 0}}), ts=1200.0))
    st.apply(ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=200.0), ts=1200.0))
    info = header_info(st, now=5000.0)
    assert (info.state, info.elapsed_s, info.eta_s, info.score, info.n_val, info.fallback, info.n_test) == \
        ("ok", 200.0, 0.0, 0.5, 2, 0, 3)
    assert "0.5000 (mean of 2)" in header_html(info) and "0 of 3" in header_html(info)
    empty = header_info(DashboardState(), now=1.0)
    assert empty.state == "no run" and empty.elapsed_s is None


def test_without_ipycanvas_the_panels_show_the_pngs(monkeypatch):
    """A bare environment (no dashboard extra, e.g. a Kaggle image) still shows the slice."""
    from nx47_widgets.views import canvas as canvas_mod

    monkeypatch.setattr(canvas_mod, "HAS_CANVAS", False)
    sc = canvas_mod.SliceCanvas()
    buf = io.BytesIO()
    Image.new("RGB", (10, 8)).save(buf, format="PNG")
    sc.show([("image", buf.getvalue()), ("label", buf.getvalue())], (10, 8))
    shown = [p for p in sc.panels if p.widget.layout.display != "none"]
    assert len(shown) == 2 and all(p.canvas is None and p.source in p.widget.children for p in shown)
    assert shown[0].source.value == buf.getvalue() and "label" in shown[1].title.value
