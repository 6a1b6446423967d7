"""What every panel shares: :class:`Syncer` and small HTML helpers."""

from __future__ import annotations

import html
import threading
from typing import Any, Sequence

import ipywidgets as W

__all__ = ["Syncer", "h", "section", "button", "fmt", "nested_html", "human_bytes"]


class Syncer:
    """Set widget traits only when they change, and count the changes.

    ``changes`` counts trait updates sent to the front end (one comm message
    each, or one per widget inside ``hold_sync``); ``messages`` counts
    widgets synced (one message per widget per :meth:`set` call).
    """

    def __init__(self) -> None:
        self.changes = 0
        self.messages = 0
        self._lock = threading.Lock()

    def set(self, widget: W.Widget, **traits: Any) -> bool:
        """Set the traits of ``widget`` that differ from ``traits``.

        Parameters
        ----------
        widget : ipywidgets.Widget
        **traits
            Trait name -> value.

        Returns
        -------
        bool
            True when at least one trait changed.
        """
        diff = {k: v for k, v in traits.items() if getattr(widget, k) != v}
        if not diff:
            return False
        with widget.hold_sync():
            for k, v in diff.items():
                setattr(widget, k, v)
        with self._lock:
            self.changes += len(diff)
            self.messages += 1
        return True

    def set_options(self, widget: W.Widget, options: Sequence[Any]) -> bool:
        """Replace the ``options`` of a selection widget if they differ.

        Parameters
        ----------
        widget : ipywidgets.Widget
            A widget with ``options`` (Dropdown, ToggleButtons, ...).
        options : sequence
            The new options, as ipywidgets takes them.

        Returns
        -------
        bool
            True when the options changed (counted as one change).
        """
        if list(widget.options) == list(options):
            return False
        widget.options = options
        with self._lock:
            self.changes += 1
        return True


def h(text: Any) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text))


def section(title: str) -> W.HTML:
    """A panel's heading."""
    return W.HTML(f"<h3 style='margin:8px 0 2px 0'>{h(title)}</h3>")


def button(text: str, cls: str, tooltip: str = "") -> W.Button:
    """A button as wide as its text, with the CSS class ``cls``."""
    b = W.Button(description=text, tooltip=tooltip, layout=W.Layout(width="auto"))
    b.add_class(cls)
    return b


def fmt(v: Any) -> str:
    """A value for a table cell: floats to 4 significant digits, long lists cut."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = str(v)
        return text if len(text) < 160 else text[:157] + "..."
    return str(v)


def human_bytes(n: int | float | None) -> str:
    """``1.2 MB`` style size."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000.0
    return f"{size:.1f} GB"  # pragma: no cover


def nested_html(value: Any, *, depth: int = 0, max_items: int = 60) -> str:
    """A value as readable HTML: dicts as two-column tables, lists of scalars
    joined, lists of dicts as tables; floats to 4 significant digits; nothing cut
    in the middle (long collections say how many items they hold).

    Parameters
    ----------
    value : object
    depth : int
        Nesting level (deeper levels are set smaller).
    max_items : int
        Items shown per collection.

    Returns
    -------
    str
    """
    if isinstance(value, dict):
        if not value:
            return "<i>none</i>"
        items = list(value.items())
        rows = "".join(f"<tr><td style='color:#555'>{h(k)}</td><td>{nested_html(v, depth=depth + 1)}</td></tr>"
                       for k, v in items[:max_items])
        more = f"<tr><td colspan=2><i>… {len(items) - max_items} more</i></td></tr>" \
            if len(items) > max_items else ""
        return f"<table>{rows}{more}</table>"
    if isinstance(value, (list, tuple)):
        if not value:
            return "<i>none</i>"
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            shown = ", ".join(h(fmt(v)) for v in value[:max_items])
            more = f" … ({len(value)} in all)" if len(value) > max_items else ""
            return shown + more
        return "".join(f"<div>{nested_html(v, depth=depth + 1)}</div>" for v in value[:max_items])
    if value is None:
        return "-"
    return h(fmt(value))
