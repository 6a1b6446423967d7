"""The coverage model: discovered / selected / coverage % and the budget projection."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nx47_pipeline.data.coverage import coverage_audit, plan_counts, select_coverage
from nx47_pipeline.data.discovery import discover, resolve_data_root
from nx47_pipeline.run.budget import largest_fit, load_preflight_timings, project_run
from nx47_pipeline.telemetry.events import EventKind
from nx47_widgets.loaders import journal_lines

__all__ = ["CoverageModel", "scan_coverage", "timings_for_data"]

#: Why there is no projection when the output folder has no preflight of this data.
NOT_MEASURED = "not measured yet: no preflight of this data in the output folder"


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
        Timings of a preflight of this data (:func:`timings_for_data`);
        without them no projection is shown.
    pairs : sequence of VolumeRecord, optional
        The discovered pairs: the selected counts are then those of the
        run's own selection (:func:`~nx47_pipeline.data.coverage.select_coverage`,
        scroll-aware), not the counts the caps aim for.
    seed : int
        The run's seed (the selection depends on it).
    data_root : str
        The resolved data root (timings of another root are refused).
    """

    def __init__(self, *, n_pairs: int, n_test: int, config: Any,
                 timings: Any = None, pairs: Sequence[Any] | None = None,
                 data_root: str = "") -> None:
        if n_pairs < 0:
            raise ValueError(f"n_pairs must be >= 0, got {n_pairs!r}")
        self.n_pairs = int(n_pairs)
        self.n_test = int(n_test)
        self.config = config
        self.timings = timings
        self.pairs = list(pairs) if pairs is not None else None
        self.data_root = data_root
        #: why the timings were not used ("" when used or none were found)
        self.timings_note = ""
        #: why the budget control's value is refused (None: it is fine)
        self.budget_problem: str | None = None
        #: discovery issues, one line each
        self.issues: list[str] = []
        self.max_train = int(config.max_train_volumes)
        self.max_val = int(config.max_val_volumes)
        self.budget_s = float(config.budget_s)
        self.version = 0

    def update(self, *, max_train: int | None = None, max_val: int | None = None,
               budget_s: float | None = None, auto_coverage: bool | None = None,
               timings: Any = ..., budget_problem: str | None = ...) -> None:
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
        budget_problem : str or None, optional
            Why the budget typed cannot run (then no budget and no
            projection are shown); None: the budget is fine.

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
        if budget_problem is not ...:
            self.budget_problem = budget_problem
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
            True when what the panel shows changed (timings of this data
            found, or timings dropped).
        """
        timings, note = timings_for_data(out_dir, self.data_root)
        changed = note != self.timings_note
        self.timings_note = note
        if timings is None:
            if self.timings is not None:
                self.update(timings=None)
                return True
            return changed
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
            ``coverage_pct``, ``n_test``, ``budget_s``,
            ``selection_warnings`` (the selection's own, e.g. a scroll-aware
            split that selects fewer than the caps), ``budget_problem`` when
            the budget is refused (then nothing is projected),
            ``timings_note`` when the folder's timings are of other data,
            and when timings of this data are known ``projected_s``,
            ``fits``, ``max_train_fit``, ``max_val_fit``, ``fit_projected_s``.
        """
        warnings: list[str] = []
        if self.pairs is not None:  # what the run will select (scroll-aware)
            sel = select_coverage(self.pairs, max_train_volumes=self.max_train,
                                  max_val_volumes=self.max_val,
                                  seed=int(getattr(self.config, "seed", 47)))
            n_train, n_val, warnings = len(sel.train), len(sel.val), list(sel.warnings)
        else:
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
            "selection_warnings": warnings,
        }
        if self.budget_problem:
            out["budget_problem"] = self.budget_problem
            return out
        if self.timings_note:
            out["timings_note"] = self.timings_note
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
        The run folder whose preflight timings feed the projection (``""``:
        none); only timings of a preflight of this data root are used.
    config : RunConfig
        The configuration the projection is made for.

    Returns
    -------
    model : CoverageModel or None
        None when discovery failed.
    note : str
        The data root, or why discovery failed (said once: the error text
        already names the data root).  The discovery issues are on
        ``model.issues``.
    """
    typed = data_root.strip() or "auto"
    try:
        root = resolve_data_root(typed)
        inv = discover(root)
    except Exception as exc:
        text = str(exc)
        return None, (text if typed in text else f"data root {typed!r}: {text}")
    resolved = str(Path(root).resolve())
    model = CoverageModel(n_pairs=len(inv.pairs), n_test=len(inv.test), config=config,
                          pairs=inv.pairs, data_root=resolved)
    if out_dir:
        model.reload_timings(out_dir)
    model.issues = [f"{i.subject}: {i.message}" if getattr(i, "subject", "") else str(i.message)
                    for i in (getattr(inv, "issues", []) or [])]
    return model, f"root: {root}"


def timings_for_data(out_dir: str, data_root: str) -> tuple[Any, str]:
    """The preflight timings of ``out_dir`` if they were measured on ``data_root``.

    The preflight records its data root in ``preflight/timings.json``; an
    older file without it is matched with the data root of the journal's
    last CONFIG.  Timings of another (or an unknown) data root project
    nothing: the page says the duration is not measured yet.

    Parameters
    ----------
    out_dir : str
        The run folder.
    data_root : str
        The resolved data root discovered (``""``: accept any timings).

    Returns
    -------
    timings : PreflightTimings or None
    note : str
        ``""``, or why timings found in the folder are not used.
    """
    timings = load_preflight_timings(out_dir)
    if timings is None or not data_root:
        return timings, ""
    measured = timings.data_root or _journal_data_root(Path(out_dir))
    if measured is None:
        return None, f"{NOT_MEASURED} (the preflight in {out_dir} does not say which data it measured)"
    if _same_folder(measured, data_root):
        return timings, ""
    return None, f"{NOT_MEASURED} (the preflight in {out_dir} measured {measured})"


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return a == b


def _journal_data_root(folder: Path) -> str | None:
    """The resolved data root of the last CONFIG in ``folder``'s journal, or None."""
    found = None
    for event in journal_lines(folder, containing=f'"{EventKind.CONFIG.value}"'):
        payload = event.get("payload")
        cfg = payload.get("config", {}) if isinstance(payload, dict) else {}
        if isinstance(cfg, dict) and cfg.get("data_root"):
            found = str(cfg["data_root"])
    if found is None:
        return None
    try:
        return str(resolve_data_root(found).resolve())
    except Exception:  # noqa: BLE001 - the root of an old run may be gone
        return found
