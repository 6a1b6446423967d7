"""The QA viewer's "TopoScore by dimension" table of the selected validation
volume: matched / predicted / labelled features per homology dimension, the
spurious (predicted − matched) and missed (labelled − matched) ones, F1, the
weight and what each dimension takes off TopoScore; and, in the results card,
a compact ``matched/predicted/labelled`` cell per dimension."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.render import FP_RGB
from nx47_widgets.state.topo import TopoBreakdown, TopoDim
from nx47_widgets.views.base import Syncer, h

__all__ = ["TopoTable", "topo_html", "topo_cells", "UNDEFINED", "NOT_RECORDED"]

#: An undefined F1 (no feature of the dimension in either mask).
UNDEFINED = "—"
#: A value the run's record does not hold.
NOT_RECORDED = "?"
#: Colours of spurious (false positive) and missed (false negative) features,
#: as in the viewer's error map and per-slice counts.
SPURIOUS_COLOUR = f"rgb{FP_RGB}"
MISSED_COLOUR = "#b8860b"

_SINGULAR = {"components": "component", "tunnels": "tunnel", "cavities": "cavity"}


def _noun(name: str, n: int | None) -> str:
    return _SINGULAR.get(name, name) if n == 1 else name


def _count(n: int | None, what: str) -> str:
    if n is None:
        return f"<td title='{h(what)}: not recorded in this run&#39;s scores'>{NOT_RECORDED}</td>"
    return f"<td>{n}</td>"


def _loss(n: int | None, colour: str, what: str, needs: str) -> str:
    if n is None:
        return f"<td title='{what}: needs the matched and {needs} counts, not recorded'>{NOT_RECORDED}</td>"
    style = f" style='color:{colour};font-weight:600'" if n > 0 else ""
    return f"<td class='nx47-topo-{what}'{style}>{n}</td>"


def _f1(d: TopoDim) -> str:
    if d.f1_defined is None:
        return f"<td title='F1 not recorded in this run&#39;s scores'>{NOT_RECORDED}</td>"
    if not d.f1_defined:
        return (f"<td class='nx47-topo-undefined' title='undefined: no dimension-{d.dim} feature "
                f"({h(d.name)}) in either the prediction or the label, so this dimension does not "
                f"count in topo'>{UNDEFINED}</td>")
    tip = ""
    if d.labelled == 0 and d.predicted:
        tip = (f" title='no labelled {h(d.name)}: F1 = 0.5 / (predicted + 0.5) = "
               f"0.5 / {d.predicted + 0.5:g}'")
    elif d.labelled is not None and d.predicted is not None and d.matched is not None:
        tip = f" title='F1 = 2 × matched / (predicted + labelled) = {2 * d.matched} / {d.predicted + d.labelled}'"
    return f"<td{tip}>{d.f1:.3f}</td>"


def _weight(d: TopoDim) -> str:
    if d.share is None:
        if d.f1_defined is False:
            return f"<td title='weight {d.weight:.2f}, not counted: F1 undefined'>{UNDEFINED}</td>"
        return f"<td title='nominal weight; F1s not recorded'>{d.weight:.2f}</td>"
    if abs(d.share - d.weight) > 1e-9:
        return (f"<td title='weight {d.weight:.2f} renormalised over the defined dimensions'>"
                f"{d.share:.2f}</td>")
    return f"<td>{d.share:.2f}</td>"


def _lost(d: TopoDim) -> str:
    if d.lost is not None:
        style = " style='font-weight:600'" if d.lost > 1e-9 else ""
        return f"<td class='nx47-topo-lost'{style} title='weight × (1 − F1)'>{d.lost:.3f}</td>"
    if d.f1_defined is False:
        return f"<td title='not counted: F1 undefined'>{UNDEFINED}</td>"
    return f"<td title='needs F1, not recorded'>{NOT_RECORDED}</td>"


def _row(d: TopoDim) -> str:
    return (f"<tr data-dim='{d.dim}'><td class='nx47-topo-dim'>{d.dim} {h(d.name)}</td>"
            f"{_count(d.matched, 'matched')}{_count(d.predicted, 'predicted')}"
            f"{_count(d.labelled, 'labelled')}"
            f"{_loss(d.spurious, SPURIOUS_COLOUR, 'spurious', 'predicted')}"
            f"{_loss(d.missed, MISSED_COLOUR, 'missed', 'labelled')}"
            f"{_f1(d)}{_weight(d)}{_lost(d)}</tr>")


_HEAD = (
    "<tr><th class='nx47-topo-dim'>dimension</th>"
    "<th title='features of the prediction matched to one of the label'>matched</th>"
    "<th title='features of the prediction, summed over the 8 octants'>predicted</th>"
    "<th title='features of the label, summed over the 8 octants'>labelled</th>"
    f"<th title='predicted − matched: features the label does not have' "
    f"style='color:{SPURIOUS_COLOUR}'>spurious</th>"
    f"<th title='labelled − matched: features the prediction lost' style='color:{MISSED_COLOUR}'>missed</th>"
    "<th>F1</th><th title='TopoScore weight (0.34 / 0.33 / 0.33, renormalised over the defined "
    "dimensions)'>weight</th><th title='weight × (1 − F1): what the dimension takes off topo'>"
    "topo lost</th></tr>"
)


def _why(bd: TopoBreakdown) -> str:
    """One line saying where topology is lost (or that none is)."""
    worst = bd.worst
    if worst is not None:
        parts = []
        if worst.missed:
            parts.append(f"{worst.missed} of {worst.labelled} labelled {_noun(worst.name, worst.labelled)} missed")
        if worst.spurious:
            parts.append(f"{worst.spurious} of {worst.predicted} predicted "
                         f"{_noun(worst.name, worst.predicted)} spurious")
        detail = f": {', '.join(parts)}" if parts else ""
        return (f"<div class='nx47-topo-why'>most topology is lost in dimension {worst.dim} "
                f"({h(worst.name)}), {worst.lost:.3f} of topo{h(detail)}</div>")
    if bd.lost == 0.0:
        return "<div class='nx47-topo-why'>no topology lost: every feature matched</div>"
    return ""


def _title(bd: TopoBreakdown) -> str:
    topo = f" · topo <b class='nx47-topo-value'>{bd.topo:.3f}</b>" if bd.topo is not None else ""
    return f"<div><b>TopoScore by dimension</b> · val {h(bd.volume_id)}{topo}</div>"


def _not_recorded(bd: TopoBreakdown) -> str:
    if not bd.found:
        why = (f"no validation scores for volume {h(bd.volume_id)} yet (its <code>.json</code> next to "
               "the mask is not there, and the run has no statistics)")
    else:
        held = [f"{k.replace('_', ' ')} {v:.3f}" for k, v in
                (("score", bd.score), ("surface_dice", bd.surface_dice), ("voi", bd.voi), ("topo", bd.topo))
                if v is not None]
        why = (f"the scores of this volume ({h(bd.source)}) hold "
               f"{h(', '.join(held)) if held else 'no score'} but no per-dimension counts "
               "(recorded by newer runs)")
    return f"<div class='nx47-topo-none'><b>TopoScore by dimension</b>: not recorded — {why}</div>"


def topo_html(bd: TopoBreakdown) -> str:
    """The table of one volume's TopoScore by dimension, or why it is not recorded.

    Parameters
    ----------
    bd : TopoBreakdown

    Returns
    -------
    str
        HTML; the outer ``div.nx47-topo`` carries ``data-volume`` and
        ``data-recorded`` (``1`` / ``0``).
    """
    body: list[str] = []
    if bd.error:
        body.append(f"<div style='color:#c62828'>not scored: {h(bd.error)}</div>")
    if not bd.recorded:
        body.append(_not_recorded(bd))
    else:
        body.append(_title(bd))
        body.append("<div class='nx47-topo-wrap'><table class='nx47-topo-table'>" + _HEAD
                    + "".join(_row(d) for d in bd.dims) + "</table></div>")
        body.append(_why(bd))
        if any(d.f1_defined is False for d in bd.dims):
            body.append(f"<div class='nx47-hint'>{UNDEFINED} F1 undefined: no feature of that dimension in "
                        "either mask, so it does not count in topo (the other weights are renormalised)</div>")
        lost = bd.lost
        if lost is not None and bd.topo is not None and abs((1.0 - lost) - bd.topo) > 1e-3:
            body.append(f"<div style='color:#c62828'>the parts give topo {1.0 - lost:.3f}, the record says "
                        f"{bd.topo:.3f}</div>")
    caption = []
    if bd.found:
        caption.append(f"method: {h(bd.method) if bd.method else 'not recorded'}")
    if bd.recorded:
        caption.append("features summed over the 8 octants; topo = Σ weight × F1")
    if bd.source:
        caption.append(f"from {h(bd.source)}")
    if bd.recorded and bd.missing:
        caption.append("not recorded: " + h(", ".join(bd.missing)))
    if caption:
        body.append(f"<div class='nx47-hint nx47-topo-caption'>{' · '.join(caption)}</div>")
    body.extend(f"<div style='color:#c62828'>{h(p)}</div>" for p in bd.problems)
    return (f"<div class='nx47-topo' data-volume='{h(bd.volume_id)}' "
            f"data-recorded='{1 if bd.recorded else 0}'>{''.join(body)}</div>")


def topo_cells(bd: TopoBreakdown) -> list[str]:
    """The results card's compact cells of one volume: ``matched/predicted/labelled``
    per dimension (``?`` where not recorded), each with a tooltip."""
    cells = []
    for d in bd.dims or ():
        text = "/".join(NOT_RECORDED if v is None else str(v) for v in (d.matched, d.predicted, d.labelled))
        f1 = UNDEFINED + " (no feature in either mask)" if d.f1_defined is False else \
            (f"{d.f1:.3f}" if d.f1 is not None else "not recorded")
        tip = (f"dimension {d.dim} ({d.name}): matched {d.matched if d.matched is not None else '?'}, "
               f"predicted {d.predicted if d.predicted is not None else '?'}, labelled "
               f"{d.labelled if d.labelled is not None else '?'}; F1 {f1}")
        cells.append(f"<td title='{h(tip)}'>{h(text)}</td>")
    return cells


class TopoTable:
    """The viewer's TopoScore table (hidden for volumes that are not validation volumes).

    Parameters
    ----------
    syncer : Syncer
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.widget = W.HTML("", layout=W.Layout(display="none", max_width="100%"))
        self.widget.add_class("nx47-topo-box")

    def render(self, state: TopoBreakdown | None) -> None:
        """Show ``state`` (None: hide the table)."""
        if state is None:
            self.syncer.set(self.widget.layout, display="none")
            return
        self.syncer.set(self.widget, value=topo_html(state))
        self.syncer.set(self.widget.layout, display="")
