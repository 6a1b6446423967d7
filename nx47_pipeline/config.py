"""One frozen, keyword-only configuration object for a run.

Every field can be set three ways, in increasing precedence: its default,
an environment variable ``NX47_<FIELD NAME IN UPPER CASE>`` (plus the legacy
``V138_MAX_TRAIN_VOLUMES`` / ``V138_MAX_VAL_VOLUMES``), and an explicit
keyword (command line flag, dashboard control, notebook parameter).
``nx47 run --config FILE`` adds a JSON file of fields (:func:`read_config_file`,
e.g. a run folder's ``config.json``) between the environment and the flags.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping
from pathlib import Path

#: Legacy environment names, read when the NX47_ name is absent.
LEGACY_ENV = {
    "max_train_volumes": "V138_MAX_TRAIN_VOLUMES",
    "max_val_volumes": "V138_MAX_VAL_VOLUMES",
}

DEFAULT_BUDGET_S = 9 * 3600.0


class ModelKind(str, enum.Enum):
    """What a run trains (``model_kind``, ``nx47 run --model-kind``)."""

    LINEAR = "linear"  # fit_prox on the filter bank, its auto-context rounds, optionally the U-Net
    NNUNET = "nnunet"  # nnU-Net v2, trained in the run (nx47_pipeline.nnunet.train)

    def __str__(self) -> str:
        return self.value


#: The ``model_kind`` values.
MODEL_KINDS = tuple(k.value for k in ModelKind)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Configuration of one pipeline run (see ``docs/architecture.md``)."""

    # --- where -----------------------------------------------------------
    data_root: str = "auto"
    out_dir: str = "runs/latest"
    # --- coverage --------------------------------------------------------
    max_train_volumes: int = 24
    max_val_volumes: int = 8
    seed: int = 47
    # --- budget ----------------------------------------------------------
    budget_s: float = DEFAULT_BUDGET_S
    safety_margin_frac: float = 0.10
    auto_coverage: bool = False
    preflight_frac: float = 0.05
    # --- telemetry -------------------------------------------------------
    telemetry: bool = True
    heartbeat_interval_s: float = 15.0
    stall_after_s: float = 60.0
    console: bool = True
    console_interval_s: float = 5.0
    progress_interval_s: float = 0.25  # journal/queue progress throttle (0 = every report)
    # the longest a computing stage goes without a PROGRESS_UPDATE: the work reports at least this
    # often, and the heartbeat says ACTIVE only while the last progress is younger than this
    progress_max_gap_s: float = 5.0
    queue_maxsize: int = 2000
    array_trace: bool = True
    # --- features / model ------------------------------------------------
    feature_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    samples_per_class: int = 20000
    sample_slabs: int = 3  # training samples come from this many z-slabs per volume (0 = all)
    max_total_samples: int = 1_000_000
    l1_grid: tuple[float, ...] = (1e-4, 1e-3)
    l2_grid: tuple[float, ...] = (1e-3, 1e-2)
    threshold_grid: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7)
    hysteresis_gap: float = 0.15
    search_max_iter: int = 150
    search_max_val_volumes: int = 8  # the search scores its grid on at most this many (0 = all)
    search_top_k: int = 4  # candidates scored with the full metric after the proxy ranking (0 = all)
    fit_max_iter: int = 500
    # auto-context rounds after fit_prox (linear models that also see the previous map; 0 = fit_prox alone),
    # fitted on at most context_max_volumes training volumes (0 = all)
    context_rounds: int = 3
    context_max_volumes: int = 12
    fit_tol: float = 1e-6
    fit_time_cap_s: float = 1800.0
    min_component_voxels: int = 100  # the fallback's dust size, and where no choice was made
    closing_radius: tuple[int, int, int] = (1, 2, 2)  # the fallback's, and where no choice was made
    # closing radii (z, y, x) the search and the U-Net's threshold sweep choose from on validation,
    # as consecutive triples: (1, 2, 2, 1, 1, 1, 2, 1, 1) tries (1, 2, 2), (1, 1, 1) and (2, 1, 1)
    closing_radius_grid: tuple[int, ...] = (1, 2, 2, 1, 1, 1, 2, 1, 1)
    # dust sizes (min_size of the dust removal, voxels) and hole plug sizes (largest plugged fill,
    # voxels; 0 plugs nothing) chosen on validation after the thresholds, thinning and closing radius
    dust_size_grid: tuple[int, ...] = (100, 1000, 4000)
    plug_size_grid: tuple[int, ...] = (0, 64, 512)
    preview_slices: int = 3
    # --- U-Net -----------------------------------------------------------
    use_unet: bool | None = None  # None: on with CUDA, off on CPU-only
    # an upper bound: training also stops at its deadline, the learning rate following the time to it
    unet_epochs: int = 60
    # 0: by device (nx47_pipeline.unet.params.DEVICE_SIZES): 48 / 4 / 8 on the CPU, 64 / 2 / 16 on CUDA
    unet_patch: int = 0
    unet_batch: int = 0
    unet_width: int = 0
    unet_depth: int = 3
    unet_fuse: str = "replace"  # replace (the U-Net's output already holds fit_prox's) | mean
    unet_device: str = "auto"
    # flip TTA at inference: auto (when its extra inference fits the budget, see run.budget.tta_fits) | on | off
    unet_tta: str = "auto"
    # --- the model ---------------------------------------------------------
    model_kind: str = "linear"  # linear: fit_prox (+ U-Net) | nnunet: nnU-Net v2 trained in the run
    # nx47 run --model-kind nnunet: nnU-Net's configuration (3d_fullres, or NX47's small 3d_nx47_cpu /
    # 3d_nx47_tiny), plans identifier, epochs, training and validation iterations per epoch (the device is
    # unet_device's)
    nnunet_configuration: str = "3d_fullres"
    nnunet_plans: str = "nnUNetPlans"
    nnunet_epochs: int = 1000
    nnunet_iterations: int = 250
    nnunet_val_iterations: int = 50
    # --- inference only ----------------------------------------------------
    model_dir: str = ""  # a model bundle: skip training, segment with it ("" = train)
    # an nnU-Net bundle's seconds per window pass (one window, one mirror, one fold) for its budget;
    # 0 = measured by the preflight
    nnunet_seconds_per_window: float = 0.0
    # --- Dask distributed --------------------------------------------------
    # per-volume tasks (features, validate, segment) at once in process, on threads: 0 = auto (2 when the
    # process may use 2 cores, else 1); with a scheduler, unused
    threads: int = 0
    scheduler: str = ""  # "" in process (Dask not imported); "local" a LocalCluster; else a scheduler address
    workers: int = 2  # worker processes of a local cluster; with an address, the workers waited for

    def __post_init__(self) -> None:
        for name in ("max_train_volumes", "max_val_volumes"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 means all), got {value!r}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        if not 0 <= self.safety_margin_frac < 1:
            raise ValueError(
                f"safety_margin_frac must be in [0, 1), got {self.safety_margin_frac!r}"
            )
        if not 0 < self.preflight_frac <= 1:
            raise ValueError(f"preflight_frac must be in (0, 1], got {self.preflight_frac!r}")
        if not self.progress_max_gap_s > 0:
            raise ValueError(f"progress_max_gap_s must be > 0, got {self.progress_max_gap_s!r}")
        if self.heartbeat_interval_s <= 0:
            raise ValueError(
                f"heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s!r}"
            )
        for name in ("sample_slabs", "search_max_val_volumes", "search_top_k", "context_rounds",
                     "context_max_volumes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 means all), got {getattr(self, name)!r}")
        grid = self.closing_radius_grid
        if (not grid or len(grid) % 3 or any(isinstance(v, bool) or int(v) != v or v < 0 for v in grid)):
            raise ValueError("closing_radius_grid must be (z, y, x) triples of integers >= 0, "
                             f"e.g. (1, 2, 2, 1, 1, 1), got {grid!r}")
        for name in ("dust_size_grid", "plug_size_grid"):
            sizes = getattr(self, name)
            if not isinstance(sizes, (tuple, list)) or not sizes or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0 for v in sizes):
                raise ValueError(f"{name} must be a non-empty sequence of integers >= 0 (voxels), "
                                 f"e.g. (0, 64, 512), got {sizes!r}")
        if isinstance(self.threads, bool) or int(self.threads) != self.threads or self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0 = auto), got {self.threads!r}")
        if isinstance(self.workers, bool) or int(self.workers) != self.workers or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        for name in ("unet_patch", "unet_batch", "unet_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 means by device), got {value!r}")
        if self.unet_fuse not in ("mean", "replace"):
            raise ValueError(f"unet_fuse must be 'mean' or 'replace', got {self.unet_fuse!r}")
        if self.model_kind not in MODEL_KINDS:
            raise ValueError(f"model_kind must be one of {', '.join(MODEL_KINDS)}, got {self.model_kind!r}")
        for name in ("nnunet_epochs", "nnunet_iterations", "nnunet_val_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("nnunet_configuration", "nnunet_plans"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"{name} must name one, got {getattr(self, name)!r}")
        if self.unet_tta not in ("auto", "on", "off"):
            raise ValueError(f"unet_tta must be 'auto', 'on' or 'off', got {self.unet_tta!r}")

    def closing_radii(self) -> list[tuple[int, int, int]]:
        """The closing radii of :attr:`closing_radius_grid`, in order, without repeats."""
        g = [int(v) for v in self.closing_radius_grid]
        return list(dict.fromkeys((g[i], g[i + 1], g[i + 2]) for i in range(0, len(g), 3)))

    def dust_sizes(self) -> list[int]:
        """The dust sizes of :attr:`dust_size_grid`, in order, without repeats."""
        return list(dict.fromkeys(int(v) for v in self.dust_size_grid))

    def plug_sizes(self) -> list[int]:
        """The hole plug sizes of :attr:`plug_size_grid`, in order, without repeats."""
        return list(dict.fromkeys(int(v) for v in self.plug_size_grid))

    # ------------------------------------------------------------------
    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _coerce(f.name, data[f.name], hints[f.name])
        return cls(**kwargs)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> "RunConfig":
        """Defaults, then ``NX47_*`` (and legacy ``V138_*``) variables, then
        ``overrides`` (keys whose value is ``None`` are ignored, except
        ``use_unet`` where ``None`` means automatic)."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            source = env_name(f.name)
            if raw is None and f.name in LEGACY_ENV:
                raw = env.get(LEGACY_ENV[f.name])
                source = LEGACY_ENV[f.name]
            if raw is not None and raw.strip() != "":
                try:
                    kwargs[f.name] = _parse(raw, hints[f.name])
                except ValueError as exc:
                    raise ValueError(
                        f"environment variable {source}={raw!r}: {exc}"
                    ) from None
        for key, value in overrides.items():
            if key not in hints:
                raise TypeError(f"unknown configuration field {key!r}")
            if value is None and key != "use_unet":
                continue
            kwargs[key] = _coerce(key, value, hints[key])
        return cls(**kwargs)


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return "NX47_" + field_name.upper()


def env_names() -> frozenset[str]:
    """Every environment variable :meth:`RunConfig.from_env` reads (legacy names included)."""
    return frozenset(env_name(f.name) for f in dataclasses.fields(RunConfig)) | frozenset(LEGACY_ENV.values())


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The :class:`RunConfig` fields of a JSON file, checked, as keyword values.

    The file is one JSON object of field names (a run folder's
    ``config.json`` holds every field; a file may hold only some).  A string
    value is read as its environment variable would be; any other value must
    have the field's type (a list for a tuple, ``null`` only for
    ``use_unet``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        Field name -> value, for :meth:`RunConfig.from_env` ``**overrides``.

    Raises
    ------
    ValueError
        Naming ``path`` and the problem: unreadable, not JSON, not an object,
        an unknown field, a value of the wrong type or one the configuration
        refuses.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"configuration file {path}: cannot read it: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"configuration file {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"configuration file {path}: expected a JSON object of RunConfig fields, "
                         f"got {type(data).__name__}")
    hints = typing.get_type_hints(RunConfig)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ValueError(f"configuration file {path}: unknown configuration field {key!r}")
        if not isinstance(value, str) and not _has_type(value, hints[key]):
            raise ValueError(f"configuration file {path}: {key} expects {_type_words(hints[key])}, "
                             f"got {value!r}")
        try:
            values[key] = _coerce(key, value, hints[key])
        except ValueError as exc:
            raise ValueError(f"configuration file {path}: {exc}") from None
    try:
        RunConfig(**values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"configuration file {path}: {exc}") from None
    return values


# ----------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _has_type(value: Any, hint: Any) -> bool:
    """True if the JSON ``value`` (not a string) fits the field type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_words(hint: Any) -> str:
    """``hint`` in words, for an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    if origin is tuple:
        return "a list of " + {bool: "booleans", int: "integers", float: "numbers"}.get(args[0], "strings")
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    if isinstance(value, str):
        try:
            return _parse(value, hint)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _parse(raw: str, hint: Any) -> Any:
    raw = raw.strip()
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if raw.lower() in ("", "none", "auto", "null"):
            return None
        return _parse(raw, non_none[0])
    if hint is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if origin is tuple:
        parts = [p for p in raw.replace(";", ",").split(",") if p.strip()]
        elem = args[0] if args else str
        return tuple(_parse(p, elem) for p in parts)
    return raw
