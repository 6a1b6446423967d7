"""nnU-Net trained in a run, without nnU-Net: the subprocess driver of
:mod:`nx47_pipeline.nnunet.train` (reports, cancel, failures), the plans of
NX47's small configurations, and the ``model_kind`` contract (field,
``NX47_MODEL_KIND``, ``--model-kind``, notebook ``MODEL_KIND``)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from nx47_pipeline.cli.dispatch import build_parser
from nx47_pipeline.cli.run import config_from_args
from nx47_pipeline.config import ModelKind, RunConfig
from nx47_pipeline.nnunet.train import (
    SMALL_CONFIGURATIONS,
    NnUNetFolders,
    TrainFailed,
    TrainSpec,
    run_process,
    small_configuration,
)
from nx47_widgets.notebook import config_from_parameters

#: A child that reports like the trainer: three JSON lines on --events FD, then sleeps unless told to exit.
CHILD = """
import json, os, sys, threading
fd = int(sys.argv[sys.argv.index("--events") + 1])
out = os.fdopen(fd, "w", buffering=1)
for i in range(3):
    out.write(json.dumps({"type": "iteration", "iteration": i + 1, "pid": os.getpid()}) + "\\n")
print("child output line", flush=True)
if sys.argv[1] == "sleep":  # a training that goes on until it is stopped
    threading.Event().wait(60)
sys.exit(int(sys.argv[2]))
"""


def test_run_process_passes_each_report_and_waits_for_the_exit(tmp_path):
    seen, waits = [], []
    run_process([sys.executable, "-c", CHILD, "exit", "0"], env=os.environ, log=tmp_path / "x.log",
                on_event=seen.append, on_wait=waits.append, poll_s=0.05)
    assert [e["iteration"] for e in seen] == [1, 2, 3]
    assert "child output line" in (tmp_path / "x.log").read_text()


def test_run_process_names_the_log_when_the_command_fails(tmp_path):
    with pytest.raises(TrainFailed) as exc:
        run_process([sys.executable, "-c", CHILD, "exit", "3"], env=os.environ, log=tmp_path / "x.log",
                    on_event=lambda e: None, poll_s=0.05)
    assert "status 3" in str(exc.value) and str(tmp_path / "x.log") in str(exc.value)
    assert "child output line" in str(exc.value)


class _Stop(Exception):
    pass


def test_a_check_that_raises_stops_the_subprocess_at_once(tmp_path):
    """Stop: the check raises while the child runs; the child is terminated and the exception propagates."""
    def check():
        if len(seen) == 3:
            raise _Stop

    seen = []
    t0 = time.monotonic()
    with pytest.raises(_Stop):
        run_process([sys.executable, "-c", CHILD + "\n", "sleep", "0"], env=os.environ, log=tmp_path / "x.log",
                    on_event=seen.append, check=check, poll_s=0.05)
    assert time.monotonic() - t0 < 30  # the child's 60 s sleep was cut
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(seen[0]["pid"], 0)


def test_nnunets_folders_reach_subprocesses_only(tmp_path):
    f = NnUNetFolders(tmp_path / "nnunet")
    env = f.env(nnUNet_n_proc_DA="0")
    assert env["nnUNet_raw"] == str(tmp_path / "nnunet" / "raw")
    assert env["nnUNet_results"] == str(tmp_path / "nnunet" / "results") and env["nnUNet_n_proc_DA"] == "0"
    assert "nnUNet_raw" not in os.environ
    spec = TrainSpec(configuration="3d_nx47_tiny")
    assert f.result_folder(spec).name == "nnUNetTrainer_nx47__nnUNetPlans__3d_nx47_tiny"
    assert f.plans_file(spec) == tmp_path / "nnunet" / "preprocessed" / "Dataset047_Vesuvius" / "nnUNetPlans.json"


def test_small_configurations_inherit_the_planned_one():
    plans = {"configurations": {"3d_fullres": {"architecture": {"network_class_name": "X", "arch_kwargs": {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "conv_bias": True}}}}}
    for name, (patch, features, batch, convs) in SMALL_CONFIGURATIONS.items():
        c = small_configuration(plans, name)
        assert c["inherits_from"] == "3d_fullres" and c["patch_size"] == [patch] * 3 and c["batch_size"] == batch
        kw = c["architecture"]["arch_kwargs"]
        assert kw["features_per_stage"] == list(features) and kw["n_stages"] == len(features)
        assert kw["n_conv_per_stage"] == [convs] * len(features)
        assert len(kw["strides"]) == len(features) and kw["conv_bias"] is True
        assert c["architecture"]["network_class_name"] == "X"


@pytest.mark.parametrize("field,value", [("epochs", 0), ("iterations", -1), ("device", "tpu")])
def test_train_spec_refuses_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        TrainSpec(**{field: value})


def test_model_kind_is_a_field_a_variable_a_flag_and_a_notebook_parameter():
    assert RunConfig().model_kind == ModelKind.LINEAR == "linear"
    assert RunConfig.from_env({"NX47_MODEL_KIND": "nnunet"}).model_kind == "nnunet"
    with pytest.raises(ValueError, match="model_kind"):
        RunConfig(model_kind="svm")
    with pytest.raises(ValueError, match="nnunet_epochs"):
        RunConfig(nnunet_epochs=0)
    args = build_parser().parse_args(["run", "--model-kind", "nnunet", "--set", "nnunet_configuration=3d_nx47_cpu",
                                      "--set", "nnunet_iterations=20"])
    cfg = config_from_args(args)
    assert (cfg.model_kind, cfg.nnunet_configuration, cfg.nnunet_iterations) == ("nnunet", "3d_nx47_cpu", 20)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--model-kind", "svm"])
    assert config_from_parameters(model_kind="nnunet", environ={}).model_kind == "nnunet"
    assert config_from_parameters(environ={"NX47_MODEL_KIND": "nnunet"}).model_kind == "nnunet"


def test_a_nnunet_run_without_nnunet_installed_says_so_and_still_submits(tmp_path, monkeypatch):
    """Kaggle without the kit's nnU-Net wheels: the run names what to install (ERROR nnunet_unavailable),
    skips its training stages with that reason and writes the fallback's submission."""
    import json

    from nx47_pipeline.data.demo import generate_demo_dataset
    from nx47_pipeline.run import nnunet_stage
    from nx47_pipeline.run.orchestrator import run_pipeline

    def unavailable():
        raise nnunet_stage.NnUNetUnavailable("model kind nnunet needs nnU-Net v2 and PyTorch (test): pip install ...")

    monkeypatch.setattr(nnunet_stage, "require_nnunet", unavailable)
    generate_demo_dataset(tmp_path / "data", n_train=3, n_test=2, shape=(24, 24, 24), seed=2)
    cfg = RunConfig(data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), model_kind="nnunet",
                    console=False, budget_s=600.0)
    result = run_pipeline(cfg)
    assert (tmp_path / "out" / "submission.zip").is_file() and result.status == "ok"
    events = [json.loads(line) for line in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    errors = [e["payload"] for e in events if e["kind"] == "ERROR"]
    assert [e["code"] for e in errors] == ["nnunet_unavailable"] and "pip install" in errors[0]["message"]
    ends = {e["stage"]: e["payload"] for e in events if e["kind"] == "STEP" and e["payload"]["phase"] == "end"}
    for stage in ("preflight", "nnunet", "validate"):
        assert ends[stage]["status"] == "skipped" and "nnU-Net is not installed" in ends[stage]["message"]
    assert ends["segment"]["status"] == "ok" and len(result.stats["fallback_ids"]) == 2
