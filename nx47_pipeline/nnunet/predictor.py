"""The nnU-Net predictor: an imported nnU-Net v2 model as a
:class:`~nx47_pipeline.model.predictor.Predictor`.

Built from nnunetv2's own parts: the network from the plans
(:func:`nnunetv2.utilities.get_network_from_plans.get_network_from_plans`,
what ``nnUNetTrainer.build_network_architecture`` does), the
configuration's preprocessor (``run_case_npy``: cropping, normalisation,
resampling), ``pad_nd_image``, the sliding-window slicers, the mirroring
(``nnUNetPredictor._internal_get_sliding_window_slicers`` /
``_internal_maybe_mirror_and_predict``), ``compute_gaussian`` and the
export back to the input's shape
(``convert_predicted_logits_to_segmentation_with_correct_shape``).  Only
the loop over windows is ours, so that each window reports progress
(windows done / total), honours a cancel token and a deadline; it
accumulates exactly as nnU-Net's does (half-precision sums of the
Gaussian-weighted logits), and the folds of one model are averaged as
logits as nnU-Net averages them.  The network runs on the CPU unless
:meth:`NnUNetModel.to` moves it (a CUDA device runs it under autocast, as
nnU-Net does); the windows are summed on the CPU either way.  nnunetv2 and
torch are imported when a predictor is built.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nx47_pipeline.io.run_folder import MANIFEST
from nx47_pipeline.model.postprocess import _check_3d
from nx47_pipeline.model.predict import FracProgressFn
from nx47_pipeline.model.predictor import EnsemblePredictor, PredictorKind, check_stop

#: The voxel spacing NX47 gives nnU-Net (the competition's volumes are isotropic).
SPACING = (1.0, 1.0, 1.0)
#: The class whose probability is the surface's (``labels.surface`` of the export).
SURFACE_CLASS = 1


def windows_of(shape: Sequence[int], patch: Sequence[int], tile_step: float) -> int:
    """Sliding windows nnU-Net's predictor places over a volume of ``shape``
    (padded to at least ``patch``) at ``tile_step``: one pass, one fold."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window  # noqa: PLC0415

    size = [max(int(s), int(p)) for s, p in zip(shape, patch)]
    return int(np.prod([len(s) for s in compute_steps_for_sliding_window(size, list(patch), tile_step)]))


@dataclass
class NnUNetModel:
    """One nnU-Net result folder's model, loaded: plans, dataset.json, the folds' weights.

    Attributes
    ----------
    plans : dict
        ``plans.json``.
    dataset_json : dict
        ``dataset.json``.
    configuration : str
        The trained configuration (e.g. ``3d_fullres``).
    fold_weights : list of dict
        One network state dict per fold (tensors).
    mirror_axes : tuple of int or None
        ``inference_allowed_mirroring_axes`` of the checkpoint.
    """

    plans: dict
    dataset_json: dict
    configuration: str
    fold_weights: list
    mirror_axes: tuple[int, ...] | None
    _parts: dict = field(default_factory=dict, repr=False)

    def parts(self) -> dict[str, Any]:
        """The nnunetv2 objects (plans / configuration / label managers, network), built once."""
        if not self._parts:
            import torch  # noqa: PLC0415 - optional, heavy
            from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415
            from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: PLC0415
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

            pm = PlansManager(self.plans)
            cm = pm.get_configuration(self.configuration)
            lm = pm.get_label_manager(self.dataset_json)
            net = get_network_from_plans(
                cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                determine_num_input_channels(pm, cm, self.dataset_json), lm.num_segmentation_heads,
                allow_init=True, deep_supervision=False)
            net.load_state_dict(self.fold_weights[0])
            net.eval()
            self._parts.update(plans_manager=pm, configuration_manager=cm, label_manager=lm, network=net,
                               device=torch.device("cpu"))
        return self._parts

    def to(self, device: str) -> "NnUNetModel":
        """Run the network on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); returns ``self``.

        Parameters
        ----------
        device : str
            A torch device.  On a CUDA device each window is predicted under
            autocast (nnU-Net's ``predict_sliding_window_return_logits``) and
            its logits are brought back to the CPU, where they are summed.
        """
        import torch  # noqa: PLC0415

        parts = self.parts()
        parts["device"] = torch.device(device)
        parts["network"].to(parts["device"])
        return self

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.plans["configurations"][self.configuration].get("patch_size")
                     or self.parts()["configuration_manager"].patch_size)


