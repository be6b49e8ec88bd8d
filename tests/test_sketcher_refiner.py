"""Sketcher-Refiner GANs (Wei et al. 2019): shapes, eq. 5 loss, eq. 8-9 metrics, staged
training on a toy mapping, saliency (eq. 7), sliding-window inference, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from synthquant.nets.checkpoint import load_model, save_model
from synthquant.nets.sketcher_refiner import (
    MYELIN_NETS_REGISTRY,
    REFINER_LR,
    SKETCHER_LR,
    PatchDiscriminator3D,
    Refiner3D,
    Sketcher3D,
    SketcherRefiner3D,
    count_parameters,
    define_patch_discriminator_3d,
    define_refiner,
    define_sketcher,
    make_refiner_optimizers,
    make_sketcher_optimizers,
    mse,
    predict_volume,
    psnr,
    refiner_train_step,
    region_weights,
    saliency_map,
    sketcher_train_step,
    weighted_l1,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ architecture

@pytest.mark.parametrize(
    ("in_channels", "noise_channels", "levels", "shape"),
    [
        (4, 1, 3, (1, 16, 16, 16)),
        (4, 1, 3, (2, 9, 13, 7)),   # odd sides: padded to 16x16x8 inside, cropped back
        (1, 0, 2, (1, 5, 6, 7)),    # MTR only, no noise channel
        (2, 2, 1, (3, 11, 4, 17)),
        (4, 1, 3, (1, 1, 1, 1)),    # a single voxel still goes through
    ],
)
def test_generator_output_shapes(in_channels, noise_channels, levels, shape):
    torch.manual_seed(0)
    sketcher = define_sketcher(in_channels=in_channels, noise_channels=noise_channels,
                               base_features=4, levels=levels).eval()
    refiner = define_refiner(in_channels=in_channels, base_features=4, levels=levels).eval()
    mr = torch.randn(shape[0], in_channels, *shape[1:])
    with torch.no_grad():
        sketch = sketcher(mr)
        refined = refiner(mr, sketch)
    assert sketch.shape == refined.shape == (shape[0], 1, *shape[1:])
    assert torch.isfinite(refined).all()


def _expected_unet_parameters(network_in: int, base: int, levels: int) -> int:
    """Wei 2019 §2.4 counted by hand: conv 3^3 c_in c_out + c_out bias, BatchNorm 2 c."""
    def conv(c_in, c_out):
        return 27 * c_in * c_out + c_out + 2 * c_out
    widths = [base * 2**level for level in range(levels + 1)]
    total, channels = 0, network_in
    for level in range(levels):  # two convolutions and the stride-2 one
        total += conv(channels, widths[level]) + 2 * conv(widths[level], widths[level])
        channels = widths[level]
    total += conv(widths[levels - 1], widths[levels]) + conv(widths[levels], widths[levels])
    for level in range(levels):  # transposed convolution, then two on [skip, upsampled]
        total += conv(widths[level + 1], widths[level])
        total += conv(2 * widths[level], widths[level]) + conv(widths[level], widths[level])
    return total + widths[0] + 1  # 1x1x1 head to one channel


def test_default_architecture_is_wei_2019():
    sketcher, refiner = define_sketcher(), define_refiner()
    # 3 levels from 32 features (32, 64, 128, 256 at the bridge), 4 MR channels + z or sketch.
    assert count_parameters(sketcher) == _expected_unet_parameters(5, 32, 3) == 7_004_865
    assert count_parameters(refiner) == _expected_unet_parameters(5, 32, 3)
    convs = [m for m in sketcher.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert all(m.kernel_size == (3, 3, 3) for m in convs)
    assert sum(m.stride == (2, 2, 2) for m in convs) == 3
    ups = [m for m in sketcher.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert len(ups) == 3 and all(m.stride == (2, 2, 2) for m in ups)
    slopes = {m.negative_slope for m in sketcher.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    dropouts = [m for m in sketcher.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)  # one per decoder level
    everywhere = Sketcher3D(dropout_everywhere=True)
    leaky = sum(isinstance(m, nn.LeakyReLU) for m in everywhere.modules())
    assert sum(isinstance(m, nn.Dropout) for m in everywhere.modules()) == leaky  # Wei's text
    assert sketcher.receptive_radius == 65


@pytest.mark.parametrize(
    ("in_channels", "patch_size", "n_layers", "shape", "grid"),
    [
        (4, 32, 3, (2, 64, 64, 32), (2, 2, 1)),
        (4, 32, 3, (1, 128, 160, 128), (4, 5, 4)),  # Wei's volumes: 80 patches
        (2, 8, 2, (1, 16, 16, 16), (2, 2, 2)),
        (1, 8, 3, (1, 20, 9, 8), (3, 2, 1)),  # padded to whole patches
    ],
)
def test_patch_discriminator_grid(in_channels, patch_size, n_layers, shape, grid):
    discriminator = define_patch_discriminator_3d(in_channels=in_channels, base_features=2,
                                                  patch_size=patch_size, n_layers=n_layers)
    with torch.no_grad():
        logits = discriminator.eval()(torch.randn(shape[0], in_channels + 1, *shape[1:]))
    assert logits.shape == (shape[0], 1, *grid)


def test_patches_are_judged_independently():
    """Non-overlapping patches (stride = kernel = patch): changing one patch moves one logit."""
    torch.manual_seed(0)
    discriminator = define_patch_discriminator_3d(in_channels=1, patch_size=8, base_features=4,
                                                  n_layers=2).eval()
    pair = torch.randn(1, 2, 16, 16, 16)
    changed = pair.clone()
    changed[..., 8:, :8, 8:] += 3.0
    with torch.no_grad():
        moved = (discriminator(changed) - discriminator(pair)).abs()[0, 0] > 1e-6
    assert moved.nonzero().tolist() == [[1, 0, 1]]


# ------------------------------------------------------------------------------------ losses

def test_region_weights_sum_to_one_per_class():
    rng = np.random.default_rng(0)
    lesion = rng.random((10, 12, 8)) < 0.03
    nawm = rng.random((10, 12, 8)) < 0.4  # overlaps the lesions on purpose
    weights = region_weights(lesion, nawm)
    nawm_only = nawm & ~lesion
    other = ~lesion & ~nawm_only
    for region in (lesion, nawm_only, other):
        assert weights[region].sum() == pytest.approx(1.0, rel=1e-5)
        assert np.unique(weights[region]).size == 1
    assert weights[lesion][0] == pytest.approx(1 / lesion.sum())

    control = region_weights(np.zeros_like(lesion), nawm)  # a healthy control: no lesion class
    assert control.sum() == pytest.approx(2.0, rel=1e-5)
    brain = np.zeros_like(lesion)
    brain[2:8] = True
    restricted = region_weights(lesion & brain, nawm & brain, brain_mask=brain)
    assert (restricted[~brain] == 0).all()
    assert restricted[brain & ~lesion & ~nawm].sum() == pytest.approx(1.0, rel=1e-5)

    heavier = region_weights(lesion, nawm, lesion_weight=3.0)  # only the lesion class changes
    assert heavier[lesion].sum() == pytest.approx(3.0, rel=1e-5)
    np.testing.assert_array_equal(heavier[~lesion], weights[~lesion])


def test_weighted_l1_matches_eq5_in_numpy():
    rng = np.random.default_rng(1)
    shape = (2, 1, 8, 9, 10)
    pred, target = rng.normal(size=shape), rng.normal(size=shape)
    lesions = rng.random(shape) < 0.05
    nawms = rng.random(shape) < 0.3
    weights = np.stack([region_weights(lesions[i, 0], nawms[i, 0])[None] for i in range(2)])
    # Eq. 5 per subject: mean |error| over lesion + over NAWM + over the rest; then the mean
    # over subjects (eq. 5 without its constant 1/M).
    expected = []
    for i in range(2):
        error = np.abs(target[i, 0] - pred[i, 0])
        lesion, nawm = lesions[i, 0], nawms[i, 0] & ~lesions[i, 0]
        other = ~lesion & ~nawm
        expected.append(error[lesion].mean() + error[nawm].mean() + error[other].mean())
    def as_tensor(array):
        return torch.tensor(array, dtype=torch.float64)

    value = weighted_l1(as_tensor(pred), as_tensor(target), as_tensor(weights))
    assert value.item() == pytest.approx(np.mean(expected), rel=1e-6)  # float32 weights
    # Equal errors everywhere give 3x that error: each class counts once, whatever its size.
    uniform = weighted_l1(as_tensor(target + 0.5), as_tensor(target), as_tensor(weights))
    assert uniform.item() == pytest.approx(1.5, rel=1e-6)


# ----------------------------------------------------------------------------------- metrics

def test_mse_and_psnr_follow_eq8_and_eq9():
    truth = np.array([[0.5, 1.0], [2.0, 1.5]])
    pred = truth + np.array([[0.1, -0.1], [0.1, -0.1]])
    assert mse(pred, truth) == pytest.approx(0.01)
    # Eq. 9: 20 log10(max of the true image) - 10 log10(MSE) = 20 log10 2 + 20.
    assert psnr(pred, truth) == pytest.approx(20 * math.log10(2.0) + 20.0)
    # Same as scikit-image when its data range is set to the true maximum (Wei's peak).
    rng = np.random.default_rng(2)
    truth3d = rng.uniform(0.5, 2.0, (6, 7, 8))
    pred3d = truth3d + rng.normal(0, 0.05, truth3d.shape)
    assert psnr(pred3d, truth3d) == pytest.approx(
        peak_signal_noise_ratio(truth3d, pred3d, data_range=truth3d.max()))
    mask = np.zeros(truth.shape, bool)
    mask[0] = True
    assert mse(pred, truth, mask) == pytest.approx(0.01)
    assert psnr(pred, truth, mask) == pytest.approx(20 * math.log10(1.0) + 20.0)  # max in mask
    assert psnr(truth, truth) == math.inf
    assert mse(torch.tensor(pred), torch.tensor(truth)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="positive maximum"):
        psnr(pred - 5, truth - 5)


# ---------------------------------------------------------------------- staged toy training

BLOCK = 16


def toy_blocks(n: int, rng: np.random.Generator):
    """MTR and FA blocks with white matter and lesions; DVR a nonlinear function of both.

    DVR = 0.6 + 1.2 sigmoid((MTR - 36) / 3) (0.5 + FA): low MTR and FA in lesions give low DVR
    (demyelination), as PIB DVR falls in demyelinated lesions (Bodini 2016).
    """
    grid = np.indices((BLOCK,) * 3)
    mr, dvr, weights, lesions = [], [], [], []
    for _ in range(n):
        def smooth(sigma):
            return ndimage.gaussian_filter(rng.normal(size=(BLOCK,) * 3), sigma, mode="wrap")
        wm = smooth(2.5) > 0
        fa = 0.15 + 0.45 * wm + 0.3 * smooth(1)
        mtr = 30 + 15 * wm + 10 * smooth(1)
        lesion = np.zeros(wm.shape, bool)
        centres = np.argwhere(ndimage.binary_erosion(wm, iterations=2))
        centres = centres if len(centres) else np.argwhere(wm)
        for centre in centres[rng.choice(len(centres), 2)]:
            lesion |= ((grid - centre[:, None, None, None]) ** 2).sum(0) <= 4
        mtr = np.where(lesion, mtr - 14, mtr)
        fa = np.where(lesion, fa - 0.2, fa)
        mr.append(np.stack([(mtr - 38) / 8, (fa - 0.4) / 0.2]))
        dvr.append((0.6 + 1.2 / (1 + np.exp(-(mtr - 36) / 3)) * (0.5 + fa))[None])
        weights.append(region_weights(lesion, wm & ~lesion)[None])
        lesions.append(lesion)
    def as_tensor(arrays):
        return torch.tensor(np.stack(arrays), dtype=torch.float32)

    return as_tensor(mr), as_tensor(dvr), as_tensor(weights), np.stack(lesions)


def test_staged_training_fits_toy_mapping_and_refiner_focuses_on_lesions():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mr, dvr, weights, _ = toy_blocks(8, rng)
    test_mr, test_dvr, test_weights, test_lesions = toy_blocks(4, rng)
    mean, std = dvr.mean(), dvr.std()  # z-scored over all voxels (Wei §3.1)
    dvr, test_dvr = (dvr - mean) / std, (test_dvr - mean) / std

    nets = {"in_channels": 2, "base_features": 4, "levels": 2}
    critic = {"in_channels": 2, "patch_size": 8, "base_features": 4, "n_layers": 2}
    sketcher, refiner = define_sketcher(**nets), define_refiner(**nets)
    d_sketcher = define_patch_discriminator_3d(**critic)
    d_refiner = define_patch_discriminator_3d(**critic)
    # 10x Wei's rates, ratio kept (1e-4 : 5e-5): ~100 steps here against 400 epochs there.
    sketcher_opt = make_sketcher_optimizers(sketcher, d_sketcher, lr=10 * SKETCHER_LR)
    refiner_opt = make_refiner_optimizers(refiner, d_refiner, lr=10 * REFINER_LR)

    sketcher_l1 = []
    for _ in range(100):
        batch = torch.from_numpy(rng.choice(8, 2, replace=False))
        sketcher_l1.append(sketcher_train_step(sketcher, d_sketcher, sketcher_opt, mr[batch],
                                               dvr[batch])["g_l1"])
    frozen = {k: v.clone() for k, v in sketcher.state_dict().items()}
    refiner_l1 = []
    for _ in range(100):
        batch = torch.from_numpy(rng.choice(8, 2, replace=False))
        terms = refiner_train_step(refiner, d_refiner, refiner_opt, sketcher, mr[batch],
                                   dvr[batch], weights[batch])
        assert set(terms) == {"d", "g", "g_adversarial", "g_l1"}
        refiner_l1.append(terms["g_l1"])
    # Staged: the Sketcher, weights and BatchNorm statistics alike, did not move.
    assert all(torch.equal(frozen[k], v) for k, v in sketcher.state_dict().items())
    assert np.mean(sketcher_l1[-10:]) < 0.6 * np.mean(sketcher_l1[:10])
    assert np.mean(refiner_l1[-10:]) < 0.8 * np.mean(refiner_l1[:10])

    sketcher.eval()
    refiner.eval()
    with torch.no_grad():
        sketch = sketcher(test_mr)
        refined = refiner(test_mr, sketch)
    sketch_error = (sketch - test_dvr).abs()[:, 0].numpy()
    refined_error = (refined - test_dvr).abs()[:, 0].numpy()
    spread = (test_dvr - test_dvr.mean()).abs().mean().item()
    # The Sketcher learnt the mapping on unseen blocks (well below guessing the mean) ...
    assert sketch_error.mean() < 0.5 * spread
    # ... and the Refiner, trained on eq. 5, is better in the lesions, and on eq. 5 itself.
    assert refined_error[test_lesions].mean() < 0.7 * sketch_error[test_lesions].mean()
    assert weighted_l1(refined, test_dvr, test_weights) < weighted_l1(sketch, test_dvr, test_weights)


# ---------------------------------------------------------------------------------- saliency

class RegionalMix(nn.Module):
    """Prediction = x0 inside region A, 2 x1 inside region B, 0 elsewhere (a known gradient)."""

    def __init__(self, region_a: torch.Tensor, region_b: torch.Tensor):
        super().__init__()
        self.register_buffer("region_a", region_a.float())
        self.register_buffer("region_b", region_b.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * self.region_a + 2 * x[:, 1:2] * self.region_b


def test_saliency_is_the_input_gradient_max_over_channels():
    shape = (6, 6, 6)
    region_a = torch.zeros(shape, dtype=torch.bool)
    region_a[:2] = True
    region_b = torch.zeros(shape, dtype=torch.bool)
    region_b[4:] = True
    inputs = torch.randn(1, 2, *shape)
    target = torch.randn(1, 1, *shape) + 10  # every prediction error has the same sign
    saliency = saliency_map(RegionalMix(region_a, region_b), inputs, target)
    voxels = np.prod(shape)
    # L1 mean: |d loss / d x| = 1/M where the target depends on x0, 2/M where on x1, 0 elsewhere.
    assert saliency.shape == shape
    np.testing.assert_allclose(saliency[:2], 1 / voxels, rtol=1e-6)
    np.testing.assert_allclose(saliency[4:], 2 / voxels, rtol=1e-6)
    assert (saliency[2:4] == 0).all()


def test_unet_saliency_is_local_and_within_the_receptive_radius():
    torch.manual_seed(0)
    sketcher = define_sketcher(in_channels=2, base_features=4, levels=2)
    sketcher.train()
    inputs = torch.randn(2, 64, 8, 8)
    target = torch.zeros(1, 1, 64, 8, 8)
    centre = 32

    def centre_loss(prediction, truth):  # the loss reads one output voxel
        return (prediction - truth)[0, 0, centre, 4, 4].abs()

    saliency = saliency_map(sketcher, inputs, target, centre_loss)
    assert sketcher.training  # mode restored
    profile = saliency.max(axis=(1, 2))
    reach = np.flatnonzero(profile > 0)
    assert profile[centre] > 0
    assert centre - reach.min() <= sketcher.receptive_radius
    assert reach.max() - centre <= sketcher.receptive_radius
    assert reach.min() > 0 and reach.max() < 63  # ~0 far from what the loss depends on


# ---------------------------------------------------------------------------------- inference

def _randomise_batchnorm(net: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return net.eval()


def test_sliding_window_equals_whole_volume_when_overlap_covers_the_receptive_field():
    torch.manual_seed(0)
    sketcher = _randomise_batchnorm(define_sketcher(in_channels=2, base_features=4, levels=1), 1)
    volume = np.random.default_rng(0).normal(size=(2, 47, 40, 33)).astype(np.float32)
    whole = predict_volume(sketcher, volume)
    assert whole.shape == (1, 47, 40, 33)
    with torch.no_grad():
        direct = sketcher(torch.from_numpy(volume)[None])[0].numpy()
    np.testing.assert_array_equal(whole, direct)
    # 32^3 windows every 8 voxels (3 x 2 x 2 of them): overlap/2 = 12 >= the receptive radius
    # (11), so every kept voxel sees all it depends on.
    assert sketcher.receptive_radius <= 12
    windowed = predict_volume(sketcher, volume, window=32, overlap=24)
    np.testing.assert_allclose(windowed, whole, atol=1e-5)
    # Control: with 8-voxel overlaps the seams show, so the comparison above can fail.
    seams = predict_volume(sketcher, volume, window=32, overlap=8)
    assert np.abs(seams - whole).max() > 1e-4


def test_sliding_window_with_short_overlap_differs_only_slightly_near_seams():
    """Default 3-level U-Net (radius 65) with 16-voxel overlaps: not exact, but close.

    Tolerance: the 99th percentile of |difference| stays under 5% of the output's spread.
    """
    torch.manual_seed(0)
    pair = SketcherRefiner3D({"in_channels": 2, "base_features": 4},
                             {"in_channels": 2, "base_features": 4})
    _randomise_batchnorm(pair, 2)
    volume = np.random.default_rng(1).normal(size=(2, 48, 40, 24)).astype(np.float32)
    whole = predict_volume(pair, volume)
    windowed = predict_volume(pair, volume, window=32, overlap=16)
    assert windowed.shape == whole.shape == (1, 48, 40, 24)
    difference = np.abs(windowed - whole)
    assert difference.max() > 1e-5  # the seams are visible: the test can tell
    assert np.percentile(difference, 99) < 0.05 * whole.std()
    with pytest.raises(ValueError, match="overlap"):
        predict_volume(pair, volume, window=16, overlap=16)


# -------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize(
    "build",
    [
        lambda: SketcherRefiner3D({"in_channels": 4, "base_features": 4, "levels": 2},
                                  {"in_channels": 4, "base_features": 4, "levels": 2}),
        lambda: define_sketcher(in_channels=3, noise_channels=0, base_features=4, levels=2),
        lambda: define_refiner(in_channels=4, base_features=4, levels=1),
        lambda: define_patch_discriminator_3d(in_channels=4, patch_size=8, base_features=4,
                                              n_layers=2),
    ],
    ids=["pair", "sketcher", "refiner", "discriminator"],
)
def test_save_load_round_trip_with_registry(tmp_path, build):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build(), 3)
    sha = save_model(model, tmp_path / "dvr_from_mri", card={"modalities": ["MTR", "FA", "RD", "AD"]})
    card = json.loads((tmp_path / "dvr_from_mri.json").read_text())
    assert card["architecture"] in MYELIN_NETS_REGISTRY and card["kwargs"] == model.config
    loaded = load_model(tmp_path / "dvr_from_mri", MYELIN_NETS_REGISTRY)
    assert loaded.sha256 == sha and not loaded.model.training
    channels = model.config.get("in_channels", 4) + isinstance(model, PatchDiscriminator3D)
    inputs = torch.randn(1, channels, 16, 16, 16)
    with torch.no_grad():
        if isinstance(model, Refiner3D):
            sketch = torch.randn(1, 1, 16, 16, 16)
            assert torch.equal(model(inputs, sketch), loaded.model(inputs, sketch))
        else:
            assert torch.equal(model(inputs), loaded.model(inputs))


def test_pair_from_trained_models_keeps_their_weights():
    torch.manual_seed(0)
    sketcher = _randomise_batchnorm(define_sketcher(in_channels=2, base_features=4, levels=2), 4)
    refiner = _randomise_batchnorm(define_refiner(in_channels=2, base_features=4, levels=2), 5)
    pair = SketcherRefiner3D.from_models(sketcher, refiner).eval()
    mr = torch.randn(1, 2, 12, 12, 12)
    with torch.no_grad():
        assert torch.equal(pair(mr), refiner(mr, sketcher(mr)))
    with pytest.raises(ValueError, match="same MR channels"):
        SketcherRefiner3D({"in_channels": 2}, {"in_channels": 4})


def test_residual_refiner_starts_at_the_sketch_and_learns_a_correction():
    """A fresh residual Refiner returns the sketch exactly; one eq. 5 step moves it; the flag
    survives the card (an old card without it loads Wei's non-residual form)."""
    torch.manual_seed(0)
    sketcher = define_sketcher(in_channels=2, base_features=4, levels=2).eval()
    refiner = define_refiner(in_channels=2, base_features=4, levels=2, residual=True)
    mr = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        sketch = sketcher(mr)
        assert torch.equal(refiner.eval()(mr, sketch), sketch)
    scratch = define_refiner(in_channels=2, base_features=4, levels=2)
    assert not scratch.residual and "residual" in scratch.config
    with torch.no_grad():
        assert not torch.allclose(scratch.eval()(mr, sketch), sketch)

    dvr = sketch + 0.5
    weights = torch.from_numpy(region_weights(np.zeros((16,) * 3, bool), np.zeros((16,) * 3, bool),
                                              np.ones((16,) * 3, bool)))[None, None].expand(2, 1, -1, -1, -1)
    discriminator = define_patch_discriminator_3d(in_channels=2, base_features=4, patch_size=16, n_layers=2)
    optimizers = make_refiner_optimizers(refiner, discriminator)
    before = float((sketch - dvr).abs().mean())
    for _ in range(5):
        refiner_train_step(refiner, discriminator, optimizers, sketcher, mr, dvr, weights)
    with torch.no_grad():
        after = float((refiner.eval()(mr, sketch) - dvr).abs().mean())
    assert after < before

    old_card = {k: v for k, v in refiner.config.items() if k != "residual"}
    assert Refiner3D(**old_card).residual is False
    pair = SketcherRefiner3D(sketcher.config, refiner.config)
    assert pair.refiner.residual is True
