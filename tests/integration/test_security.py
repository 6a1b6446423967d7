"""Security basics a user relies on when running NX47 on a shared machine.

- every server the project starts binds 127.0.0.1 unless told otherwise;
- zip entry names are plain ids (no path, no traversal);
- checkpoints load weights only; no pickle of untrusted files;
- a run writes nothing outside its output folder.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

from fault_corpus import build_bad_corpus, synthetic_pair, write_tif  # noqa: E402
from waits import wait_until  # noqa: E402

PACKAGES = ("nx47_pipeline", "nx47_widgets")


def _project_sources() -> list[Path]:
    files: list[Path] = []
    for pkg in PACKAGES:
        files += sorted((REPO / pkg).rglob("*.py"))
    files += sorted((REPO / "scripts").glob("*.py")) if (REPO / "scripts").exists() else []
    return files


def _parse(path: Path) -> ast.AST | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError:  # a file being written right now by someone else
        return None


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


# ----------------------------------------------------------------------
# No pickle, weights-only checkpoints (static check over the project code)
# ----------------------------------------------------------------------
def test_project_code_never_unpickles():
    problems = []
    for path in _project_sources():
        tree = _parse(path)
        if tree is None:
            continue
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                mod = getattr(node, "module", None) or ""
                for n in names + [mod]:
                    if n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"):
                        problems.append(f"{rel}:{node.lineno} imports {n}")
            if not isinstance(node, ast.Call):
                continue
            fn = _dotted(node.func)
            if fn.endswith("joblib.load"):
                problems.append(f"{rel}:{node.lineno} calls {fn} (pickle)")
            if fn in ("np.load", "numpy.load"):
                ap = _kw(node, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{rel}:{node.lineno} np.load with allow_pickle != False")
            if fn.endswith("torch.load"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
    assert problems == []


# ----------------------------------------------------------------------
# Zip entry names are plain ids
# ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_id",
    ["../evil", "/etc/passwd", "a/b", "a\\b", "..", ".", ".hidden", "", "x\x00y", "id with space", "ñ"],
)
def test_zip_refuses_ids_that_are_not_plain(tmp_path, bad_id):
    from nx47_pipeline.io import submission as package

    mask = tmp_path / "m.tif"
    write_tif(mask, np.zeros((4, 4, 4), np.uint8))
    final = tmp_path / "submission.zip"
    with pytest.raises(package.PackagingError) as info:
        package.write_submission([(bad_id, mask)], final)
    assert repr(bad_id) in str(info.value)
    assert not final.exists()


def test_zip_entries_are_plain_ids_at_root(tmp_path):
    from nx47_pipeline.io import submission as package

    masks = []
    for vid in ["1407735", "2290837"]:
        p = tmp_path / "deep" / "folder" / f"{vid}.tif"
        write_tif(p, np.zeros((4, 4, 4), np.uint8))
        masks.append((vid, p))
    final = package.write_submission(masks, tmp_path / "submission.zip")
    with zipfile.ZipFile(final) as zf:
        for info in zf.infolist():
            assert re.fullmatch(r"[0-9]+\.tif", info.filename), info.filename
            assert "/" not in info.filename and not info.filename.startswith(".")


# ----------------------------------------------------------------------
# Checkpoints load weights only (behaviour)
# ----------------------------------------------------------------------
class _Payload:
    """Unpickling this object runs code: it creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    pytest.importorskip("torch")
    import nx47_pipeline.unet as unet

    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "last.pt"
    import torch

    # a torch-format file whose pickle would call os.makedirs(marker)
    torch.save({"model": {}, "params": {}, "epoch": _Payload(str(marker))}, ckpt)
    with pytest.raises(ValueError) as info:
        unet.load_unet(ckpt, device="cpu")
    assert str(ckpt) in str(info.value)
    assert not marker.exists()
    # and a plain pickle renamed .pt as well
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises((ValueError, RuntimeError)):
        unet.load_unet(raw, device="cpu")
    assert not marker.exists()


