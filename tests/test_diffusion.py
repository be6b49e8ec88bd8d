"""Tensor fit against DWI simulated here from known tensors; gradient-file validation; MTR."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from synthquant.diffusion import (
    count_directions,
    fit_tensor,
    mtr_from_pair,
    write_mtr,
    write_tensor_maps,
)
from synthquant.errors import InputError

B_VALUE = 1000.0  # s/mm^2


def fibonacci_hemisphere(n: int) -> np.ndarray:
    """n well-spread unit vectors on the upper hemisphere (distinct even up to sign)."""
    index = np.arange(n) + 0.5
    z = 1 - index / n  # (0, 1]
    azimuth = np.pi * (1 + 5**0.5) * index
    radius = np.sqrt(1 - z**2)
    return np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=1)


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


# Eigenvalues (mm^2/s): coherent WM, crossing-like WM, grey matter, CSF, a demyelinated lesion.
EIGENVALUES = [(1.7e-3, 0.3e-3, 0.3e-3), (1.2e-3, 0.6e-3, 0.4e-3), (0.8e-3, 0.75e-3, 0.7e-3),
               (3.0e-3, 3.0e-3, 3.0e-3), (1.5e-3, 0.7e-3, 0.6e-3)]


def true_maps(eigenvalues: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar maps straight from their definitions (Basser & Pierpaoli 1996)."""
    l1, l2, l3 = eigenvalues[..., 0], eigenvalues[..., 1], eigenvalues[..., 2]
    md = (l1 + l2 + l3) / 3
    fa = np.sqrt(1.5 * ((l1 - md) ** 2 + (l2 - md) ** 2 + (l3 - md) ** 2) / (l1**2 + l2**2 + l3**2))
    return {"FA": fa, "MD": md, "RD": (l2 + l3) / 2, "AD": l1}


@pytest.fixture
def dwi_dataset(tmp_path):
    """A 5x4x3 DWI (2 b0 + 32 directions), tensors of random orientation, no noise.

    Signal S = S0 exp(-b g^T D g), written by hand: independent of dipy.
    """
    rng = np.random.default_rng(7)
    shape = (5, 4, 3)
    directions = fibonacci_hemisphere(32)
    bvals = np.concatenate([[0.0, 5.0], np.full(32, B_VALUE)])
    bvecs = np.concatenate([np.zeros((2, 3)), directions])
    eigenvalues = np.array([EIGENVALUES[i % len(EIGENVALUES)] for i in range(np.prod(shape))])
    eigenvalues = eigenvalues.reshape(*shape, 3)
    tensors = np.zeros((*shape, 3, 3))
    for voxel in np.ndindex(shape):
        frame = rotation(rng)
        tensors[voxel] = frame @ np.diag(eigenvalues[voxel]) @ frame.T
    s0 = rng.uniform(800, 1200, size=shape)
    exponent = np.einsum("vi,xyzij,vj->xyzv", bvecs, tensors, bvecs)
    dwi = s0[..., None] * np.exp(-bvals * exponent)
    dwi_file = tmp_path / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(dwi.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), dwi_file)
    bval_file = tmp_path / "sub-01_dwi.bval"
    bvec_file = tmp_path / "sub-01_dwi.bvec"
    np.savetxt(bval_file, bvals[None], fmt="%g")
    np.savetxt(bvec_file, bvecs.T, fmt="%.8f")  # FSL layout: 3 rows
    return {"dwi": dwi_file, "bval": bval_file, "bvec": bvec_file, "bvals": bvals,
            "bvecs": bvecs, "truth": true_maps(eigenvalues), "shape": shape}


def test_tensor_fit_recovers_known_tensors(dwi_dataset):
    maps = fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"])
    for name, truth in dwi_dataset["truth"].items():
        assert maps[name].shape == dwi_dataset["shape"]
        np.testing.assert_allclose(maps[name], truth, rtol=1e-3, atol=1e-4 if name == "FA" else 1e-7,
                                   err_msg=name)
    assert np.allclose(maps["affine"], np.diag([2.0, 2.0, 2.0, 1.0]))


def test_tensor_fit_mask_and_writing(dwi_dataset, tmp_path):
    mask = np.zeros(dwi_dataset["shape"], bool)
    mask[1:4, 1:3, :] = True
    maps = fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"], mask=mask)
    assert (maps["FA"][~mask] == 0).all() and (maps["FA"][mask] > 0).all()
    np.testing.assert_allclose(maps["AD"][mask], dwi_dataset["truth"]["AD"][mask], rtol=1e-3)
    paths = write_tensor_maps(maps, tmp_path / "out", "sub-01")
    assert sorted(paths) == ["AD", "FA", "MD", "RD"]
    written = nib.load(paths["RD"])
    np.testing.assert_allclose(written.get_fdata(), maps["RD"], rtol=1e-6)
    assert np.allclose(written.affine, maps["affine"])


def test_row_per_volume_bvec_layout_is_accepted(dwi_dataset):
    np.savetxt(dwi_dataset["bvec"], dwi_dataset["bvecs"], fmt="%.8f")  # N x 3
    maps = fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"])
    np.testing.assert_allclose(maps["FA"], dwi_dataset["truth"]["FA"], atol=1e-4)


