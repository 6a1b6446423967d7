"""The run settings the dashboard's controls show, and their mapping to :class:`RunConfig`.

:data:`SETTINGS` says which RunConfig fields have a control and how a
control's value converts to the field's value and back;
:class:`SettingsForm` holds those controls, reads them into a RunConfig
(:meth:`~SettingsForm.read`) and writes a RunConfig into them
(:meth:`~SettingsForm.write`).  A value the RunConfig refuses raises
:class:`SettingsError`, which names the control, the field and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import ipywidgets as W

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import plan_counts
from nx47_pipeline.model.bundle import BundleError, describe_bundle

from nx47_widgets.lifecycle import describe, holder, output_problem

__all__ = ["Setting", "SETTINGS", "COVERAGE_FIELDS", "UNET_OPTIONS", "SettingsError",
           "SettingsForm", "run_problems", "CAPS_HINT"]

#: Choices of the U-Net control: (label, control value).  The values are
#: strings: a dropdown whose value is None shows nothing selected.
UNET_OPTIONS = [("auto (GPU only)", "auto"), ("on", "on"), ("off", "off")]
_UNET_TO_CONFIG = {"auto": None, "on": True, "off": False}


def _unet_to_control(value: bool | None) -> str:
    return "auto" if value is None else ("on" if value else "off")


def _unet_to_config(value: str | bool | None, base: RunConfig) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    try:
        return _UNET_TO_CONFIG[value]
    except KeyError:
        raise ValueError(f"U-Net must be one of {sorted(_UNET_TO_CONFIG)}") from None


@dataclass(frozen=True)
class Setting:
    """One RunConfig field shown by a control.

    Attributes
    ----------
    field : str
        The RunConfig field.
    label : str
        The control's description.
    to_config : callable
        ``to_config(control_value, base_config) -> field value``.
    to_control : callable
        ``to_control(field_value) -> control value``.
    """

    field: str
    label: str
    to_config: Callable[[Any, RunConfig], Any]
    to_control: Callable[[Any], Any]


#: The RunConfig fields the controls show, in display order.  A blank data
#: root means ``"auto"``; a blank output folder keeps the base config's.
SETTINGS: tuple[Setting, ...] = (
    Setting("data_root", "Data root", lambda v, base: v.strip() or "auto", str),
    Setting("out_dir", "Output", lambda v, base: v.strip() or base.out_dir, str),
    Setting("max_train_volumes", "Max train", lambda v, base: int(v), int),
    Setting("max_val_volumes", "Max val", lambda v, base: int(v), int),
    Setting("budget_s", "Budget (min)", lambda v, base: float(v) * 60.0,
            lambda s: round(float(s) / 60.0, 2)),
    Setting("use_unet", "U-Net", _unet_to_config, _unet_to_control),
    Setting("auto_coverage", "Auto coverage (largest that fits)", lambda v, base: bool(v), bool),
    Setting("model_dir", "Model", lambda v, base: v.strip(), str),
)

_BY_FIELD = {s.field: s for s in SETTINGS}

#: The fields whose change re-projects the coverage panel.
COVERAGE_FIELDS = ("max_train_volumes", "max_val_volumes", "budget_s", "auto_coverage")

#: Smallest budget the coverage projection takes, in minutes.
_MIN_BUDGET_MIN = 0.1
#: Largest budget a run takes from the page, in minutes (a week).
_MAX_BUDGET_MIN = 7 * 24 * 60

#: What the page says about the volume sliders.
CAPS_HINT = ("0 = all: Max train 0 takes every pair that validation leaves, Max val 0 "
             "every pair that training leaves (both 0: about 80 / 20). Train + val can "
             "not exceed the pairs found.")


class SettingsError(ValueError):
    """A control holds a value its RunConfig field refuses.

    Attributes
    ----------
    field : str
        The RunConfig field.
    value : object
        The control's value.
    """

    def __init__(self, field: str, value: Any, reason: Any) -> None:
        label = _BY_FIELD[field].label if field in _BY_FIELD else field
        super().__init__(f"{label} ({field}) = {value!r}: {reason}")
        self.field, self.value = field, value


class SettingsForm:
    """The controls of the run settings over a base RunConfig.

    Fields without a control keep the base config's value.

    Parameters
    ----------
    config : RunConfig
        The base configuration; the controls start with its values.

    Attributes
    ----------
    controls : dict of str to ipywidgets.Widget
        RunConfig field -> its control.
    """

    def __init__(self, config: RunConfig) -> None:
        self.base = config
        v = {s.field: s.to_control(getattr(config, s.field)) for s in SETTINGS}
        lab = {s.field: s.label for s in SETTINGS}
        self.data_root = W.Text(value=v["data_root"], description=lab["data_root"],
                                continuous_update=False, layout=W.Layout(width="95%"))
        self.data_root.add_class("nx47-data-root")
        self.out_dir = W.Text(value=v["out_dir"], description=lab["out_dir"],
                              continuous_update=False, layout=W.Layout(width="95%"))
        self.out_dir.add_class("nx47-out-dir")
        self.max_train = W.IntSlider(value=v["max_train_volumes"], min=0,
                                     max=max(v["max_train_volumes"], 1),
                                     description=lab["max_train_volumes"],
                                     continuous_update=True)
        self.max_val = W.IntSlider(value=v["max_val_volumes"], min=0,
                                   max=max(v["max_val_volumes"], 1),
                                   description=lab["max_val_volumes"], continuous_update=True)
        self.max_train.add_class("nx47-max-train")
        self.max_val.add_class("nx47-max-val")
        # not bounded: a bounded box clamps silently; an out-of-range budget is
        # reported next to Run instead (problems())
        self.budget_min = W.FloatText(value=v["budget_s"], step=1.0,
                                      description=lab["budget_s"],
                                      style={"description_width": "initial"})
        self.budget_min.add_class("nx47-budget")
        self.use_unet = W.Dropdown(options=UNET_OPTIONS, value=v["use_unet"],
                                   description=lab["use_unet"])
        self.use_unet.add_class("nx47-unet")
        self.caps_hint = W.HTML(f"<div class='nx47-hint nx47-caps-hint'>{CAPS_HINT}</div>")
        self.caps_note = W.HTML("")
        self.caps_note.add_class("nx47-caps-note")
        self.n_pairs: int | None = None
        self._bounding = False
        for s_ in (self.max_train, self.max_val):
            s_.observe(self._on_cap, names="value")
        self.auto_coverage = W.Checkbox(value=v["auto_coverage"], indent=False,
                                        description=lab["auto_coverage"],
                                        layout=W.Layout(width="auto"))
        self.model_dir = W.Text(value=v["model_dir"], description=lab["model_dir"],
                                placeholder="blank: train now; or a model bundle folder",
                                continuous_update=False, layout=W.Layout(width="95%"))
        self.model_dir.add_class("nx47-model-dir")
        self.controls: dict[str, W.Widget] = {
            "data_root": self.data_root,
            "out_dir": self.out_dir,
            "max_train_volumes": self.max_train,
            "max_val_volumes": self.max_val,
            "budget_s": self.budget_min,
            "use_unet": self.use_unet,
            "auto_coverage": self.auto_coverage,
            "model_dir": self.model_dir,
        }

    # -- controls -> RunConfig ---------------------------------------------
    def values(self) -> dict[str, Any]:
        """The controls' values converted to RunConfig field values.

        Returns
        -------
        dict
            RunConfig field -> value.

        Raises
        ------
        SettingsError
            When a control's value does not convert.
        """
        out = {}
        for s in SETTINGS:
            raw = self.controls[s.field].value
            try:
                out[s.field] = s.to_config(raw, self.base)
            except (TypeError, ValueError) as exc:
                raise SettingsError(s.field, raw, exc) from None
        return out

    def read(self) -> RunConfig:
        """A RunConfig from the controls, on top of the base config.

        Returns
        -------
        RunConfig

        Raises
        ------
        SettingsError
            When a control's value is not valid for its field (the message
            names the control, the field and the value).
        """
        values = self.values()
        try:
            return self.base.replace(**values)
        except ValueError as exc:
            for name, value in values.items():  # find the field RunConfig refused
                try:
                    self.base.replace(**{name: value})
                except ValueError as one:
                    raise SettingsError(name, self.controls[name].value, one) from None
            raise SettingsError("settings", values, exc) from None

    def coverage_caps(self) -> dict[str, Any]:
        """The settings the coverage projection follows as the user moves the controls.

        Returns
        -------
        dict
            ``max_train``, ``max_val``, ``budget_s`` (None when the budget
            is refused), ``budget_problem`` (why, or None) and
            ``auto_coverage``: keyword arguments of
            :meth:`~nx47_widgets.state.coverage.CoverageModel.update`.
        """
        problem = self.budget_problem()
        budget_s = None if problem else float(self.budget_min.value) * 60.0
        return dict(max_train=int(self.max_train.value), max_val=int(self.max_val.value),
                    budget_s=budget_s, budget_problem=problem,
                    auto_coverage=bool(self.auto_coverage.value))

    # -- RunConfig -> controls ---------------------------------------------
    def write(self, config: RunConfig) -> None:
        """Show ``config`` in the controls.

        A control is set only when its value reads as another field value
        than ``config``'s (a budget typed in finer steps than the control
        rounds to is left as typed); a volume slider grows to the value.

        Parameters
        ----------
        config : RunConfig
        """
        for s in SETTINGS:
            control, want = self.controls[s.field], getattr(config, s.field)
            try:
                if s.to_config(control.value, self.base) == want:
                    continue
            except (TypeError, ValueError):
                pass
            value = s.to_control(want)
            if s.field in ("max_train_volumes", "max_val_volumes") and value > control.max:
                control.max = value
            control.value = value

    def model_summary(self) -> tuple[bool, str]:
        """What the Model control selects: ``(ok, text)``.

        Blank: the run trains a model now.  A folder: the bundle's summary
        after its manifest and files are checked, or why it is refused
        (``ok`` False, the message names the file).
        """
        path = self.model_dir.value.strip()
        if not path:
            return True, "train a model now (no bundle)"
        try:
            return True, describe_bundle(path)
        except BundleError as exc:
            return False, str(exc)

    def bound_volumes(self, n_pairs: int) -> None:
        """Bound the volume sliders by the ``n_pairs`` pairs discovery found.

        Caps that together exceed the pairs are set to what the split would
        select (and the page says so); from then on each slider is bounded by
        what the other leaves, so the caps the user sets are the counts the
        run selects.

        Parameters
        ----------
        n_pairs : int
        """
        self.n_pairs = int(n_pairs)
        mt, mv = int(self.max_train.value), int(self.max_val.value)
        note = ""
        if mt and mv and mt + mv > n_pairs and n_pairs >= 2:
            nt, nv = plan_counts(n_pairs, max_train_volumes=mt, max_val_volumes=mv)
            note = (f"Max train {mt} + Max val {mv} were more than the {n_pairs} pairs found: "
                    f"set to {nt} + {nv}, what the split would select.")
            mt, mv = nt, nv
        self._bounding = True
        try:
            for s in (self.max_train, self.max_val):
                s.max = max(n_pairs, 1, s.value)
            self.max_train.value, self.max_val.value = min(mt, max(n_pairs, 1)), min(mv, max(n_pairs, 1))
            for s in (self.max_train, self.max_val):
                s.max = max(n_pairs, 1)
        finally:
            self._bounding = False
        self._bound_each_other()
        self.caps_note.value = f"<div class='nx47-hint'>{note}</div>" if note else ""

    def _bound_each_other(self) -> None:
        n = self.n_pairs
        if n is None or n < 2:
            return
        mt, mv = int(self.max_train.value), int(self.max_val.value)
        self.max_train.max = max(1, n - mv if mv else n - 1)
        self.max_val.max = max(1, n - mt if mt else n - 1)

    def _on_cap(self, change: dict) -> None:
        if not self._bounding:
            self._bound_each_other()

    def budget_problem(self) -> str | None:
        """Why the budget control's value cannot be run, or None."""
        v = self.budget_min.value
        if v is None or not (_MIN_BUDGET_MIN <= float(v) <= _MAX_BUDGET_MIN):
            return (f"Budget (min) must be between {_MIN_BUDGET_MIN} and {_MAX_BUDGET_MIN} "
                    f"minutes (a week), got {v}")
        return None

    def observe(self, callback: Callable[[dict], None],
                fields: Iterable[str] = COVERAGE_FIELDS) -> None:
        """Call ``callback(change)`` when the value of a control of ``fields`` changes.

        Parameters
        ----------
        callback : callable
            A traitlets observer.
        fields : iterable of str
            RunConfig fields (default :data:`COVERAGE_FIELDS`).
        """
        for name in fields:
            self.controls[name].observe(callback, names="value")


