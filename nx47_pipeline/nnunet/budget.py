"""What an nnU-Net prediction costs, and what to drop when it does not fit.

The cost of a volume is counted in forward passes of one window: windows
(``n_windows(shape)``, after nnU-Net's padding, at the tile step) x mirror
combinations (``n_mirrors``) x folds (``n_folds``), summed over the
ensemble's members, times the seconds one pass takes on the device at hand
(measured by a preflight, or given).  When the projection of every volume
does not fit the time left, :func:`fit_to_budget` drops, in this order:

1. mirror test-time augmentation (every member);
2. the lowest-weight members, one at a time (at least one stays);
3. a wider tile step, through ``tile_steps`` (fewer, less overlapping windows).

Each step taken is one decision (``on_decision(decision, message,
**fields)``: a BUDGET event in a run), named
:attr:`~nx47_pipeline.telemetry.events.BudgetDecision.NNUNET_MIRRORING`,
``NNUNET_MEMBERS`` or ``NNUNET_TILE_STEP``, with ``left_s`` (the time
given), ``projected_s`` (after the step), ``fits`` and ``seconds_per_window``.  The result says whether the
last configuration fits; a run segments what does not fit with its fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nx47_pipeline.model.predictor import EnsemblePredictor
from nx47_pipeline.telemetry.events import BudgetDecision

#: Tile steps tried in turn when the budget is short (nnU-Net's default first).
TILE_STEPS = (0.5, 0.75, 1.0)

OnDecision = Callable[..., None]


def members_of(predictor: Any) -> list[tuple[Any, float]]:
    """``(member, weight)`` of an ensemble, or ``[(predictor, 1.0)]``."""
    if isinstance(predictor, EnsemblePredictor):
        return list(predictor.members)
    return [(predictor, 1.0)]


def _rebuild(members: Sequence[tuple[Any, float]]) -> Any:
    return members[0][0] if len(members) == 1 else EnsemblePredictor(tuple(members))


def passes(predictor: Any, shapes: Sequence[Sequence[int]]) -> int:
    """Forward passes of one window that ``predictor`` runs on volumes of ``shapes``."""
    return sum(m.n_windows(s) * m.n_mirrors * m.n_folds for m, _ in members_of(predictor) for s in shapes)


def projected_s(predictor: Any, shapes: Sequence[Sequence[int]], *, seconds_per_window: float) -> float:
    """Seconds ``predictor`` takes on volumes of ``shapes`` at ``seconds_per_window`` per pass."""
    return passes(predictor, shapes) * float(seconds_per_window)


@dataclass(frozen=True)
class BudgetFit:
    """The predictor :func:`fit_to_budget` chose and its projection."""

    predictor: Any
    projected_s: float
    fits: bool
    decisions: tuple[str, ...]


def fit_to_budget(
    predictor: Any,
    shapes: Sequence[Sequence[int]],
    *,
    seconds_per_window: float,
    budget_s: float,
    tile_steps: Sequence[float] = TILE_STEPS,
    on_decision: OnDecision | None = None,
) -> BudgetFit:
    """The nnU-Net predictor (or ensemble) that fits ``budget_s`` on volumes of ``shapes``.

    Parameters
    ----------
    predictor : NnUNetPredictor or EnsemblePredictor of them
        Members need ``n_windows(shape)``, ``n_mirrors``, ``n_folds``,
        ``tile_step``, ``use_mirroring`` and ``with_settings(tile_step=, use_mirroring=)``.
    shapes : sequence of (Z, Y, X)
        The volumes still to predict.
    seconds_per_window : float
        Seconds of one forward pass of one window (measured or injected).
    budget_s : float
        Seconds left for them.
    tile_steps : sequence of float
        Tile steps to widen through, in order (those not wider than the current are skipped).
    on_decision : callable, optional
        ``on_decision(decision, message, **fields)`` for each step taken.
    """
    decisions: list[str] = []

    def cost(p: Any) -> float:
        return projected_s(p, shapes, seconds_per_window=seconds_per_window)

    def decide(decision: BudgetDecision, message: str, p: Any) -> None:
        decisions.append(str(decision))
        if on_decision is not None:
            on_decision(decision, message, left_s=round(float(budget_s), 3), projected_s=round(cost(p), 3),
                        fits=cost(p) <= budget_s, seconds_per_window=float(seconds_per_window))

    current = predictor
    before = cost(current)
    if before <= budget_s:
        return BudgetFit(current, before, True, ())
    members = members_of(current)
    if any(m.use_mirroring and m.n_mirrors > 1 for m, _ in members):
        members = [(m.with_settings(use_mirroring=False), w) for m, w in members]
        current = _rebuild(members)
        decide(BudgetDecision.NNUNET_MIRRORING,
               f"nnU-Net: {before:.0f} s projected for {len(shapes)} volumes > {budget_s:.0f} s left; "
               f"mirroring dropped ({cost(current):.0f} s)", current)
    while len(members) > 1 and cost(current) > budget_s:
        k = min(range(len(members)), key=lambda i: (members[i][1], -i))  # lowest weight, the later on ties
        weight = members[k][1]
        members = members[:k] + members[k + 1:]
        current = _rebuild(members)
        decide(BudgetDecision.NNUNET_MEMBERS,
               f"nnU-Net: ensemble member {k + 1} (weight {weight:g}) dropped, {len(members)} left "
               f"({cost(current):.0f} s projected, {budget_s:.0f} s left)", current)
    for step in tile_steps:
        if cost(current) <= budget_s:
            break
        if step <= max(m.tile_step for m, _ in members):
            continue
        members = [(m.with_settings(tile_step=step), w) for m, w in members]
        current = _rebuild(members)
        decide(BudgetDecision.NNUNET_TILE_STEP,
               f"nnU-Net: tile step widened to {step:g} ({cost(current):.0f} s projected, {budget_s:.0f} s left)",
               current)
    final = cost(current)
    return BudgetFit(current, final, final <= budget_s, tuple(decisions))


__all__ = ["TILE_STEPS", "members_of", "passes", "projected_s", "BudgetFit", "fit_to_budget"]
