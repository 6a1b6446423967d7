"""Auto-context: linear models that also see the previous model's map.

A per-voxel linear model on the filter bank cannot tell the side of a sheet
its label sits on, nor that a voxel lies between two sheets: it marks both
flanks of every sheet.  Auto-context (Tu & Bai, 2010) stacks the same kind
of model: round ``r`` is a linear model on the filter bank of the image
*and* the filter bank of round ``r - 1``'s probability map, so it learns the
shape of the map around each voxel (a ridge, its flank, a gap).  Measured on
held-out data of both generator variants and two seeds with the exact score
(docs/model.md): three rounds add 0.09–0.12 to the score on either variant,
0.07–0.12 from variant b to a and 0.01–0.05 from a to b.

* :class:`ContextModel` -- the base model and its rounds; its
  :meth:`ContextModel.predict_volume` computes the image's filter bank once
  and one filter bank of a map per round.
* :func:`fit_context` -- fits the rounds on training volumes.  The maps a
  round learns from are *cross-fitted*: each training volume's map comes
  from models fitted on the other half of the volumes, so the round sees
  maps as wrong as the ones it will get on new data.

The map a round sees is stored as uint8 (:func:`probability_to_uint8`),
exactly what the run keeps on disk, so a map read back gives the same next
round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit

from pathlib import Path

from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import CONTEXT, context_round
from nx47_pipeline.model.features import feature_names, features_at, halo_for, iter_feature_slabs
from nx47_pipeline.model.linear import LogisticModel, fit_prox
from nx47_pipeline.model.postprocess import _check_3d, probability_to_uint8

#: Prefix of the names of a map's features in a round's model.
CONTEXT_PREFIX = "context:"
#: Rounds a run fits by default (``context_rounds``).
DEFAULT_ROUNDS = 3

#: ``on_progress(done, total, what)``; may raise to cancel.
ProgressFn = Callable[[int, int, str], None]


def context_names(scales: Sequence[float]) -> list[str]:
    """The features of a round's model: the image's filter bank, then the map's."""
    base = feature_names(tuple(scales))
    return base + [CONTEXT_PREFIX + n for n in base]


