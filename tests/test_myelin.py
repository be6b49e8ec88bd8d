"""The myelin arm's plain functions against ground truth built here: small synthetic volumes with
known tissue, lesions, control distributions and grids."""

from __future__ import annotations

import json
import tempfile

import nibabel as nib
import numpy as np
import pytest

from synthquant import myelin
from synthquant.errors import InputError
from synthquant.image import grid_affine, save_image

SHAPE = (40, 40, 40)
AFFINE_1MM = grid_affine((-20.0, -25.0, -15.0), 1.0)


def radius_map(shape=SHAPE, centre=None) -> np.ndarray:
    centre = np.array(shape) / 2.0 - 0.5 if centre is None else np.asarray(centre, float)
    grid = np.indices(shape).astype(float)
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))


def brain_phantom(rng: np.random.Generator, *, noise: float = 0.03):
    """Concentric T1w brain: WM core (1.0), GM shell (0.6), CSF rim (0.25), dark background,
    and a T1-hypointense lesion (0.3, a "black hole") inside the WM."""
    r = radius_map()
    wm, gm, csf = r <= 11, (r > 11) & (r <= 15), (r > 15) & (r <= 17)
    lesion = radius_map(centre=(23.5, 19.5, 19.5)) <= 5.0  # centre 4 mm off-centre: reaches 9 < 11
    t1w = np.where(wm, 1.0, 0.0) + np.where(gm, 0.6, 0.0) + np.where(csf, 0.25, 0.0)
    t1w[lesion] = 0.3
    brain = r <= 17
    t1w = (t1w + noise * rng.standard_normal(SHAPE)) * brain
    return t1w.astype(np.float32), brain, wm, lesion


# ------------------------------------------------------------------------------ preprocessing

def test_brain_mask_and_n4_removes_bias_and_finds_the_brain(tmp_path):
    rng = np.random.default_rng(1)
    t1w, brain, wm, _ = brain_phantom(rng, noise=0.01)
    t1w[radius_map(centre=(23.5, 19.5, 19.5)) <= 5.0] = 1.0  # no lesion here
    x = np.indices(SHAPE)[0]
    bias = np.exp(0.6 * (x - 20) / 20.0)  # smooth multiplicative field, x0.55 .. x1.8
    biased = save_image(t1w * bias, AFFINE_1MM, tmp_path / "t1w.nii.gz")

    result = myelin.brain_mask_and_n4(biased, tmp_path / "out")
    mask = nib.load(str(result.brain_mask)).get_fdata() > 0
    corrected = nib.load(str(result.t1w_brain)).get_fdata()
    assert myelin.dice(mask, brain) > 0.9

    def cv(image):
        return image[wm].std() / image[wm].mean()

    assert cv(t1w * bias) > 0.12
    assert cv(corrected) < 0.5 * cv(t1w * bias)
    assert np.allclose(nib.load(str(result.t1w_brain)).affine, AFFINE_1MM, atol=1e-4)
    assert "get_mask" in result.method


def test_brain_mask_and_n4_reuses_a_normalization(tmp_path):
    from synthquant.registration import Normalization

    done = Normalization(t1w_brain=tmp_path / "b.nii.gz", brain_mask=tmp_path / "m.nii.gz",
                         t1w_template=tmp_path / "t.nii.gz", transforms=[])
    result = myelin.brain_mask_and_n4(tmp_path / "unused.nii.gz", tmp_path, normalization=done)
    assert (result.brain_mask, result.t1w_brain) == (done.brain_mask, done.t1w_brain)
    assert not (tmp_path / "brain_mask.nii.gz").exists()  # nothing recomputed


