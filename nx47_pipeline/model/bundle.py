"""Model bundles: a trained model as a self-describing folder.

A finished training run's ``<out>/model/`` is a bundle: ``model.json`` (the
manifest) beside the files it lists.  The manifest holds everything that
turns a volume into the same mask as the run that trained it: the linear
model's file and filter-bank scales, the search's thresholds, the
post-processing parameters, the U-Net's weights, parameters and fusion mode
when it was trained, the training and validation ids, the validation scores,
the code version, and the sha256 of every file.

:func:`load_bundle` refuses a bundle that is not one (no or unreadable
``model.json``), of an unknown format version, or whose files are missing or
do not match their sha256, with an error naming the file.  U-Net weights are
read with ``weights_only=True`` (:func:`nx47_pipeline.unet.load_unet`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from nx47_pipeline import __version__
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import CONTEXT, FIT, MANIFEST, MODEL_WEIGHTS, RunFolder
from nx47_pipeline.model.context import ContextModel, load_rounds
from nx47_pipeline.model.features import feature_names
from nx47_pipeline.model.linear import LogisticModel
from nx47_pipeline.model.postprocess import radius_text
from nx47_pipeline.model.predict import UNetPart
from nx47_pipeline.model.predictor import LinearPredictor, PostChoice, Predictor, PredictorKind
from nx47_pipeline.nnunet.predictor import load_nnunet_predictor
from nx47_pipeline.unet.train import CHECKPOINT_NAME, load_unet

FORMAT = "nx47-model-bundle"
FORMAT_VERSION = 1
UNET_FILE = f"unet/{CHECKPOINT_NAME}"


class BundleError(ValueError):
    """A model bundle cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified model bundle.

    Attributes
    ----------
    path : Path
        The bundle folder.
    manifest : dict
        ``model.json``.
    model : LogisticModel or ContextModel
        The linear model, with its auto-context rounds when the run fitted
        them (``model.json``'s ``context``).
    best : dict
        ``l1``, ``l2``, ``low``, ``high``, ``score`` of the search and
        ``thin`` (the post-processing's thin-surface step, chosen on
        validation; False in bundles written before it was chosen),
        ``closing_radius``, ``min_size`` and ``plug_size`` (as below).
    closing_radius : tuple of int
        The closing radius of the post-processing (chosen on validation by
        runs that choose it; ``postprocess.closing_radius`` of the manifest).
    min_component_voxels : int
        The run's configured dust size (``postprocess.min_component_voxels``):
        its fallback segmentation's.
    unet : UNetPart or None
    min_size : int
        The dust size of the post-processing (``postprocess.min_size``, chosen
        on validation; ``min_component_voxels`` in bundles written before it
        was chosen).
    plug_size : int
        The hole plug size (``postprocess.plug_size``, chosen on validation;
        0, no plugging, in bundles written before it was chosen).
    """

    path: Path
    manifest: dict[str, Any]
    model: LogisticModel | ContextModel | None  # None in an nnU-Net bundle
    best: dict[str, Any]
    closing_radius: tuple[int, int, int]
    min_component_voxels: int
    unet: UNetPart | None
    min_size: int = 100
    plug_size: int = 0
    #: the model as a :class:`~nx47_pipeline.model.predictor.Predictor`
    #: (default: the linear model, fused with ``unet`` when present)
    predictor: Predictor | None = None

    def __post_init__(self) -> None:
        if self.predictor is None and self.model is not None:
            object.__setattr__(self, "predictor", LinearPredictor(self.model, self.unet))

    @property
    def post(self) -> PostChoice:
        """The bundle's post-processing (probabilities -> mask)."""
        return PostChoice(low=float(self.best["low"]), high=float(self.best["high"]),
                          thin=bool(self.best.get("thin", False)), closing_radius=self.closing_radius,
                          min_size=self.min_size, plug_size=self.plug_size)

    @property
    def kind(self) -> PredictorKind:
        """``model.json``'s ``kind`` (``linear`` in bundles written before kinds)."""
        return bundle_kind(self.manifest)

    @property
    def feature_scales(self) -> tuple[float, ...]:
        """The linear model's filter-bank scales (none for an nnU-Net bundle)."""
        return tuple(self.model.scales) if self.model is not None else ()

    def summary(self) -> str:
        """One line for people: what the bundle holds and how it scored."""
        return manifest_summary(self.path, self.manifest)


def bundle_kind(manifest: Mapping[str, Any]) -> PredictorKind:
    """The kind a manifest names: ``nnunet`` for imported nnU-Net models, else
    ``linear`` / ``linear+unet`` (bundles written by runs name none)."""
    if manifest.get("kind") == PredictorKind.NNUNET.value:
        return PredictorKind.NNUNET
    return PredictorKind.LINEAR_UNET if manifest.get("unet") else PredictorKind.LINEAR


def manifest_summary(path: str | Path, manifest: Mapping[str, Any]) -> str:
    """One line for people from a bundle's manifest (nothing is loaded)."""
    m = manifest
    if bundle_kind(m) == PredictorKind.NNUNET:
        nn = m.get("nnunet") or {}
        members = nn.get("members") or []
        search = m.get("search") or {}
        return (f"{path}: nnU-Net, {len(members)} member(s) ("
                + ", ".join(f"{e.get('configuration')} x{len(e.get('folds', []))} folds w={e.get('weight')}"
                            for e in members)
                + f"); tile step {nn.get('tile_step')}, mirroring {'on' if nn.get('use_mirroring') else 'off'}"
                + f"; thresholds {search.get('low')}/{search.get('high')}; nx47 {m.get('code_version', '?')}")
    lin = m.get("linear") or {}
    search = m.get("search") or {}
    val = (m.get("validation") or {}).get("mean_score")
    low, high = search.get("low"), search.get("high")
    return (
        f"{path}: linear model ({lin.get('n_features', '?')} features, scales {lin.get('feature_scales')})"
        + (f" + {n} auto-context round{'s' if n != 1 else ''}"
           if isinstance(n := (m.get("context") or {}).get("rounds"), int) and n > 0 else "")
        + (" + U-Net" if m.get("unet") else "")
        + (f"; thresholds {low:.2f}/{high:.2f}" if isinstance(low, (int, float)) and isinstance(high, (int, float))
           else "")
        + ("; thin surface" if (m.get("postprocess") or {}).get("thin") is True else "")
        + (f"; closing {radius_text(cr)}"
           if isinstance(cr := (m.get("postprocess") or {}).get("closing_radius"), list) else "")
        + (f"; dust below {ms} voxels removed"
           if isinstance(ms := (m.get("postprocess") or {}).get("min_size"), int) else "")
        + ((f"; holes plugged up to {ps} voxels" if ps > 0 else "; no hole plugging")
           if isinstance(ps := (m.get("postprocess") or {}).get("plug_size"), int) else "")
        + f"; trained on {len(m.get('train_ids', []))} volumes"
        + (f"; validation score {val:.3f}" if isinstance(val, (int, float)) else "")
        + f"; nx47 {m.get('code_version', '?')}"
    )


def describe_bundle(path: str | Path) -> str:
    """The summary of the bundle at ``path`` after checking its manifest, its
    files and its linear model's filter bank (raises :class:`BundleError`
    naming the file otherwise)."""
    manifest = read_manifest(path)
    verify_files(path, manifest)
    if bundle_kind(manifest) != PredictorKind.NNUNET:
        _load_linear(Path(path), manifest)
    return manifest_summary(Path(path), manifest)


def _load_linear(path: Path, manifest: Mapping[str, Any]) -> LogisticModel:
    """The bundle's linear model; refused when it was trained on another
    filter bank than this nx47 computes (an earlier version's bundle)."""
    linear_file = path / manifest["linear"]["file"]
    try:
        model = LogisticModel.load(linear_file)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{linear_file}: not a readable linear model ({exc})") from None
    expected = feature_names(model.scales)
    if list(model.feature_names) != expected:
        missing = sorted(set(expected) - set(model.feature_names)) or sorted(set(model.feature_names) - set(expected))
        raise BundleError(f"{linear_file}: trained on other features than this nx47 computes "
                          f"({len(model.feature_names)} vs {len(expected)}, e.g. {missing[:3]}): "
                          "train a model with this version (nx47 run) and export that run")
    return model


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(
    model_dir: str | Path,
    *,
    best: Mapping[str, Any],
    closing_radius: Sequence[int],
    min_component_voxels: int,
    unet_fuse: str | None,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    validation: Mapping[str, Any],
    min_size: int | None = None,
    plug_size: int = 0,
) -> Path:
    """Write ``model_dir/model.json`` describing the files already there.

    The U-Net entry is written when ``model_dir/unet/last.pt`` exists and
    ``unet_fuse`` is given (the run used the U-Net).  ``min_size`` and
    ``plug_size`` are the dust and hole plug sizes chosen on validation
    (``min_size`` default: ``min_component_voxels``).
    """
    model_dir = Path(model_dir)
    linear = LogisticModel.load(model_dir / MODEL_WEIGHTS)
    files = [MODEL_WEIGHTS] + ([FIT] if (model_dir / FIT).exists() else [])
    context = read_json(model_dir / CONTEXT)
    if isinstance(context, dict) and isinstance(context.get("files"), list):
        files += [str(f) for f in context["files"]] + [CONTEXT]
        context = {"file": CONTEXT, "rounds": int(context.get("rounds", len(context["files"])))}
    else:
        context = None
    unet = None
    if unet_fuse is not None and (model_dir / UNET_FILE).exists():
        files.append(UNET_FILE)
        unet = {"file": UNET_FILE, "fuse": unet_fuse}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "linear": {"file": MODEL_WEIGHTS, "feature_scales": list(linear.scales),
                   "n_features": int(len(linear.coef))},
        "search": {k: best.get(k) for k in ("l1", "l2", "low", "high", "score")},
        "postprocess": {"closing_radius": [int(r) for r in closing_radius],
                        "min_component_voxels": int(min_component_voxels),
                        "min_size": int(min_component_voxels if min_size is None else min_size),
                        "plug_size": int(plug_size),
                        "thin": bool(best.get("thin", False))},
        "unet": unet,
        "context": context,
        "train_ids": list(train_ids),
        "val_ids": list(val_ids),
        "validation": dict(validation),
        "files": {name: sha256_file(model_dir / name) for name in files},
    }
    return write_json(model_dir / MANIFEST, manifest, sort_keys=True)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """``model.json`` of the bundle at ``path``, checked for format and version."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: not a model bundle folder (it does not exist or is a file)")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing; a model bundle holds {MANIFEST} (export one with "
                          "`nx47 export-model --run DIR --out BUNDLE`)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath}: unreadable or not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an NX47 model bundle manifest (format {manifest.get('format')!r})"
                          if isinstance(manifest, dict) else f"{mpath}: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{mpath}: unknown format_version {version!r} (this nx47 reads {FORMAT_VERSION})")
    required = ("nnunet" if bundle_kind(manifest) == PredictorKind.NNUNET else "linear", "search", "postprocess",
                "files")
    for key in required:
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{mpath}: field {key!r} is missing or not an object")
    return manifest


def verify_files(path: str | Path, manifest: Mapping[str, Any]) -> None:
    """Raise :class:`BundleError` naming the first listed file that is missing
    or whose sha256 differs."""
    path = Path(path)
    for name, digest in manifest["files"].items():
        f = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{path / MANIFEST}: file entry {name!r} leaves the bundle folder")
        if not f.is_file():
            raise BundleError(f"{f}: listed in {MANIFEST} but missing")
        got = sha256_file(f)
        if got != digest:
            raise BundleError(f"{f}: sha256 {got[:12]}... does not match {MANIFEST} ({str(digest)[:12]}...); "
                              "the file was changed or corrupted")


def load_bundle(path: str | Path, *, device: str = "auto") -> Bundle:
    """Read, verify and load the bundle at ``path``.

    Parameters
    ----------
    path : str or Path
        The bundle folder (``model.json`` and its files).
    device : str
        Where to place the U-Net, when the bundle holds one.

    Raises
    ------
    BundleError
        Not a bundle, unknown format version, a file missing or changed, or a
        file that does not load; the message names the file.
    """
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    verify_files(path, manifest)
    nnunet = bundle_kind(manifest) == PredictorKind.NNUNET
    model = None if nnunet else _load_linear(path, manifest)
    if model is not None and manifest.get("context"):
        try:
            model = load_rounds(model, path) or model
        except ValueError as exc:
            raise BundleError(str(exc)) from None
    search = manifest["search"]
    for key in ("low", "high"):
        if not isinstance(search.get(key), (int, float)):
            raise BundleError(f"{path / MANIFEST}: search.{key} must be a number, got {search.get(key)!r}")
    post = manifest["postprocess"]
    thin = post.get("thin", False)
    if not isinstance(thin, bool):
        raise BundleError(f"{path / MANIFEST}: postprocess.thin must be true or false, got {thin!r}")
    # bundles written before the dust and plug sizes were chosen: the run's dust size, no plugging
    sizes = {"min_size": post.get("min_size", post.get("min_component_voxels")), "plug_size": post.get("plug_size", 0)}
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BundleError(f"{path / MANIFEST}: postprocess.{key} must be an integer >= 0, got {value!r}")
    unet = predictor = None
    if nnunet:
        try:
            predictor = load_nnunet_predictor(path, manifest)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(str(exc) if isinstance(exc, ValueError)
                              else f"{path / MANIFEST}: nnunet entry incomplete ({exc!r})") from None
    elif manifest.get("unet"):
        ufile = path / manifest["unet"]["file"]
        try:
            net, params = load_unet(ufile, device=device)
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - named and re-raised as a bundle problem
            raise BundleError(f"{ufile}: U-Net weights do not load ({type(exc).__name__}: {exc})") from None
        unet = UNetPart(net=net, params=params, device=device, fuse=manifest["unet"].get("fuse", "mean"))
    return Bundle(
        path=path,
        manifest=manifest,
        model=model,
        best={**{k: search.get(k) for k in ("l1", "l2", "low", "high", "score")}, "thin": thin,
              "closing_radius": [int(r) for r in post["closing_radius"]], **sizes},
        closing_radius=tuple(int(r) for r in post["closing_radius"]),
        min_component_voxels=int(post["min_component_voxels"]),
        unet=unet,
        min_size=sizes["min_size"],
        plug_size=sizes["plug_size"],
        predictor=predictor,
    )


def export_bundle(run_dir: str | Path, out: str | Path) -> Path:
    """Copy the bundle of the run in ``run_dir`` (its ``model/``) to ``out``.

    Only the manifest and the files it lists are copied; the copy is
    verified.  ``out`` must not exist or be an empty folder.
    """
    src = RunFolder(run_dir).model
    if not (src / MANIFEST).exists() and (Path(run_dir) / MANIFEST).exists():
        src = Path(run_dir)  # already a bundle folder
    manifest = read_manifest(src)
    verify_files(src, manifest)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not empty; choose a new folder for the bundle")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for name in list(manifest["files"]) + [MANIFEST]:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, tmp / name)
    verify_files(tmp, manifest)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