def run_problems(form: SettingsForm, coverage: Any, coverage_note: str, *,
                 running: bool = False) -> list[str]:
    """What keeps Run from starting, one sentence each (empty: it can start).

    Checked: the data root was discovered and holds data; the budget is in
    range; the output folder can be written and no other live run holds it;
    the model bundle is accepted; every control converts to its field.

    Parameters
    ----------
    form : SettingsForm
    coverage : CoverageModel or None
        The last discovery (None: it failed, ``coverage_note`` says why).
    coverage_note : str
    running : bool
        A run of this page is going on (its folder is then not "busy").

    Returns
    -------
    list of str
    """
    out = []
    if coverage is None:
        out.append(f"Data root: {coverage_note or 'nothing discovered'}")
    elif coverage.n_pairs == 0 and coverage.n_test == 0:
        out.append(f"Data root {form.data_root.value!r}: no image/label pair and no test "
                   "volume found")
    budget = form.budget_problem()
    if budget:
        out.append(budget)
    folder = form.out_dir.value.strip()
    problem = output_problem(folder) if folder else "Output: no folder given"
    if problem:
        out.append(problem)
    elif not running:
        h = holder(folder)
        if h is not None:
            out.append(f"Output folder {folder} is busy: {describe(h)} runs there; "
                       "press Attach to follow it, or choose another folder")
    ok, text = form.model_summary()
    if not ok:
        out.append(f"Model: {text}")
    if not out:
        try:
            form.read()
        except SettingsError as exc:
            out.append(str(exc))
    return out
