"""The generator's input grid: the paper's geometry, orientation-invariant, reversible."""

import numpy as np
from scipy import ndimage

from synthquant.nets.grid import AXIAL_MATRIX, VOXEL_MM, from_generator_grid, to_generator_grid


def _blob_pet(shape=(96, 96, 60), voxel=2.5):
    """A smooth head-like blob on an RAS grid with an off-centre field of view."""
    rng = np.random.default_rng(0)
    data = np.zeros(shape, np.float32)
    data[20:70, 25:75, 10:50] = 1.0
    data = ndimage.gaussian_filter(data, 3) + 0.3 * ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 4)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [-110.0, -95.0, -60.0]
    return data * 8.0, affine


def test_grid_has_the_papers_voxels_and_matrix():
    data, affine = _blob_pet()
    volume, grid = to_generator_grid(data, affine)
    assert volume.shape[:2] == AXIAL_MATRIX
    assert np.allclose(np.diag(grid.affine)[:3], VOXEL_MM)
    assert volume.min() >= -1.0 and volume.max() <= 1.0 and volume.max() > 0.9
    # The brain's centre of mass sits in the middle of the axial plane.
    com = ndimage.center_of_mass(np.clip(volume + 1, 0, None))
    assert abs(com[0] - (AXIAL_MATRIX[0] - 1) / 2) < 3 and abs(com[1] - (AXIAL_MATRIX[1] - 1) / 2) < 3


def test_scanner_orientation_does_not_reach_the_network():
    data, affine = _blob_pet()
    # The same image stored LPS-first (x and y flipped in the data, the affine compensating).
    flipped = data[::-1, ::-1, :].copy()
    lps = affine.copy()
    lps[0, 0], lps[1, 1] = -affine[0, 0], -affine[1, 1]
    lps[:2, 3] = affine[:2, 3] + np.diag(affine)[:2] * (np.array(data.shape[:2]) - 1)
    ras_volume, _ = to_generator_grid(data, affine)
    lps_volume, _ = to_generator_grid(flipped, lps)
    np.testing.assert_allclose(ras_volume, lps_volume, atol=1e-4)


def test_round_trip_returns_the_pet():
    data, affine = _blob_pet()
    volume, grid = to_generator_grid(data, affine)
    back = from_generator_grid(volume, grid, data.shape, affine, rescale=True)
    inside = ndimage.binary_erosion(data > 0.5 * data.max(), iterations=3)
    below_anchor = data <= grid.intensity_high   # the top 0.1 % is clipped by design
    mask = inside & below_anchor
    assert mask.sum() > 1000
    assert np.abs(back[mask] - data[mask]).mean() / data[mask].mean() < 0.02


def test_pseudo_t1w_background_is_zero():
    data, affine = _blob_pet()
    _, grid = to_generator_grid(data, affine)
    background = -np.ones(grid.shape, np.float32)
    out = from_generator_grid(background, grid, data.shape, affine)
    assert np.abs(out).max() < 1e-6
