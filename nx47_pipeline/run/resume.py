"""Resuming a run folder: the run lock and the run key.

* ``run.lock`` holds the pid of the process running in the folder; a second
  run refuses the folder while that process lives, and a dashboard uses it to
  tell a live run from a finished one (:func:`lock_owner`).
* ``run_key.json`` hashes the result-relevant settings and the selected ids;
  a rerun whose key differs moves the earlier artifacts aside
  (``stale-<time>/``, never deleted) and starts afresh (:func:`check_run_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import RESUMABLE, RunFolder


#: What a run writes that depends on its settings (moved aside when they change).
ARTIFACTS = RESUMABLE

#: Config fields that do not change what a run computes (left out of the
#: run key: a rerun with another budget or console setting resumes).
NON_RESULT_FIELDS = frozenset(
    {
        "out_dir", "data_root", "budget_s", "safety_margin_frac", "telemetry",
        "heartbeat_interval_s", "stall_after_s", "console", "console_interval_s",
        "progress_interval_s", "progress_max_gap_s", "queue_maxsize", "array_trace", "preview_slices",
        "fit_time_cap_s", "max_train_volumes", "max_val_volumes", "use_unet", "unet_device",
    }
)


class FolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""

    def __init__(self, out_dir: Path, pid: int) -> None:
        super().__init__(f"{out_dir}: another run (pid {pid}) is using this output folder; "
                         "stop it or choose another --out")
        self.out_dir, self.pid = out_dir, pid


def pid_alive(pid: int | None) -> bool:
    """True if a process with ``pid`` exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped is a zombie: not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_lock_pid(out_dir: str | os.PathLike) -> int | None:
    """The pid written in ``<out_dir>/run.lock``, or None (absent or unreadable)."""
    try:
        text = RunFolder(out_dir).lock.read_text().strip()
    except OSError:
        return None
    try:
        return int(json.loads(text)["pid"]) if text.startswith("{") else int(text.split()[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def lock_owner(out_dir: str | os.PathLike) -> int | None:
    """The pid of another live process holding ``out_dir``'s lock, else None."""
    pid = read_lock_pid(out_dir)
    if pid is None or pid == os.getpid() or not pid_alive(pid):
        return None
    return pid


def acquire_lock(out_dir: Path) -> None:
    """Write this process's pid into the lock; :class:`FolderBusy` if another live run holds it."""
    owner = lock_owner(out_dir)
    if owner is not None:
        raise FolderBusy(out_dir, owner)
    RunFolder(out_dir).lock.write_text(str(os.getpid()))


def release_lock(out_dir: Path) -> None:
    """Remove the lock if this process holds it."""
    if read_lock_pid(out_dir) == os.getpid():
        try:
            RunFolder(out_dir).lock.unlink()
        except OSError:
            pass


def run_key(config_dict: dict[str, Any], train_ids: Iterable[str], val_ids: Iterable[str]
            ) -> tuple[str, dict[str, Any]]:
    """(key, what it hashes) for these settings and this selection."""
    src = {k: v for k, v in config_dict.items() if k not in NON_RESULT_FIELDS}
    src["train_ids"] = list(train_ids)
    src["val_ids"] = list(val_ids)
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16], src


def check_run_key(out_dir: Path, key: str, fields: dict[str, Any]) -> Path | None:
    """Record ``key`` in ``run_key.json``; when the folder holds another key,
    first move its artifacts to ``stale-<time>/`` and return that folder."""
    path = RunFolder(out_dir).run_key
    old = read_json(path)
    stale = None
    if old and old.get("key") != key:
        stale = out_dir / f"stale-{time.strftime('%Y%m%dT%H%M%S')}"
        stale.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            p = out_dir / name
            if p.exists():
                shutil.move(str(p), str(stale / name))
    write_json(path, {"key": key, "fields": fields})
    return stale
