"""Behaviour of the optional U-Net stage on CPU with tiny volumes."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nx47_pipeline.unet as U
from nx47_pipeline.run.budget import UNetCost
from nx47_pipeline.run.preflight import leave_on_stop
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken

ROOT = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")

PATCH = 24


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP
    threads make every step ~10x slower as soon as another process runs."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _volume(seed: int, shape=(40, 40, 40)):
    """A wavy bright sheet labelled 1, noise around it, label 2 on the border."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = shape[0] / 2 + 3 * np.sin(x / 5.0 + seed) + 2 * np.cos(y / 7.0)
    label = (np.abs(z - centre) < 1.5).astype(np.uint8)
    image = rng.normal(60, 20, shape) + 90 * label
    image = image.clip(0, 255).astype(np.uint8)
    label[:3] = 2
    label[-3:] = 2
    label[:, :, :3] = 2
    return f"vol{seed}", image, label


def _params(**kw):
    # the whole loss (BCE + Dice + skeleton recall) so its training path stays covered
    base = dict(width=4, depth=2, patch=PATCH, batch=4, epochs=2, lr=3e-3, val_fraction=0.0, prior=False,
                skel_weight=1.0, dice_weight=1.0)
    base.update(kw)
    return U.UNetParams(**base)


@pytest.fixture(scope="module")
def volumes():
    return [_volume(s) for s in range(3)]


@pytest.fixture(scope="module")
def patches(volumes):
    return U.extract_patches(
        volumes, patch=PATCH, patches_per_volume=4, label_guided_frac=0.5, seed=3
    )


def _masked_loss(model, ps: U.PatchSet) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(ps.images).float().div(127.5).sub(1).unsqueeze(1)
        y = torch.from_numpy(ps.labels).unsqueeze(1)
        return float(U.masked_bce_dice_loss(model(x), (y == 1).float(), y != 2))