def test_segment_wm_lesion_filling_puts_black_holes_into_wm(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    t1w, brain, wm_truth, lesion = brain_phantom(rng)

    # antspyx's Atropos leaves its probability maps in the temporary folder; none may remain.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    filled = myelin.segment_wm(t1w, brain, lesion)
    assert list(tmp_path.iterdir()) == [] and tempfile.gettempdir() == str(tmp_path)
    # The lesion is classed as WM tissue by Atropos itself, not only by the final union.
    assert (filled.wm_probability[lesion] > 0.5).mean() > 0.95
    assert filled.fill_value == pytest.approx(1.0, abs=0.03)
    assert myelin.dice(filled.wm, wm_truth) > 0.98
    # NAWM = WM - lesion, exactly; lesion within WM.
    assert np.array_equal(filled.nawm, filled.wm & ~lesion)
    assert not (filled.nawm & lesion).any() and (filled.wm[lesion]).all()

    unfilled = myelin.segment_wm(t1w, brain, lesion, fill=False)
    assert (unfilled.wm_probability[lesion] > 0.5).mean() < 0.05
    ignorant = myelin.segment_wm(t1w, brain)  # no lesion mask: the black hole is not WM
    assert ignorant.wm[lesion].mean() < 0.05
    assert myelin.dice(ignorant.wm, wm_truth) < 0.97
    assert np.array_equal(ignorant.nawm, ignorant.wm) and not ignorant.lesion.any()


def test_segment_wm_refuses_a_mask_of_another_shape():
    with pytest.raises(ValueError, match="brain mask shape"):
        myelin.segment_wm(np.ones(SHAPE), np.ones((10, 10, 10)))


def make_maps(rng, means=(40.0, 0.45, 0.6e-3, 1.3e-3), sds=(5.0, 0.15, 0.2e-3, 0.3e-3)):
    return {c: (m + s * rng.standard_normal(SHAPE)).astype(np.float32)
            for c, m, s in zip(myelin.MR_CHANNELS, means, sds)}


def test_zscore_maps_within_brain_and_with_given_stats():
    rng = np.random.default_rng(3)
    brain = radius_map() <= 15
    maps = make_maps(rng)
    maps["MD"] = np.ones(SHAPE, np.float32)  # extra channels are ignored
    zmaps, stats = myelin.zscore_maps(maps, brain)
    assert list(zmaps) == list(myelin.MR_CHANNELS) == list(stats)
    json.dumps(stats)  # plain JSON-able numbers for the model card
    for channel in myelin.MR_CHANNELS:
        assert zmaps[channel][brain].mean() == pytest.approx(0.0, abs=1e-5)
        assert zmaps[channel][brain].std() == pytest.approx(1.0, abs=1e-5)
        assert not zmaps[channel][~brain].any()
        assert stats[channel]["mean"] == pytest.approx(float(maps[channel][brain].astype(float).mean()), rel=1e-9)

    other = make_maps(np.random.default_rng(4), means=(30.0, 0.3, 0.9e-3, 1.6e-3))
    reused, used = myelin.zscore_maps(other, brain, stats=stats)
    for channel in myelin.MR_CHANNELS:
        expected = (other[channel].astype(float) - stats[channel]["mean"]) / stats[channel]["sd"]
        assert np.allclose(reused[channel][brain], expected[brain], atol=1e-4)
        assert used[channel]["mean"] == stats[channel]["mean"]
    assert reused["MTR"][brain].mean() < -1.5  # scaled by the training statistics, not its own

    stack = myelin.mr_input_stack(zmaps)
    assert stack.shape == (4, *SHAPE) and np.array_equal(stack[2], zmaps["RD"])
    with pytest.raises(ValueError, match="'AD'"):
        myelin.zscore_maps({c: maps[c] for c in ("MTR", "FA", "RD")}, brain)


def test_pooled_zscore_stats_equal_those_of_all_voxels_together():
    rng = np.random.default_rng(5)
    maps_a, maps_b = make_maps(rng), make_maps(rng, means=(35.0, 0.5, 0.7e-3, 1.2e-3))
    brain_a, brain_b = radius_map() <= 12, radius_map() <= 16
    pooled = myelin.zscore_stats([maps_a, maps_b], [brain_a, brain_b])
    for channel in myelin.MR_CHANNELS:
        values = np.concatenate([maps_a[channel][brain_a], maps_b[channel][brain_b]]).astype(float)
        assert pooled[channel]["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert pooled[channel]["sd"] == pytest.approx(values.std(), rel=1e-6)
        assert pooled[channel]["n_voxels"] == values.size


def test_mr_channels_match_the_network():
    from synthquant.nets.sketcher_refiner import MR_CHANNELS

    assert myelin.MR_CHANNELS == MR_CHANNELS


def header_only(path, shape, voxel, origin):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), grid_affine(origin, voxel)), str(path))
    return path


