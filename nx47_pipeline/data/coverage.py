"""Coverage: which discovered pairs a run trains and validates on.

``max_train_volumes`` / ``max_val_volumes`` cap the two sides (0 means all);
the defaults 24 / 8 use 32 of the 786 competition pairs (4.07 %).  The split
is seeded, deterministic and independent of input order, and keeps each
scroll's volumes on one side whenever scroll ids are known and at least two
scrolls exist, so validation measures generalisation to an unseen scroll.

Ordering uses a hash of ``(seed, id)``, not a random generator, so the choice
is stable across numpy versions and grows by extension: raising a cap keeps
every volume chosen before (as long as the held-out scrolls stay the same).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

from nx47_pipeline.data.discovery import VolumeRecord, id_sort_key

#: Share of the pairs used for validation when both caps are 0 (all).
VAL_FRACTION = 0.2

#: Up to this many scrolls every grouping is tried; beyond, a greedy pass.
_EXHAUSTIVE_SCROLLS = 14


@dataclass(frozen=True)
class Selection:
    """A train / val split and its coverage audit.

    Attributes
    ----------
    train, val : list of VolumeRecord
        Sorted by id.
    audit : dict
        See :func:`coverage_audit`; also ``scroll_aware``,
        ``train_scrolls`` and ``val_scrolls``.
    warnings : list of str
        Why the split is not scroll-aware, or what else deserves a look.
    """

    train: list[VolumeRecord]
    val: list[VolumeRecord]
    audit: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def train_ids(self) -> list[str]:
        return [r.id for r in self.train]

    @property
    def val_ids(self) -> list[str]:
        return [r.id for r in self.val]


def _check_caps(max_train_volumes: int, max_val_volumes: int) -> None:
    for name, value in (("max_train_volumes", max_train_volumes), ("max_val_volumes", max_val_volumes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0 means all), got {value!r}")


def plan_counts(n_pairs: int, *, max_train_volumes: int, max_val_volumes: int) -> tuple[int, int]:
    """Train and val counts a selection aims for, from counts alone.

    Parameters
    ----------
    n_pairs : int
        Pairs discovered.
    max_train_volumes, max_val_volumes : int
        Caps; 0 means all.

    Returns
    -------
    (n_train, n_val) : tuple of int
        With ``n_pairs >= 2`` both are at least 1.  Both caps 0: every pair,
        about 80 / 20.  One cap 0: that side takes every pair the other does
        not.  Caps larger than the data shrink in proportion.

    Raises
    ------
    ValueError
        Negative ``n_pairs`` or caps.
    """
    _check_caps(max_train_volumes, max_val_volumes)
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs!r}")
    n = int(n_pairs)
    if n == 0:
        return 0, 0
    if n == 1:
        return 1, 0
    mt, mv = max_train_volumes, max_val_volumes
    if mt == 0 and mv == 0:
        n_val = min(n - 1, max(1, int(round(n * VAL_FRACTION))))
        return n - n_val, n_val
    if mt == 0:
        n_val = min(mv, n - 1)
        return n - n_val, n_val
    if mv == 0:
        n_train = min(mt, n - 1)
        return n_train, n - n_train
    if mt + mv <= n:
        return mt, mv
    n_val = min(mv, n - 1, max(1, int(round(n * mv / (mt + mv)))))
    n_train = min(mt, n - n_val)
    return n_train, n_val


def coverage_audit(
    n_discovered: int,
    n_train: int,
    n_val: int,
    *,
    max_train_volumes: int,
    max_val_volumes: int,
    scroll_aware: bool = False,
    train_scrolls: Sequence[str] = (),
    val_scrolls: Sequence[str] = (),
) -> dict[str, Any]:
    """The coverage audit: how much of the discovered data a run uses.

    Parameters
    ----------
    n_discovered : int
        Pairs discovered.
    n_train, n_val : int
        Pairs selected for training and validation.
    max_train_volumes, max_val_volumes : int
        The caps that produced them (0 means all).
    scroll_aware, train_scrolls, val_scrolls
        Filled by :func:`select_coverage`.

    Returns
    -------
    dict
        ``pair_count_discovered``, ``pair_count_selected_for_training``
        (train + val), ``coverage_pct_selected_vs_discovered`` (percent, 2
        decimals; 0.0 when nothing was discovered), ``max_train_volumes``,
        ``max_val_volumes``, ``n_train``, ``n_val``, ``scroll_aware``,
        ``train_scrolls``, ``val_scrolls``.
    """
    selected = int(n_train) + int(n_val)
    pct = round(100.0 * selected / n_discovered, 2) if n_discovered > 0 else 0.0
    return {
        "pair_count_discovered": int(n_discovered),
        "pair_count_selected_for_training": selected,
        "coverage_pct_selected_vs_discovered": pct,
        "max_train_volumes": int(max_train_volumes),
        "max_val_volumes": int(max_val_volumes),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "scroll_aware": bool(scroll_aware),
        "train_scrolls": sorted(train_scrolls, key=id_sort_key),
        "val_scrolls": sorted(val_scrolls, key=id_sort_key),
    }


def _hkey(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()


def _take(pool: list[VolumeRecord], k: int, seed: int) -> list[VolumeRecord]:
    ordered = sorted(pool, key=lambda r: _hkey(seed, r.id))
    return sorted(ordered[:k], key=lambda r: id_sort_key(r.id))


def _choose_val_scrolls(
    sizes: dict[str, int], n_unknown: int, t_train: int, t_val: int,
    all_train: bool, all_val: bool, seed: int,
) -> tuple[str, ...]:
    """The scroll group held out for validation (cost, then size, then hash)."""
    names = sorted(sizes, key=id_sort_key)
    total = sum(sizes.values()) + n_unknown

    def score(group: tuple[str, ...]) -> tuple:
        s_val = sum(sizes[g] for g in group)
        s_train = total - s_val
        got_val = s_val if all_val else min(s_val, t_val)
        got_train = s_train if all_train else min(s_train, t_train)
        cost = abs(got_val - t_val) + abs(got_train - t_train)
        return (cost, s_val, _hkey(seed, "|".join(group)))

    if len(names) <= _EXHAUSTIVE_SCROLLS:
        groups = (
            g for r in range(1, len(names)) for g in itertools.combinations(names, r)
        )
        return min(groups, key=score)
    # greedy: smallest-first in hashed order until the val target is met
    order = sorted(names, key=lambda s: (sizes[s], _hkey(seed, s)))
    group: list[str] = []
    acc = 0
    for s in order:
        if acc >= t_val or len(group) == len(names) - 1:
            break
        group.append(s)
        acc += sizes[s]
    return tuple(group)


def select_coverage(
    pairs: Sequence[VolumeRecord],
    *,
    max_train_volumes: int = 24,
    max_val_volumes: int = 8,
    seed: int = 47,
) -> Selection:
    """Pick the training and validation pairs.

    Parameters
    ----------
    pairs : sequence of VolumeRecord
        Usable pairs (``Inventory.pairs``); order does not matter.
    max_train_volumes, max_val_volumes : int
        Caps, 0 means all (see :func:`plan_counts`).
    seed : int
        Different seeds pick different volumes (and, among equally good
        scroll groupings, different held-out scrolls).

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        Negative caps, or the same id twice in ``pairs``.

    Notes
    -----
    Scroll-aware when at least two scrolls are known: the held-out scroll
    group is the one whose sizes best meet the target counts, smaller groups
    first.  Pairs with no scroll id stay on the training side.  With fewer
    than two known scrolls the split is per volume and a warning says why.
    """
    _check_caps(max_train_volumes, max_val_volumes)
    recs = sorted(pairs, key=lambda r: id_sort_key(r.id))
    ids = [r.id for r in recs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1}, key=id_sort_key)
        raise ValueError(f"pairs holds the same id more than once: {dup[:5]}")
    n = len(recs)
    t_train, t_val = plan_counts(n, max_train_volumes=max_train_volumes, max_val_volumes=max_val_volumes)
    warnings: list[str] = []
    all_train = max_train_volumes == 0
    all_val = max_val_volumes == 0

    by_scroll: dict[str, list[VolumeRecord]] = {}
    unknown: list[VolumeRecord] = []
    for r in recs:
        (by_scroll.setdefault(r.scroll_id, []) if r.scroll_id else unknown).append(r)

    scroll_aware = len(by_scroll) >= 2 and t_val > 0
    if scroll_aware:
        sizes = {s: len(v) for s, v in by_scroll.items()}
        val_group = set(
            _choose_val_scrolls(sizes, len(unknown), t_train, t_val, all_train, all_val, seed)
        )
        val_pool = [r for r in recs if r.scroll_id in val_group]
        train_pool = [r for r in recs if r.scroll_id not in val_group]
        if unknown:
            warnings.append(
                f"{len(unknown)} pair(s) have no scroll id; they stay on the training side"
            )
        n_val = len(val_pool) if all_val else min(t_val, len(val_pool))
        n_train = len(train_pool) if all_train else min(t_train, len(train_pool))
        if (not all_val and n_val < t_val) or (not all_train and n_train < t_train):
            warnings.append(
                f"scroll-aware split gives {n_train} train / {n_val} val instead of "
                f"{t_train} / {t_val}: held-out scroll(s) {sorted(val_group, key=id_sort_key)} "
                f"hold {len(val_pool)} pair(s)"
            )
        val = _take(val_pool, n_val, seed)
        train = _take(train_pool, n_train, seed)
        train_scrolls = sorted({r.scroll_id for r in train if r.scroll_id}, key=id_sort_key)
        val_scrolls = sorted(val_group, key=id_sort_key)
    else:
        if n >= 2:
            if not by_scroll:
                warnings.append("scroll ids unknown: train and val are split per volume")
            elif len(by_scroll) == 1:
                only = next(iter(by_scroll))
                warnings.append(
                    f"only one scroll ({only}) is known: train and val share it, "
                    "so validation overstates generalisation"
                )
        shuffled = sorted(recs, key=lambda r: _hkey(seed, r.id))
        val = sorted(shuffled[:t_val], key=lambda r: id_sort_key(r.id))
        train = sorted(shuffled[t_val : t_val + t_train], key=lambda r: id_sort_key(r.id))
        train_scrolls = sorted({r.scroll_id for r in train if r.scroll_id}, key=id_sort_key)
        val_scrolls = sorted({r.scroll_id for r in val if r.scroll_id}, key=id_sort_key)
    audit = coverage_audit(
        n, len(train), len(val),
        max_train_volumes=max_train_volumes, max_val_volumes=max_val_volumes,
        scroll_aware=scroll_aware, train_scrolls=train_scrolls, val_scrolls=val_scrolls,
    )
    return Selection(train=train, val=val, audit=audit, warnings=warnings)