# ----------------------------------------------------------------------
# lazy import and the missing-torch error
# ----------------------------------------------------------------------
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_the_module_does_not_import_torch():
    res = _run(
        """
        import sys
        import nx47_pipeline.unet as u
        params = u.UNetParams()
        print('torch' in sys.modules)
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_missing_torch_gives_an_actionable_error():
    res = _run(
        """
        import sys
        sys.modules['torch'] = None
        import nx47_pipeline.unet as u
        assert u.torch_available() is False
        assert u.cuda_available() is False
        assert u.resolve_device('auto') == 'cpu'
        try:
            u.build_unet(u.UNetParams())
        except ImportError as exc:
            assert isinstance(exc, u.UNetUnavailable)
            print(exc)
        else:
            raise SystemExit('no error')
        """
    )
    assert res.returncode == 0, res.stderr
    msg = res.stdout
    assert "pip install torch" in msg and "--no-unet" in msg


# ----------------------------------------------------------------------
# parameters and devices
# ----------------------------------------------------------------------
def test_params_are_validated_naming_the_field():
    with pytest.raises(ValueError, match="patch"):
        U.UNetParams(patch=30, depth=3)  # not divisible by 8
    with pytest.raises(ValueError, match="norm"):
        U.UNetParams(norm="batch")
    with pytest.raises(ValueError, match="overlap"):
        U.UNetParams(overlap=1.0)
    with pytest.raises(ValueError, match="dice_weight must be >= 0, got -1"):
        U.UNetParams(dice_weight=-1)


def test_params_follow_the_run_configuration():
    from nx47_pipeline.config import RunConfig

    cfg = RunConfig(unet_epochs=3, unet_patch=32, unet_batch=1, unet_width=8, unet_depth=2, seed=5)
    p = U.params_from_config(cfg, tta_flip=True)
    assert (p.epochs, p.patch, p.batch, p.width, p.depth, p.seed) == (3, 32, 1, 8, 2, 5)
    assert p.tta_flip is True
    with pytest.raises(TypeError, match="bogus"):
        U.params_from_config(cfg, bogus=1)
    # left at 0, patch, batch and width follow the device; the rest are UNetParams' defaults
    cpu = U.params_from_config(RunConfig(unet_device="cpu"))
    assert (cpu.patch, cpu.batch, cpu.width) == (48, 4, 8)
    assert cpu == U.UNetParams(patch=48, batch=4, width=8)


def test_sizes_left_at_zero_follow_the_device_the_run_resolves(monkeypatch):
    import nx47_pipeline.unet.params as P
    from nx47_pipeline.config import RunConfig

    monkeypatch.setattr(P, "resolve_device", lambda spec: "cuda")
    gpu = P.params_from_config(RunConfig())
    assert (gpu.patch, gpu.batch, gpu.width) == (64, 2, 16)
    assert P.params_from_config(RunConfig(unet_patch=96, unet_width=24)).patch == 96
    with pytest.raises(ValueError, match="unet_width must be an integer >= 0"):
        RunConfig(unet_width=-1)


def test_resolve_device():
    assert U.resolve_device("cpu") == "cpu"
    assert U.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="'tpu'"):
        U.resolve_device("tpu")
    if not U.cuda_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            U.resolve_device("cuda")


# ----------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------
def test_extract_patches_streams_with_progress_and_guides_on_labels(volumes):
    seen = []

    def stream():
        for v in volumes:
            yield v

    ps = U.extract_patches(
        stream(),
        patch=PATCH,
        patches_per_volume=4,
        label_guided_frac=1.0,
        seed=1,
        on_file=lambda d, t, vid: seen.append((d, t, vid)),
        n_volumes=3,
    )
    assert seen == [(1, 3, "vol0"), (2, 3, "vol1"), (3, 3, "vol2")]
    assert ps.images.shape == (12, PATCH, PATCH, PATCH) and ps.images.dtype == np.uint8
    assert ps.labels.dtype == np.uint8
    assert set(np.unique(ps.labels)) <= {0, 1, 2}
    # label-guided: every patch contains surface voxels
    assert all((lab == 1).any() for lab in ps.labels)
    # patches are true crops of their source volume
    vid, image, label = volumes[1]
    k = ps.volume_ids.index(vid)
    z, y, x = ps.origins[k]
    assert np.array_equal(ps.images[k], image[z : z + PATCH, y : y + PATCH, x : x + PATCH])
    assert np.array_equal(ps.labels[k], label[z : z + PATCH, y : y + PATCH, x : x + PATCH])
    # same seed, same patches
    again = U.extract_patches(volumes, patch=PATCH, patches_per_volume=4, label_guided_frac=1.0, seed=1)
    assert np.array_equal(again.images, ps.images)


def test_small_volume_is_padded_and_padding_is_masked():
    image = np.full((10, 30, 17), 200, np.uint8)
    label = np.zeros((10, 30, 17), np.uint8)
    ps = U.extract_patches(
        [("small", image, label)], patch=PATCH, patches_per_volume=2, label_guided_frac=0.0, seed=0
    )
    assert ps.images.shape == (2, PATCH, PATCH, PATCH)
    for img, lab in zip(ps.images, ps.labels):
        assert (lab == 0).sum() == 10 * PATCH * 17  # every real voxel kept, once
        assert np.all(img[lab == 2] == 0)
        assert np.all(img[lab == 0] == 200)


# ----------------------------------------------------------------------
# loss and model
# ----------------------------------------------------------------------
def test_loss_ignores_masked_voxels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, 8, generator=g) > 0.7).float()
    mask = torch.rand(2, 1, 8, 8, 8, generator=g) > 0.5
    base = U.masked_bce_dice_loss(logits, target, mask)
    changed_logits = logits.clone()
    changed_logits[~mask] = 50.0
    changed_target = target.clone()
    changed_target[~mask] = 1 - changed_target[~mask]
    assert torch.allclose(U.masked_bce_dice_loss(changed_logits, changed_target, mask), base)
    # a better prediction on the unmasked voxels lowers it
    better = torch.where(target > 0, torch.tensor(5.0), torch.tensor(-5.0))
    assert U.masked_bce_dice_loss(better, target, mask) < base
    # an empty mask gives 0 with a usable gradient
    logits.requires_grad_(True)
    empty = U.masked_bce_dice_loss(logits, target, torch.zeros_like(mask))
    empty.backward()
    assert float(empty.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_model_maps_patch_to_logits(norm):
    model = U.build_unet(_params(norm=norm))
    x = torch.zeros(2, 1, PATCH, PATCH, PATCH)
    assert model(x).shape == (2, 1, PATCH, PATCH, PATCH)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("GroupNorm" if norm == "group" else "InstanceNorm3d") in kinds


# ----------------------------------------------------------------------
# training
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(patches, tmp_path_factory):
    """Six epochs on the tiny patch set, with every callback recorded."""
    params = _params(epochs=6)
    batches, epochs = [], []
    result = U.train_unet(
        patches,
        val=patches,
        params=params,
        device="cpu",
        checkpoint_dir=tmp_path_factory.mktemp("trained"),
        on_batch=lambda *a: batches.append(a),
        on_epoch=lambda *a: epochs.append(a),
    )
    return params, result, batches, epochs


def test_training_reduces_the_masked_loss_and_reports_each_batch(patches, trained):
    params, result, batches, epochs = trained
    before = _masked_loss(U.build_unet(params), patches)
    after = _masked_loss(result.model, patches)
    assert after < 0.9 * before
    n_batches = math.ceil(len(patches) / params.batch)
    assert len(batches) == 6 * n_batches
    assert batches[0][:4] == (1, 6, 1, n_batches) and batches[-1][:4] == (6, 6, n_batches, n_batches)
    assert all(math.isfinite(b[4]) for b in batches)
    assert [e[0] for e in epochs] == [1, 2, 3, 4, 5, 6]
    assert all(e[3] is not None for e in epochs)  # validation loss every epoch
    assert result.stopped_reason == "completed" and result.epochs_done == 6
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_round_trip_with_weights_only(patches, tmp_path):
    params = _params(epochs=1)
    result = U.train_unet(patches, val=None, params=params, device="cpu", checkpoint_dir=tmp_path)
    assert result.checkpoint == tmp_path / "last.pt"
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["epoch"] == 1 and state["params"]["width"] == 4
    model, loaded = U.load_unet(tmp_path, device="cpu")
    assert loaded == params
    x = torch.from_numpy(patches.images[:2]).float().div(127.5).sub(1).unsqueeze(1)
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-6)


def test_resume_continues_the_epoch_count(patches, tmp_path):
    U.train_unet(patches, val=None, params=_params(epochs=2), device="cpu", checkpoint_dir=tmp_path)
    seen = []
    result = U.train_unet(
        patches,
        val=None,
        params=_params(epochs=3),
        device="cpu",
        checkpoint_dir=tmp_path,
        on_epoch=lambda *a: seen.append(a[0]),
    )
    assert seen == [3]
    assert result.epochs_done == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3
    # resume=False starts again from epoch 1
    fresh = []
    U.train_unet(
        patches,
        val=None,
        params=_params(epochs=1),
        device="cpu",
        checkpoint_dir=tmp_path,
        resume=False,
        on_epoch=lambda *a: fresh.append(a[0]),
    )
    assert fresh == [1]


def test_resume_refuses_a_different_architecture(patches, tmp_path):
    U.train_unet(patches, val=None, params=_params(epochs=1), device="cpu", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="last.pt"):
        U.train_unet(
            patches, val=None, params=_params(width=8), device="cpu", checkpoint_dir=tmp_path
        )


def test_deadline_stops_between_batches_and_keeps_the_last_epoch(patches, tmp_path):
    batches = []
    # the clock advances one unit per finished batch; deadline after 3 batches
    params = _params(epochs=5, steps_per_epoch=2)
    result = U.train_unet(
        patches,
        val=None,
        params=params,
        device="cpu",
        checkpoint_dir=tmp_path,
        deadline=3.0,
        on_batch=lambda *a: batches.append(a),
        clock=lambda: float(len(batches)),
    )
    assert result.stopped_reason == "deadline"
    assert len(batches) == 3
    assert result.epochs_done == 1
    assert result.checkpoint == tmp_path / "last.pt"
    assert torch.load(result.checkpoint, weights_only=True)["epoch"] == 1


def test_callback_exception_propagates_and_checkpoint_stays_valid(patches, tmp_path):
    class Stop(Exception):
        pass

    def on_batch(epoch, epochs, batch, n_batches, loss):
        if epoch == 2 and batch == 2:
            raise Stop()

    with pytest.raises(Stop):
        U.train_unet(
            patches,
            val=None,
            params=_params(epochs=3, steps_per_epoch=2),
            device="cpu",
            checkpoint_dir=tmp_path,
            on_batch=on_batch,
        )
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left
    model, _ = U.load_unet(tmp_path / "last.pt")
    assert model is not None


# ----------------------------------------------------------------------
# inference and fusion
# ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 29, 41), (11, 50, 24)])
def test_inference_returns_the_source_shape_and_reports_each_window_batch(shape):
    params = _params(batch=3, overlap=0.5)
    model = U.build_unet(params)
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    calls = []
    prob = U.predict_volume(
        model, image, params=params, device="cpu", on_window=lambda d, t: calls.append((d, t))
    )
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    step = PATCH // 2
    windows = math.prod(
        1 if s <= PATCH else math.ceil((s - PATCH) / step) + 1 for s in shape
    )
    assert len(calls) == math.ceil(windows / 3)
    assert calls[-1] == (windows, windows)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_blending_covers_every_voxel_with_normalised_weights():
    class Pointwise(torch.nn.Module):
        """Logit = the input intensity rescaled: output equals a function of
        the voxel itself, whichever window it was seen in."""

        def forward(self, x):
            return x * 2.0

    params = _params(batch=2, overlap=0.5)
    image = np.random.default_rng(2).integers(0, 255, (30, 41, 26), dtype=np.uint8)
    prob = U.predict_volume(Pointwise(), image, params=params, device="cpu")
    expected = 1 / (1 + np.exp(-2.0 * (image / 127.5 - 1)))
    assert np.allclose(prob, expected, atol=1e-5)


def test_flip_tta_is_invariant_to_flipping_the_input():
    params = _params(tta_flip=True, overlap=0.0)
    model = U.build_unet(params)
    image = np.random.default_rng(1).integers(0, 255, (PATCH, PATCH, PATCH), dtype=np.uint8)
    prob = U.predict_volume(model, image, params=params, device="cpu")
    flipped = U.predict_volume(model, np.ascontiguousarray(image[::-1]), params=params, device="cpu")
    assert np.allclose(prob[::-1], flipped, atol=1e-5)


def test_trained_model_finds_the_surface(trained):
    params, result, _, _ = trained
    _, image, label = _volume(7)
    prob = U.predict_volume(result.model, image, params=params, device="cpu")
    assert prob[label == 1].mean() > prob[label == 0].mean() + 0.1


def test_fuse_probabilities():
    a = np.full((4, 4, 4), 0.2, np.float32)
    b = np.full((4, 4, 4), 0.6, np.float32)
    assert np.allclose(U.fuse_probabilities(a, b, mode="mean"), 0.4)
    assert np.allclose(U.fuse_probabilities(a, b, mode="replace"), 0.6)
    with pytest.raises(ValueError, match="mode"):
        U.fuse_probabilities(a, b, mode="max")
    with pytest.raises(ValueError, match="shape"):
        U.fuse_probabilities(a, b[:2])


# ----------------------------------------------------------------------
# budget
# ----------------------------------------------------------------------
def test_unet_cost_follows_the_documented_formula():
    p = U.UNetParams(epochs=10, patches_per_volume=8, batch=2, val_fraction=0.0, patch=64, overlap=0.5)
    cost = UNetCost(p, seconds_per_patch_batch=1.0)
    train_only = cost.total_s(n_train_volumes=5, voxels_per_volume=320**3)
    assert train_only == pytest.approx(10 * 20 * 1.0) == cost.train_s(5)
    with_infer = cost.total_s(n_train_volumes=5, voxels_per_volume=320**3, n_infer_volumes=2)
    # 320 side, 64 window, step 32: 9 positions per axis, 729 windows, 365 batches
    assert with_infer - train_only == pytest.approx(2 * 365 / 2)
    assert cost.infer_s(320**3) == pytest.approx(365 / 2)
    tta = UNetCost(U.UNetParams(**{**p.to_dict(), "tta_flip": True}), seconds_per_patch_batch=1.0)
    assert tta.total_s(n_train_volumes=5, voxels_per_volume=320**3, n_infer_volumes=2) - train_only == (
        pytest.approx(8 * 2 * 365 / 2))
    # without a measurement the CPU reference is far slower than CUDA
    cpu = UNetCost(p, device="cpu").total_s(n_train_volumes=5, voxels_per_volume=320**3)
    gpu = UNetCost(p, device="cuda").total_s(n_train_volumes=5, voxels_per_volume=320**3)
    assert cpu > 10 * gpu > 0
    auto = UNetCost(p).total_s(n_train_volumes=5, voxels_per_volume=320**3)
    assert auto == (gpu if U.cuda_available() else cpu)
    with pytest.raises(ValueError, match="seconds_per_patch_batch"):
        UNetCost(p, seconds_per_patch_batch=0)
    with pytest.raises(ValueError, match="voxels_per_volume"):
        cost.infer_s(0)


def test_time_train_step_measures_a_positive_duration():
    assert U.time_train_step(_params(), device="cpu", repeats=1) > 0


# ----------------------------------------------------------------------
# skeleton recall, learning-rate schedule, early stop on validation Dice
# ----------------------------------------------------------------------
def test_surface_skeleton_is_the_middle_of_a_thick_sheet():
    label = np.zeros((20, 20, 20), np.uint8)
    label[:, :, 8:11] = 1  # a sheet 3 voxels thick, normal along x
    label[:, :2] = 2  # unlabelled voxels are not surface
    sk = U.surface_skeleton(label)
    assert sk.dtype == bool and sk.shape == label.shape
    assert not np.any(sk & (label != 1))  # a subset of the surface
    assert sk[2:-2, 4:-2, 9].all()  # its middle plane, away from the borders
    assert not sk[2:-2, 4:-2, 8].any() and not sk[2:-2, 4:-2, 10].any()
    assert not U.surface_skeleton(np.zeros((6, 6, 6), np.uint8)).any()


def test_skeleton_recall_counts_the_missed_skeleton_only_where_labelled():
    sk = torch.zeros(1, 1, 4, 4, 4)
    sk[..., 1, :, :] = 1
    mask = torch.ones_like(sk, dtype=torch.bool)
    hit = torch.where(sk > 0, 20.0, -20.0)
    assert float(U.skeleton_recall_loss(hit, sk, mask)) < 0.1
    assert float(U.skeleton_recall_loss(-hit, sk, mask)) > 0.9
    # a missed skeleton voxel under the mask does not count
    mask[..., 1, 0, :] = False
    half = hit.clone()
    half[..., 1, 0, :] = -20.0
    assert float(U.skeleton_recall_loss(half, sk, mask)) < 0.1
    with pytest.raises(ValueError, match="same shape"):
        U.skeleton_recall_loss(hit, sk[..., :2], mask)


def test_poly_learning_rate_decays_to_zero_and_constant_stays():
    from nx47_pipeline.unet.train import lr_at

    p = _params(lr=1e-3)
    rates = [lr_at(p, s, 100) for s in range(0, 101, 10)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == 0.0
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert lr_at(_params(lr=1e-3, lr_schedule="constant"), 90, 100) == pytest.approx(1e-3)
    # with a deadline the schedule follows the time spent when that is further along
    assert lr_at(p, 0, 100, time_frac=0.5) == pytest.approx(1e-3 * 0.5**0.9)
    assert lr_at(p, 80, 100, time_frac=0.5) == pytest.approx(1e-3 * 0.2**0.9)
    assert lr_at(p, 0, 100, time_frac=1.5) == 0.0
    with pytest.raises(ValueError, match="lr_schedule must be 'poly' or 'constant', got 'cosine'"):
        _params(lr_schedule="cosine")
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        _params(patience=-1)


def test_training_stops_early_when_validation_dice_stops_improving_and_keeps_the_best_weights(patches, tmp_path):
    # a learning rate too small to change the thresholded predictions: the
    # validation Dice of epoch 1 is never beaten
    params = _params(epochs=10, lr=1e-12, patience=2, lr_schedule="constant")
    res = U.train_unet(patches, val=patches, params=params, device="cpu", checkpoint_dir=tmp_path)
    assert res.stopped_reason == "early_stop"
    assert res.epochs_done == 3 and res.best_epoch == 1
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert all(h["val_dice"] is not None for h in res.history)
    # the checkpoint's best weights are what load_unet returns: the returned model's
    model, _ = U.load_unet(tmp_path, device="cpu")
    x = torch.from_numpy(patches.images[:2]).float().div(127.5).sub(1).unsqueeze(1)
    res.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), res.model(x))


def test_the_best_epoch_is_kept_across_a_resume(patches, tmp_path):
    first = U.train_unet(patches, val=patches, params=_params(epochs=2), device="cpu", checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["best_epoch"] == first.best_epoch and state["best_model"] is not None
    again = U.train_unet(patches, val=patches, params=_params(epochs=3), device="cpu", checkpoint_dir=tmp_path)
    smoothed = [h["val_dice_smoothed"] for h in again.history]
    assert again.best_epoch == 1 + int(np.argmax(smoothed))
    # the moving average goes on from the checkpoint's
    a = again.history[0]["val_dice_smoothed"]
    d3 = again.history[2]["val_dice"]
    assert smoothed[2] == pytest.approx(0.3 * d3 + 0.7 * smoothed[1])
    assert a == pytest.approx(again.history[0]["val_dice"])


def test_one_lucky_validation_epoch_neither_stops_training_nor_is_kept(patches, tmp_path, monkeypatch):
    """The validation Dice of a few patches jumps: one epoch far above its
    neighbours, then a steady climb.  On the raw Dice the spike would be
    kept and stop training ``patience`` epochs later; the smoothed Dice
    trains on and keeps the end of the climb."""
    script = iter([0.50, 0.90, 0.50, 0.60, 0.70, 0.80, 0.80, 0.85])
    monkeypatch.setattr("nx47_pipeline.unet.train._evaluate", lambda *a, **k: (1.0, next(script)))
    res = U.train_unet(patches, val=patches, params=_params(epochs=8, patience=3), device="cpu",
                       checkpoint_dir=tmp_path / "smooth")
    assert res.stopped_reason == "completed" and res.epochs_done == 8 and res.best_epoch == 8
    assert [h["val_dice"] for h in res.history][1] == 0.90
    script = iter([0.50, 0.90, 0.50, 0.60, 0.70, 0.80, 0.80, 0.85])
    raw = U.train_unet(patches, val=patches, params=_params(epochs=8, patience=3, val_smoothing=1.0),
                       device="cpu", checkpoint_dir=tmp_path / "raw")
    assert raw.stopped_reason == "early_stop" and raw.best_epoch == 2 and raw.epochs_done == 5
    with pytest.raises(ValueError, match="val_smoothing must be in"):
        _params(val_smoothing=0.0)


# ----------------------------------------------------------------------
# the fit_prox probabilities as a second input channel (prior)
# ----------------------------------------------------------------------
def _smooth_prior(region):
    """A local 'model': smoothed intensity in [0, 1] (reach 4 voxels)."""
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(region.astype(np.float32) / 255.0, 1.0, truncate=4.0)


@pytest.mark.parametrize("per_volume", [2, 64], ids=["per-crop", "whole-volume"])
def test_patch_priors_are_the_models_map_of_the_volume_at_each_patch(volumes, per_volume):
    # with 2 patches the prior is computed on each crop and its margin, with
    # 64 on the whole volume once; both give the whole-volume map's values
    ps = U.extract_patches(volumes, patch=PATCH, patches_per_volume=per_volume, label_guided_frac=0.5, seed=3,
                           prior=_smooth_prior, prior_margin=5)
    assert ps.priors is not None and ps.priors.shape == ps.images.shape and ps.priors.dtype == np.uint8
    whole = {vid: U.quantize_prior(_smooth_prior(img)) for vid, img, _ in volumes}
    for k in range(len(ps)):
        z, y, x = ps.origins[k]
        expected = whole[ps.volume_ids[k]][z:z + PATCH, y:y + PATCH, x:x + PATCH]
        assert np.abs(ps.priors[k].astype(int) - expected.astype(int)).max() <= 1
    assert ps.subset(np.array([1, 0])).priors[0].tobytes() == ps.priors[1].tobytes()
    plain = U.extract_patches(volumes, patch=PATCH, patches_per_volume=per_volume, label_guided_frac=0.5, seed=3)
    assert plain.priors is None and np.array_equal(plain.images, ps.images)  # the same patches


def test_priors_and_params_must_agree(patches, tmp_path):
    with pytest.raises(ValueError, match=r"train patches have no priors but params.prior is True"):
        U.train_unet(patches, val=None, params=_params(prior=True), device="cpu", checkpoint_dir=tmp_path)
    model = U.build_unet(_params(prior=True))
    image = np.zeros((PATCH,) * 3, np.uint8)
    with pytest.raises(ValueError, match="needs prior"):
        U.predict_volume(model, image, params=_params(prior=True), device="cpu")
    with pytest.raises(ValueError, match=r"prior has shape \(3, 3, 3\)"):
        U.predict_volume(model, image, params=_params(prior=True), device="cpu", prior=np.zeros((3, 3, 3)))


def test_checkpoints_from_before_the_prior_channel_load_as_one_channel():
    old = {k: v for k, v in U.UNetParams().to_dict().items() if k != "prior"}
    assert U.UNetParams.from_dict(old).prior is False and U.UNetParams.from_dict(old).in_channels == 1
    assert U.UNetParams.from_dict(U.UNetParams().to_dict()).prior is True


def test_a_unet_with_a_prior_learns_from_it_where_the_image_alone_cannot(tmp_path):
    # the label is not visible in the image (pure noise) but the prior marks
    # it: only the network with the prior channel can find it
    rng = np.random.default_rng(5)
    vols = []
    for k in range(3):
        image = rng.integers(0, 256, (32, 32, 32), dtype=np.uint8)
        label = np.zeros_like(image)
        label[:, 10 + 4 * k: 13 + 4 * k] = 1
        vols.append((f"n{k}", image, label))

    priors = {vid: np.where(lab == 1, 0.8, 0.2).astype(np.float32) for vid, _, lab in vols}
    ps = U.extract_patches(vols, patch=PATCH, patches_per_volume=6, label_guided_frac=0.5, seed=1)
    q = np.stack([U.quantize_prior(priors[v][z:z + PATCH, y:y + PATCH, x:x + PATCH])
                  for v, (z, y, x) in zip(ps.volume_ids, ps.origins)])
    with_prior = U.PatchSet(ps.images, ps.labels, ps.volume_ids, ps.origins, q)
    params = _params(prior=True, epochs=12, lr=1e-2, lr_schedule="constant", skel_weight=0.0)
    res = U.train_unet(with_prior, val=None, params=params, device="cpu", checkpoint_dir=tmp_path / "p")
    # a new volume whose surface lies across the training ones
    image = rng.integers(0, 256, (32, 32, 32), dtype=np.uint8)
    lab = np.zeros_like(image)
    lab[:, :, 14:17] = 1
    prob = U.predict_volume(res.model, image, params=params, device="cpu",
                            prior=np.where(lab == 1, 0.8, 0.2).astype(np.float32))
    assert prob[lab == 1].mean() > 0.5 > prob[lab == 0].mean()
    blind = _params(prior=False, epochs=12, lr=1e-2, lr_schedule="constant", skel_weight=0.0)
    res0 = U.train_unet(ps, val=None, params=blind, device="cpu", checkpoint_dir=tmp_path / "b")
    prob0 = U.predict_volume(res0.model, image, params=blind, device="cpu")
    assert prob0[lab == 1].mean() - prob0[lab == 0].mean() < 0.2


def test_the_learning_rate_has_decayed_when_the_deadline_stops_training(patches, tmp_path):
    # a fake clock that advances 1 s per reading: the deadline comes long
    # before the 50 planned epochs, the rate still decays to near zero by it
    t = iter(range(10**6))
    params = _params(epochs=50, lr=1e-3)
    res = U.train_unet(patches, val=None, params=params, device="cpu", checkpoint_dir=tmp_path,
                       deadline=120.0, clock=lambda: float(next(t)))
    assert res.stopped_reason == "deadline" and res.epochs_done >= 2
    rates = [h["lr"] for h in res.history]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 0.35 * 1e-3  # by steps alone (24 of 50 epochs) it would be 0.55e-3


class _Stop(Exception):
    pass


def _stop_after(n: int):
    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] > n:
            raise _Stop(f"stopped at check {calls['n']}")
    return check, calls


def test_timing_a_batch_stops_between_layers_not_after_the_batch():
    params = _params(batch=2)
    check, calls = _stop_after(10 ** 9)
    steps = []
    U.time_train_step(params, device="cpu", repeats=1, check=check,
                      on_step=lambda k, n: steps.append((k, n, calls["n"])))
    assert [s[:2] for s in steps] == [(1, 2), (2, 2)]
    per_batch = steps[1][2] - steps[0][2]
    assert per_batch > 10  # forward and backward layers each check, not once per batch
    # a stop asked in the middle of the first batch ends it there
    check, calls = _stop_after(per_batch // 2)
    steps.clear()
    with pytest.raises(_Stop):
        U.time_train_step(params, device="cpu", repeats=1, check=check,
                          on_step=lambda k, n: steps.append(k))
    assert steps == []


def test_training_stops_within_a_batch_and_the_returned_model_has_no_hooks(patches, tmp_path):
    check, calls = _stop_after(5)
    with pytest.raises(_Stop):
        U.train_unet(patches, val=None, params=_params(epochs=1), device="cpu",
                     checkpoint_dir=tmp_path / "a", check=check)
    assert not (tmp_path / "a" / "last.pt").exists()  # no epoch was completed
    check, calls = _stop_after(10 ** 9)
    result = U.train_unet(patches, val=None, params=_params(epochs=1), device="cpu",
                          checkpoint_dir=tmp_path / "b", check=check)
    n = calls["n"]
    assert n > 0
    x = torch.from_numpy(patches.images[:1]).float().div(127.5).sub(1).unsqueeze(1)
    result.model.eval()
    with torch.no_grad():
        result.model(x)
    assert calls["n"] == n  # the hooks were removed from the returned model


def test_leave_on_stop_returns_at_once_when_stopped_while_the_helper_is_in_a_long_step():
    token = CancelToken()
    left = threading.Event()

    def slow(on_step):  # one "layer" of 5 s, then it checks like a layer hook
        on_step(1, 2)
        left.wait(5.0)
        token.raise_if_cancelled()
        return 1.0

    steps = []
    threading.Timer(0.3, token.cancel, args=("user pressed Stop",)).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        leave_on_stop(slow, token.raise_if_cancelled, lambda k, n: steps.append((k, n)))
    took = time.monotonic() - t0
    left.set()
    assert took < 2.0, f"left after {took:.2f} s, the helper's step takes 5 s"
    assert steps == [(1, 2)]  # the helper's progress, published by the caller
    # without a stop: the helper's value, and its error as raised
    assert leave_on_stop(lambda on_step: 2.5, lambda: None, lambda k, n: None) == 2.5
    with pytest.raises(ZeroDivisionError):
        leave_on_stop(lambda on_step: 1 / 0, lambda: None, lambda k, n: None)