@dataclass(frozen=True)
class ContextModel:
    """A base linear model and its auto-context rounds.

    Attributes
    ----------
    base : LogisticModel
        The model on the image's filter bank (``fit_prox``).
    rounds : tuple of LogisticModel
        Round ``r`` acts on :func:`context_names` features: the image's
        filter bank and the filter bank of round ``r - 1``'s map (the base
        model's for the first round).  Empty: the base model alone.
    """

    base: LogisticModel
    rounds: tuple[LogisticModel, ...] = ()

    def __post_init__(self) -> None:
        scales = tuple(self.base.scales)
        want = context_names(scales)
        for k, m in enumerate(self.rounds):
            if tuple(m.scales) != scales:
                raise ValueError(f"rounds[{k}] uses scales {tuple(m.scales)}, the base model {scales}")
            if list(m.feature_names) != want:
                raise ValueError(f"rounds[{k}] features are not the context features of scales {scales}: "
                                 f"{list(m.feature_names)[:2]}... ({len(m.feature_names)} features, "
                                 f"{len(want)} expected)")

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(self.base.scales)

    @property
    def halo(self) -> int:
        """Context, in voxels, a block needs for exact probabilities: one
        filter bank's reach per map computed (the image's and each round's)."""
        return halo_for(self.scales) * (1 + len(self.rounds))

    def predict_volume(self, volume: np.ndarray, *, slab: int = 32,
                       on_progress: ProgressFn | None = None) -> np.ndarray:
        """The last round's probability map (float32, ``volume``'s shape).

        The image's filter bank is computed once: each model's part on it is
        kept as a volume of partial decisions, and each round then adds its
        part on the filter bank of the previous map.  ``on_progress(done,
        total, what)`` as the slabs of each filter bank finish (total: slabs
        x filter banks, one for the image and one per round).
        """
        volume = _check_3d("volume", np.asarray(volume))
        models = (self.base,) + tuple(self.rounds)
        n_slabs = -(-volume.shape[0] // int(slab))
        total = n_slabs * len(models)

        def report(p: int) -> ProgressFn:
            def on(done, _total, what):
                if on_progress is not None:
                    on_progress(p * n_slabs + done, total, what if p == 0 else f"context round {p}: {what}")
            return on

        partial = _image_part(volume, models, self.scales, slab, report(0))
        prob = expit(partial[0])
        for k in range(1, len(models)):
            _add_map_part(partial[k], probability_to_uint8(prob), models[k], self.scales, slab, report(k))
            prob = expit(partial[k])
        return prob.astype(np.float32, copy=False)

    def save_rounds(self, folder: str | Path, **info) -> list[str]:
        """Write each round to ``folder/context_<k>.npz`` and ``folder/context.json``
        (``rounds``, ``files`` and ``info``); returns the file names written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = [context_round(k) for k in range(1, len(self.rounds) + 1)]
        for name, m in zip(files, self.rounds):
            m.save(folder / name)
        write_json(folder / CONTEXT, {"rounds": len(self.rounds), "files": files, **info})
        return files + [CONTEXT]


def _image_part(volume: np.ndarray, models: Sequence[LogisticModel], scales: tuple[float, ...], slab: int,
                on_progress: ProgressFn | None) -> np.ndarray:
    """Each model's decision on the image's filter bank alone (its bias
    included): float32, shape ``(len(models),) + volume.shape``; one filter
    bank of the image."""
    nf = len(feature_names(scales))
    raw = [(w[:nf].astype(np.float32), np.float32(b)) for w, b in (m.raw_weights() for m in models)]
    out = np.empty((len(models),) + volume.shape, dtype=np.float32)
    for z0, z1, feats in iter_feature_slabs(volume, scales=scales, slab=slab, on_progress=on_progress):
        flat = feats.reshape(nf, -1).T
        for k, (w, b) in enumerate(raw):
            d = flat @ w
            d += b
            out[k, z0:z1] = d.reshape(feats.shape[1:])
    return out


def _add_map_part(partial: np.ndarray, prev: np.ndarray, model: LogisticModel, scales: tuple[float, ...],
                  slab: int, on_progress: ProgressFn | None) -> None:
    """Add a round's decision on the filter bank of the previous map ``prev``
    (uint8) to its ``partial`` decision on the image, in place."""
    nf = len(feature_names(scales))
    w_map = model.raw_weights()[0][nf:].astype(np.float32)
    for z0, z1, feats in iter_feature_slabs(prev, scales=scales, slab=slab, on_progress=on_progress):
        partial[z0:z1] += (feats.reshape(nf, -1).T @ w_map).reshape(feats.shape[1:])


def load_rounds(base: LogisticModel, folder: str | Path) -> ContextModel | None:
    """``base`` with the rounds :meth:`ContextModel.save_rounds` wrote in
    ``folder``; None when ``folder`` holds no ``context.json``.  Raises
    ValueError naming the file that is missing, unreadable or does not fit
    ``base``."""
    folder = Path(folder)
    record = read_json(folder / CONTEXT)
    if record is None:
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or len(files) != record.get("rounds"):
        raise ValueError(f"{folder / CONTEXT}: 'files' must list one file per round, got {files!r}")
    rounds = []
    for name in files:
        try:
            rounds.append(LogisticModel.load(folder / str(name)))
        except FileNotFoundError:
            raise ValueError(f"{folder / str(name)}: listed in {CONTEXT} but missing") from None
    try:
        return ContextModel(base, tuple(rounds))
    except ValueError as exc:
        raise ValueError(f"{folder / CONTEXT}: {exc}") from None


# ---------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------
def fit_context(
    pairs: Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]],
    base: LogisticModel,
    *,
    rounds: int = DEFAULT_ROUNDS,
    rows_per_volume: int = 20000,
    l1: float | None = None,
    l2: float | None = None,
    max_iter: int = 300,
    seed: int = 0,
    slab: int = 32,
    on_progress: ProgressFn | None = None,
) -> ContextModel:
    """Fit ``rounds`` auto-context rounds on top of ``base``.

    Parameters
    ----------
    pairs : sequence of callable
        ``pairs[i]()`` -> ``(image, label)`` of a training volume (labels 0,
        1 and 2 = ignored), read when needed; at least 2 volumes (the maps
        are cross-fitted on two halves).
    base : LogisticModel
        The fitted base model (on every training volume's rows).
    rounds : int
        Auto-context rounds (>= 0; 0 returns the base model alone).
    rows_per_volume : int
        Labelled voxels (0 or 1) sampled per volume, the same for every round.
    l1, l2 : float, optional
        Penalties of ``fit_prox`` (default: the base model's).
    max_iter : int
        ``fit_prox`` iterations per model.
    seed : int
        The voxel sample's seed.
    slab : int
        z-slab thickness of the filter banks.
    on_progress : callable, optional
        ``on_progress(done, total, what)`` after every filter bank of a
        volume and every fit; may raise to cancel.

    Returns
    -------
    ContextModel
        ``base`` and the rounds fitted on every volume.  Each round's model
        is fitted on the maps of the models fitted on the other half
        (cross-fitting), and those maps are computed with the other half's
        own rounds.
    """
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    rounds = int(rounds)
    if rounds == 0:
        return ContextModel(base)
    if len(pairs) < 2:
        raise ValueError(f"pairs must hold at least 2 training volumes for cross-fitting, got {len(pairs)}")
    if not rows_per_volume > 0:
        raise ValueError(f"rows_per_volume must be > 0, got {rows_per_volume!r}")
    l1 = base.l1 if l1 is None else float(l1)
    l2 = base.l2 if l2 is None else float(l2)
    scales = tuple(base.scales)
    n = len(pairs)
    fold = np.arange(n) % 2
    # steps: per volume the image's rows, per round its map's rows (the first round also makes the map)
    # and, before the next round, the next map; fits: the base model on each half (+ the given one),
    # each round on each half and on every volume
    total = n * 2 * rounds + 3 + 3 * rounds
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], total, what)

    def sub(what: str) -> ProgressFn:
        """Progress within one filter bank (its slabs): a fraction of the next step."""
        def on(d, t, step):
            if on_progress is not None:
                on_progress(done[0] + min(float(d) / max(float(t), 1.0), 1.0), total, f"{what}: {step}")
        return on

    rng = np.random.default_rng(seed)
    idx, y, img_rows = [], [], []
    for i, load in enumerate(pairs):
        image, label = load()
        ok = np.flatnonzero(label.ravel() != 2)
        take = np.sort(rng.choice(ok, min(int(rows_per_volume), ok.size), replace=False)) if ok.size else ok
        idx.append(take)
        y.append((label.ravel()[take] == 1).astype(np.float64))
        what = f"volume {i + 1}/{n}: image features"
        img_rows.append(features_at(image, take, scales=scales, slab=slab, on_progress=sub(what)))
        tick(what)

    def fit(rows: list[np.ndarray], which: np.ndarray, names: list[str], what: str) -> LogisticModel:
        X = np.concatenate([rows[i] for i in which])
        t = np.concatenate([y[i] for i in which])
        if t.min(initial=1) == t.max(initial=0):
            raise ValueError(f"{what}: the sampled voxels hold one class only; context needs both")
        step = sub(what)
        res = fit_prox(X, t, l1=l1, l2=l2, max_iter=max_iter, feature_names=names, scales=scales,
                       on_iter=lambda i, n, objective: step(i, n, f"iteration {i}"))
        tick(what)
        return res.model

    base_names = feature_names(scales)
    halves = [np.flatnonzero(fold == h) for h in (0, 1)]
    # the other half's chain of models for each volume: chains[h] = models fitted on half h
    chains = [[fit(img_rows, halves[h], base_names, f"base model on half {h + 1}")] for h in (0, 1)]
    tick("base model on every volume (given)")
    final: list[LogisticModel] = []
    maps: list[np.ndarray | None] = [None] * n  # each volume's map from the other half's chain, uint8
    for r in range(1, rounds + 1):
        rows = []
        for i, load in enumerate(pairs):
            what = f"round {r}: volume {i + 1}/{n}: map features"
            if maps[i] is None:  # round 1: the other half's base map
                other = chains[1 - fold[i]][0]
                maps[i] = probability_to_uint8(other.predict_volume(load()[0], slab=slab, on_progress=sub(what)))
            map_rows = features_at(maps[i], idx[i], scales=scales, slab=slab, on_progress=sub(what))
            rows.append(np.concatenate([img_rows[i], map_rows], axis=1))
            tick(what)
        names = context_names(scales)
        for h in (0, 1):
            chains[h].append(fit(rows, halves[h], names, f"round {r} on half {h + 1}"))
        final.append(fit(rows, np.arange(n), names, f"round {r} on every volume"))
        if r < rounds:  # the next round's maps: this round of the other half's chain, on its current map
            for i, load in enumerate(pairs):
                what = f"round {r}: volume {i + 1}/{n}: next map"
                step = sub(what)
                model = chains[1 - fold[i]][r]
                partial = _image_part(load()[0], [model], scales, slab, lambda d, t, w: step(d, 2 * t, w))[0]
                _add_map_part(partial, maps[i], model, scales, slab, lambda d, t, w: step(t + d, 2 * t, w))
                maps[i] = probability_to_uint8(expit(partial))
                tick(what)
    return ContextModel(base, tuple(final))


__all__ = ["CONTEXT_PREFIX", "DEFAULT_ROUNDS", "ContextModel", "context_names", "fit_context", "load_rounds"]
