"""JSON artifacts: one reader and one atomic writer that understands numpy values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nx47_pipeline.io.atomic import write_text

__all__ = ["read_json", "write_json", "json_default"]


def json_default(obj: Any) -> Any:
    """``json`` fallback for numpy scalars and arrays, paths and tuples."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any, **dump_kw: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (numpy values allowed)."""
    dump_kw.setdefault("indent", 1)
    dump_kw.setdefault("sort_keys", True)
    dump_kw.setdefault("default", json_default)
    return write_text(path, json.dumps(obj, **dump_kw))


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON content of ``path``, or None when it is absent or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
