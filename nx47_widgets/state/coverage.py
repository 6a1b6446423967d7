"""The coverage model: discovered / selected / coverage % and the budget projection."""

from __future__ import annotations

from typing import Any

from nx47_pipeline.data.coverage import coverage_audit, plan_counts
from nx47_pipeline.data.discovery import discover, resolve_data_root
from nx47_pipeline.run.budget import largest_fit, load_preflight_timings, project_run

__all__ = ["CoverageModel", "scan_coverage"]


class CoverageModel:
    """Coverage panel: discovered / selected / coverage % and budget projection.

    Parameters
    ----------
    n_pairs : int
        Image/label pairs found by discovery.
    n_test : int
        Test volumes found by discovery.
    config : RunConfig
        The run configuration the projection is made for.
    timings : PreflightTimings or None
        Timings of a preflight (``budget.load_preflight_timings``); without
        them no projection is shown.
    """

    def __init__(self, *, n_pairs: int, n_test: int, config: Any,
                 timings: Any = None) -> None:
        if n_pairs < 0:
            raise ValueError(f"n_pairs must be >= 0, got {n_pairs!r}")
        self.n_pairs = int(n_pairs)
        self.n_test = int(n_test)
        self.config = config
        self.timings = timings
        self.max_train = int(config.max_train_volumes)
        self.max_val = int(config.max_val_volumes)
        self.budget_s = float(config.budget_s)
        self.version = 0

    def update(self, *, max_train: int | None = None, max_val: int | None = None,
               budget_s: float | None = None, auto_coverage: bool | None = None,
               timings: Any = ...) -> None:
        """Change the caps, the budget, the auto-coverage switch or the timings.

        Parameters
        ----------
        max_train, max_val : int, optional
            Volume caps (0 means all).
        budget_s : float, optional
            Runtime budget in seconds (> 0).
        auto_coverage : bool, optional
            The run's ``auto_coverage`` setting.
        timings : PreflightTimings or None, optional
            New preflight timings (None: no projection).

        Raises
        ------
        ValueError
            For a negative cap or a budget <= 0 (the message names the value).
        """
        if max_train is not None:
            if max_train < 0:
                raise ValueError(f"max_train must be >= 0 (0 means all), got {max_train!r}")
            self.max_train = int(max_train)
        if max_val is not None:
            if max_val < 0:
                raise ValueError(f"max_val must be >= 0 (0 means all), got {max_val!r}")
            self.max_val = int(max_val)
        if budget_s is not None:
            if budget_s <= 0:
                raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
            self.budget_s = float(budget_s)
        if auto_coverage is not None:
            self.config = self.config.replace(auto_coverage=bool(auto_coverage))
        if timings is not ...:
            self.timings = timings
        self.version += 1

    def reload_timings(self, out_dir: str) -> bool:
        """Load the preflight timings of ``out_dir``; True if there were any.

        Parameters
        ----------
        out_dir : str
            The run folder (its ``preflight/timings.json``).

        Returns
        -------
        bool
            True when timings were found (and replaced the current ones).
        """
        timings = load_preflight_timings(out_dir)
        if timings is None:
            return False
        self.update(timings=timings)
        return True

    def _config(self) -> Any:
        return self.config.replace(max_train_volumes=self.max_train,
                                   max_val_volumes=self.max_val, budget_s=self.budget_s)

    def summary(self) -> dict[str, Any]:
        """Numbers of the coverage panel.

        Returns
        -------
        dict
            ``discovered``, ``n_train``, ``n_val``, ``selected``,
            ``coverage_pct``, and when timings are known ``projected_s``,
            ``fits``, ``budget_s``, ``max_train_fit``, ``max_val_fit``,
            ``fit_projected_s``.
        """
        n_train, n_val = plan_counts(self.n_pairs, max_train_volumes=self.max_train,
                                     max_val_volumes=self.max_val)
        audit = coverage_audit(self.n_pairs, n_train, n_val,
                               max_train_volumes=self.max_train,
                               max_val_volumes=self.max_val)
        out: dict[str, Any] = {
            "discovered": audit["pair_count_discovered"],
            "selected": audit["pair_count_selected_for_training"],
            "coverage_pct": float(audit["coverage_pct_selected_vs_discovered"]),
            "n_train": n_train,
            "n_val": n_val,
            "n_test": self.n_test,
            "budget_s": self.budget_s,
        }
        if self.timings is not None:
            cfg = self._config()
            proj = project_run(self.timings, n_train=n_train, n_val=n_val,
                               n_test=self.n_test, config=cfg)
            out.update(projected_s=float(proj.total_s), fits=bool(proj.fits))
            mt, mv, ps = largest_fit(self.timings, n_pairs=self.n_pairs,
                                     n_test=self.n_test, config=cfg)
            out.update(max_train_fit=int(mt), max_val_fit=int(mv), fit_projected_s=float(ps))
        return out

    def checked_summary(self) -> tuple[dict[str, Any], str]:
        """:meth:`summary`, dropping timings the projection cannot use.

        A stale timings file may lack fields the projection needs; then the
        timings are forgotten and the summary comes without a projection.

        Returns
        -------
        summary : dict
            As :meth:`summary`.
        problem : str
            ``""``, or why the projection is unavailable.
        """
        try:
            return self.summary(), ""
        except Exception as exc:
            self.timings = None
            return self.summary(), f"projection unavailable: {exc}"


def scan_coverage(data_root: str, out_dir: str, config: Any
                  ) -> tuple[CoverageModel | None, str]:
    """Discover ``data_root`` and build the coverage model for ``config``.

    No demo data is generated here: a run does that when it starts.

    Parameters
    ----------
    data_root : str
        The data root as typed (blank or ``"auto"``: the Kaggle mounts, else
        the demo dataset).
    out_dir : str
        The run folder whose preflight timings feed the projection (``""``: none).
    config : RunConfig
        The configuration the projection is made for.

    Returns
    -------
    model : CoverageModel or None
        None when discovery failed.
    note : str
        The data root and the number of discovery issues, or why discovery failed.
    """
    try:
        root = resolve_data_root(data_root.strip() or "auto")
        inv = discover(root)
    except Exception as exc:
        return None, f"data root {data_root!r}: {exc}"
    timings = load_preflight_timings(out_dir) if out_dir else None
    model = CoverageModel(n_pairs=len(inv.pairs), n_test=len(inv.test), config=config,
                          timings=timings)
    issues = len(getattr(inv, "issues", []) or [])
    return model, f"root: {root}" + (f" · {issues} issue(s) found" if issues else "")
