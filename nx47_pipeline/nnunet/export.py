"""``nx47 nnunet-export``: the Kaggle layout as nnU-Net v2 raw data.

``RAW/Dataset0NN_Vesuvius/`` (``NN`` the dataset id) holds:

* ``dataset.json`` -- one channel, labels ``background`` 0, ``surface`` 1 and
  ``ignore`` 2 (the competition's unlabelled value, nnU-Net's ignore label),
  ``file_ending`` ``.tif``, image reader ``Tiff3DIO``;
* ``imagesTr/<id>_0000.tif`` with ``imagesTr/<id>.json`` (``{"spacing": [1, 1, 1]}``),
  ``labelsTr/<id>.tif`` with ``labelsTr/<id>.json`` -- the training and
  validation pairs NX47 selects (:func:`nx47_pipeline.data.coverage.select_coverage`,
  scroll-aware, the same seed and caps as ``nx47 run``);
* ``imagesTs/<id>_0000.tif`` with its spacing file -- the test images;
* ``splits_final.json`` -- one fold whose ``train`` / ``val`` are NX47's
  split (copy it into the preprocessed dataset folder after
  ``nnUNetv2_plan_and_preprocess`` so nnU-Net's fold 0 is NX47's split).

Files are hard links to the data root's TIFFs where the file system allows,
copies elsewhere.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.data.discovery import VolumeRecord, discover, resolve_data_root
from nx47_pipeline.io.jsonio import write_json

#: The competition's label values as nnU-Net labels (2: not labelled, nnU-Net's ignore label).
LABELS = {"background": 0, "surface": 1, "ignore": 2}
CHANNEL = "CT"
SPACING = [1.0, 1.0, 1.0]
SPLITS = "splits_final.json"


class ExportError(ValueError):
    """The data root cannot be exported; the message names the folder or file."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_nnunet` wrote."""

    folder: Path
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]


def dataset_name(dataset_id: int) -> str:
    """``Dataset047_Vesuvius`` for 47 (nnU-Net's three-digit naming)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ExportError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    return f"Dataset{dataset_id:03d}_Vesuvius"


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _spacing(path: Path) -> None:
    write_json(path, {"spacing": SPACING})


def export_nnunet(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset_id: int = 47,
    max_train_volumes: int = 24,
    max_val_volumes: int = 8,
    seed: int = 47,
) -> ExportResult:
    """Write the data root ``data`` as nnU-Net raw data under ``out`` (see the module docstring).

    Parameters
    ----------
    data : path or ``"auto"``
        A Kaggle-layout data root (``nx47 run --data``).
    out : path
        nnU-Net's raw folder (``nnUNet_raw``); ``out/DatasetNNN_Vesuvius`` is
        (re)written.
    dataset_id : int
        nnU-Net's dataset id.
    max_train_volumes, max_val_volumes : int
        Caps of NX47's coverage selection (0 = all), as ``nx47 run``.
    seed : int
        The selection's seed (``nx47 run``'s ``seed``).

    Raises
    ------
    ExportError
        No labelled pairs to export; the message names the data root.
    """
    root = resolve_data_root(str(data)) if str(data) == "auto" else Path(data).expanduser()
    if not root.is_dir():
        raise ExportError(f"{root}: data root does not exist or is not a folder")
    folder = Path(out).expanduser() / dataset_name(dataset_id)
    inv = discover(root)
    if not inv.pairs:
        raise ExportError(f"{root}: no labelled training pairs found (train_images/ + train_labels/)")
    sel = select_coverage(inv.pairs, max_train_volumes=max_train_volumes, max_val_volumes=max_val_volumes,
                          seed=seed)
    return write_raw(folder, sel.train, sel.val, inv.test)


def write_raw(folder: str | os.PathLike, train: Sequence[VolumeRecord], val: Sequence[VolumeRecord],
              test: Sequence[VolumeRecord] = ()) -> ExportResult:
    """Write ``train`` and ``val`` pairs (and ``test`` images) as nnU-Net's
    raw dataset ``folder`` (``.../DatasetNNN_Vesuvius``): images and labels
    linked (copied across file systems) with their spacing files,
    ``dataset.json`` and ``splits_final.json`` holding one fold of
    ``train`` / ``val`` (what :func:`export_nnunet` writes for a selection;
    ``nx47 run --model-kind nnunet`` writes the run's own)."""
    folder = Path(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    pairs: Sequence[VolumeRecord] = [*train, *val]
    for rec in pairs:
        _place(rec.image_path, folder / "imagesTr" / f"{rec.id}_0000.tif")
        _spacing(folder / "imagesTr" / f"{rec.id}.json")
        _place(rec.label_path, folder / "labelsTr" / f"{rec.id}.tif")
        _spacing(folder / "labelsTr" / f"{rec.id}.json")
    for rec in test:
        _place(rec.image_path, folder / "imagesTs" / f"{rec.id}_0000.tif")
        _spacing(folder / "imagesTs" / f"{rec.id}.json")
    write_json(folder / "dataset.json", {
        "channel_names": {"0": CHANNEL},
        "labels": dict(LABELS),
        "numTraining": len(pairs),
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO",
        "name": "Vesuvius",
        "description": "Vesuvius Challenge - Surface Detection, exported by nx47 nnunet-export",
    })
    train_ids, val_ids = [r.id for r in train], [r.id for r in val]
    write_json(folder / SPLITS, [{"train": train_ids, "val": val_ids}])
    return ExportResult(folder=folder, train_ids=train_ids, val_ids=val_ids, test_ids=[r.id for r in test])


__all__ = ["LABELS", "SPLITS", "ExportError", "ExportResult", "dataset_name", "export_nnunet", "write_raw"]
