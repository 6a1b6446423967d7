"""The settings form: controls -> RunConfig and back, errors naming field and value."""

from __future__ import annotations

import ipywidgets as W
import pytest

from nx47_pipeline.config import RunConfig
from nx47_widgets.settings import SETTINGS, SettingsError, SettingsForm


def test_controls_read_into_a_config_on_top_of_the_base():
    base = RunConfig(data_root="/d", out_dir="/o", max_train_volumes=3, max_val_volumes=1,
                     budget_s=600.0, heartbeat_interval_s=2.0)
    form = SettingsForm(base)
    assert form.read() == base
    assert [s.field for s in SETTINGS] == list(form.controls)
    form.data_root.value = "  "  # blank: auto
    form.out_dir.value = ""  # blank: the base config's
    form.max_train.value = 0
    form.budget_min.value = 1.5
    form.use_unet.value = "off"
    form.auto_coverage.value = True
    cfg = form.read()
    assert (cfg.data_root, cfg.out_dir, cfg.max_train_volumes, cfg.budget_s, cfg.use_unet,
            cfg.auto_coverage) == ("auto", "/o", 0, 90.0, False, True)
    assert cfg.heartbeat_interval_s == 2.0  # a field without a control keeps its value


def test_write_shows_a_config_and_leaves_equal_values_as_typed():
    form = SettingsForm(RunConfig(max_train_volumes=3, max_val_volumes=1))
    form.budget_min.value = 1.234  # finer than the 0.01 minute the control rounds to
    form.write(form.read().replace(out_dir="/elsewhere", max_train_volumes=40))
    assert form.out_dir.value == "/elsewhere"
    assert form.max_train.value == 40 and form.max_train.max >= 40  # the slider grew
    assert form.budget_min.value == 1.234
    form.write(RunConfig(budget_s=3600.0, use_unet=True))
    assert form.budget_min.value == 60.0 and form.use_unet.value == "on"


def test_an_invalid_control_value_names_the_field_and_the_value():
    form = SettingsForm(RunConfig())
    form.controls["max_train_volumes"] = W.Text(value="many")
    with pytest.raises(SettingsError, match=r"Max train \(max_train_volumes\) = 'many'") as err:
        form.read()
    assert (err.value.field, err.value.value) == ("max_train_volumes", "many")
    form = SettingsForm(RunConfig())
    form.controls["budget_s"] = W.FloatText(value=-2.0)
    with pytest.raises(ValueError, match=r"budget_s\) = -2.0: budget_s must be > 0"):
        form.read()
