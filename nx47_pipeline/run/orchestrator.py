"""The NX47 pipeline, end to end, inside a runtime budget.

discovery -> coverage audit -> mandatory preflight (5 %) -> features ->
hyper-parameter search -> fit_prox -> optional U-Net -> validate -> segment
-> package.  Every stage publishes STEP begin/end and PROGRESS_UPDATE at
step / sub-step / file / global level through :class:`Telemetry`; stages
hand off through files in the output folder, so a rerun in the same folder
resumes where the previous one stopped.

The run always ends with a complete ``submission.zip`` when test images
exist: stages before segmentation have a deadline that keeps back the time
to segment every test volume, and test volumes that no longer fit get the
cheap fallback segmentation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nx47_pipeline.run import budget as budget_mod
from nx47_pipeline.io.atomic import atomic_path, write_json
from nx47_pipeline.run.budget import Deadlines, PreflightTimings
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken
from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import CoverageAuditPayload, EventKind, MessagePayload, PreflightPayload, PreviewPayload

#: Stages of the plan with their initial weights (expected relative cost);
#: the weights are re-planned from the preflight's projection.
STAGES: tuple[tuple[str, float], ...] = (
    ("discovery", 1.0),
    ("preflight", 6.0),
    ("features", 20.0),
    ("search", 20.0),
    ("fit_prox", 10.0),
    ("unet", 10.0),
    ("validate", 8.0),
    ("segment", 15.0),
    ("package", 2.0),
)

#: Config fields that do not change what a run computes (left out of the
#: resume key: a rerun with another budget or console setting resumes).
_NON_RESULT_FIELDS = frozenset(
    {
        "out_dir",
        "data_root",
        "budget_s",
        "safety_margin_frac",
        "telemetry",
        "heartbeat_interval_s",
        "stall_after_s",
        "console",
        "console_interval_s",
        "progress_interval_s",
        "queue_maxsize",
        "array_trace",
        "preview_slices",
        "fit_time_cap_s",
        "max_train_volumes",
        "max_val_volumes",
        "use_unet",
        "unet_device",
    }
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREFLIGHT, EXIT_CANCELLED = 0, 1, 2, 3, 130


@dataclass
class RunResult:
    """Outcome of :func:`run_pipeline`."""

    status: str  # ok | failed | cancelled | preflight_failed
    out_dir: Path
    submission: Path | None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the run failed, when it did

    @property
    def exit_code(self) -> int:
        return {
            "ok": EXIT_OK,
            "cancelled": EXIT_CANCELLED,
            "preflight_failed": EXIT_PREFLIGHT,
        }.get(self.status, EXIT_FAILED)


class RunFailed(RuntimeError):
    """A stage failed in a way the run cannot go on from."""


class _OutOfTime(Exception):
    """The preflight ran past the time the budget leaves it."""


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _atomic_json(path: Path, data: Any) -> None:
    write_json(path, data, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _volume_seed(seed: int, volume_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(volume_id.encode())) % (2**31 - 1)


def _mvox(shape: Sequence[int] | None) -> float:
    if not shape:
        return 0.0
    return float(np.prod(shape)) / 1e6


def _suggest_slices(shape: Sequence[int], n: int) -> dict[str, list[int]]:
    out = {}
    for axis, size in zip("zyx", shape):
        k = max(1, n)
        out[axis] = sorted({int(round(size * (i + 1) / (k + 1))) for i in range(k)})
    return out


def _lock_owner(lock: Path) -> int | None:
    try:
        pid = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
class _Run:
    def __init__(
        self,
        config: RunConfig,
        *,
        cancel: CancelToken | None,
        extra_sinks: Sequence[Any],
        console_stream: Any,
    ) -> None:
        from nx47_pipeline.telemetry.facade import Telemetry

        self.config = config
        self.out = Path(config.out_dir).expanduser().resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cancel = cancel if cancel is not None else CancelToken()
        self.t_start = time.monotonic()
        self.deadlines = Deadlines(
            start=self.t_start,
            budget_s=config.budget_s,
            safety_margin_frac=config.safety_margin_frac,
        )
        self.tel = Telemetry(
            out_dir=self.out,
            stages=STAGES,
            config_dict=config.to_dict(),
            console=config.console,
            console_stream=console_stream,
            console_interval_s=config.console_interval_s,
            progress_interval_s=config.progress_interval_s,
            heartbeat_interval_s=config.heartbeat_interval_s,
            stall_after_s=config.stall_after_s,
            extra_sinks=extra_sinks,
            enabled=config.telemetry,
            budget_s=config.budget_s,
            cancel=self.cancel,
        )
        self.stage_seconds: dict[str, float] = {}
        self.stage_status: dict[str, str] = {}
        self.timings: PreflightTimings | None = None
        self.n_warnings = 0
        self.n_errors = 0
        self.fallback_ids: list[str] = []
        self.val_scores: dict[str, dict[str, float]] = {}
        self.best: dict[str, Any] = {}
        self.audit: dict[str, Any] = {}
        self.model = None
        self.unet = None
        self.unet_params = None
        self.inventory = None
        self.selection = None
        self.resumed = False
        self.error_text = ""
        self.prior_shift = 0.0

    # -- reporting ---------------------------------------------------------
    def warn(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.n_warnings += 1
        self.tel.warning(message, subject=subject, code=code)

    def err(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.n_errors += 1
        self.tel.error(message, subject=subject, code=code)

    def prog(self, done: float, total: float, **kw: Any) -> None:
        self.tel.progress(step_done=done, step_total=total, **kw)

    @contextlib.contextmanager
    def _stage(self, name: str, total: float = 1.0) -> Iterator[None]:
        """``Telemetry.stage`` plus this run's per-stage seconds and status (GLOBAL_STATS)."""
        t0 = time.monotonic()
        status = "failed"
        try:
            with self.tel.stage(name, total=total):
                yield
            status = "ok"
        except Cancelled:
            status = "cancelled"
            raise
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.monotonic() - t0
            self.stage_status[name] = status

    def skip(self, name: str, reason: str) -> None:
        self.stage_status[name] = "skipped"
        self.tel.skip_stage(name, reason)

    # -- entry -------------------------------------------------------------
    def execute(self) -> RunResult:
        lock = self.out / "run.lock"
        owner = _lock_owner(lock)
        if owner is not None:
            raise RuntimeError(
                f"{self.out}: another run (pid {owner}) is using this output folder; "
                "stop it or choose another --out"
            )
        lock.write_text(str(os.getpid()))
        # torch keeps a compiler cache in the system temp folder by default;
        # keep everything the run writes inside its output folder
        own_cache = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
        if own_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.out / "model" / "unet" / "torch-cache")
        status = "failed"
        submission: Path | None = None
        stats: dict[str, Any] = {}
        try:
            self.resumed = (self.out / "journal.jsonl").exists()
            run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
            self.tel.start(run_id=run_id)
            _atomic_json(self.out / "config.json", self.config.to_dict())
            try:
                status, submission = self._stages()
            except Cancelled as exc:
                status = "cancelled"
                if not self.tel.cancel_reported:  # a stage reports it; this covers between stages
                    self.tel.emit(
                        EventKind.CANCELLED,
                        MessagePayload(message=f"run cancelled: {exc}" if str(exc) else "run cancelled"),
                    )
            except Exception as exc:  # noqa: BLE001 - reported, run ends failed
                status = "failed"
                self.error_text = f"{type(exc).__name__}: {exc}"
                self.err(f"run failed: {self.error_text}", code="run_failed")
            stats = self._stats(status, submission)
            try:
                _atomic_json(self.out / "stats.json", stats)
            except OSError as exc:
                self.err(f"{self.out / 'stats.json'}: could not write: {exc}", code="io")
            self.tel.finish(
                status,
                submission=str(submission) if submission else None,
                stats=stats,
            )
        finally:
            if own_cache:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            try:
                if lock.read_text().strip() == str(os.getpid()):
                    lock.unlink()
            except OSError:
                pass
        return RunResult(status=status, out_dir=self.out, submission=submission, stats=stats,
                         error=self.error_text)

    # -- the chain ---------------------------------------------------------
    def _stages(self) -> tuple[str, Path | None]:
        self._discovery()
        test = list(self.inventory.test)
        if not test:
            self.err(
                f"{self.inventory.root}: no test images found (test_images/*.tif); "
                "nothing to submit",
                subject=str(self.inventory.root),
                code="no_test",
            )

        preflight = self._preflight()
        if preflight != "ok":
            why = "preflight failed" if preflight == "failed" else "budget too small to train"
            for name in ("features", "search", "fit_prox", "unet", "validate"):
                self.skip(name, why)
            self._segment(test, model_ok=False)
            sub = self._package(test)
            if preflight == "failed":
                return "preflight_failed", sub
            return ("ok" if sub is not None or not test else "failed"), sub

        self._plan_budget()
        samples = self._features()
        if samples is None:
            for name in ("search", "fit_prox", "validate"):
                self.skip(name, "no training samples")
        else:
            X, y = samples
            self._search(X, y)
            self._fit(X, y)
            del X, y
        self._unet()
        if self.model is not None:
            self._validate()
        else:
            self.skip("validate", "no model")
        self._segment(test, model_ok=self.model is not None)
        sub = self._package(test)
        return ("ok" if sub is not None or not test else "failed"), sub

    # -- discovery ---------------------------------------------------------
    def _discovery(self) -> None:
        from nx47_pipeline.data.coverage import select_coverage
        from nx47_pipeline.data.discovery import discover, resolve_data_root

        cfg = self.config
        with self._stage("discovery", total=1.0):
            root = resolve_data_root(cfg.data_root)
            self.tel.progress(step_done=0, step_total=1, message=f"data root {root}")

            def on_progress(done: int, total: int, what: str) -> None:
                self.prog(done / max(total, 1) * 0.9, 1.0, file=str(what), file_done=done, file_total=total)

            inv = discover(root, on_progress=on_progress)
            for issue in inv.issues:
                if issue.level == "error":
                    self.err(issue.message, subject=issue.subject, code=issue.code)
                else:
                    self.warn(issue.message, subject=issue.subject, code=issue.code)
            sel = select_coverage(
                inv.pairs,
                max_train_volumes=cfg.max_train_volumes,
                max_val_volumes=cfg.max_val_volumes,
                seed=cfg.seed,
            )
            for w in sel.warnings:
                self.warn(w, code="coverage")
            self.inventory, self.selection = inv, sel
            self._check_resume_key()
            self._emit_audit()
            self.prog(1, 1, message=f"{len(inv.pairs)} pairs, {len(inv.test)} test")

    def _emit_audit(self) -> None:
        sel, inv = self.selection, self.inventory
        a = dict(sel.audit)
        self.audit = a
        self.tel.emit(
            EventKind.COVERAGE_AUDIT,
            CoverageAuditPayload(
                pair_count_discovered=int(a["pair_count_discovered"]),
                pair_count_selected_for_training=int(a["pair_count_selected_for_training"]),
                coverage_pct_selected_vs_discovered=float(a["coverage_pct_selected_vs_discovered"]),
                max_train_volumes=int(a["max_train_volumes"]),
                max_val_volumes=int(a["max_val_volumes"]),
                n_train=len(sel.train),
                n_val=len(sel.val),
                n_test=len(inv.test),
                train_ids=[r.id for r in sel.train],
                val_ids=[r.id for r in sel.val],
            ),
        )

    def _check_resume_key(self) -> None:
        """Start afresh (moving old artifacts aside, never deleting) when the
        folder holds artifacts of a run with other result-relevant settings."""
        cfg = self.config.to_dict()
        key_src = {k: v for k, v in cfg.items() if k not in _NON_RESULT_FIELDS}
        key_src["train_ids"] = [r.id for r in self.selection.train]
        key_src["val_ids"] = [r.id for r in self.selection.val]
        key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
        key_path = self.out / "run_key.json"
        old = _read_json(key_path)
        artifacts = ["preflight", "features", "search", "model", "val", "test", "submission.zip",
                     "auto_coverage.json"]
        if old and old.get("key") != key:
            stale = self.out / f"stale-{time.strftime('%Y%m%dT%H%M%S')}"
            stale.mkdir(parents=True, exist_ok=True)
            for name in artifacts:
                p = self.out / name
                if p.exists():
                    shutil.move(str(p), str(stale / name))
            self.warn(
                f"{self.out}: settings or selection differ from the previous run in this "
                f"folder; its artifacts were moved to {stale.name}/ and the run starts afresh",
                subject=str(self.out),
                code="resume_key_changed",
            )
        _atomic_json(key_path, {"key": key, "fields": key_src})

    # -- preflight ---------------------------------------------------------
    def _preflight_deadline(self) -> float:
        """The preflight must end early enough to leave the fallback
        segmentation of every test volume and the packaging."""
        reserve = sum(
            budget_mod.fallback_needed_s(None, mvox=_mvox(r.shape)) for r in self.inventory.test
        ) + budget_mod.RESERVE_MARGIN_S
        return self.deadlines.hard - reserve

    def _preflight(self) -> str:
        """Run the preflight: ``"ok"``, ``"failed"`` (PREFLIGHT_FAIL) or
        ``"budget"`` (no time for it: BUDGET)."""
        cfg = self.config
        pre_dir = self.out / "preflight"
        done_marker = pre_dir / "timings.json"
        sel = self.selection
        n_tr = budget_mod.ceil_frac(len(sel.train), cfg.preflight_frac)
        n_va = budget_mod.ceil_frac(len(sel.val), cfg.preflight_frac)
        train = sel.train[:n_tr]
        val = sel.val[:n_va]
        test = self.inventory.test[:1]
        with self._stage("preflight", total=6):
            cached = budget_mod.load_preflight_timings(self.out)
            if cached is not None:
                self.timings = cached
                self.tel.progress(step_done=6, step_total=6, message="preflight already passed (resumed)")
                self._emit_preflight(True, "resumed: timings from the earlier preflight", 0.0, n_tr, n_va, len(test), dataclasses.asdict(cached))
                return "ok"
            t0 = time.monotonic()
            try:
                if not train or not val:
                    raise RunFailed(
                        f"preflight needs at least one training and one validation pair; "
                        f"selected {len(sel.train)} training and {len(sel.val)} validation pairs"
                    )
                if not test:
                    raise RunFailed("preflight needs at least one test image; none found")
                timings = self._preflight_chain(pre_dir, train, val, test)
            except Cancelled:
                raise
            except _OutOfTime as exc:
                self.tel.budget(
                    "preflight",
                    f"the budget leaves no time for the preflight ({exc}); training is skipped "
                    "and every test volume gets the fallback segmentation",
                    budget_s=self.config.budget_s,
                    deadline_s=self._preflight_deadline() - self.t_start,
                )
                return "budget"
            except Exception as exc:  # noqa: BLE001 - reported as PREFLIGHT_FAIL
                reason = f"{type(exc).__name__}: {exc}"
                self._emit_preflight(False, reason, time.monotonic() - t0, n_tr, n_va, len(test), {})
                self.err(f"preflight failed, the run stops before training: {reason}", code="preflight_failed")
                return "failed"
            timings.save(done_marker)
            self.timings = timings
            self._emit_preflight(True, "", time.monotonic() - t0, n_tr, n_va, len(test), dataclasses.asdict(timings))
            return "ok"

    def _emit_preflight(self, ok, reason, dur, n_tr, n_va, n_te, timings) -> None:
        self.tel.emit(
            EventKind.PREFLIGHT_OK if ok else EventKind.PREFLIGHT_FAIL,
            PreflightPayload(
                ok=ok,
                reason=reason,
                duration_s=float(dur),
                n_train=n_tr,
                n_val=n_va,
                n_test=n_te,
                timings={k: float(v) for k, v in timings.items() if isinstance(v, (int, float))},
            ),
        )

    def _preflight_chain(self, pre_dir: Path, train, val, test) -> PreflightTimings:
        """The whole chain on the preflight slice, with reduced iterations."""
        cfg = self.config
        small_iter = max(5, min(cfg.search_max_iter, 30))
        phases = 6

        deadline = self._preflight_deadline()
        if time.monotonic() > deadline:
            raise _OutOfTime("nothing left after reserving the fallback segmentation")

        def phase_prog(i: int, label: str) -> Callable[..., None]:
            def p(done: float, total: float, **kw: Any) -> None:
                if time.monotonic() > deadline:
                    raise _OutOfTime(f"its deadline passed during {label}")
                sub = kw.pop("substep", "")
                kw["substep"] = f"{label}: {sub}" if sub else label
                self.tel.progress(step_done=i + done / max(total, 1e-9), step_total=phases, **kw)
            return p

        t = time.monotonic()
        # ``train`` holds the first len(train) candidates; an unusable one (bad
        # label, unreadable file: reported by name) is replaced by the next
        # selected pair, so one bad file cannot fail the whole preflight
        want = len(train)
        used: list = []
        paths: list[Path] = []
        feat_prog = phase_prog(0, "features")
        for rec in self.selection.train[: want + 5]:
            if len(paths) == want:
                break
            k = len(paths)
            got = self._features_for(
                [rec], pre_dir / "features",
                lambda d, t_, _k=k, **kw: feat_prog(_k + d / max(t_, 1e-9), want, **kw),
            )
            if got:
                paths += got
                used.append(rec)
        if not paths:
            raise RunFailed("no selected training pair is usable (each was reported above)")
        X, y = self._load_samples(paths)
        t_feat = time.monotonic() - t
        mvox_train = float(np.mean([_mvox(r.shape) for r in used]))
        rows_per_volume = len(y) / len(paths)

        t = time.monotonic()
        grid = self._search_in(X, y, val, pre_dir / "search", phase_prog(1, "search"), max_iter=small_iter,
                               deadline=None, emit=False)
        t_search_total = time.monotonic() - t
        fit_iters = grid["fit_iters"]
        fit_s = grid["fit_seconds"]
        fit_s_per_iter_row = fit_s / max(fit_iters * len(y), 1)
        search_val_s = max(t_search_total - fit_s, 1e-3)
        mvox_val = float(np.sum([_mvox(r.shape) for r in val]))

        t = time.monotonic()
        model = self._fit_in(X, y, grid["best"], pre_dir / "model", phase_prog(2, "fit_prox"), max_iter=small_iter, deadline=None)
        unet_s_per_batch = None
        if cfg.use_unet is not False:
            from nx47_pipeline.unet import core as unet_mod

            if unet_mod.torch_available() and deadline - time.monotonic() > 120:
                phase_prog(3, "unet")(0, 1, message="timing one U-Net training batch")
                unet_s_per_batch = unet_mod.time_train_step(self._unet_params(), device=cfg.unet_device)
        phase_prog(3, "unet")(1, 1)

        t = time.monotonic()
        self._validate_in(model, grid["best"], val, pre_dir / "val", phase_prog(4, "validate"), emit=False)
        t_val = time.monotonic() - t

        t = time.monotonic()
        self._segment_in(model, grid["best"], test, pre_dir / "test", phase_prog(5, "segment"), deadline=None, emit=False)
        t_seg = time.monotonic() - t
        mvox_test = float(np.mean([_mvox(r.shape) for r in test]))

        from nx47_pipeline.model.postprocess import fallback_segment
        from nx47_pipeline.io.volumes import read_volume

        vol = read_volume(test[0].image_path, kind="image")
        t = time.monotonic()
        fallback_segment(vol, closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels)
        t_fb = time.monotonic() - t
        t = time.monotonic()
        from nx47_pipeline.io.submission import write_submission

        write_submission([(r.id, pre_dir / "test" / f"{r.id}.tif") for r in test], pre_dir / "submission.zip")
        t_pack = time.monotonic() - t
        self.tel.progress(step_done=phases, step_total=phases, message="preflight chain complete")
        return PreflightTimings(
            features_s_per_mvox=t_feat / max(mvox_train * len(paths), 1e-6),
            search_s_per_mvox=search_val_s / max(mvox_val, 1e-6),
            fit_s_per_iter_row=fit_s_per_iter_row,
            validate_s_per_mvox=t_val / max(mvox_val, 1e-6),
            segment_s_per_mvox=t_seg / max(mvox_test * len(test), 1e-6),
            fallback_s_per_mvox=t_fb / max(_mvox(vol.shape), 1e-6),
            package_s_per_volume=t_pack / len(test),
            mvox_train=mvox_train,
            mvox_test=mvox_test,
            rows_per_volume=rows_per_volume,
            grid_fits=len(cfg.l1_grid) * len(cfg.l2_grid),
            unet_s_per_batch=unet_s_per_batch,
        )

    # -- budget ------------------------------------------------------------
    def _resolve_unet(self) -> tuple[bool, str]:
        cfg = self.config
        from nx47_pipeline.unet import core as unet_mod

        if cfg.use_unet is False:
            return False, "U-Net off (--no-unet)"
        if not unet_mod.torch_available():
            msg = "U-Net off: PyTorch is not installed (pip install torch==2.13.0 for the CPU build)"
            if cfg.use_unet:
                self.warn(msg, code="unet_unavailable")
            return False, msg
        if cfg.use_unet is None:
            if unet_mod.resolve_device(cfg.unet_device) != "cuda":
                return False, "U-Net off by default on a CPU-only machine (no CUDA device)"
            return True, "U-Net on: CUDA device found"
        return True, "U-Net on (--unet)"

    def _unet_infer_s(self, mvox: float, *, trained: bool) -> float:
        """Projected seconds of U-Net inference on one volume of ``mvox``
        million voxels (0 when the U-Net is off, or not trained when
        ``trained``)."""
        if not getattr(self, "use_unet", False) or (trained and self.unet is None) or mvox <= 0:
            return 0.0
        from nx47_pipeline.unet.core import estimate_cost

        try:
            return float(estimate_cost(
                n_train_volumes=0, voxels_per_volume=mvox * 1e6, params=self._unet_params(),
                seconds_per_patch_batch=self.timings.unet_s_per_batch if self.timings else None,
                n_infer_volumes=1, device=self.config.unet_device,
            ))
        except Exception:  # noqa: BLE001 - an estimate only
            return 0.0

    def _unet_params(self):
        from nx47_pipeline.unet.core import params_from_config

        return params_from_config(self.config)

    def _plan_budget(self) -> None:
        cfg = self.config
        timings = self.timings
        sel, inv = self.selection, self.inventory
        n_test = len(inv.test)
        mvox_test = float(np.mean([_mvox(r.shape) for r in inv.test])) if inv.test else 0.0
        self.use_unet, unet_why = self._resolve_unet()
        unet_s = 0.0
        try:
            from nx47_pipeline.unet.core import estimate_cost

            unet_s = float(
                estimate_cost(
                    n_train_volumes=len(sel.train),
                    voxels_per_volume=timings.mvox_train * 1e6,
                    params=self._unet_params(),
                    seconds_per_patch_batch=timings.unet_s_per_batch,
                    n_infer_volumes=len(sel.val) + n_test,
                    device=self.config.unet_device,
                )
            )
        except Exception:  # noqa: BLE001 - an estimate only
            unet_s = 0.0
        proj = budget_mod.project_run(
            timings, n_train=len(sel.train), n_val=len(sel.val), n_test=n_test, config=cfg,
            use_unet=self.use_unet, unet_s=unet_s,
        )
        remaining = self.deadlines.left()
        max_tr, max_va, proj_fit = budget_mod.largest_fit(
            timings, n_pairs=len(inv.pairs), n_test=n_test, config=cfg, remaining_s=remaining
        )
        fits = proj.total_s <= remaining
        self.tel.budget(
            "projection",
            (
                f"projected {proj.total_s / 60:.1f} min for {len(sel.train)} train / {len(sel.val)} val / "
                f"{n_test} test against {remaining / 60:.1f} min usable: "
                f"{'fits' if fits else 'does NOT fit'}; largest coverage that fits: "
                f"{max_tr} train / {max_va} val ({proj_fit / 60:.1f} min). {unet_why}"
                + (f" (U-Net projected {unet_s / 60:.1f} min)" if unet_s else "")
            ),
            budget_s=cfg.budget_s,
            projected_s=proj.total_s,
            fits=fits,
            max_train_fit=max_tr,
            max_val_fit=max_va,
            extra={"per_stage": proj.per_stage, "unet": unet_why, "unet_projected_s": unet_s},
        )
        # nothing fits: the smallest coverage gives training its best chance.
        # The decision is recorded, so a rerun in this folder resumes with it.
        target = (max_tr, max_va) if max_tr > 0 else (1, 1)
        decision_path = self.out / "auto_coverage.json"
        if cfg.auto_coverage:
            recorded = _read_json(decision_path)
            if recorded and "target" in recorded:
                target = tuple(recorded["target"])
            else:
                _atomic_json(decision_path, {"target": list(target), "max_train_fit": max_tr,
                                             "max_val_fit": max_va})
        if cfg.auto_coverage and target != (len(sel.train), len(sel.val)) and len(inv.pairs) >= 2:
            from nx47_pipeline.data.coverage import select_coverage

            self.selection = select_coverage(
                inv.pairs, max_train_volumes=target[0], max_val_volumes=target[1], seed=cfg.seed
            )
            self.tel.budget(
                "auto_coverage",
                f"auto-coverage: using {len(self.selection.train)} train / {len(self.selection.val)} val "
                f"(was {len(sel.train)} / {len(sel.val)})"
                + ("" if max_tr > 0 else "; even the smallest coverage does not fit the projection"),
                budget_s=cfg.budget_s,
                projected_s=proj_fit,
                fits=max_tr > 0,
                max_train_fit=max_tr,
                max_val_fit=max_va,
            )
            self._emit_audit()
            proj = budget_mod.project_run(
                timings, n_train=len(self.selection.train), n_val=len(self.selection.val),
                n_test=n_test, config=cfg, use_unet=self.use_unet, unet_s=unet_s,
            )
        self.deadlines.reserve_s = budget_mod.segment_reserve_s(
            timings, n_test=n_test, mvox_test=mvox_test
        ) + n_test * self._unet_infer_s(mvox_test, trained=False)
        for name, secs in proj.per_stage.items():
            self.tel.plan.set_weight(name, max(secs, 0.01))

    def _deadline_hit(self, stage: str, what: str) -> None:
        self.tel.budget(
            "deadline",
            f"{stage}: deadline reached, {what}",
            budget_s=self.config.budget_s,
            deadline_s=self.deadlines.training - self.t_start,
        )

    # -- features ----------------------------------------------------------
    def _features(self):
        train = self.selection.train
        with self._stage("features", total=max(len(train), 1)):
            paths = self._features_for(
                train,
                self.out / "features",
                self.prog,
                deadline=self.deadlines.training,
            )
            if not paths:
                self.err("no training volume could be read; the model is skipped", code="no_training")
                return None
            return self._load_samples(paths)

    def _features_for(self, records, dest: Path, prog, *, deadline: float | None = None) -> list[Path]:
        from nx47_pipeline.model.features import volume_sample
        from nx47_pipeline.io.volumes import VolumeError, read_pair

        cfg = self.config
        dest.mkdir(parents=True, exist_ok=True)
        n = len(records)
        per_class = max(1, min(cfg.samples_per_class, cfg.max_total_samples // max(2 * n, 1)))
        out: list[Path] = []
        for i, rec in enumerate(records):
            path = dest / f"{rec.id}.npz"
            if path.exists():
                out.append(path)
                prog(i + 1, n, file=rec.id, file_done=i + 1, file_total=n, message="cached")
                continue
            if deadline is not None and time.monotonic() > deadline:
                self._deadline_hit("features", f"{n - i} training volumes left out")
                break
            prog(i, n, file=rec.id, file_done=i, file_total=n, substep="read")
            try:
                image, label = read_pair(rec.image_path, rec.label_path)
            except VolumeError as exc:
                self.err(str(exc), subject=rec.id, code=exc.code)
                continue
            if i == 0:
                self.tel.trace(f"train/{rec.id}/image", image)
                self.tel.trace(f"train/{rec.id}/label", label)
            if not np.any(label == 1) or not np.any(label == 0):
                self.warn(
                    f"{rec.label_path}: label has no {'surface (1)' if not np.any(label == 1) else 'background (0)'} "
                    "voxels outside the ignore label; volume skipped for training",
                    subject=rec.id,
                    code="label_unusable",
                )
                continue

            def on_feat(done: int, total: int, what: str, _i=i) -> None:
                prog(_i + done / max(total, 1), n, file=rec.id, file_done=_i, file_total=n,
                     substep=what, substep_done=done, substep_total=total)

            X, y = volume_sample(
                image, label, scales=cfg.feature_scales, n_per_class=per_class,
                seed=_volume_seed(cfg.seed, rec.id), on_progress=on_feat,
            )
            # labelled-voxel class counts: the sample is class-balanced, the
            # volumes are not; the model's intercept is corrected with them
            counts = np.array([np.count_nonzero(label == 0), np.count_nonzero(label == 1)], dtype=np.int64)
            with atomic_path(path) as tmp:
                np.savez(tmp, X=X, y=y, counts=counts)
            out.append(path)
            self.tel.emit(
                EventKind.PREVIEW,
                PreviewPayload(
                    volume_id=rec.id, split="train", shape=list(image.shape),
                    image_path=str(rec.image_path), label_path=str(rec.label_path),
                    slices=_suggest_slices(image.shape, self.config.preview_slices),
                ),
            )
            prog(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)
        return out

    def _load_samples(self, paths: Iterable[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenate the per-volume samples; sets ``self.prior_shift``, the
        logit correction from the balanced sample's class prior to the
        labelled voxels' prior (so probabilities mean what they say)."""
        Xs, ys = [], []
        counts = np.zeros(2, dtype=np.int64)
        for p in paths:
            with np.load(p, allow_pickle=False) as z:
                Xs.append(z["X"])
                ys.append(z["y"])
                counts += z["counts"]
        X, y = np.concatenate(Xs), np.concatenate(ys)
        self.prior_shift = prior_shift(counts, y)
        return X, y

    # -- search ------------------------------------------------------------
    def _search(self, X, y) -> None:
        cfg = self.config
        val = self.selection.val
        n_points = len(cfg.l1_grid) * len(cfg.l2_grid)
        with self._stage("search", total=n_points + len(val) * n_points * len(cfg.threshold_grid)):
            res = self._search_in(X, y, val, self.out / "search", self.prog,
                                  max_iter=cfg.search_max_iter, deadline=self.deadlines.training)
            self.best = res["best"]

    def _search_in(self, X, y, val, dest: Path, prog, *, max_iter: int, deadline: float | None,
                   emit: bool = True) -> dict:
        """Run the grid search; ``emit=False`` (the preflight) publishes no METRIC,
        so the dashboard's grid shows the real search only."""
        from nx47_pipeline.model.search import run_search

        cfg = self.config
        return run_search(
            X, y, val,
            dest=dest,
            l1_grid=cfg.l1_grid, l2_grid=cfg.l2_grid,
            thresholds=cfg.threshold_grid, gap=cfg.hysteresis_gap,
            scales=cfg.feature_scales,
            closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels,
            max_iter=max_iter, tol=cfg.fit_tol,
            intercept_shift=self.prior_shift,
            deadline=deadline,
            progress=prog,
            on_metric=(lambda name, value, extra: self.tel.metric(name, value, **extra)) if emit else None,
            on_warning=lambda msg, subject, code: self.warn(msg, subject=subject, code=code),
            on_deadline=lambda what: self._deadline_hit("search", what),
        )

    # -- fit ---------------------------------------------------------------
    def _fit(self, X, y) -> None:
        cfg = self.config
        with self._stage("fit_prox", total=cfg.fit_max_iter):
            model = self._fit_in(X, y, self.best, self.out / "model", self.prog,
                                 max_iter=cfg.fit_max_iter, deadline=self.deadlines.training,
                                 emit=True)
            if not np.any(model.coef):
                self.warn("the fitted model has no non-zero weight (stopped by the budget before "
                          "learning, or regularised away); test volumes get the fallback segmentation",
                          subject=str(self.out / "model" / "model.npz"), code="model_empty")
                model = None
            self.model = model

    def _fit_in(self, X, y, best: dict, dest: Path, prog, *, max_iter: int, deadline, emit: bool = False):
        from nx47_pipeline.model.features import feature_names
        from nx47_pipeline.model.linear import LogisticModel, fit_prox

        cfg = self.config
        path = dest / "model.npz"
        if path.exists():
            prog(max_iter, max_iter, message="model cached")
            return LogisticModel.load(path)
        warm = None
        if best.get("model_path") and Path(best["model_path"]).exists():
            warm = LogisticModel.load(best["model_path"])
        last_emit = [0.0]

        def on_iter(i: int, n: int, objective: float) -> None:
            prog(i, n, substep="iteration", substep_done=i, substep_total=n, message=f"objective {objective:.6g}")
            now = time.monotonic()
            if emit and (i <= 1 or i == n or now - last_emit[0] >= cfg.progress_interval_s):
                last_emit[0] = now
                self.tel.metric("fit_prox_objective", float(objective), step=int(i))

        if warm is not None:  # the search's models carry the prior correction
            warm = dataclasses.replace(warm, intercept=warm.intercept - self.prior_shift)
        res = fit_prox(
            X, y, l1=best["l1"], l2=best["l2"], max_iter=max_iter, tol=cfg.fit_tol,
            time_cap_s=cfg.fit_time_cap_s, deadline=deadline, on_iter=on_iter,
            feature_names=feature_names(cfg.feature_scales), scales=cfg.feature_scales,
            warm_start=warm,
        )
        res.model = dataclasses.replace(res.model, intercept=res.model.intercept + self.prior_shift)
        if res.stopped_reason in ("deadline", "time_cap") and emit:
            self._deadline_hit("fit_prox", f"stopped after {res.n_iter} iterations ({res.stopped_reason})")
        if emit:
            self.tel.trace("model/coef", np.asarray(res.model.coef, dtype=np.float32))
        dest.mkdir(parents=True, exist_ok=True)
        res.model.save(path)
        _atomic_json(dest / "fit.json", {
            "n_iter": res.n_iter, "converged": res.converged, "stopped_reason": res.stopped_reason,
            "objective": res.objective[-1] if res.objective else None, "seconds": res.seconds,
            "l1": best["l1"], "l2": best["l2"],
        })
        return res.model

    # -- U-Net -------------------------------------------------------------
    def _unet(self) -> None:
        cfg = self.config
        use = getattr(self, "use_unet", False)
        if not use or not self.selection.train:
            self.skip("unet", "U-Net off" if not use else "no training volumes")
            return
        if time.monotonic() > self.deadlines.training:
            self._deadline_hit("unet", "no time left to train the U-Net")
            self.skip("unet", "training deadline passed")
            return
        from nx47_pipeline.unet import core as unet_mod
        from nx47_pipeline.io.volumes import VolumeError, read_pair

        params = self._unet_params()
        self.unet_params = params
        dest = self.out / "model" / "unet"
        train = self.selection.train
        with self._stage("unet", total=params.epochs + 1):

            def volumes():
                for rec in train:
                    try:
                        img, lab = read_pair(rec.image_path, rec.label_path)
                    except VolumeError:
                        continue  # reported by the features stage
                    yield rec.id, img, lab

            def on_file(done: int, total: int, what: str) -> None:
                self.prog(done / max(total, 1), params.epochs + 1, substep="patches", file=what,
                          file_done=done, file_total=total)

            patches = unet_mod.extract_patches(
                volumes(), patch=params.patch, patches_per_volume=params.patches_per_volume,
                label_guided_frac=params.label_guided_frac, seed=cfg.seed, on_file=on_file,
                n_volumes=len(train),
            )

            def on_batch(epoch, epochs, batch, n_batches, loss):  # epoch counts from 1
                self.prog(epoch + batch / max(n_batches, 1), params.epochs + 1, substep=f"epoch {epoch}/{epochs} batch",
                          substep_done=batch, substep_total=n_batches)
                self.tel.metric("unet_batch_loss", float(loss), step=int((epoch - 1) * n_batches + batch))

            def on_epoch(epoch, epochs, train_loss, val_loss):
                self.tel.metric("unet_epoch_loss", float(train_loss), step=int(epoch), val_loss=val_loss)

            res = unet_mod.train_unet(
                patches, val=None, params=params, device=cfg.unet_device, checkpoint_dir=dest,
                resume=True, deadline=self.deadlines.training, on_batch=on_batch, on_epoch=on_epoch,
            )
            if res.stopped_reason == "deadline":
                self._deadline_hit("unet", f"training stopped after {res.epochs_done} epochs")
            if res.epochs_done > 0:
                self.unet = res.model
            else:
                self.warn("the U-Net completed no epoch; segmentation uses the fit_prox model alone",
                          code="unet_untrained")

    def _probability(self, model, volume, on_p: Callable[[int, int, str, float], None]):
        """Probability map of the model, fused with the U-Net when it is on.

        ``on_p(done, total, what, frac)`` reports sub-steps; ``frac`` is the
        fraction of this volume's probability work done (the linear model
        takes the first half and the U-Net's sliding windows the second when
        the U-Net is on).
        """
        share = 0.5 if self.unet is not None else 1.0
        prob = model.predict_volume(
            volume, on_progress=lambda d, t, what: on_p(d, t, what, share * d / max(t, 1))
        )
        if self.unet is not None:
            from nx47_pipeline.unet import core as unet_mod

            up = unet_mod.predict_volume(
                self.unet, volume, params=self.unet_params, device=self.config.unet_device,
                on_window=lambda d, t: on_p(d, t, "U-Net windows", share + (1 - share) * d / max(t, 1)),
            )
            prob = unet_mod.fuse_probabilities(prob, up, mode=self.config.unet_fuse)
        return prob

    def _model_mask(self, model, best: dict, image, on_p, prob_path: Path) -> np.ndarray:
        """Probability map (stored as uint8 at ``prob_path``) -> post-processed
        uint8 0/1 mask with the search's thresholds."""
        from nx47_pipeline.model.postprocess import postprocess, probability_to_uint8
        from nx47_pipeline.io.volumes import write_volume

        cfg = self.config
        prob = self._probability(model, image, on_p)
        on_p(1, 1, "post-processing", 1.0)
        mask = postprocess(prob, low=best["low"], high=best["high"],
                           closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels)
        write_volume(prob_path, probability_to_uint8(prob))
        return mask

    # -- validate ----------------------------------------------------------
    def _validate(self) -> None:
        val = self.selection.val
        with self._stage("validate", total=max(len(val), 1)):
            self._validate_in(self.model, self.best, val, self.out / "val", self.prog, emit=True)

    def _validate_in(self, model, best, val, dest: Path, prog, *, emit: bool) -> None:
        from nx47_pipeline.model.metric import score_volume
        from nx47_pipeline.io.volumes import VolumeError, read_pair, write_volume

        n = len(val)
        for i, rec in enumerate(val):
            mask_path = dest / f"{rec.id}.tif"
            score_path = dest / f"{rec.id}.json"
            cached = _read_json(score_path) if mask_path.exists() else None
            if cached is None:
                if emit and time.monotonic() > self.deadlines.training:
                    self._deadline_hit("validate", f"{n - i} validation volumes not scored")
                    break
                try:
                    image, label = read_pair(rec.image_path, rec.label_path)
                except VolumeError as exc:
                    self.err(str(exc), subject=rec.id, code=exc.code)
                    continue

                def on_p(done, total, what, frac, _i=i):
                    prog(_i + 0.8 * frac, n, file=rec.id, file_done=_i, file_total=n, substep=what,
                         substep_done=done, substep_total=total)

                mask = self._model_mask(model, best, image, on_p, dest / f"{rec.id}_prob.tif")
                write_volume(mask_path, mask)
                prog(i + 0.9, n, file=rec.id, file_done=i, file_total=n, substep="score")
                s = score_volume(mask, label)
                cached = {"score": s.score, "surface_dice": s.surface_dice, "voi": s.voi_score, "topo": s.topo}
                _atomic_json(score_path, cached)
            if emit:
                self.val_scores[rec.id] = cached
                self.tel.metric("val_score", float(cached["score"]), step=i, volume_id=rec.id,
                                surface_dice=cached["surface_dice"], voi=cached["voi"], topo=cached["topo"])
                self._preview(rec, "val", dest, score=float(cached["score"]))
            prog(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)

    def _preview(self, rec, split: str, dest: Path, *, score: float | None = None, shape=None) -> None:
        shape = list(shape or rec.shape or [])
        self.tel.emit(
            EventKind.PREVIEW,
            PreviewPayload(
                volume_id=rec.id, split=split, shape=shape,
                image_path=str(rec.image_path),
                label_path=str(rec.label_path) if rec.label_path else None,
                pred_path=str((dest / f"{rec.id}.tif").relative_to(self.out)),
                prob_path=str((dest / f"{rec.id}_prob.tif").relative_to(self.out))
                if (dest / f"{rec.id}_prob.tif").exists() else None,
                slices=_suggest_slices(shape, self.config.preview_slices) if shape else {},
                score=score,
            ),
        )

    # -- segment -----------------------------------------------------------
    def _segment(self, test, *, model_ok: bool) -> None:
        with self._stage("segment", total=max(len(test), 1)):
            self._segment_in(self.model if model_ok else None, self.best, test, self.out / "test",
                             self.prog, deadline=self.deadlines.hard, emit=True)

    def _segment_in(self, model, best, test, dest: Path, prog, *, deadline: float | None, emit: bool) -> None:
        from nx47_pipeline.model.postprocess import fallback_segment
        from nx47_pipeline.io.volumes import VolumeError, read_header, read_volume, write_volume

        cfg = self.config
        dest.mkdir(parents=True, exist_ok=True)
        n = len(test)
        timings = self.timings
        fallback_announced = False
        for i, rec in enumerate(test):
            mask_path = dest / f"{rec.id}.tif"
            if mask_path.exists():
                prog(i + 1, n, file=rec.id, file_done=i + 1, file_total=n, message="cached")
                if emit:
                    self._preview(rec, "test", dest)
                continue
            try:
                image = read_volume(rec.image_path, kind="image")
            except VolumeError as exc:
                self.err(str(exc), subject=rec.id, code=exc.code)
                shape = rec.shape
                if shape is None:
                    try:
                        shape = read_header(rec.image_path).shape
                    except VolumeError:
                        shape = None
                if shape is not None:
                    write_volume(mask_path, np.zeros(shape, dtype=np.uint8))
                    self.warn(f"{rec.image_path}: unreadable test image, submitted an empty mask of shape {tuple(shape)}",
                              subject=rec.id, code="empty_mask")
                continue
            use_model = model is not None
            if use_model and deadline is not None:
                left = deadline - time.monotonic()
                rest = test[i + 1:]
                need = (
                    budget_mod.SAFETY_FACTOR * _mvox(image.shape) * (timings.segment_s_per_mvox if timings else budget_mod.DEFAULT_SEGMENT_S_PER_MVOX)
                    + self._unet_infer_s(_mvox(image.shape), trained=True)
                    + sum(budget_mod.fallback_needed_s(timings, mvox=_mvox(r.shape)) for r in rest)
                    + 1.0
                )
                if left < need:
                    use_model = False
                    if emit and not fallback_announced:
                        fallback_announced = True
                        self.tel.budget(
                            "fallback",
                            f"segment: {left:.0f} s left, model segmentation of {n - i} volumes does not fit; "
                            "the remaining volumes get the fallback segmentation",
                            budget_s=cfg.budget_s,
                        )
            if use_model:
                def on_p(done, total, what, frac, _i=i):
                    prog(_i + 0.9 * frac, n, file=rec.id, file_done=_i, file_total=n,
                         substep=what, substep_done=done, substep_total=total)

                mask = self._model_mask(model, best, image, on_p, dest / f"{rec.id}_prob.tif")
            else:
                prog(i, n, file=rec.id, file_done=i, file_total=n, substep="fallback segmentation")
                mask = fallback_segment(image, closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels)
                if emit:
                    self.fallback_ids.append(rec.id)
            if mask.shape != image.shape or mask.dtype != np.uint8:
                raise RunFailed(f"{rec.image_path}: mask shape/dtype {mask.shape}/{mask.dtype} != source {image.shape}/uint8")
            write_volume(mask_path, mask)
            if emit:
                self.tel.trace(f"test/{rec.id}/mask", mask)
                self._preview(rec, "test", dest, shape=image.shape)
            prog(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)

    # -- package -----------------------------------------------------------
    def _package(self, test) -> Path | None:
        from nx47_pipeline.io.submission import PackagingError, write_submission

        if not test:
            self.skip("package", "no test images")
            return None
        with self._stage("package", total=len(test)):
            entries = [(r.id, self.out / "test" / f"{r.id}.tif") for r in test]
            present = [(i, p) for i, p in entries if p.exists()]
            for i, p in entries:
                if not p.exists():
                    self.err(f"{p}: no mask for test id {i}; it is missing from the submission", subject=i, code="missing_mask")
            try:
                return write_submission(
                    present, self.out / "submission.zip",
                    on_progress=lambda d, t, what: self.prog(d, t, file=what, file_done=d, file_total=t),
                )
            except PackagingError as exc:
                self.err(str(exc), subject="submission.zip", code="package_failed")
                return None

    # -- stats -------------------------------------------------------------
    def _stats(self, status: str, submission: Path | None) -> dict[str, Any]:
        scores = [v["score"] for v in self.val_scores.values()]
        head = getattr(getattr(self.tel, "journal", None), "head", None)
        return {
            "status": status,
            "out_dir": str(self.out),
            "submission": str(submission) if submission else None,
            "counts": {
                "pairs_discovered": len(self.inventory.pairs) if self.inventory else 0,
                "train": len(self.selection.train) if self.selection else 0,
                "val": len(self.selection.val) if self.selection else 0,
                "test": len(self.inventory.test) if self.inventory else 0,
                "fallback_volumes": len(self.fallback_ids),
                "warnings": self.n_warnings,
                "errors": self.n_errors,
            },
            "fallback_ids": list(self.fallback_ids),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "stage_status": dict(self.stage_status),
            "validation": {
                "mean_score": float(np.mean(scores)) if scores else None,
                "per_volume": self.val_scores,
            },
            "best": {k: v for k, v in self.best.items() if k != "model_path"},
            "coverage": self.audit,
            "elapsed_s": round(time.monotonic() - self.t_start, 3),
            "budget_s": self.config.budget_s,
            "journal_head": head,
            "resumed": self.resumed,
            "python": platform.python_version(),
        }


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
    """
    total = int(counts.sum())
    if total == 0 or len(y) == 0:
        return 0.0
    return _logit(counts[1] / total) - _logit(float(np.mean(y)))


def run_pipeline(
    config: RunConfig,
    *,
    cancel: CancelToken | None = None,
    extra_sinks: Sequence[Any] = (),
    console_stream: Any = None,
) -> RunResult:
    """Run the whole pipeline with ``config``.

    Parameters
    ----------
    config : RunConfig
        The run's configuration (``config.out_dir`` is created).
    cancel : CancelToken, optional
        Cooperative cancellation; every loop checks it. The run then ends
        with a CANCELLED event and a consistent folder.
    extra_sinks : sequence of sinks, optional
        Attached to the event bus besides the journal and console (the
        dashboard's queue sink).
    console_stream : file-like, optional
        Where console lines go (default ``sys.stdout``).

    Returns
    -------
    RunResult
    """
    return _Run(config, cancel=cancel, extra_sinks=extra_sinks, console_stream=console_stream).execute()
