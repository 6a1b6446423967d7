"""The dashboard's colours: one per run outcome and per heartbeat light.

State (``nx47_widgets.state``) says *what* a run is -- an
:class:`~nx47_widgets.state.outcome.Outcome`, a light such as ``ACTIVE`` or
``KILLED`` -- and the views pick its colour here.
"""

from __future__ import annotations

from nx47_widgets.state.heartbeat import KILLED, LOST, WAITING
from nx47_widgets.state.outcome import Outcome

__all__ = ["GREY", "LIGHT_COLOURS", "OUTCOME_COLOURS", "light_colour", "outcome_colour"]

GREY = "#9e9e9e"

#: One colour per outcome (text and light).
OUTCOME_COLOURS: dict[Outcome, str] = {
    Outcome.RUNNING: "#1565c0",
    Outcome.OK: "#2e7d32",
    Outcome.SKIPPED: "#689f38",
    Outcome.BUDGET: "#f9a825",
    Outcome.FALLBACK: "#e65100",
    Outcome.CANCELLED: "#8d6e63",
    Outcome.PREFLIGHT_FAILED: "#ad1457",
    Outcome.FAILED: "#c62828",
    Outcome.KILLED: "#6a1b9a",
    Outcome.LOST: "#546e7a",
}

#: The heartbeat light's colour in each of its states.
LIGHT_COLOURS: dict[str, str] = {
    WAITING: GREY,
    "ACTIVE": "#2e7d32",
    "COMPUTING": "#1565c0",
    "STALLED": "#c62828",
    "FINISHED": "#2e7d32",
    "FAILED": "#c62828",
    "CANCELLED": "#8d6e63",
    KILLED: "#6a1b9a",
    LOST: "#546e7a",
}


def outcome_colour(outcome: Outcome | str) -> str:
    """The colour of a run that ended (or runs) with ``outcome``."""
    try:
        return OUTCOME_COLOURS[Outcome(outcome)]
    except ValueError:
        return GREY


def light_colour(state: str) -> str:
    """The colour of the heartbeat light in ``state``."""
    return LIGHT_COLOURS.get(str(state), GREY)
