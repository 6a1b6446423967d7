"""``dashboard.ipynb`` executed headless by papermill (as in a Kaggle commit run):
it starts the run by itself, prints progress lines, blocks until the end and
leaves a valid ``submission.zip``."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import nbformat
import pytest
import tifffile

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover

REPO = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_",
                                                                    "KAGGLE_"))}
    env.update(extra)
    return env


def test_notebook_has_a_papermill_parameters_cell():
    nb = nbformat.read(REPO / "dashboard.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    src = tagged[0].source
    for name in ("DATA_ROOT", "OUT_DIR", "MAX_TRAIN_VOLUMES", "MAX_VAL_VOLUMES", "BUDGET_S",
                 "USE_UNET", "MODEL_DIR", "MODEL_KIND", "AUTO_RUN"):
        assert f"{name} = None" in src


#: The notebook's console settings in the headless run below: a progress line
#: at most every CONSOLE_S per stage, progress events at least every GAP_S.
CONSOLE_S, GAP_S = 0.5, 2.0
_LINE = re.compile(r"^\[\s*(?P<t>[0-9.]+)s\] (?P<stage>\S+)\s+(?P<kind>STEP begin|STEP end|PROGRESS)\b")


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    """``dashboard.ipynb`` executed once by papermill as a Kaggle commit run
    would: (data root, output folder, the cells' stdout)."""
    import papermill as pm

    tmp_path = tmp_path_factory.mktemp("notebook")
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=4, n_test=2, shape=40, seed=1)
    out = tmp_path / "out"
    env = _clean_env(NX47_HEARTBEAT_INTERVAL_S="1", NX47_SEARCH_MAX_ITER="20",
                     NX47_FIT_MAX_ITER="40", NX47_USE_UNET="0", NX47_CONSOLE_INTERVAL_S=str(CONSOLE_S),
                     NX47_PROGRESS_MAX_GAP_S=str(GAP_S))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this environment
    try:
        executed = tmp_path / "executed.ipynb"
        pm.execute_notebook(
            str(REPO / "dashboard.ipynb"), str(executed), cwd=str(REPO), kernel_name="python3",
            parameters={"DATA_ROOT": str(data), "OUT_DIR": str(out), "MAX_TRAIN_VOLUMES": 2,
                        "MAX_VAL_VOLUMES": 1, "BUDGET_S": 600.0},  # AUTO_RUN left at None: detected
            progress_bar=False, request_save_on_cell_execute=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
    return data, out, text


@pytest.mark.timeout(300)
def test_papermill_headless_run_leaves_a_valid_submission(headless):
    data, out, text = headless
    assert "[nx47] headless run" in text
    assert "[nx47] finished: status=ok" in text
    assert text.count("\n") > 10  # progress lines were printed while it ran

    sub = out / "submission.zip"
    assert sub.is_file()
    tests = {r.id: r for r in discover(data).test}
    with zipfile.ZipFile(sub) as zf:
        assert zf.testzip() is None
        names = sorted(zf.namelist())
        assert names == sorted(f"{i}.tif" for i in tests)
        for name in names:
            arr = tifffile.imread(io.BytesIO(zf.read(name)))
            rec = tests[name[:-4]]
            assert arr.dtype.name == "uint8" and tuple(arr.shape) == tuple(rec.shape)
            assert set(int(v) for v in set(arr.ravel().tolist())) <= {0, 1}


@pytest.mark.timeout(300)
def test_headless_notebook_prints_a_progress_line_at_least_every_few_seconds_of_a_stage(headless):
    """The seed's notebook printed nothing for hours.  Headless, every stage
    prints a PROGRESS line at least every ``console_interval_s +
    progress_max_gap_s`` seconds from its begin to its end (heartbeat lines
    do not count)."""
    _data, _out, text = headless
    limit = CONSOLE_S + GAP_S
    begun: dict[str, float] = {}
    last: dict[str, float] = {}
    worst: dict[str, tuple[float, float]] = {}  # stage: (longest silence, stage seconds)
    lines: dict[str, int] = {}  # stage: PROGRESS lines printed
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        t, stage, kind = float(m["t"]), m["stage"], m["kind"]
        if kind == "STEP begin":
            begun[stage] = last[stage] = t
            continue
        if stage not in last:
            continue
        gap = t - last[stage]
        if kind == "STEP end":
            worst[stage] = (max(worst.get(stage, (0.0, 0.0))[0], gap), t - begun.pop(stage))
            del last[stage]
        else:
            worst[stage] = (max(worst.get(stage, (0.0, 0.0))[0], gap), 0.0)
            last[stage] = t
            lines[stage] = lines.get(stage, 0) + 1
    assert {"preflight", "features", "search", "validate", "segment"} <= set(worst)
    # the stages printed their own progress lines, several of them in the longest
    assert max(lines.values()) >= 3, (lines, worst)
    late = {stage: round(g, 1) for stage, (g, _) in worst.items() if g > limit}
    assert not late, f"stages printing no progress line for more than {limit} s: {late}"
