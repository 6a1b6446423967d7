"""The nx47 command line: help for every command, demo-data, verify-journal, plan, bad arguments."""

import json
import subprocess
import sys

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.run.budget import PreflightTimings
from nx47_pipeline.cli.dispatch import build_parser, main
from nx47_pipeline.cli.run import config_from_args

COMMANDS = ("run", "demo-data", "verify-journal", "score", "plan", "serve")


def nx47(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", *args],
                          capture_output=True, text=True, timeout=120, **kw)


def test_help_documents_every_command():
    out = nx47("--help")
    assert out.returncode == 0
    for c in COMMANDS:
        assert c in out.stdout
    run_help = nx47("run", "--help").stdout
    for flag in ("--data", "--out", "--max-train-volumes", "--max-val-volumes", "--budget-s",
                 "--auto-coverage", "--unet", "--no-unet"):
        assert flag in run_help


def test_run_flags_reach_the_config(monkeypatch):
    from nx47_pipeline.cli.run import config_from_args as _config_from_args

    monkeypatch.setenv("NX47_MAX_VAL_VOLUMES", "5")
    args = build_parser().parse_args(["run", "--data", "/d", "--out", "/o", "--max-train-volumes", "0",
                                      "--budget-s", "600", "--auto-coverage", "--no-unet",
                                      "--set", "fit_max_iter=77"])
    cfg = _config_from_args(args)
    assert (cfg.data_root, cfg.out_dir, cfg.max_train_volumes, cfg.max_val_volumes) == ("/d", "/o", 0, 5)
    assert cfg.budget_s == 600 and cfg.auto_coverage is True and cfg.use_unet is False
    assert cfg.fit_max_iter == 77


def test_run_config_file_reproduces_its_settings_and_flags_override_it(monkeypatch, tmp_path):
    cfg = RunConfig(data_root="/d", out_dir="/o", max_train_volumes=3, max_val_volumes=0, budget_s=123.5,
                    use_unet=None, auto_coverage=True, feature_scales=(1.0, 3.0), closing_radius=(1, 1, 2),
                    fit_max_iter=33, console=True)
    path = write_json(tmp_path / "config.json", cfg.to_dict())
    # the environment is under the file: even use_unet's null (automatic) beats NX47_USE_UNET
    monkeypatch.setenv("NX47_BUDGET_S", "5")
    monkeypatch.setenv("NX47_USE_UNET", "1")
    assert config_from_args(build_parser().parse_args(["run", "--config", str(path)])) == cfg
    args = build_parser().parse_args(["run", "--config", str(path), "--out", "/x", "--budget-s", "60",
                                      "--no-unet", "--set", "fit_max_iter=7", "--quiet"])
    assert config_from_args(args) == cfg.replace(out_dir="/x", budget_s=60.0, use_unet=False, fit_max_iter=7,
                                                 console=False)
    # a file of some fields: the environment still sets the others
    monkeypatch.setenv("NX47_MAX_VAL_VOLUMES", "2")
    monkeypatch.setenv("NX47_SEED", "999")
    part = write_json(tmp_path / "part.json", {"seed": 5, "l1_grid": [0.5]})
    got = config_from_args(build_parser().parse_args(["run", "--config", str(part)]))
    assert (got.seed, got.l1_grid, got.max_val_volumes, got.budget_s) == (5, (0.5,), 2, 5.0)


def test_a_bad_config_file_is_named_with_its_problem(tmp_path, capsys):
    cases = {
        "torn.json": ('{"seed": 4', "not valid JSON"),
        "list.json": ("[1, 2]", "expected a JSON object"),
        "unknown.json": ('{"sede": 4}', "unknown configuration field 'sede'"),
        "type.json": ('{"seed": [4]}', "seed expects an integer"),
        "value.json": ('{"budget_s": -1}', "budget_s must be > 0"),
    }
    for name, (text, problem) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["run", "--config", str(tmp_path / name), "--quiet"]) == 2, name
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and problem in err, err
    missing = tmp_path / "missing.json"
    out = nx47("run", "--config", str(missing))
    assert out.returncode == 2
    assert str(missing) in out.stderr and "No such file" in out.stderr


def test_bad_set_value_is_a_clear_error(tmp_path):
    out = nx47("run", "--out", str(tmp_path / "o"), "--set", "fit_max_iter=lots")
    assert out.returncode == 2
    assert "fit_max_iter" in out.stderr and "lots" in out.stderr


def test_missing_data_root_is_named(tmp_path):
    missing = tmp_path / "no such folder"
    out = nx47("run", "--data", str(missing), "--out", str(tmp_path / "o"), "--quiet")
    assert out.returncode != 0
    assert str(missing) in (out.stderr + out.stdout)


def test_demo_data_command_writes_the_kaggle_layout(tmp_path):
    out = nx47("demo-data", "--out", str(tmp_path / "d"), "--n-train", "2", "--n-test", "1", "--shape", "32")
    assert out.returncode == 0, out.stderr
    for name in ("train.csv", "test.csv", "train_images", "train_labels", "test_images"):
        assert (tmp_path / "d" / name).exists()
    bad = nx47("demo-data", "--out", str(tmp_path / "e"), "--shape", "big")
    assert bad.returncode == 2 and "big" in bad.stderr


def test_plan_projects_from_preflight_timings(tmp_path, capsys):
    PreflightTimings(
        features_s_per_mvox=1.0, search_s_per_mvox=5.0, fit_s_per_iter_row=1e-6,
        validate_s_per_mvox=2.0, segment_s_per_mvox=2.0, fallback_s_per_mvox=0.2,
        package_s_per_volume=0.1, mvox_train=32.768, mvox_test=32.768,
        rows_per_volume=40000, grid_fits=4,
    ).save(tmp_path / "preflight" / "timings.json")
    assert main(["plan", "--out", str(tmp_path), "--n-train", "629", "--n-val", "157"]) == 0
    text = capsys.readouterr().out
    assert "does NOT fit" in text and "largest coverage that fits" in text
    assert main(["plan", "--out", str(tmp_path / "none")]) == 2