def test_check_same_subject_grid(tmp_path):
    # MTR: 1.5 mm voxels, 150 mm field of view centred near 0; DWI: 2.5 mm, 120 mm.
    mtr = header_only(tmp_path / "mtr.nii.gz", (100, 100, 100), 1.5, (-75.0, -75.0, -75.0))
    dwi = header_only(tmp_path / "dwi.nii.gz", (48, 48, 40), 2.5, (-60.0, -70.0, -40.0))
    distances = myelin.check_same_subject_grid(mtr, dwi)
    assert distances["dwi.nii.gz"] < 20

    shifted = header_only(tmp_path / "shifted.nii.gz", (48, 48, 40), 2.5, (10.0, -70.0, -40.0))  # 70 mm off
    with pytest.raises(InputError) as error:
        myelin.check_same_subject_grid(mtr, dwi, shifted)
    assert str(shifted) in str(error.value) and "limit 50 mm" in str(error.value)
    assert "\n" not in str(error.value)

    elsewhere = header_only(tmp_path / "elsewhere.nii.gz", (48, 48, 40), 2.5, (400.0, -70.0, -40.0))
    with pytest.raises(InputError, match="does not overlap") as error:
        myelin.check_same_subject_grid(mtr, elsewhere)
    assert str(error.value).startswith(str(elsewhere)) and "\n" not in str(error.value)
    assert myelin.check_same_subject_grid(mtr, shifted, max_centre_distance_mm=80)


def test_lesion_mask_on_another_grid_comes_back_identical(tmp_path):
    rng = np.random.default_rng(6)
    coarse = ndimage_blobs(rng, (20, 20, 20))
    fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # the 1 mm mask made of 2x2x2 blocks
    reference = nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE_1MM)
    # The 2 mm voxel (i) covers 1 mm voxels 2i and 2i+1: its centre lies 0.5 mm further on.
    affine_2mm = grid_affine(AFFINE_1MM[:3, 3] + 0.5, 2.0)
    coarse_file = save_image(coarse * rng.uniform(0.2, 3.0, coarse.shape), affine_2mm, tmp_path / "les2.nii.gz")

    mask, note = myelin.lesion_mask_on(coarse_file, reference)
    assert mask.shape == SHAPE and np.array_equal(mask, fine)  # non-binary values > 0 are lesion
    assert note == ("lesion mask resampled (nearest-neighbour) from grid 20x20x20 @ 2x2x2 mm "
                    "to 40x40x40 @ 1x1x1 mm")

    same_file = save_image(fine, AFFINE_1MM, tmp_path / "les1.nii.gz", dtype=np.uint8)
    mask, note = myelin.lesion_mask_on(same_file, reference)
    assert note is None and np.array_equal(mask, fine)

    empty_file = save_image(np.zeros(SHAPE), AFFINE_1MM, tmp_path / "empty.nii.gz")
    mask, note = myelin.lesion_mask_on(empty_file, reference)
    assert note == myelin.EMPTY_LESION_NOTE and mask.shape == SHAPE and not mask.any()

    far_file = save_image(fine, grid_affine((500.0, 0.0, 0.0), 1.0), tmp_path / "far.nii.gz")
    with pytest.raises(InputError, match="outside the reference"):
        myelin.lesion_mask_on(far_file, reference)