def _write(path, array):
    np.savetxt(path, np.atleast_2d(array), fmt="%.8f")


@pytest.mark.parametrize(
    ("case", "bad_file", "reason"),
    [
        ("missing_bval", "bval", "b-value file not found"),
        ("missing_bvec", "bvec", "b-vector file not found"),
        ("bval_count", "bval", "33 b-values for 34 DWI volumes"),
        ("bvec_count", "bvec", "33 b-vectors for 34 DWI volumes"),
        ("no_b0", "bval", "no b0 volume"),
        ("few_directions", "bvec", "too few diffusion directions: 12 distinct"),
        ("antipodal_repeats", "bvec", "too few diffusion directions: 16 distinct"),
        ("text_bval", "bval", "not a table of numbers"),
        ("zero_gradient", "bvec", "zero gradient direction"),
    ],
)
def test_bad_gradients_give_one_line_naming_the_file(dwi_dataset, case, bad_file, reason):
    bvals, bvecs = dwi_dataset["bvals"].copy(), dwi_dataset["bvecs"].copy()
    if case == "missing_bval":
        dwi_dataset["bval"].unlink()
    elif case == "missing_bvec":
        dwi_dataset["bvec"].unlink()
    elif case == "bval_count":
        _write(dwi_dataset["bval"], bvals[:-1])
    elif case == "bvec_count":
        _write(dwi_dataset["bvec"], bvecs[:-1].T)
    elif case == "no_b0":
        _write(dwi_dataset["bval"], np.full_like(bvals, B_VALUE))
        _write(dwi_dataset["bvec"], np.concatenate([fibonacci_hemisphere(2), bvecs[2:]]).T)
    elif case == "few_directions":
        bvecs[2:] = np.tile(fibonacci_hemisphere(12), (3, 1))[:32]  # 32 volumes, 12 directions
        _write(dwi_dataset["bvec"], bvecs.T)
    elif case == "antipodal_repeats":
        half = fibonacci_hemisphere(16)
        bvecs[2:] = np.concatenate([half, -half])  # g and -g measure the same
        _write(dwi_dataset["bvec"], bvecs.T)
    elif case == "text_bval":
        dwi_dataset["bval"].write_text("0 0 one thousand\n")
    elif case == "zero_gradient":
        bvecs[5] = 0
        _write(dwi_dataset["bvec"], bvecs.T)
    with pytest.raises(InputError) as error:
        fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(str(dwi_dataset[bad_file]) + ": ")
    assert reason in message


def test_direction_minimum_is_configurable(dwi_dataset):
    bvecs = dwi_dataset["bvecs"].copy()
    bvecs[2:] = np.tile(fibonacci_hemisphere(12), (3, 1))[:32]
    _write(dwi_dataset["bvec"], bvecs.T)
    maps = fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"], min_directions=6)
    assert np.isfinite(maps["FA"]).all()
    with pytest.raises(ValueError, match="at least 6"):
        fit_tensor(dwi_dataset["dwi"], dwi_dataset["bval"], dwi_dataset["bvec"], min_directions=5)


def test_three_dimensional_dwi_is_refused(dwi_dataset, tmp_path):
    flat = tmp_path / "sub-01_flat_dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 4, 3), np.float32), np.eye(4)), flat)
    with pytest.raises(InputError, match="expected a 4D image"):
        fit_tensor(flat, dwi_dataset["bval"], dwi_dataset["bvec"])


def test_count_directions_merges_near_and_antipodal():
    base = fibonacci_hemisphere(10)
    nudged = base + 1e-4  # well under 1 degree
    nudged /= np.linalg.norm(nudged, axis=1, keepdims=True)
    assert count_directions(np.concatenate([base, -base, nudged])) == 10


def test_mtr_from_pair_percent_and_safe_division(tmp_path):
    mt_off = np.array([[[1000.0, 500.0], [0.0, 1e-5]]])
    mt_on = np.array([[[600.0, 500.0], [0.0, 3.0]]])
    mtr = mtr_from_pair(mt_on, mt_off)
    # 100 (Moff - Mon) / Moff; background (Moff ~ 0) is 0, not inf or NaN.
    np.testing.assert_allclose(mtr, [[[40.0, 0.0], [0.0, 0.0]]])
    assert mtr.dtype == np.float32

    affine = np.eye(4)
    on_file, off_file = tmp_path / "mt_on.nii.gz", tmp_path / "mt_off.nii.gz"
    rng = np.random.default_rng(0)
    off = rng.uniform(500, 1000, (4, 4, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(off * 0.55, affine), on_file)
    nib.save(nib.Nifti1Image(off, affine), off_file)
    written = write_mtr(on_file, off_file, tmp_path / "mtr.nii.gz")
    np.testing.assert_allclose(nib.load(written).get_fdata(), 45.0, rtol=1e-5)

    nib.save(nib.Nifti1Image(off[:3], affine), on_file)
    with pytest.raises(InputError) as error:
        write_mtr(on_file, off_file, tmp_path / "mtr2.nii.gz")
    assert str(error.value).startswith(str(on_file)) and "differs" in str(error.value)
    assert not (tmp_path / "mtr2.nii.gz").exists()
