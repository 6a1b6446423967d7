"""The QA viewer's "TopoScore by dimension" table: the selected validation
volume's matched / predicted / labelled features per homology dimension, what
is spurious and missed, F1 ("—" where undefined), the weights and what each
dimension takes off topo; another volume selected updates it; a record
without these keys (an older run) says "not recorded"; the results card's
per-volume table gets compact matched/predicted/labelled cells."""

from __future__ import annotations

import re

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.io.jsonio import write_json
from nx47_widgets.app import Dashboard
from nx47_widgets.state.topo import topo_breakdown
from nx47_widgets.views.topo import topo_html

from topo_runs import METHOD, make_topo_run, records


def rows(html: str) -> dict[int, list[str]]:
    """The table's cells by dimension, as text (tags dropped)."""
    out = {}
    for dim, body in re.findall(r"<tr data-dim='(\d)'>(.*?)</tr>", html):
        out[int(dim)] = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_topo_run(tmp_path_factory.mktemp("topo"))


@pytest.fixture()
def dash(run):
    data, out, ids = run
    d = Dashboard(RunConfig(data_root=str(data), out_dir=str(out)), start_pump=False)
    d.pump.pump_once()
    yield d, out, ids
    d.close()


def select(d: Dashboard, key: str) -> str:
    d.panels.preview.volume.value = key  # as the user picks it in the viewer's Volume list
    assert d.state.preview.volume == key
    return d.panels.preview.topo.widget.value


def test_the_selected_volume_shows_its_counts_per_dimension(dash):
    d, out, (a, b, c) = dash
    html = select(d, f"val/{a}")
    assert d.panels.preview.topo.widget.layout.display == ""
    assert f"data-volume='{a}'" in html and "data-recorded='1'" in html
    assert "TopoScore by dimension" in html
    r = rows(html)
    # dimension, matched, predicted, labelled, spurious, missed, F1, weight, topo lost
    assert r[0] == ["0 components", "3", "5", "4", "2", "1", "0.667", "0.51", "0.169"]
    assert r[1] == ["1 tunnels", "1", "2", "3", "1", "2", "0.400", "0.49", "0.296"]
    assert r[2] == ["2 cavities", "0", "0", "0", "0", "0", "—", "—", "—"]
    # the undefined F1 says why, in a tooltip and under the table
    assert "no dimension-2 feature (cavities) in either the prediction or the label" in html
    assert "F1 undefined: no feature of that dimension in either mask" in html
    # topo, its method, where the numbers come from; the dimension that costs most
    rec = records()[0]
    assert f"topo <b class='nx47-topo-value'>{rec['topo']:.3f}</b>" in html
    assert f"method: {METHOD}" in html and f"from val/{a}.json" in html
    assert "most topology is lost in dimension 1 (tunnels), 0.296 of topo" in html
    assert "2 of 3 labelled tunnels missed" in html and "1 of 2 predicted tunnels spurious" in html
    # lost parts add up to 1 - topo: no inconsistency reported
    assert "the parts give topo" not in html


def test_selecting_another_volume_updates_the_table(dash):
    d, out, (a, b, c) = dash
    select(d, f"val/{a}")
    html = select(d, f"val/{b}")  # B's record is only in the run's statistics
    assert f"data-volume='{b}'" in html and "data-recorded='1'" in html
    r = rows(html)
    assert r[0] == ["0 components", "2", "2", "2", "0", "0", "1.000", "0.34", "0.000"]
    assert r[1] == ["1 tunnels", "0", "1", "0", "1", "0", "0.333", "0.33", "0.220"]
    assert r[2] == ["2 cavities", "1", "1", "2", "0", "1", "0.667", "0.33", "0.110"]
    assert "stats.json" in html and "F1 undefined" not in html
    assert "no labelled tunnels: F1 = 0.5 / (predicted + 0.5)" in html
    # the viewer's keys move the table along too
    d.panels.preview.keys["prev_volume"].click()
    assert f"data-volume='{a}'" in d.panels.preview.topo.widget.value


def test_a_record_without_the_parts_says_not_recorded(dash):
    d, out, (a, b, c) = dash
    html = select(d, f"val/{c}")
    assert "data-recorded='0'" in html and "<table" not in html
    assert "TopoScore by dimension</b>: not recorded" in html
    assert "topo 0.300" in html and "no per-dimension counts" in html
    assert "method: not recorded" in html


def test_a_volume_without_any_record_and_a_new_record_on_disk(dash):
    d, out, (a, b, c) = dash
    st = d.state.scores
    st.per_volume.pop(c)
    (out / "val" / f"{c}.json").unlink()
    try:
        d.panels.preview.render(d.state)
        html = select(d, f"val/{c}")
        assert "not recorded — no validation scores for volume" in html
        # the validate stage writes the volume's record: the next render reads it
        write_json(out / "val" / f"{c}.json", records()[1])
        d.panels.preview.render(d.state)
        assert rows(d.panels.preview.topo.widget.value)[2][1:4] == ["1", "1", "2"]
    finally:
        write_json(out / "val" / f"{c}.json", records()[2])
        st.per_volume[c] = records()[2]


