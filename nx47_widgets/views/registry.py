"""Which panel shows which state, and re-rendering only what changed.

Every panel has one ``render(state)``.  :class:`Views` holds (state, panel)
pairs, each state looked up when rendering (a new run has new states), and
the version each panel showed last: :meth:`Views.render` calls
``panel.render(state)`` only for the pairs whose state is another object or
has another version than last time — or, on a tick, for the panels that show
the time (the heartbeat's "seconds since the last beat", the header's
elapsed time).  States count their visible changes in ``version``
(:mod:`nx47_widgets.state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol

__all__ = ["Panel", "Binding", "Views"]


class Panel(Protocol):
    """What :class:`Views` needs of a panel."""

    def render(self, state: Any) -> None:
        """Copy ``state`` into the panel's widgets."""


def _own_version(state: Any) -> Hashable:
    return state.version


@dataclass(eq=False)
class Binding:
    """One panel, the state it shows and what it showed last.

    Attributes
    ----------
    panel : Panel
    state : callable
        ``state()``: the state the panel shows now.
    version : callable
        ``version(state)``: changes whenever what the panel shows of the
        state changes (default: ``state.version``).
    every_tick : bool
        Also render on every tick (the panel shows the time).
    shown : tuple or None
        ``(state, version)`` rendered last (None: never rendered).
    """

    panel: Panel
    state: Callable[[], Any]
    version: Callable[[Any], Hashable] = _own_version
    every_tick: bool = False
    shown: tuple[Any, Hashable] | None = None

    def due(self, state: Any, tick: bool) -> bool:
        """True when the panel should render ``state`` now."""
        if self.every_tick and tick or self.shown is None:
            return True
        last, version = self.shown
        return last is not state or version != self.version(state)


class Views:
    """The page's (state, panel) pairs (see the module docstring).

    The caller holds the lock its states change under (the dashboard's):
    a version is read right after its panel rendered.
    """

    def __init__(self) -> None:
        self.bindings: list[Binding] = []

    def add(self, panel: Panel, state: Callable[[], Any], *,
            version: Callable[[Any], Hashable] = _own_version,
            every_tick: bool = False, drawn: bool = False) -> Binding:
        """Register ``panel`` as the view of ``state()``.

        Parameters
        ----------
        panel : Panel
        state : callable
            Returns the state to show (looked up on every render).
        version : callable, optional
            ``version(state)``, default ``state.version``.
        every_tick : bool
            Render on every tick too.
        drawn : bool
            The panel shows ``state()`` already (it was built with it): it
            renders once that state changes, not before.

        Returns
        -------
        Binding
        """
        binding = Binding(panel, state, version, every_tick)
        if drawn:
            now = state()
            binding.shown = (now, version(now))
        self.bindings.append(binding)
        return binding

    def render(self, *panels: Panel, tick: bool = False, force: bool = False) -> list[Panel]:
        """Render the panels whose state changed since they last rendered.

        Parameters
        ----------
        *panels : Panel
            Only these (default: all registered).
        tick : bool
            The time-driven panels are due too.
        force : bool
            Render whether or not anything changed.

        Returns
        -------
        list of Panel
            The panels rendered, in registration order.
        """
        done = []
        for b in self.bindings:
            if panels and not any(b.panel is p for p in panels):
                continue
            state = b.state()
            if force or b.due(state, tick):
                b.panel.render(state)
                b.shown = (state, b.version(state))
                done.append(b.panel)
        return done