def ndimage_blobs(rng, shape) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (field > np.quantile(field, 0.9)).astype(np.float32)


# ------------------------------------------------------------------------------ HC norm

NORM_SHAPE = (24, 24, 24)
NORM_AFFINE = grid_affine((-24.0, -24.0, -24.0), 2.0)
MU, SD = 1.7, 0.1


def control_maps(rng, n_controls=10, shape=NORM_SHAPE):
    """Controls' DVR: WM voxels ~ N(MU, SD) independently; grey matter around at 1.0."""
    wm = np.zeros(shape, bool)
    wm[3:21, 3:21, 3:21] = True
    dvr = [np.where(wm, MU + SD * rng.standard_normal(shape), 1.0).astype(np.float32) for _ in range(n_controls)]
    return dvr, [wm.astype(np.float32)] * n_controls, wm


def test_hc_norm_recovers_the_control_distribution():
    from scipy import ndimage

    dvr, wms, wm = control_maps(np.random.default_rng(7))
    norm = myelin.build_hc_wm_norm(dvr, wms, affine=NORM_AFFINE)
    core = ndimage.binary_erosion(wm, iterations=3)
    assert np.isfinite(norm.mean[wm]).all() and np.isnan(norm.mean[~wm]).all()
    assert (norm.n[wm] == 10).all() and (norm.n[~wm] == 0).all()
    assert np.abs(norm.mean[core] - MU).max() < 0.02
    assert np.abs(norm.sd[core] / SD - 1).max() < 0.15
    assert np.median(norm.sd[core]) == pytest.approx(SD, rel=0.05)
    # No grey matter leaks into the WM's edge (a plain Gaussian would pull it towards 1.0).
    edge = wm & ~ndimage.binary_erosion(wm)
    assert np.abs(norm.mean[edge] - MU).max() < 0.05

    raw = myelin.build_hc_wm_norm(dvr, wms, affine=NORM_AFFINE, smoothing_fwhm_mm=0)
    assert np.allclose(raw.mean[wm], np.mean(dvr, axis=0)[wm], atol=1e-5)
    assert np.allclose(raw.sd[wm], np.std(dvr, axis=0, ddof=1)[wm], atol=1e-5)
    # Smoothing the statistics steadies the SD: the raw per-voxel SD of 10 controls is far noisier.
    assert np.std(raw.sd[core]) > 3 * np.std(norm.sd[core])


def test_hc_norm_needs_min_subjects_per_voxel():
    dvr, wms, wm = control_maps(np.random.default_rng(8), n_controls=5)
    extra = np.zeros(NORM_SHAPE, bool)
    extra[21:23, 3:21, 3:21] = True  # WM of two controls only
    wms = [np.maximum(m, extra) if i < 2 else m for i, m in enumerate(wms)]
    dvr = [np.where(extra, MU, d) for d in dvr]
    norm = myelin.build_hc_wm_norm(dvr, wms, affine=NORM_AFFINE)
    assert (norm.n[extra] == 2).all() and np.isnan(norm.mean[extra]).all() and np.isnan(norm.sd[extra]).all()
    assert np.isfinite(norm.sd[wm]).all()
    lenient = myelin.build_hc_wm_norm(dvr, wms, affine=NORM_AFFINE, min_subjects=2)
    assert np.isfinite(lenient.mean[extra]).all()


