"""resample_to_grid against independent computations in world coordinates."""

from __future__ import annotations

import numpy as np

from synthquant.image import grid_affine, resample_to_grid


def world_to_source_index(target_shape, target_affine, source_affine):
    """Continuous source voxel index of every target voxel centre, by explicit matrix products."""
    ijk = np.indices(target_shape).reshape(3, -1)
    world = target_affine[:3, :3] @ ijk + target_affine[:3, 3:4]
    return np.linalg.inv(source_affine[:3, :3]) @ (world - source_affine[:3, 3:4])


def test_trilinear_upsampling_reproduces_a_ramp_out_to_the_voxel_faces():
    # A linear intensity ramp on a 2 mm grid; trilinear interpolation reproduces it exactly
    # between the outermost centres, and the outer half voxel (ITK's convention) takes the edge
    # value, as ANTs would. Beyond the voxel faces: cval.
    shape = (5, 6, 4)
    source_affine = grid_affine((10.0, -4.0, 2.0), 2.0)
    ramp = np.fromfunction(lambda i, j, k: 3 * i - 2 * j + 0.5 * k + 7, shape, dtype=np.float32)
    target_affine = grid_affine((10.0 - 2.5, -4.0 - 2.5, 2.0 - 2.5), 1.0)  # starts 1.5 voxels out
    target_shape = (14, 16, 12)
    resampled = resample_to_grid(ramp, source_affine, target_shape, target_affine, order=1, cval=-1.0)

    index = world_to_source_index(target_shape, target_affine, source_affine)
    faces = np.all((index >= -0.5) & (index <= np.array(shape)[:, None] - 0.5), axis=0)
    clamped = np.clip(index, 0, np.array(shape)[:, None] - 1)
    expected = np.where(faces, 3 * clamped[0] - 2 * clamped[1] + 0.5 * clamped[2] + 7, -1.0)
    np.testing.assert_allclose(resampled.ravel(), expected, atol=1e-4)
    assert 0 < (~faces).sum() < faces.size  # both sides of the faces were tested


def test_nearest_neighbour_on_an_oblique_grid_matches_rounding_in_world_coordinates():
    rng = np.random.default_rng(7)
    labels = rng.integers(1, 9, size=(7, 8, 6)).astype(np.int16)
    source_affine = grid_affine((0.0, 0.0, 0.0), 3.0)
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    target_affine = np.eye(4)
    target_affine[:3, :3] = rotation * 1.3
    target_affine[:3, 3] = (-2.0, -5.0, -2.0)
    target_shape = (20, 22, 16)
    resampled = resample_to_grid(labels, source_affine, target_shape, target_affine, order=0)

    index = world_to_source_index(target_shape, target_affine, source_affine)
    nearest = np.rint(index).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.array(labels.shape)[:, None]), axis=0)
    # Points within a rounding error of a voxel face may go either way.
    ties = np.any(np.abs(np.abs(index - np.rint(index)) - 0.5) < 1e-4, axis=0)
    expected = np.zeros(index.shape[1], np.int16)
    expected[inside] = labels[tuple(nearest[:, inside])]
    assert resampled.dtype == np.int16
    np.testing.assert_array_equal(resampled.ravel()[~ties], expected[~ties])
    assert 0 < inside.sum() < inside.size
