"""The results card: verdict, validation score, fallback warning, submission
(size and a download button), stage timeline against the projection, the
journal's verification and GLOBAL_STATS as readable tables."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import ipywidgets as W

from nx47_pipeline.io.run_folder import SUBMISSION
from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.dashboard import DashboardState
from nx47_widgets.state.preview import INFER_COMMAND
from nx47_widgets.state.results import ResultsState
from nx47_widgets.state.timeline import Timeline
from nx47_widgets.state.topo import DIMENSIONS, topo_breakdown
from nx47_widgets.views.base import Syncer, fmt, h, human_bytes, nested_html, section
from nx47_widgets.views.colours import outcome_colour
from nx47_widgets.views.page import PageBridge
from nx47_widgets.views.topo import topo_cells

__all__ = ["ResultsPanel", "timeline_html"]

#: Largest submission the page hands to the browser.
MAX_DOWNLOAD = 200 * 1000 * 1000

#: GLOBAL_STATS keys shown in their own sections (the rest under "all statistics").
_OWN = ("status", "out_dir", "submission", "journal_head", "validation", "counts",
        "fallback_ids", "stage_seconds", "stage_status", "best")


def timeline_html(timeline: Timeline) -> str:
    """The stages as rows: status, actual seconds, projected seconds and bars."""
    rows = timeline.rows()
    if not rows:
        return "<div class='nx47-hint'>no stage started yet</div>"
    scale = max([1e-9] + [r["actual_s"] or 0.0 for r in rows] + [r["projected_s"] or 0.0 for r in rows])
    out = []
    for r in rows:
        act, proj = r["actual_s"], r["projected_s"]
        status = "running" if r["running"] else (str(r["status"]) if r["status"] else "-")
        bar_a = f"<div style='height:6px;background:#1565c0;width:{100 * (act or 0) / scale:.1f}%'></div>"
        bar_p = (f"<div style='height:6px;background:#bdbdbd;width:{100 * proj / scale:.1f}%'></div>"
                 if proj is not None else "")
        out.append(f"<tr><td>{h(r['stage'])}</td><td>{h(status)}</td>"
                   f"<td>{format_duration(act) if act is not None else '-'}</td>"
                   f"<td>{format_duration(proj) if proj is not None else '-'}</td>"
                   f"<td style='width:40%'>{bar_a}{bar_p}</td></tr>")
    ratio = "" if not timeline.has_projection else \
        f"<div class='nx47-hint'>actual / projected so far: {timeline.ratio:.2f}</div>"
    return ("<table class='nx47-timeline' style='width:100%'><tr><th>stage</th><th>status</th>"
            "<th>took</th><th>projected</th><th><span style='color:#1565c0'>actual</span> / "
            "<span style='color:#9e9e9e'>projected</span></th></tr>" + "".join(out) + "</table>" + ratio)


class ResultsPanel:
    """The results card of the run shown.

    Parameters
    ----------
    syncer : Syncer
    page : PageBridge, optional
        Saves the submission in the browser (under Voila); without it the
        download button shows a link to click.
    """

    def __init__(self, syncer: Syncer, page: PageBridge | None = None) -> None:
        self.syncer = syncer
        self.html = W.HTML("<i>no result yet</i>")
        self.html.add_class("nx47-results")
        self.html.add_class("nx47-card")
        self.download = W.Button(description=f"Download {SUBMISSION}", disabled=True,
                                 layout=W.Layout(width="auto", display="none"))
        self.download.add_class("nx47-download")
        self.link = W.HTML("")
        self.timeline = W.HTML("")
        self.timeline.add_class("nx47-card")
        self._path: str | None = None
        self.page = page
        self.download.on_click(lambda _b: self.save(self._path))
        self.widget = W.VBox([section("Results"), self.html, W.HBox([self.download, self.link]),
                              W.HTML("<b style='font-size:12px'>Stage timeline</b>"),
                              self.timeline])
        self.widget.add_class("nx47-results-card")

    def save(self, path: str | None) -> None:
        """Hand the file ``path`` (the submission) to the browser."""
        if not path:
            return
        try:
            data = Path(path).read_bytes() if os.path.getsize(path) <= MAX_DOWNLOAD else None
        except OSError as exc:
            self.syncer.set(self.link, value=f"<span style='color:#c62828'>{h(exc)}</span>")
            return
        if data is None:
            self.syncer.set(self.link, value=f"too large to download here: copy <code>{h(path)}</code>")
            return
        name = Path(path).name
        if self.page is not None and self.page.enabled:
            self.page.save_file(name, data, "application/zip")
            self.syncer.set(self.link, value=f"saved {h(name)} ({human_bytes(len(data))})")
            return
        b64 = base64.b64encode(data).decode("ascii")
        self.syncer.set(self.link, value=(f"<a download='{h(name)}' "
                                          f"href='data:application/zip;base64,{b64}'>save {h(name)}</a>"))

    def render(self, state: DashboardState) -> None:
        """Show the results of the run ``state`` and its stage timeline."""
        self.syncer.set(self.timeline, value=timeline_html(state.progress.timeline))
        res = state.results
        v = res.verdict
        if not res.ended and not res.stats:
            self.syncer.set(self.html, value="<i>no result yet</i>")
            self._show_download(None)
            return
        parts = [
            f"<div style='font-size:15px'>status: <b class='nx47-status' "
            f"data-status='{h(res.status or v.outcome.value)}' data-outcome='{v.outcome.value}' "
            f"style='color:{outcome_colour(v.outcome)}'>{h(v.label)}</b> <span class='nx47-verdict'>"
            f"— {h(v.words)}</span> · duration {format_duration(res.duration_s)}</div>"]
        stats = res.stats
        score = (stats.get("validation") or {}).get("mean_score")
        per_vol = (stats.get("validation") or {}).get("per_volume") or {}
        if score is not None:
            parts.append(f"<div style='font-size:15px'>validation score "
                         f"<b class='nx47-score'>{score:.4f}</b> "
                         f"<span class='nx47-hint'>(mean over {len(per_vol)} volume{'s' if len(per_vol) != 1 else ''})</span></div>")
        elif res.ended and res.command != INFER_COMMAND:
            parts.append("<div class='nx47-hint'>no validation score (no volume was validated)</div>")
        fb = stats.get("fallback_ids") or []
        if fb:
            n_test = (stats.get("counts") or {}).get("test")
            parts.append(f"<div class='nx47-fallback' style='background:#fff3e0;border-left:4px solid "
                         f"#e65100;padding:4px 8px;margin:4px 0'>&#9888; {len(fb)} of {n_test} test "
                         f"volumes got the fallback segmentation (no model): {h(', '.join(map(str, fb)))}"
                         "</div>")
        size = _size(res.submission)
        if res.command == INFER_COMMAND:  # a zarr folder: shown in the slice viewer, not downloaded
            size = None
            sub = (f"<code class='nx47-submission'>{h(res.submission)}</code> (zarr, uint8 0/1; "
                   "in the slice viewer)" if res.submission else "<i>none</i>")
            parts.append(f"<div>mask: {sub}</div>")
        else:
            sub = (f"<code class='nx47-submission'>{h(res.submission)}</code> ({human_bytes(size)})"
                   if res.submission else "<i>none</i>")
            parts.append(f"<div>submission: {sub}</div>")
        parts.append(self._verification(res))
        parts.append(_stats_sections(stats))
        self.syncer.set(self.html, value="".join(parts))
        self._show_download(res.submission if size is not None else None, size)

    def _show_download(self, path: str | None, size: int | None = None) -> None:
        self._path = path
        self.syncer.set(self.download, disabled=path is None,
                        description=f"Download {SUBMISSION} ({human_bytes(size)})"
                        if path else f"Download {SUBMISSION}")
        self.syncer.set(self.download.layout, display="" if path else "none")

    @staticmethod
    def _verification(state: ResultsState) -> str:
        v = state.verification
        if v is None:
            return ""
        ok = getattr(v, "ok", False)
        head = str(getattr(v, "head", "") or state.journal_head or "")
        txt = (f"journal verified: {getattr(v, 'n_lines', '?')} lines, head {head[:16]}" if ok else
               f"journal verification FAILED at line {getattr(v, 'bad_line', '?')}: "
               f"{getattr(v, 'reason', '')}")
        return f"<div class='nx47-verify' style='color:{'#2e7d32' if ok else '#c62828'}'>{h(txt)}</div>"


def _size(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _per_volume_table(per_vol: dict[str, Any]) -> str:
    """Validation score per volume, worst first; with its topo and, when the
    run recorded them, TopoScore's matched / predicted / labelled features per
    dimension (tooltips give F1; the QA viewer has the whole table)."""
    def score(v: Any) -> Any:
        return v.get("score") if isinstance(v, dict) else v

    items = sorted(per_vol.items(),
                   key=lambda kv: score(kv[1]) if isinstance(score(kv[1]), (int, float)) else 0)
    parts = {k: topo_breakdown(k, v) for k, v in items}
    has_topo = any(b.topo is not None for b in parts.values())
    has_dims = any(b.recorded for b in parts.values())
    head = "<th>volume</th><th>score</th>" + ("<th>topo</th>" if has_topo else "")
    if has_dims:
        head += "".join(f"<th title='matched / predicted / labelled features of dimension {d} ({name})'>"
                        f"dim {d}</th>" for d, name in DIMENSIONS)
    rows = []
    for k, v in items:
        b = parts[k]
        cells = f"<td>{h(k)}</td><td>{h(fmt(score(v)))}</td>"
        if has_topo:
            cells += f"<td>{'-' if b.topo is None else f'{b.topo:.4g}'}</td>"
        if has_dims:
            cells += "".join(topo_cells(b)) if b.recorded else \
                "<td colspan=3 class='nx47-hint' title='not recorded for this volume'>not recorded</td>"
        rows.append(f"<tr>{cells}</tr>")
    note = ("<caption class='nx47-hint' style='caption-side:bottom;text-align:left;line-height:1.35;"
            "padding-top:2px'>dim 0 components, 1 tunnels, 2 cavities: matched/predicted/labelled "
            "features (the slice viewer shows a volume's TopoScore table)</caption>" if has_dims else "")
    return (f"<div class='nx47-per-volume'><b>validation per volume</b> (worst first)"
            f"<table>{note}<tr>{head}</tr>{''.join(rows)}</table></div>")


def _stats_sections(stats: dict[str, Any]) -> str:
    if not stats:
        return ""
    out = []
    counts = stats.get("counts")
    if counts:
        out.append("<div><b>counts</b>" + nested_html(counts) + "</div>")
    per_vol = (stats.get("validation") or {}).get("per_volume") or {}
    if per_vol:
        out.append(_per_volume_table(per_vol))
    best = stats.get("best")
    if best:
        out.append("<div><b>model</b>" + nested_html(best) + "</div>")
    rest = {k: v for k, v in stats.items() if k not in _OWN}
    body = "".join(out)
    if rest:
        body += ("<details><summary>all statistics (GLOBAL_STATS)</summary>"
                 + nested_html(rest) + "</details>")
    return f"<div class='nx47-stats' style='display:flex;flex-wrap:wrap;gap:16px'>{body}</div>" \
        if body else ""