# ----------------------------------------------------------------------
# Servers bind 127.0.0.1 unless told otherwise
# ----------------------------------------------------------------------
def test_serve_defaults_to_loopback():
    import nx47_pipeline.cli.dispatch as cli
    from nx47_pipeline.cli import serve

    args = cli.build_parser().parse_args(["serve"])
    assert args.ip == "127.0.0.1"
    cmd = serve.voila_command(REPO / "dashboard.ipynb", port=8866)
    assert "--Voila.ip=127.0.0.1" in cmd
    # told otherwise, it binds what it is told
    assert "--Voila.ip=10.1.2.3" in serve.voila_command(REPO / "x.ipynb", port=1, ip="10.1.2.3")


def test_no_project_file_binds_all_interfaces():
    offenders = []
    roots = [REPO / p for p in PACKAGES] + [REPO / "scripts", REPO / "tests"]
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix not in ("", ".py", ".sh", ".ipynb", ".toml", ".cfg"):
                continue
            if path.name == "test_security.py":
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for bad in ("0.0.0.0", "Voila.ip=''", 'Voila.ip=""', "--ip=*", "ServerApp.ip=''"):
                if bad in text:
                    offenders.append(f"{path.relative_to(REPO)}: {bad}")
            # any voila command line in the project names the loopback address
            if re.search(r"[\"']-m[\"'],\s*[\"']voila[\"']", text) and "127.0.0.1" not in text:
                offenders.append(f"{path.relative_to(REPO)}: starts voila without 127.0.0.1")
    assert offenders == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_voila_really_listens_on_loopback_only(tmp_path):
    pytest.importorskip("voila")
    psutil = pytest.importorskip("psutil")
    import json

    from nx47_pipeline.cli import serve

    nb = tmp_path / "tiny.ipynb"
    nb.write_text(json.dumps({
        "cells": [], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                 "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }))
    port = _free_port()
    cmd = serve.voila_command(nb, port=port)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> set[str]:
            addrs: set[str] = set()
            procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
            for p in procs:
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                        addrs.add(c.laddr.ip)
            return addrs

        addrs = wait_until(listening, 60, "voila to listen on its port", interval_s=0.3)
        assert addrs <= {"127.0.0.1"}, addrs
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ----------------------------------------------------------------------
# Nothing written outside the output folder
# ----------------------------------------------------------------------
def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


def test_a_run_writes_nothing_outside_its_output_folder(tmp_path):
    from fault_corpus import build_clean_root, run_cli, run_env

    data, _, test_ids = build_clean_root(tmp_path / "data", n_train=4, n_test=1)
    cwd, home, tmpdir = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmpdir"
    for d in (cwd, home, tmpdir):
        d.mkdir()
    out = tmp_path / "out"
    before = {name: _tree(p) for name, p in (("data", data), ("cwd", cwd), ("home", home),
                                              ("tmpdir", tmpdir))}
    env = run_env(HOME=str(home), TMPDIR=str(tmpdir), XDG_CACHE_HOME=str(home / ".cache"),
                  MPLCONFIGDIR=str(home / ".mpl"))
    proc = run_cli(data, out, "--unet", "--max-train-volumes", "3", "--max-val-volumes", "1",
                   cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "submission.zip").is_file()
    after = {name: _tree(p) for name, p in (("data", data), ("cwd", cwd), ("home", home),
                                             ("tmpdir", tmpdir))}
    for name in before:
        assert after[name] == before[name], f"the run changed {name}: " + str(
            sorted(set(after[name].items()) ^ set(before[name].items()))[:10])
    # and the output folder only holds what docs/architecture.md lists
    top = {p.name for p in out.iterdir()}
    allowed = {"journal.jsonl", "plan.json", "config.json", "run.lock", "preflight", "features",
               "search", "model", "val", "test", "submission.zip", "stats.json", "run_key.json",
               "auto_coverage.json"}
    assert top <= allowed, top - allowed