def test_hc_norm_round_trip(tmp_path):
    dvr, wms, _ = control_maps(np.random.default_rng(9), n_controls=4)
    norm = myelin.build_hc_wm_norm(dvr, wms, affine=NORM_AFFINE)
    description = myelin.save_hc_wm_norm(norm, tmp_path, affine=NORM_AFFINE, source="synth",
                                         subjects=["sub-01", "sub-02", "sub-03", "sub-04"])
    loaded, affine, meta = myelin.load_hc_wm_norm(description)
    assert np.array_equal(np.isnan(loaded.mean), np.isnan(norm.mean))
    assert np.allclose(loaded.mean, norm.mean, equal_nan=True) and np.allclose(loaded.sd, norm.sd, equal_nan=True)
    assert np.array_equal(loaded.n, norm.n) and np.allclose(affine, NORM_AFFINE)
    assert meta["Source"] == "synth" and meta["NControls"] == 4
    assert meta["SmoothingFWHMmm"] == myelin.HC_NORM_FWHM_MM

    with pytest.raises(ValueError, match="source"):
        myelin.save_hc_wm_norm(norm, tmp_path, affine=NORM_AFFINE, source="fbp")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**meta, "Source": "fbp"}))
    with pytest.raises(InputError, match="unknown Source"):
        myelin.load_hc_wm_norm(broken)


# ------------------------------------------------------------------------------ demyelination

def demyelination_case():
    shape = (20, 20, 20)
    mean, sd = np.full(shape, MU, np.float32), np.full(shape, SD, np.float32)
    mean[:4], sd[:4] = np.nan, np.nan  # the norm is undefined in these slabs
    dvr = np.full(shape, MU, np.float32)
    lesion_a = np.zeros(shape, bool)
    lesion_a[8:11, 8:11, 8:11] = True          # 27 voxels at MU - 3 SD
    lesion_b = np.zeros(shape, bool)
    lesion_b[13:16, 8:11, 8:11] = True         # 27 voxels at MU - 1 SD
    lesion_c = np.zeros(shape, bool)
    lesion_c[1:3, 8:11, 8:11] = True           # 18 voxels, very low DVR but no norm there
    dvr[lesion_a], dvr[lesion_b], dvr[lesion_c] = MU - 3 * SD, MU - 1 * SD, 0.5
    return dvr, lesion_a, lesion_b, lesion_c, mean, sd


def test_demyelinated_voxels_follow_the_norm_and_k():
    dvr, a, b, c, mean, sd = demyelination_case()
    lesion = a | b | c
    flagged = myelin.demyelinated_voxels(dvr, lesion, mean, sd)
    assert np.array_equal(flagged, a)  # -3 SD flagged, -1 SD not, no norm: not classified
    assert np.array_equal(myelin.demyelinated_voxels(dvr, lesion, mean, sd, k=0.5), a | b)
    assert not myelin.demyelinated_voxels(dvr, lesion, mean, sd, k=4.0).any()
    outside = myelin.demyelinated_voxels(dvr, np.zeros_like(lesion), mean, sd, k=0.5)
    assert not outside.any()  # only lesional voxels are classified


def test_demyelinated_percent_is_exact():
    dvr, a, b, _, mean, sd = demyelination_case()
    lesion = a | b
    flagged = myelin.demyelinated_voxels(dvr, lesion, mean, sd)
    assert myelin.demyelinated_percent(flagged, lesion) == (50.0, None)
    small = lesion.copy()
    small[13:16, 8:11, 8] = False  # 9 of lesion b's voxels gone: 27 of 45
    assert myelin.demyelinated_percent(flagged, small)[0] == pytest.approx(100 * 27 / 45)
    assert myelin.demyelinated_percent(np.zeros_like(lesion), np.zeros_like(lesion)) == (0.0, myelin.EMPTY_LESION_NOTE)
    with pytest.raises(ValueError, match="outside the lesion"):
        myelin.demyelinated_percent(flagged, b)


# ------------------------------------------------------------------------------ tables, metrics

