"""RunConfig: defaults, NX47_* and legacy V138_* environment overrides, validation."""

import dataclasses
import json

import pytest

from nx47_pipeline.config import RunConfig, env_name, env_names, read_config_file


def test_defaults_match_the_capped_strategy():
    cfg = RunConfig()
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (24, 8)
    assert cfg.budget_s == 9 * 3600


def test_config_is_frozen_and_keyword_only():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_train_volumes = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunConfig("auto")  # type: ignore[misc]


def test_nx47_environment_overrides_defaults():
    cfg = RunConfig.from_env({"NX47_MAX_TRAIN_VOLUMES": "0", "NX47_MAX_VAL_VOLUMES": "0",
                              "NX47_BUDGET_S": "120", "NX47_L1_GRID": "0.1,0.01", "NX47_USE_UNET": "1"})
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (0, 0)
    assert cfg.budget_s == 120.0
    assert cfg.l1_grid == (0.1, 0.01)
    assert cfg.use_unet is True


def test_legacy_v138_variables_are_honoured_but_nx47_wins():
    cfg = RunConfig.from_env({"V138_MAX_TRAIN_VOLUMES": "10", "V138_MAX_VAL_VOLUMES": "3"})
    assert (cfg.max_train_volumes, cfg.max_val_volumes) == (10, 3)
    cfg = RunConfig.from_env({"V138_MAX_TRAIN_VOLUMES": "10", "NX47_MAX_TRAIN_VOLUMES": "5"})
    assert cfg.max_train_volumes == 5


def test_explicit_overrides_beat_environment():
    cfg = RunConfig.from_env({"NX47_MAX_TRAIN_VOLUMES": "5"}, max_train_volumes=7, max_val_volumes=None)
    assert cfg.max_train_volumes == 7
    assert cfg.max_val_volumes == 8  # None means "not given"


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="NX47_MAX_TRAIN_VOLUMES='many'"):
        RunConfig.from_env({"NX47_MAX_TRAIN_VOLUMES": "many"})


def test_validation_names_parameter_and_value():
    with pytest.raises(ValueError, match=r"max_val_volumes must be >= 0.*-1"):
        RunConfig(max_val_volumes=-1)
    with pytest.raises(ValueError, match="budget_s"):
        RunConfig(budget_s=0)


def test_round_trip_through_dict():
    cfg = RunConfig(max_train_volumes=3, feature_scales=(1.0, 3.0))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert env_name("budget_s") == "NX47_BUDGET_S"


def test_the_closing_radius_grid_is_read_as_zyx_triples_and_a_bad_one_is_refused_by_name():
    assert RunConfig().closing_radii() == [(1, 2, 2), (1, 1, 1), (2, 1, 1)]  # (2, 1, 1): stretched along z
    cfg = RunConfig.from_env({"NX47_CLOSING_RADIUS_GRID": "1,1,1,0,1,1,1,1,1"})
    assert cfg.closing_radii() == [(1, 1, 1), (0, 1, 1)]  # in order, without repeats
    for bad in ("1,2", "1,2,-1"):
        with pytest.raises(ValueError, match="closing_radius_grid must be"):
            RunConfig.from_env({"NX47_CLOSING_RADIUS_GRID": bad})


def test_the_dust_and_plug_size_grids_are_read_from_the_environment_and_a_bad_one_is_refused_by_name():
    cfg = RunConfig()
    assert cfg.dust_size_grid == (100, 1000, 4000) and cfg.plug_size_grid == (0, 64, 512)
    cfg = RunConfig.from_env({"NX47_DUST_SIZE_GRID": "50,500,50", "NX47_PLUG_SIZE_GRID": "0;32"})
    assert cfg.dust_sizes() == [50, 500] and cfg.plug_sizes() == [0, 32]  # in order, without repeats
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    for field, bad in (("dust_size_grid", "100,-1"), ("plug_size_grid", "")):
        with pytest.raises(ValueError, match=f"{field} must be a non-empty sequence of integers >= 0"):
            RunConfig.from_env({f"NX47_{field.upper()}": bad}, **({field: ()} if not bad else {}))
    with pytest.raises(ValueError, match="NX47_PLUG_SIZE_GRID"):
        RunConfig.from_env({"NX47_PLUG_SIZE_GRID": "0,x"})
    with pytest.raises(ValueError, match=r"dust_size_grid must be .* got \(1\.5,\)"):
        RunConfig(dust_size_grid=(1.5,))


def test_a_config_file_gives_checked_field_values(tmp_path):
    cfg = RunConfig(max_train_volumes=3, feature_scales=(1.0, 3.0), use_unet=None)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig(**read_config_file(path)) == cfg
    path.write_text('{"seed": "12", "use_unet": "off", "budget_s": 60}')  # strings read as the environment's
    assert read_config_file(path) == {"seed": 12, "use_unet": False, "budget_s": 60}
    for text, problem in (('{"seed": true}', "seed expects an integer, got True"),
                          ('{"use_unet": 1}', "use_unet expects a boolean or null"),
                          ('{"l1_grid": 0.1}', "l1_grid expects a list of numbers"),
                          ('{"seed": "x"}', "seed: expected an integer"),
                          ('{"closing_radius_grid": [1, 2]}', "closing_radius_grid must be")):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"configuration file {path}: ") as err:
            read_config_file(path)
        assert problem in str(err.value)


def test_env_names_are_every_variable_from_env_reads():
    names = env_names()
    assert {"NX47_BUDGET_S", "NX47_USE_UNET", "V138_MAX_TRAIN_VOLUMES"} <= names
    assert len(names) == len(dataclasses.fields(RunConfig)) + 2
