"""Logistic voxel classifier fitted by accelerated proximal gradient.

Problem (``Z`` the standardized features, ``y`` in {0, 1}, ``w`` the
coefficients, ``b`` the unpenalised intercept)::

    minimise  F(w, b) = mean_i log(1 + exp(-(2 y_i - 1)(Z_i w + b)))
                        + l2 / 2 ||w||^2 + l1 ||w||_1

The smooth part (logistic loss + L2) has a gradient that is Lipschitz with
constant ``L = lambda_max([Z 1]^T [Z 1]) / (4 n) + l2``; the L1 term is
handled by its proximal operator (soft thresholding of ``w``, never of
``b``).  FISTA with step ``1/L`` and a monotone restart (when a momentum step
would raise the objective, the momentum is dropped and a plain proximal
gradient step is taken, which cannot raise it) gives an objective that never
increases.  See ``docs/model.md``.
"""

from __future__ import annotations

import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit

from nx47_pipeline.io.atomic import atomic_path
from nx47_pipeline.model.features import halo_for
from nx47_pipeline.model.predict import linear_probabilities

IterFn = Callable[[int, int, float], None]
ProgressFn = Callable[[int, int, str], None]

MODEL_FORMAT = "nx47-logistic-v1"


@dataclass
class LogisticModel:
    """A fitted linear voxel classifier on standardized features.

    ``decision = ((x - mean) / scale) @ coef + intercept``; the probability of
    "surface" is the logistic function of the decision.
    """

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    feature_names: list[str]
    l1: float = 0.0
    l2: float = 0.0
    scales: tuple = (1.0, 2.0, 4.0)

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64).reshape(-1)
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        self.intercept = float(self.intercept)
        self.feature_names = [str(n) for n in self.feature_names]
        self.scales = tuple(float(s) for s in self.scales)
        n = self.coef.size
        for name in ("mean", "scale"):
            if getattr(self, name).size != n:
                raise ValueError(
                    f"{name} has {getattr(self, name).size} entries, coef has {n}"
                )
        if len(self.feature_names) != n:
            raise ValueError(f"feature_names has {len(self.feature_names)} entries, coef has {n}")
        if np.any(self.scale <= 0):
            raise ValueError("scale must be positive everywhere")

    # ------------------------------------------------------------------
    def raw_weights(self) -> tuple[np.ndarray, float]:
        """Weights and bias acting on unstandardized features."""
        w = self.coef / self.scale
        return w, float(self.intercept - self.mean @ w)

    @property
    def n_features(self) -> int:
        return int(self.coef.size)

    @property
    def halo(self) -> int:
        """Context, in voxels, a block needs for exact probabilities (the filter bank's reach)."""
        return halo_for(self.scales)

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n, {self.n_features}), got {X.shape}"
            )
        return X

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Linear decision values for rows of ``X`` (n, n_features), float32."""
        X = self._check_X(X)
        w, b = self.raw_weights()
        out = X.astype(np.float32, copy=False) @ w.astype(np.float32)
        out += np.float32(b)
        return out

    def predict_volume(
        self,
        volume: np.ndarray,
        *,
        slab: int = 32,
        on_progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Probability map of a whole volume (float32, shape of ``volume``).

        Shorthand for :func:`nx47_pipeline.model.predict.linear_probabilities`
        with this one model.
        """
        return linear_probabilities(volume, [self], slab=slab, on_progress=on_progress)[0]

    # ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` (npz, no pickle) atomically."""
        path = Path(path)
        with atomic_path(path, fsync=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    format=np.array(MODEL_FORMAT),
                    coef=self.coef,
                    intercept=np.array(self.intercept),
                    mean=self.mean,
                    scale=self.scale,
                    feature_names=np.array(self.feature_names, dtype=str),
                    l1=np.array(self.l1, dtype=np.float64),
                    l2=np.array(self.l2, dtype=np.float64),
                    scales=np.array(self.scales, dtype=np.float64),
                )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LogisticModel":
        """Read a model written by :meth:`save`."""
        path = Path(path)
        keys = ("format", "coef", "intercept", "mean", "scale", "feature_names", "scales")
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("not an npz archive")
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: cannot read model file ({exc})") from None
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"{path}: not an NX47 model file (missing {missing})")
        fmt = str(data["format"])
        if fmt != MODEL_FORMAT:
            raise ValueError(f"{path}: unknown model format {fmt!r}")
        return cls(
            coef=data["coef"],
            intercept=float(data["intercept"]),
            mean=data["mean"],
            scale=data["scale"],
            feature_names=[str(s) for s in data["feature_names"]],
            l1=float(data["l1"]) if "l1" in data else 0.0,
            l2=float(data["l2"]) if "l2" in data else 0.0,
            scales=tuple(float(s) for s in data["scales"]),
        )