class NnUNetPredictor:
    """An nnU-Net model's surface probabilities, window by window (``halo``:
    half its patch, so a chunk's core sees the windows the whole volume's
    would, up to their placement and Gaussian weights).

    Parameters
    ----------
    model : NnUNetModel
    tile_step : float
        Step between windows as a fraction of the patch (nnU-Net's ``tile_step_size``; 0.5 default).
    use_mirroring : bool
        Mirror test-time augmentation over the checkpoint's mirror axes.
    """

    kind = PredictorKind.NNUNET

    def __init__(self, model: NnUNetModel, *, tile_step: float = 0.5, use_mirroring: bool = True) -> None:
        if not 0 < float(tile_step) <= 1:
            raise ValueError(f"tile_step must be in (0, 1], got {tile_step!r}")
        self.model = model
        self.tile_step = float(tile_step)
        self.use_mirroring = bool(use_mirroring)

    def _nnunet(self):
        """nnunetv2's ``nnUNetPredictor`` holding this model (its slicers and mirroring are used)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: PLC0415

        parts = self.model.parts()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
            p = nnUNetPredictor(tile_step_size=self.tile_step, use_gaussian=True, use_mirroring=self.use_mirroring,
                                perform_everything_on_device=False, device=parts["device"], verbose=False,
                                allow_tqdm=False)
        p.manual_initialization(parts["network"], parts["plans_manager"], parts["configuration_manager"],
                                list(self.model.fold_weights), self.model.dataset_json, "nnUNetTrainer",
                                self.model.mirror_axes)
        return p

    def n_windows(self, shape: Sequence[int]) -> int:
        """Windows of one fold over a volume of ``shape`` (after nnU-Net's padding to the patch)."""
        return windows_of(shape, self.model.parts()["configuration_manager"].patch_size, self.tile_step)

    @property
    def halo(self) -> int:
        return -(-max(self.model.patch_size) // 2)

    @property
    def n_folds(self) -> int:
        """Folds averaged (each runs every window)."""
        return len(self.model.fold_weights)

    def with_settings(self, *, tile_step: float | None = None, use_mirroring: bool | None = None) -> "NnUNetPredictor":
        """The same model with another tile step and/or mirroring (a budget's choice)."""
        return NnUNetPredictor(self.model, tile_step=self.tile_step if tile_step is None else tile_step,
                               use_mirroring=self.use_mirroring if use_mirroring is None else use_mirroring)

    @property
    def n_mirrors(self) -> int:
        """Forward passes per window (mirror combinations + 1)."""
        axes = self.model.mirror_axes if self.use_mirroring else None
        return 2 ** len(axes) if axes else 1

    def predict(self, volume: np.ndarray, *, on_progress: FracProgressFn | None = None, cancel: Any = None,
                deadline: float | None = None) -> np.ndarray:
        """Surface probabilities (float32, ``volume``'s shape)."""
        import torch  # noqa: PLC0415
        from acvl_utils.cropping_and_padding.padding import pad_nd_image  # noqa: PLC0415
        from nnunetv2.inference.export_prediction import (  # noqa: PLC0415
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian  # noqa: PLC0415

        volume = _check_3d("volume", volume)
        check_stop(cancel, deadline, "nnU-Net")
        parts = self.model.parts()
        pm, cm, lm = parts["plans_manager"], parts["configuration_manager"], parts["label_manager"]
        pre = cm.preprocessor_class(verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, props = pre.run_case_npy(np.asarray(volume, dtype=np.float32)[None], None,
                                              {"spacing": list(SPACING)}, pm, cm, self.model.dataset_json)
        nn = self._nnunet()
        net, device = parts["network"], parts["device"]
        autocast = torch.autocast(device.type) if device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            x = torch.from_numpy(data)
            x, revert = pad_nd_image(x, cm.patch_size, "constant", {"value": 0}, True, None)
            slicers = nn._internal_get_sliding_window_slicers(x.shape[1:])
            n_folds = len(self.model.fold_weights)
            total = len(slicers) * n_folds
            gaussian = compute_gaussian(tuple(cm.patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10,
                                        device=torch.device("cpu"))
            logits = None
            done = 0
            for weights in self.model.fold_weights:
                net.load_state_dict(weights)
                acc = torch.zeros((lm.num_segmentation_heads, *x.shape[1:]), dtype=torch.half)
                n_pred = torch.zeros(x.shape[1:], dtype=torch.half)
                for sl in slicers:
                    check_stop(cancel, deadline, "nnU-Net")
                    window = torch.clone(x[sl][None], memory_format=torch.contiguous_format).to(device)
                    pred = nn._internal_maybe_mirror_and_predict(window)[0].to("cpu")
                    pred *= gaussian
                    acc[sl] += pred
                    n_pred[sl[1:]] += gaussian
                    done += 1
                    if on_progress is not None:
                        on_progress(done, total, "nnU-Net windows", done / total)
                torch.div(acc, n_pred, out=acc)
                acc = acc[(slice(None), *revert[1:])].to("cpu")
                logits = acc if logits is None else logits + acc
            if n_folds > 1:
                logits /= n_folds
            net.load_state_dict(self.model.fold_weights[0])
        _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, lm, props, return_probabilities=True)
        return np.ascontiguousarray(probs[SURFACE_CLASS], dtype=np.float32)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: missing, unreadable or not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def load_nnunet_predictor(path: Path, manifest: Mapping[str, Any]):
    """The predictor of a verified ``nnunet`` bundle at ``path``: one member's
    :class:`NnUNetPredictor`, or the weighted :class:`EnsemblePredictor` of
    several.  Raises ValueError naming the file that does not load."""
    import torch  # noqa: PLC0415

    nn = manifest.get("nnunet")
    if not isinstance(nn, dict) or not isinstance(nn.get("members"), list) or not nn["members"]:
        raise ValueError(f"{path / MANIFEST}: field 'nnunet' must hold a non-empty 'members' list")
    preds = []
    for m in nn["members"]:
        weights = []
        for rel in m["folds"]:
            try:
                weights.append(torch.load(path / rel, map_location="cpu", weights_only=True))
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"{path / rel}: nnU-Net weights do not load ({type(exc).__name__}: {exc})") from None
        model = NnUNetModel(plans=_json(path / m["plans"]), dataset_json=_json(path / m["dataset"]),
                            configuration=m["configuration"], fold_weights=weights,
                            mirror_axes=None if m.get("mirror_axes") is None else tuple(m["mirror_axes"]))
        try:
            model.parts()
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path / m['plans']}: the network does not take the weights "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        preds.append((NnUNetPredictor(model, tile_step=float(nn.get("tile_step", 0.5)),
                                      use_mirroring=bool(nn.get("use_mirroring", True))), float(m.get("weight", 1.0))))
    return preds[0][0] if len(preds) == 1 else EnsemblePredictor(tuple(preds))


__all__ = ["SPACING", "SURFACE_CLASS", "NnUNetModel", "NnUNetPredictor", "load_nnunet_predictor"]
