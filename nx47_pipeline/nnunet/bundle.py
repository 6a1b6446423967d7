"""``nx47 import-nnunet``: nnU-Net v2 result folders as an NX47 model bundle
(``model.json`` kind ``nnunet``), and loading such a bundle as a predictor.

A result folder is what ``nnUNetv2_train`` writes
(``nnUNet_results/DatasetNNN_Name/<trainer>__<plans>__<configuration>/``):
``dataset.json``, ``plans.json`` and ``fold_<k>/checkpoint_final.pth``.
Each checkpoint is read with ``torch.load(weights_only=True)`` (nnU-Net's
logs hold numpy scalars: those plain-data types alone are allowed besides
tensors); only its network weights, configuration and mirror axes are kept.
The bundle holds, per member ``m<k>``, ``nnunet/m<k>/plans.json``,
``dataset.json`` and ``fold_<f>.pt`` (a state dict of tensors), each with
its sha256 in ``model.json``; several members are averaged with their
weights (:class:`~nx47_pipeline.model.predictor.EnsemblePredictor`), the
folds of one member as nnU-Net averages them (logits).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nx47_pipeline import __version__
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.model.bundle import FORMAT, FORMAT_VERSION, MANIFEST, BundleError, sha256_file
from nx47_pipeline.model.predictor import PostChoice, PredictorKind
from nx47_pipeline.nnunet.predictor import NnUNetModel

CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class MemberSpec:
    """One result folder to import and its ensemble weight."""

    results: Path
    weight: float = 1.0


def parse_member(text: str) -> MemberSpec:
    """``DIR`` or ``DIR:WEIGHT`` (weight > 0)."""
    path, sep, weight = str(text).rpartition(":")
    if not sep or not path:
        return MemberSpec(Path(text))
    try:
        w = float(weight)
    except ValueError:
        return MemberSpec(Path(text))  # a ':' in the folder name
    if not w > 0:
        raise BundleError(f"{text}: member weight must be > 0, got {weight!r}")
    return MemberSpec(Path(path), w)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True`` (numpy scalar types allowed: nnU-Net's logs)."""
    import torch  # noqa: PLC0415 - optional, heavy

    allowed = [np.dtype, np._core.multiarray.scalar, *(type(np.dtype(t)) for t in ("f4", "f8", "i8", "i4"))]
    try:
        with torch.serialization.safe_globals(allowed):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - named and re-raised as a bundle problem
        raise BundleError(f"{path}: not a loadable nnU-Net checkpoint with weights_only=True "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network_weights"), Mapping):
        raise BundleError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return ck


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; an nnU-Net result folder holds dataset.json, plans.json and "
                          "fold_<k>/checkpoint_*.pth") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable or not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    return data


def _folds(results: Path, folds: Sequence[str] | None, checkpoint: str) -> list[str]:
    if folds:
        return [str(f) for f in folds]
    found = sorted(p.parent.name.removeprefix("fold_") for p in results.glob(f"fold_*/{checkpoint}"))
    if not found:
        raise BundleError(f"{results}: no fold_<k>/{checkpoint} found")
    return found


def import_nnunet(
    members: Sequence[MemberSpec],
    out: str | Path,
    *,
    folds: Sequence[str] | None = None,
    checkpoint: str = CHECKPOINT,
    tile_step: float = 0.5,
    use_mirroring: bool = True,
    post: PostChoice | None = None,
) -> Path:
    """Write the bundle of ``members`` to ``out`` (a new or empty folder).

    Parameters
    ----------
    members : sequence of MemberSpec
        Result folders and their weights.
    folds : sequence of str, optional
        Folds to take from each folder (default: every ``fold_<k>`` holding ``checkpoint``).
    checkpoint : str
        The checkpoint file name in each fold folder.
    tile_step, use_mirroring
        The inference settings recorded in the bundle.
    post : PostChoice, optional
        The post-processing (default: hysteresis 0.5 / 0.5, nnU-Net's argmax,
        then NX47's closing, cavity filling and dust removal).

    Raises
    ------
    BundleError
        A folder or file is missing, unreadable or not nnU-Net's; the message names it.
    """
    if not members:
        raise BundleError("import-nnunet: no result folder given (--results)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not empty; choose a new folder for the bundle")
    import torch  # noqa: PLC0415

    post = post or PostChoice(low=0.5, high=0.5)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    entries = []
    for k, spec in enumerate(members):
        res = Path(spec.results).expanduser()
        if not res.is_dir():
            raise BundleError(f"{res}: nnU-Net result folder does not exist or is not a folder")
        dataset_json, plans = _read_json(res / "dataset.json"), _read_json(res / "plans.json")
        name = f"m{k}"
        (tmp / "nnunet" / name).mkdir(parents=True, exist_ok=True)
        files, configuration, mirror, trainer = [], None, None, None
        for f in _folds(res, folds, checkpoint):
            cpath = res / f"fold_{f}" / checkpoint
            if not cpath.is_file():
                raise BundleError(f"{cpath}: missing (fold {f})")
            ck = _load_checkpoint(cpath)
            conf = (ck.get("init_args") or {}).get("configuration")
            if conf not in (plans.get("configurations") or {}):
                raise BundleError(f"{cpath}: configuration {conf!r} is not in {res / 'plans.json'}")
            if configuration not in (None, conf):
                raise BundleError(f"{cpath}: configuration {conf!r} differs from the other folds' {configuration!r}")
            configuration, trainer = conf, ck.get("trainer_name")
            axes = ck.get("inference_allowed_mirroring_axes")
            mirror = None if axes is None else [int(a) for a in axes]
            rel = f"nnunet/{name}/fold_{f}.pt"
            torch.save({key: v.detach().clone() for key, v in ck["network_weights"].items()}, tmp / rel)
            files.append(rel)
        model = NnUNetModel(plans=plans, dataset_json=dataset_json, configuration=configuration,
                            fold_weights=[torch.load(tmp / r, map_location="cpu", weights_only=True) for r in files],
                            mirror_axes=None if mirror is None else tuple(mirror))
        try:
            model.parts()
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise BundleError(f"{res}: the network of plans.json does not take the checkpoint's weights "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        for src, rel in ((res / "plans.json", f"nnunet/{name}/plans.json"),
                         (res / "dataset.json", f"nnunet/{name}/dataset.json")):
            shutil.copy2(src, tmp / rel)
        entries.append({"name": name, "source": str(res), "weight": float(spec.weight), "trainer": trainer,
                        "configuration": configuration, "plans": f"nnunet/{name}/plans.json",
                        "dataset": f"nnunet/{name}/dataset.json", "folds": files, "mirror_axes": mirror})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": str(PredictorKind.NNUNET),
        "code_version": __version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nnunet": {"members": entries, "tile_step": float(tile_step), "use_mirroring": bool(use_mirroring)},
        "search": {"low": post.low, "high": post.high},
        "postprocess": {"closing_radius": list(post.closing_radius), "min_component_voxels": post.min_size,
                        "min_size": post.min_size, "plug_size": post.plug_size, "thin": post.thin},
        "train_ids": [],
        "val_ids": [],
        "validation": {},
        "files": {rel: sha256_file(tmp / rel)
                  for e in entries for rel in (e["plans"], e["dataset"], *e["folds"])},
    }
    write_json(tmp / MANIFEST, manifest)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


__all__ = ["CHECKPOINT", "MemberSpec", "parse_member", "import_nnunet"]
