"""The page around the panels: its style sheet, and a small bridge to the browser.

:data:`PAGE_CSS` lays the dashboard out in two columns (controls and status
on the left, live panels on the right) that wrap into one under ~1000 px,
and hides what Voila would show above the app (the notebook's intro
markdown; Voila's ``<body>`` has ``data-voila``, so Jupyter is not affected).

:class:`PageBridge` runs short scripts in the page through an invisible
Output widget: under Voila it keeps the run folder in the address bar
(``?out=<folder>``, so a reload re-opens that run), names the tab, saves a
file, binds the viewer's keyboard shortcuts, and reports the size of the
QA picture's box and of the charts (CSS pixels) and the device pixel ratio
(:meth:`PageBridge.watch_sizes`), so that the canvas and the chart PNGs have
as many pixels as they show.  In Jupyter or Kaggle it does nothing (no
address of its own to keep; pictures keep their default size).
"""

from __future__ import annotations

import base64
import json
from typing import Callable, Mapping

import ipywidgets as W

__all__ = ["PAGE_CSS", "PageBridge"]

PAGE_CSS = """
<style>
body[data-voila] .jp-MarkdownCell { display: none; }
body[data-voila] #rendered_cells { padding: 0 8px; }
.nx47-dashboard { width: 100%; box-sizing: border-box; }
.nx47-cols { display: flex; flex-flow: row wrap; gap: 12px; align-items: flex-start; width: 100%; }
.nx47-left { flex: 1 1 440px; max-width: 600px; min-width: 300px; }
.nx47-right { flex: 2 1 560px; min-width: 300px; }
.nx47-dashboard .widget-text input, .nx47-dashboard textarea { min-width: 0; }
.nx47-problems { color: #b00020; font-size: 13px; }
.nx47-hint { color: #555; font-size: 12px; }
.nx47-log-view { height: 240px; overflow-y: auto; display: flex; flex-direction: column-reverse;
  font: 12px/1.35 monospace; background: #fafafa; border: 1px solid #ddd; padding: 4px;
  white-space: pre-wrap; }
.nx47-card table { border-collapse: collapse; font-size: 12px; }
.nx47-card td, .nx47-card th { padding: 1px 8px 1px 0; text-align: left; vertical-align: top; }
.nx47-legend span.sw { display: inline-block; width: 12px; height: 12px; margin: 0 4px -2px 8px;
  border: 1px solid #999; }
.nx47-topo { font-size: 12px; line-height: 1.45; margin: 4px 0; max-width: 100%; white-space: normal; }
.nx47-topo-wrap { overflow-x: auto; max-width: 100%; }
.nx47-topo table { border-collapse: collapse; margin: 2px 0; }
.nx47-topo th, .nx47-topo td { padding: 2px 6px; line-height: 1.3; text-align: right; white-space: nowrap;
  border-bottom: 1px solid #e0e0e0; }
.nx47-topo th { font-weight: 600; color: #333; border-bottom: 1px solid #999; }
.nx47-topo .nx47-topo-dim { text-align: left; padding-left: 0; }
.nx47-topo [title] { cursor: help; }
.nx47-dashboard button:disabled, .nx47-dashboard .jupyter-button:disabled {
  opacity: 0.45 !important; filter: grayscale(100%); cursor: not-allowed; box-shadow: none; }
.nx47-confirm { border: 1px solid #c62828; background: #fff5f5; padding: 4px 6px; margin: 4px 0;
  font-size: 13px; }
.nx47-gone-banner { position: sticky; top: 0; z-index: 1000; background: #b71c1c; color: #fff;
  padding: 8px 12px; font: 600 14px/1.4 sans-serif; }
.nx47-last-known { display: inline-block; background: #616161; color: #fff; padding: 0 6px;
  font-size: 12px; margin: 2px 0; }
body.nx47-gone .nx47-hb, body.nx47-gone .nx47-status-line { opacity: 0.55; filter: grayscale(100%); }
.nx47-runs { max-width: 100%; overflow-x: auto; }
.nx47-runs table { border-collapse: collapse; font-size: 12px; width: 100%; }
.nx47-runs td, .nx47-runs th { padding: 2px 5px 2px 0; text-align: left; vertical-align: top; }
.nx47-runs span.nx47-nowrap { white-space: nowrap; }
.nx47-runs th { white-space: nowrap; cursor: pointer; user-select: none; color: #333;
  border-bottom: 1px solid #999; }
.nx47-runs th[data-sorted='asc']::after { content: ' ▲'; font-size: 9px; }
.nx47-runs th[data-sorted='desc']::after { content: ' ▼'; font-size: 9px; }
.nx47-runs td.nx47-nowrap { white-space: nowrap; }
.nx47-runs td.nx47-folder { overflow-wrap: anywhere; word-break: break-all; min-width: 8em; }
.nx47-runs a.nx47-run-link { color: #1565c0; text-decoration: underline; }
.nx47-runs a.nx47-run-link:visited { color: #6a1b9a; }
canvas.nx47-qa-canvas { image-rendering: pixelated;
  cursor: grab; width: 100%; height: auto; display: block; touch-action: none; }
canvas.nx47-qa-canvas:active { cursor: grabbing; }
.nx47-qa-panels { min-width: 0; }
.nx47-qa-title { font-size: 13px; line-height: 1.3; }
img.nx47-qa-image { image-rendering: pixelated; }
.nx47-header { margin: 0 0 6px 0; }
.nx47-hd { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 22px; font-size: 15px;
  padding: 6px 10px; background: #f5f7fa; border: 1px solid #dde3ea; border-radius: 6px; }
.nx47-hd-state { font-weight: 700; font-size: 17px; display: inline-flex; align-items: center; gap: 6px; }
.nx47-hd-dot { width: 12px; height: 12px; border-radius: 6px; display: inline-block; }
.nx47-hd-light { font-weight: 400; font-size: 13px; }
.nx47-hd-k { color: #666; font-size: 11px; text-transform: uppercase; letter-spacing: .04em; }
.nx47-hd-folder { margin-left: auto; color: #555; font-size: 12px; overflow-wrap: anywhere; }
.nx47-progress .nx47-bar-row { width: 100%; }
@media (max-width: 900px) { .nx47-left, .nx47-right { max-width: none; flex-basis: 100%; } }
</style>
"""