def test_partial_and_malformed_records_show_what_is_there():
    partial = {"topo": 0.5, "betti_pred": [1, 2, 0], "betti_gt": [1, 1, 0]}
    bd = topo_breakdown("p", partial, "val/p.json")
    assert bd.recorded and set(bd.missing) == {"topo_matched", "topo_f1", "topo_method"}
    r = rows(topo_html(bd))
    assert r[1] == ["1 tunnels", "?", "2", "1", "?", "?", "?", "0.33", "?"]
    assert "not recorded: topo_matched, topo_f1, topo_method" in topo_html(bd)

    bad = {"topo": 0.5, "betti_pred": [1, "x", 0], "betti_gt": "3", "topo_matched": [1, 1, 0],
           "topo_f1": [2.0, None, None], "topo_method": METHOD}
    html = topo_html(topo_breakdown("q", bad))
    assert "betti_pred: not three counts" in html and "betti_gt: not three counts" in html
    assert "topo_f1: not three F1 values" in html
    assert rows(html)[0][1:4] == ["1", "?", "?"]
    for junk in (None, [], "x", {"betti_pred": None}):
        assert "TopoScore by dimension" in topo_html(topo_breakdown("z", junk))
    impossible = {"betti_pred": [1, 0, 0], "betti_gt": [1, 0, 0], "topo_matched": [2, 0, 0]}
    html = topo_html(topo_breakdown("i", impossible))
    assert "exceeds predicted" in html and "data-recorded='0'" in html


def test_results_card_lists_compact_counts_per_volume(dash):
    d, out, (a, b, c) = dash
    card = d.panels.results.html.value
    m = re.search(r"<div class='nx47-per-volume'>.*?</table>", card, re.S)
    assert m, card
    table = m.group(0)
    assert "<th>topo</th>" in table and "<th title='matched / predicted / labelled features of " \
                                       "dimension 1 (tunnels)'>dim 1</th>" in table
    row_a = re.search(rf"<tr><td>{a}</td>(.*?)</tr>", table).group(1)
    cells = [re.sub(r"<[^>]+>", "", x) for x in re.findall(r"<td[^>]*>(.*?)</td>", row_a)]
    assert cells[2:] == ["3/5/4", "1/2/3", "0/0/0"]
    assert "F1 — (no feature in either mask)" in row_a
    row_c = re.search(rf"<tr><td>{c}</td>(.*?)</tr>", table).group(1)
    assert "not recorded" in row_c
    # worst first: C (0.42), A (0.61), B (0.74)
    assert table.index(f"<td>{c}</td>") < table.index(f"<td>{a}</td>") < table.index(f"<td>{b}</td>")


def test_the_table_follows_the_run_as_its_records_arrive(run, tmp_path):
    """A live run: a volume previewed before its record exists says "not
    recorded"; the run's GLOBAL_STATS then fills the table in (no reselect)."""
    from nx47_pipeline.telemetry.bus import EventBus
    from sinks import CallbackSink
    from nx47_pipeline.telemetry.events import EventKind, GlobalStatsPayload, PreviewPayload, RunStartPayload

    data, done, (a, b, c) = run
    out = tmp_path / "live"
    d = Dashboard(RunConfig(data_root=str(data), out_dir=str(out)), start_pump=False, auto_attach=False)
    events = []
    bus = EventBus()
    bus.attach(CallbackSink(events.append))
    try:
        bus.publish(EventKind.RUN_START, RunStartPayload(run_id="live", out_dir=str(out), pid=1))
        shape = [24, 24, 24]
        bus.publish(EventKind.PREVIEW, PreviewPayload(
            volume_id=b, split="val", shape=shape, image_path=str(done / "val" / f"{b}.tif"),
            pred_path=f"val/{b}.tif", score=0.74))
        d.flush(list(events), False)
        assert "not recorded — no validation scores" in d.panels.preview.topo.widget.value
        events.clear()
        bus.publish(EventKind.GLOBAL_STATS, GlobalStatsPayload(
            stats={"validation": {"mean_score": 0.74, "per_volume": {b: records()[1]}}}))
        d.flush(list(events), False)
        html = d.panels.preview.topo.widget.value
        assert "data-recorded='1'" in html and rows(html)[2][1:4] == ["1", "1", "2"]
        # a test volume has no label, no topo: no table
        events.clear()
        bus.publish(EventKind.PREVIEW, PreviewPayload(
            volume_id="t1", split="test", shape=shape, image_path=str(done / "val" / f"{b}.tif"),
            pred_path="test/t1.tif"))
        d.flush(list(events), False)
        assert d.state.preview.volume == "test/t1"
        assert d.panels.preview.topo.widget.layout.display == "none"
    finally:
        bus.close()
        d.close()
