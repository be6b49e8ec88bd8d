"""The generator's input grid (Choi & Lee, J Nucl Med 2018, "Image Preprocessing").

PET from any scanner is resliced, without spatial normalisation, to voxels of
1.2 x 1.0 x 1.0 mm with an axial matrix of 192 x 256, and each subject's intensities are
scaled to [-1, 1]. The grid is axis-aligned in world (RAS) space, so the data orientation of
the scanner (LPS, sagittal, oblique) does not reach the network; it is centred on the PET's
centre of mass, so a field of view placed off-centre does not either. The pseudo-T1w comes
back to the PET's own grid through :func:`from_generator_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthquant.image import resample_to_grid

#: Voxel size (mm) along x (left-right), y (anterior-posterior), z (inferior-superior).
VOXEL_MM = (1.2, 1.0, 1.0)
#: Axial matrix: 192 voxels left-right (230 mm), 256 anterior-posterior (256 mm).
AXIAL_MATRIX = (192, 256)
#: Upper intensity anchor: the 99.9th percentile, so a few hot voxels do not set the scale.
UPPER_PERCENTILE = 99.9


@dataclass(frozen=True)
class GeneratorGrid:
    """Where the generator's slices sit in the world, and how intensities were scaled."""

    affine: np.ndarray          # voxel (x, y, z) -> world RAS mm
    shape: tuple[int, int, int]
    intensity_low: float        # maps to -1
    intensity_high: float       # maps to +1


def generator_grid(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The RAS-aligned 1.2 x 1.0 x 1.0 mm grid over a PET: its affine, centre and shape.

    The axial plane is 192 x 256; the slices span the PET's axial extent in world space.
    """
    weights = np.clip(data, 0, None)
    centre_voxel = ndimage.center_of_mass(weights) if weights.sum() > 0 else (np.array(data.shape) - 1) / 2
    centre = affine[:3, :3] @ np.asarray(centre_voxel, float) + affine[:3, 3]
    corners = np.array([[i, j, k] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)], float)
    z_world = corners @ affine[:3, :3].T[:, 2] + affine[2, 3]
    n_slices = int(np.ceil((z_world.max() - z_world.min()) / VOXEL_MM[2])) + 1
    shape = (*AXIAL_MATRIX, n_slices)
    grid = np.diag([*VOXEL_MM, 1.0])
    # Centre in x and y on the centre of mass; span the acquired axial extent in z.
    grid[:3, 3] = [centre[0] - VOXEL_MM[0] * (shape[0] - 1) / 2, centre[1] - VOXEL_MM[1] * (shape[1] - 1) / 2,
                   z_world.min()]
    return grid, centre, shape


def to_generator_grid(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, GeneratorGrid]:
    """Reslice a PET volume to the generator grid and scale it to [-1, 1].

    Returns the volume as (x, y, z) float32 (axial slices are ``volume[..., k]``) and the
    grid record needed to undo both steps.
    """
    grid_affine, _, shape = generator_grid(data, affine)
    resliced = resample_to_grid(data, affine, shape, grid_affine, order=1)
    low = 0.0
    high = float(np.percentile(resliced[resliced > 0], UPPER_PERCENTILE)) if np.any(resliced > 0) else 1.0
    scaled = np.clip(2.0 * (resliced - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)
    return scaled, GeneratorGrid(grid_affine, shape, low, high)


def from_generator_grid(volume: np.ndarray, grid: GeneratorGrid, target_shape: tuple[int, int, int],
                        target_affine: np.ndarray, *, rescale: bool = False) -> np.ndarray:
    """Bring a generator-grid volume (e.g. the pseudo-T1w, in [-1, 1]) onto a target grid.

    ``rescale`` undoes the input scaling (for PET); a pseudo-T1w keeps its [-1, 1] scale,
    shifted to [0, 2] so that the background is zero, as registration expects.
    """
    values = volume.astype(np.float32)
    if rescale:
        values = (values + 1.0) / 2.0 * (grid.intensity_high - grid.intensity_low) + grid.intensity_low
    else:
        values = values + 1.0
    return resample_to_grid(values, grid.affine, target_shape, target_affine, order=1)