#: What the page's keys do: key -> CSS class of the button they click.
KEYS: dict[str, str] = {
    "ArrowRight": "nx47-key-next-slice", "ArrowLeft": "nx47-key-prev-slice",
    "ArrowDown": "nx47-key-next-volume", "ArrowUp": "nx47-key-prev-volume",
    "l": "nx47-key-label", "p": "nx47-key-pred", "e": "nx47-key-error",
}


class PageBridge:
    """Scripts for the page (under Voila only).

    Parameters
    ----------
    enabled : bool
        False: every method does nothing (Jupyter, Kaggle, tests).

    Attributes
    ----------
    widget : ipywidgets.Output
        Invisible (the script output and the sizes box); must be displayed with the page.
    scripts : list of str
        The scripts sent so far (tests read them).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.output = W.Output(layout=W.Layout(height="0px", overflow="hidden"))
        self.output.add_class("nx47-bridge")
        # the page writes the sizes here (JSON); hidden
        self.sizes = W.Text(value="", layout=W.Layout(display="none"))
        self.sizes.add_class("nx47-sizes")
        self._on_sizes: Callable[[dict], None] | None = None
        self.sizes.observe(self._sizes_changed, names="value")
        self.widget = W.Box([self.output, self.sizes], layout=W.Layout(height="0px", overflow="hidden"))
        self.scripts: list[str] = []
        self._url_out: str | None = None
        self._keep: list[str] = []  # scripts every page view needs (key bindings)
        self._n = 0

    def run(self, script: str, *, keep: bool = False) -> None:
        """Run ``script`` in the page once (thread-safe: sets the Output's outputs).

        The Output shows the kept scripts and the latest one; a view created
        later (the page connects after the kernel ran the notebook) runs them
        all, so each script is guarded to run once per page.
        """
        if not self.enabled:
            return
        self._n += 1
        guarded = (f"(function(){{window.__nx47Ran=window.__nx47Ran||{{}};"
                   f"if(window.__nx47Ran[{self._n}])return;window.__nx47Ran[{self._n}]=1;"
                   f"{script}}})();")
        self.scripts.append(script)
        if keep:
            self._keep.append(guarded)
            latest = []
        else:
            latest = [guarded]
        self.output.outputs = tuple(
            {"output_type": "display_data", "data": {"application/javascript": code}, "metadata": {}}
            for code in [*self._keep, *latest])

    def keep_run_in_url(self, out_dir: str) -> None:
        """Put ``?out=<out_dir>`` in the address bar (no reload, no history entry)."""
        if out_dir == self._url_out:
            return
        self._url_out = out_dir
        self.run("(function(){const u=new URL(window.location.href);"
                 f"u.searchParams.set('out',{json.dumps(out_dir)});"
                 "window.history.replaceState(null,'',u.toString());})();")

    def set_title(self, title: str) -> None:
        """Name the browser tab."""
        self.run(f"document.title={json.dumps(title)};")

    def save_file(self, name: str, data: bytes, mime: str = "application/octet-stream") -> None:
        """Make the browser save ``data`` as ``name``."""
        b64 = base64.b64encode(data).decode("ascii")
        self.run("(function(){const a=document.createElement('a');"
                 f"a.href='data:{mime};base64,{b64}';a.download={json.dumps(name)};"
                 "document.body.appendChild(a);a.click();a.remove();})();")

    def watch_server(self, interval_s: float = 1.5) -> None:
        """Say on the page when its server or its kernel is gone.

        The page asks the server about its own kernel every ``interval_s``
        seconds (``GET <base>/api/kernels/<id>``, the id and base URL from
        Voila's ``jupyter-config-data``; nothing leaves the server). No
        answer twice in a row: **server gone**; the server no longer knows
        the kernel (404) or reports it dead: **kernel gone**.  Then a banner
        heads the page, what it shows is marked as the last known state,
        and Run, Stop and Attach are disabled with the reason as tooltip.
        """
        self.run("(function(){if(window.__nx47Watch)return;window.__nx47Watch=1;"
                 "var el=document.getElementById('jupyter-config-data');var cfg={};"
                 "try{cfg=JSON.parse(el.textContent);}catch(e){}"
                 "var kid=cfg.kernelId;if(!kid)return;var base=cfg.baseUrl||'/';"
                 "if(base.slice(-1)!=='/')base+='/';var url=base+'api/kernels/'+kid;"
                 "var misses=0,gone=null;"
                 "function show(what,why){if(gone)return;gone=what;"
                 "var t=new Date().toLocaleTimeString();"
                 "var reason=what+' gone: the page cannot act ('+why+')';"
                 "var b=document.createElement('div');b.className='nx47-gone-banner';"
                 "b.setAttribute('data-gone',what);"
                 "b.textContent=what+' gone (noticed at '+t+'; '+why+'). What this page shows is "
                 "the last known state, not live. Run, Stop and Attach are disabled: start nx47 "
                 "serve again and reload the page.';"
                 "document.body.prepend(b);document.body.classList.add('nx47-gone');"
                 "document.querySelectorAll('.nx47-dashboard button').forEach(function(x){"
                 "x.disabled=true;x.title=reason;});"
                 "document.querySelectorAll('.nx47-heartbeat, .nx47-status-line').forEach("
                 "function(x){var m=document.createElement('div');m.className='nx47-last-known';"
                 "m.textContent='last known, as of '+t+' ('+what+' gone)';"
                 "x.parentNode.insertBefore(m,x);});}"
                 "function poll(){fetch(url,{cache:'no-store',credentials:'same-origin'})"
                 ".then(function(r){if(r.status===404){misses++;if(misses>=2)"
                 "show('kernel','the server has no such kernel any more');return;}"
                 "if(!r.ok)return;misses=0;return r.json().then(function(m){"
                 "if(m&&m.execution_state==='dead')show('kernel','its process died');});})"
                 ".catch(function(){misses++;if(misses>=2)show('server','it does not answer');});}"
                 f"setInterval(function(){{if(!gone)poll();}},{int(interval_s * 1000)});}})();",
                 keep=True)

    def bind_keys(self, keys: Mapping[str, str] = KEYS) -> None:
        """Keys click buttons (``keys``: key -> button class); not while typing."""
        self.run("(function(){if(window.__nx47Keys)return;window.__nx47Keys=1;"
                 f"const k={json.dumps(dict(keys))};"
                 "document.addEventListener('keydown',function(e){"
                 "const t=e.target&&e.target.tagName;"
                 "if(t==='INPUT'||t==='TEXTAREA'||t==='SELECT'||e.ctrlKey||e.metaKey||e.altKey)return;"
                 # a slider with the focus moves with the arrow keys itself
                 "if(e.target&&e.target.closest&&e.target.closest('.noUi-handle,[role=slider],[contenteditable]'))return;"
                 "const c=k[e.key];if(!c)return;"
                 "const b=document.querySelector('button.'+c);"
                 # capture phase: the QA canvas takes the focus on a click and stops key events
                 "if(b){b.click();e.preventDefault();}},true);})();", keep=True)

    #: Boxes whose width the page reports: name -> CSS selector.
    SIZED = {"qa": ".nx47-qa-panels", "charts": ".nx47-charts-box"}

    def watch_sizes(self, on_sizes: Callable[[dict], None]) -> None:
        """Call ``on_sizes({"qa": px, "charts": px, "dpr": ratio, "vh": px})`` when the
        width of a box in :data:`SIZED`, the device pixel ratio or the window's
        height changes (a box not shown reads 0); checked every 0.5 s and on resize."""
        self._on_sizes = on_sizes
        self.run("(function(){if(window.__nx47Sizes)return;window.__nx47Sizes=1;"
                 f"const sel={json.dumps(self.SIZED)};let last='';"
                 "function send(){const inp=document.querySelector('.nx47-sizes input');if(!inp)return;"
                 "const v={dpr:window.devicePixelRatio||1,vh:window.innerHeight};"
                 "for(const k in sel){const e=document.querySelector(sel[k]);"
                 "v[k]=e?Math.round(e.getBoundingClientRect().width):0;}"
                 "const s=JSON.stringify(v);if(s===last)return;last=s;inp.value=s;"
                 "inp.dispatchEvent(new Event('input',{bubbles:true}));"
                 "inp.dispatchEvent(new Event('change',{bubbles:true}));}"
                 "window.addEventListener('resize',send);setInterval(send,500);send();})();", keep=True)

    def _sizes_changed(self, change: dict) -> None:
        if self._on_sizes is None:
            return
        try:
            sizes = json.loads(change["new"] or "{}")
        except ValueError:
            return
        if isinstance(sizes, dict):
            self._on_sizes(sizes)