def test_roi_stats_and_group_table(tmp_path):
    shape = (10, 10, 10)
    wm = np.zeros(shape, bool)
    wm[2:8, 2:8, 2:8] = True                     # 216 voxels
    lesion = np.zeros(shape, bool)
    lesion[4:6, 4:6, 4:6] = True                 # 8 voxels
    nawm = wm & ~lesion
    dvr = np.where(lesion, 1.2, np.where(wm, 1.8, 1.0)).astype(np.float32)
    rows = myelin.myelin_roi_stats(dvr, lesion, nawm, wm, demyelinated_pct=62.5)
    by_roi = {r["roi"]: r for r in rows}
    assert [r["roi"] for r in rows] == ["lesion", "nawm", "wm"]
    assert by_roi["lesion"]["mean_dvr"] == pytest.approx(1.2) and by_roi["lesion"]["n_voxels"] == 8
    assert by_roi["nawm"]["mean_dvr"] == pytest.approx(1.8) and by_roi["nawm"]["n_voxels"] == 208
    assert by_roi["wm"]["mean_dvr"] == pytest.approx((8 * 1.2 + 208 * 1.8) / 216)
    assert np.isnan(by_roi["nawm"]["demyelinated_pct"]) and by_roi["lesion"]["demyelinated_pct"] == 62.5

    control = myelin.myelin_roi_stats(dvr, np.zeros(shape, bool), wm, wm)
    table = myelin.myelin_table([
        ({"participant_id": "02", "session_id": None, "site": float("nan"), "group": "control", "source": "pib"},
         control),
        ({"participant_id": "sub-01", "session_id": "1", "site": "B", "group": "patient", "source": "synth"}, rows),
    ])
    assert list(table.columns) == myelin.MYELIN_COLUMNS
    assert len(table) == 6 and table["participant_id"].iloc[0] == "sub-01" and table["session_id"].iloc[0] == "ses-1"
    assert table.loc[table.roi != "lesion", "demyelinated_pct"].isna().all()
    assert table.loc[(table.participant_id == "sub-01") & (table.roi == "lesion"), "demyelinated_pct"].item() == 62.5

    text = myelin.write_myelin_table(table, tmp_path / "group").read_text().splitlines()
    assert text[0].split("\t") == myelin.MYELIN_COLUMNS
    control_lesion = next(line for line in text if line.startswith("sub-02") and "\tlesion\t" in line)
    assert control_lesion.split("\t") == ["sub-02", "n/a", "n/a", "control", "pib", "lesion", "n/a", "0", "n/a"]
    with pytest.raises(ValueError, match="source"):
        myelin.myelin_table([({"participant_id": "03", "source": "fbp"}, rows)])


def test_discrepancy_is_the_difference_of_roi_means():
    rng = np.random.default_rng(10)
    truth = (1.7 + 0.1 * rng.standard_normal((10, 10, 10))).astype(np.float32)
    mask = np.zeros(truth.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    assert myelin.discrepancy(truth + 0.05, truth, mask) == pytest.approx(0.05, abs=1e-6)
    assert myelin.discrepancy(truth - 0.03, truth, mask) == pytest.approx(0.03, abs=1e-6)
    # Voxel errors of +-0.1 that cancel within the ROI: no discrepancy (the voxel-wise MAE is 0.1).
    signs = np.where(np.indices(truth.shape).sum(axis=0) % 2 == 0, 1.0, -1.0)
    assert (signs[mask] > 0).sum() == (signs[mask] < 0).sum()
    assert myelin.discrepancy(truth + 0.1 * signs, truth, mask) == pytest.approx(0.0, abs=1e-6)
    mean, sd = myelin.discrepancy_summary([0.01, 0.03])
    assert mean == pytest.approx(0.02) and sd == pytest.approx(np.sqrt(2) * 0.01)


def test_dice():
    a, b = np.zeros((4, 5)), np.zeros((4, 5))
    a[0, :] = 1
    a[1, :] = 1          # 10 voxels
    b[1, :] = 1
    b[2, :] = 1          # 10 voxels, 5 shared
    assert myelin.dice(a, b) == pytest.approx(0.5)
    assert myelin.dice(a, a) == 1.0 and myelin.dice(a, 1 - a) == 0.0
    assert np.isnan(myelin.dice(np.zeros(3), np.zeros(3)))