@dataclass
class FitResult:
    """Outcome of :func:`fit_prox`."""

    model: LogisticModel
    n_iter: int
    converged: bool
    stopped_reason: str  # converged | max_iter | time_cap | deadline
    objective: list[float] = field(default_factory=list)
    seconds: float = 0.0


def standardize_fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation of ``X`` (constant columns get 1).

    Parameters
    ----------
    X : ndarray, shape (n, n_features)

    Returns
    -------
    mean, scale : ndarray of float64, shape (n_features,)
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    return mean, scale


def _soft_threshold(v: np.ndarray, thr: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)


def fit_prox(
    X: np.ndarray,
    y: np.ndarray,
    *,
    l1: float = 1e-3,
    l2: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-6,
    time_cap_s: float | None = None,
    deadline: float | None = None,
    on_iter: IterFn | None = None,
    feature_names: Sequence[str] | None = None,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    warm_start: LogisticModel | None = None,
    intercept_shift: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> FitResult:
    """Fit an L1 + L2 penalised logistic model by accelerated proximal gradient.

    Parameters
    ----------
    X : ndarray, shape (n, n_features)
        Voxel features (standardized internally).
    y : ndarray, shape (n,)
        Labels in {0, 1}; both classes must be present.
    l1, l2 : float
        Penalty weights (>= 0) on the standardized coefficients.
    max_iter : int
        Iteration cap (>= 1).
    tol : float
        Convergence tolerance: stops when the gradient-mapping norm
        ``L ||z - y_k||`` is <= ``tol``, or when the relative objective
        decrease is < ``tol`` while that norm is <= ``sqrt(tol)``.
    time_cap_s : float, optional
        Stop after this many seconds (``clock`` time).
    deadline : float, optional
        Stop once ``clock()`` reaches this value (a ``time.monotonic`` value).
    on_iter : callable, optional
        ``on_iter(i, max_iter, objective)`` after every iteration (i from 1);
        it may raise (e.g. ``Cancelled``) and the exception propagates.
    feature_names : sequence of str, optional
        Names stored in the model (default ``f0, f1, ...``).
    scales : sequence of float
        Filter-bank scales stored in the model (used by ``predict_volume``).
    warm_start : LogisticModel, optional
        Start from this model (same features); its coefficients are mapped
        onto this data's standardization.  It is taken to carry the same
        ``intercept_shift`` (an earlier result of this function).
    intercept_shift : float
        Added to the fitted intercept: the logit correction from the
        class-balanced sample's prior to the data's (:func:`prior_shift`),
        so the model's probabilities mean what they say.  The objective is
        that of the sample; the shift is applied to the returned model only.
    clock : callable
        Monotonic clock (injectable for tests).

    Returns
    -------
    FitResult
        ``objective[k]`` is the objective after iteration ``k + 1``.
    """
    t_start = clock()
    X = np.asarray(X)
    y = np.asarray(y).reshape(-1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, n_features), got shape {X.shape}")
    n, nf = X.shape
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} entries but X has {n} rows")
    yv = np.unique(y)
    if not np.all(np.isin(yv, (0, 1))):
        raise ValueError(f"y must hold only 0 and 1, got values {yv[:5].tolist()}")
    if yv.size < 2:
        raise ValueError(f"y must contain both classes 0 and 1, got only {yv.tolist()}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    for name, val in (("l1", l1), ("l2", l2)):
        if not (val >= 0 and math.isfinite(val)):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    max_iter = int(max_iter)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if time_cap_s is not None and not time_cap_s >= 0:
        raise ValueError(f"time_cap_s must be >= 0 or None, got {time_cap_s!r}")
    names = [f"f{i}" for i in range(nf)] if feature_names is None else [str(s) for s in feature_names]
    if len(names) != nf:
        raise ValueError(f"feature_names has {len(names)} entries but X has {nf} columns")

    mean, scale = standardize_fit(X)
    Z = (X - mean) / scale  # float64
    yf = y.astype(np.float64)
    sgn = 2.0 * yf - 1.0

    # Lipschitz constant of the smooth part (logistic loss + L2) in (w, b).
    G = np.empty((nf + 1, nf + 1))
    G[:nf, :nf] = Z.T @ Z
    colsum = Z.sum(axis=0)
    G[:nf, nf] = G[nf, :nf] = colsum
    G[nf, nf] = n
    L = 0.25 * float(np.linalg.eigvalsh(G)[-1]) / n + l2

    if warm_start is not None:
        if list(warm_start.feature_names) != names:
            raise ValueError(
                "warm_start features differ from feature_names: "
                f"{warm_start.feature_names[:3]}... vs {names[:3]}..."
            )
        u, c = warm_start.raw_weights()
        w = u * scale
        b = c - float(intercept_shift) + float(mean @ u)
    else:
        w = np.zeros(nf)
        p = float(np.clip(yf.mean(), 1e-6, 1 - 1e-6))
        b = math.log(p / (1 - p))

    def objective(w_: np.ndarray, b_: float) -> float:
        m = Z @ w_ + b_
        loss = float(np.mean(np.logaddexp(0.0, -sgn * m)))
        return loss + 0.5 * l2 * float(w_ @ w_) + l1 * float(np.abs(w_).sum())

    def gradient(w_: np.ndarray, b_: float) -> tuple[np.ndarray, float]:
        r = expit(Z @ w_ + b_) - yf
        r /= n
        return Z.T @ r + l2 * w_, float(r.sum())

    def prox_step(w_: np.ndarray, b_: float) -> tuple[np.ndarray, float]:
        gw, gb = gradient(w_, b_)
        return _soft_threshold(w_ - gw / L, l1 / L), b_ - gb / L

    x_w, x_b = w, b
    f_prev = objective(x_w, x_b)
    y_w, y_b = x_w.copy(), x_b
    t = 1.0
    history: list[float] = []
    reason = "max_iter"
    sqrt_tol = math.sqrt(tol)
    for i in range(1, max_iter + 1):
        now = clock()
        if deadline is not None and now >= deadline:
            reason = "deadline"
            break
        if time_cap_s is not None and now - t_start >= time_cap_s:
            reason = "time_cap"
            break
        z_w, z_b = prox_step(y_w, y_b)
        f_z = objective(z_w, z_b)
        base_w, base_b = y_w, y_b
        if f_z > f_prev:
            # Momentum overshot: restart from the last iterate.
            t = 1.0
            base_w, base_b = x_w, x_b
            z_w, z_b = prox_step(x_w, x_b)
            f_z = objective(z_w, z_b)
        gm_norm = L * math.sqrt(float(np.sum((z_w - base_w) ** 2)) + (z_b - base_b) ** 2)
        rel = (f_prev - f_z) / max(1.0, abs(f_prev))
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_next
        y_w = z_w + beta * (z_w - x_w)
        y_b = z_b + beta * (z_b - x_b)
        t = t_next
        x_w, x_b, f_prev = z_w, z_b, f_z
        history.append(f_z)
        if on_iter is not None:
            on_iter(i, max_iter, f_z)
        if gm_norm <= tol or (abs(rel) < tol and gm_norm <= sqrt_tol):
            reason = "converged"
            break

    model = LogisticModel(
        coef=x_w,
        intercept=x_b + float(intercept_shift),
        mean=mean,
        scale=scale,
        feature_names=names,
        l1=float(l1),
        l2=float(l2),
        scales=tuple(float(s) for s in scales),
    )
    return FitResult(
        model=model,
        n_iter=len(history),
        converged=reason == "converged",
        stopped_reason=reason,
        objective=history,
        seconds=clock() - t_start,
    )


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def prior_shift(counts: np.ndarray, y: np.ndarray) -> float:
    """Intercept correction from the sample's class prior to the data's.

    Parameters
    ----------
    counts : array of 2 ints
        Labelled voxels of class 0 and class 1 over the training volumes.
    y : array
        The (class-balanced) sample's labels.

    Returns
    -------
    float
        ``logit(data prior) - logit(sample prior)``; 0 when either is empty.
        Pass it to :func:`fit_prox` as ``intercept_shift``.
    """
    counts = np.asarray(counts)
    total = int(counts.sum())
    if total == 0 or len(y) == 0:
        return 0.0
    return _logit(counts[1] / total) - _logit(float(np.mean(y)))
