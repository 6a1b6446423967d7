"""``nx47 score``: score masks (folder or zip) against labels with the local metric.

The per-volume metric is :func:`nx47_pipeline.model.metric.score_volume`;
this module reads the files (a folder of TIFFs or a ``submission.zip``),
pairs them with the labels by id, and parses the command's arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import tifffile

from nx47_pipeline.model.metric import _ZERO_PARTS, TopoMethod, _result, score_volume

NAME = "score"


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(NAME, help="score masks (folder or zip) against labels: --pred DIR|ZIP --labels DIR [--json]",
                   add_help=False)


def main(argv: list[str]) -> int:
    return score_main(argv)


def _tif_ids(folder: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
            out[path.stem] = path
    return out


def _score_file(
    label_path: Path,
    pred: Path,
    src: Any,
    zf: zipfile.ZipFile | None,
    tifffile: Any,
    kwargs: dict[str, Any],
) -> tuple[dict[str, Any], str]:
    """Score one prediction file: (per-volume entry, error message or "")."""
    try:
        label = tifffile.imread(label_path)
    except (OSError, ValueError) as exc:
        msg = f"{label_path}: unreadable label volume: {exc}"
        return {**_ZERO_PARTS, "error": msg}, msg
    where = f"{pred}:{src}" if zf is not None else str(src)
    try:
        if zf is not None:
            volume = tifffile.imread(io.BytesIO(zf.read(src)))
        else:
            volume = tifffile.imread(src)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        msg = f"{where}: unreadable prediction: {exc}"
        return {**_ZERO_PARTS, "error": msg}, msg
    try:
        vs = score_volume(volume, label, **kwargs)
    except ValueError as exc:
        msg = f"{where}: {exc}"
        return {**_ZERO_PARTS, "error": msg}, msg
    return vs.to_dict(), ""


def score_submission(
    pred: str | Path,
    labels: str | Path,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score a folder or zip of predictions against a folder of labels.

    Parameters
    ----------
    pred : str or Path
        Folder of ``<id>.tif`` or a zip with ``<id>.tif`` at its root.
    labels : str or Path
        Folder of ``<id>.tif`` label volumes (values 0/1/2), e.g. a demo
        dataset's ``test_labels_hidden/``.
    on_progress : callable, optional
        ``on_progress(done, total, id)`` after each volume.
    **kwargs
        Passed to :func:`score_volume`.

    Returns
    -------
    dict
        ``mean`` (over every label volume; a missing or unreadable
        prediction scores 0), ``per_volume``, ``topo_method``, ``missing``
        (ids with no prediction) and ``errors`` (``{"id", "error"}``).

    Raises
    ------
    FileNotFoundError
        If ``pred`` or ``labels`` does not exist.
    ValueError
        If ``labels`` holds no ``.tif`` file or ``pred`` is neither a folder
        nor a zip.
    """
    pred = Path(pred)
    labels = Path(labels)
    if not labels.is_dir():
        raise FileNotFoundError(f"labels folder not found: {labels}")
    if not pred.exists():
        raise FileNotFoundError(f"predictions not found: {pred}")
    label_files = _tif_ids(labels)
    if not label_files:
        raise ValueError(f"labels folder {labels} holds no .tif file")

    zf: zipfile.ZipFile | None = None
    pred_files: dict[str, Any]
    if pred.is_dir():
        pred_files = _tif_ids(pred)
    elif zipfile.is_zipfile(pred):
        zf = zipfile.ZipFile(pred)
        pred_files = {}
        for name in zf.namelist():
            if "/" in name.rstrip("/"):
                continue  # only the zip root counts, as on Kaggle
            stem, dot, ext = name.rpartition(".")
            if dot and ext.lower() in ("tif", "tiff"):
                pred_files[stem] = name
    else:
        raise ValueError(f"predictions {pred} are neither a folder nor a zip file")

    per_volume: dict[str, dict] = {}
    missing: list[str] = []
    errors: list[dict[str, str]] = []
    method = TopoMethod.parse(kwargs.get("topo_method", TopoMethod.EXACT)).value
    total = len(label_files)
    try:
        for i, (vid, label_path) in enumerate(label_files.items(), 1):
            src = pred_files.get(vid)
            if src is None:
                missing.append(vid)
                per_volume[vid] = {**_ZERO_PARTS, "error": "missing prediction"}
            else:
                entry, error = _score_file(label_path, pred, src, zf, tifffile, kwargs)
                per_volume[vid] = entry
                if error:
                    errors.append({"id": vid, "error": error})
                else:
                    method = entry["topo_method"]
            if on_progress is not None:
                on_progress(i, total, vid)
    finally:
        if zf is not None:
            zf.close()
    return _result(per_volume, missing, errors, method)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _format_table(result: dict[str, Any]) -> str:
    rows = [f"{'id':<16} {'score':>7} {'surf_dice':>9} {'voi':>7} {'topo':>7}"]
    for vid, r in result["per_volume"].items():
        note = f"  ({r['error']})" if "error" in r else ""
        rows.append(
            f"{vid:<16} {r['score']:7.4f} {r['surface_dice']:9.4f} "
            f"{r['voi']:7.4f} {r['topo']:7.4f}{note}"
        )
    rows.append(f"{'mean':<16} {result['mean']:7.4f}")
    rows.append(f"topo: {result['topo_method']}")
    if result["missing"]:
        rows.append(f"missing predictions: {', '.join(result['missing'])}")
    return "\n".join(rows)


def score_main(argv: list[str] | None = None) -> int:
    """``nx47 score --pred DIR|ZIP --labels DIR [--json]``.

    Prints a per-volume table (id, score, surface_dice, voi score, topo and
    the mean) or, with ``--json``, one JSON object (see
    :func:`score_submission`).  Returns 0, or 2 on bad arguments or missing
    paths (with a message naming the path).
    """
    parser = argparse.ArgumentParser(
        prog="nx47 score",
        description="Score predictions with the local competition metric "
        "(TopoScore by exact Betti matching, as the leaderboard).",
    )
    parser.add_argument(
        "--pred", required=True, help="folder of <id>.tif or submission zip"
    )
    parser.add_argument(
        "--labels", required=True, help="folder of <id>.tif label volumes"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--topo-method", choices=[m.name.lower() for m in TopoMethod], default="exact",
        help="exact: the hosts' Betti matching (default); approx: matched = min "
        "of the Betti counts, an upper bound",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    try:
        result = score_submission(args.pred, args.labels,
                                  topo_method=TopoMethod.parse(args.topo_method))
    except (FileNotFoundError, ValueError) as exc:
        print(f"nx47 score: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, allow_nan=True))
    else:
        print(_format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(score_main())
