"""PET image formation for phantom subjects: resolution, frames, head motion and noise.

The tracer's uptake map is made in template space, pulled back onto a *fine* native grid
(scanner axes, the anatomy's spacing) and blurred there by the scanner's point-spread
function: blurring belongs to the scanner, so it happens in scanner space. Each frame then
samples that blurred image through its own small rigid motion onto the PET voxel grid and
gets count noise. The noise-free, motion-free blurred fine image is also what the ground
truth is measured from (:func:`truth_on_template`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthquant.phantom.anatomy import (
    Deformation,
    Pose,
    TemplateAnatomy,
    grid_points,
    native_bounding_box,
    pull_back,
    push_to_template,
    sample,
)
from synthquant.phantom.sites import ImageGrid

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def fine_grid(anatomy: TemplateAnatomy, pose: Pose, deformation: Deformation,
              margin_mm: float = 20.0) -> ImageGrid:
    """An axis-aligned scanner grid at the anatomy's spacing that holds the whole head.

    Its lattice is the template grid's, so under the identity pose and deformation the fine
    image samples the template's own voxels (the test of the ground truth relies on it).
    """
    spacing = anatomy.resolution
    lo, hi = native_bounding_box(anatomy, pose, deformation, margin_mm)
    origin = anatomy.affine[:3, 3]
    first = np.floor((lo - origin) / spacing).astype(int)
    last = np.ceil((hi - origin) / spacing).astype(int)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin + first * spacing
    return ImageGrid(tuple(int(n) for n in last - first + 1), affine)


def psf_blur(image: np.ndarray, spacing: float, fwhm_mm) -> np.ndarray:
    """Gaussian point-spread function (FWHM per axis, mm) on an axis-aligned grid."""
    sigma = np.asarray(fwhm_mm, float) * FWHM_TO_SIGMA / spacing
    return ndimage.gaussian_filter(image, sigma, mode="constant").astype(np.float32)


def blurred_native_pet(uptake: np.ndarray, anatomy: TemplateAnatomy, pose: Pose,
                       deformation: Deformation, fwhm_mm) -> tuple[np.ndarray, ImageGrid]:
    """The noise-free, motion-free PET at scanner resolution on the fine native grid."""
    grid = fine_grid(anatomy, pose, deformation)
    native = pull_back(uptake, anatomy.affine, grid, pose, deformation)
    return psf_blur(native, anatomy.resolution, fwhm_mm), grid


def frame_motions(rng: np.random.Generator, n_frames: int, *, max_translation_mm: float = 1.5,
                  max_rotation_deg: float = 1.5, scale: float = 1.0) -> list[Pose]:
    """Rigid motion of each frame relative to the first (which does not move).

    Per-axis draws are divided by sqrt(3), so the total shift and the total rotation angle
    (to first order) stay within the limits.
    """
    motions = [Pose()]
    for _ in range(n_frames - 1):
        rotation = rng.uniform(-1, 1, 3) * max_rotation_deg / np.sqrt(3) * scale
        translation = rng.uniform(-1, 1, 3) * max_translation_mm / np.sqrt(3) * scale
        motions.append(Pose(tuple(float(v) for v in rotation), tuple(float(v) for v in translation)))
    return motions


def acquire_frames(fine_pet: np.ndarray, fine: ImageGrid, grid: ImageGrid, motions: list[Pose],
                   head_center: np.ndarray, frame_scales) -> np.ndarray:
    """Noise-free frames (X, Y, Z, T) on the PET grid, each through its own head motion.

    A frame's motion moves the head about its centre, so the frame shows the fine image at
    ``M^-1(x)``; ``frame_scales`` multiply each frame (slow washout).
    """
    frames = np.empty((*grid.shape, len(motions)), np.float32)
    points = grid_points(grid.shape, grid.affine)
    h = np.asarray(head_center, float)[:, None]
    for k, (motion, factor) in enumerate(zip(motions, frame_scales)):
        t = np.asarray(motion.translation_mm, float)[:, None]
        source = h + motion.rotation.T @ (points - h - t)
        frames[..., k] = sample(fine_pet, fine.affine, source).reshape(grid.shape) * np.float32(factor)
    return frames


def add_count_noise(rng: np.random.Generator, frames: np.ndarray, reference: float, cov: float,
                    correlation_voxels: float = 0.7) -> np.ndarray:
    """Spatially correlated noise whose variance follows the signal (count statistics).

    The standard deviation is ``cov * reference`` where the signal equals ``reference`` and
    scales as the square root of the signal elsewhere; reconstructed images are
    non-negative (OSEM), so they are clipped at zero.
    """
    noisy = np.empty_like(frames)
    for k in range(frames.shape[-1]):
        signal = frames[..., k]
        white = rng.standard_normal(signal.shape, dtype=np.float32)
        texture = ndimage.gaussian_filter(white, correlation_voxels)
        texture /= texture.std()
        sd = cov * np.sqrt(np.maximum(signal, 0.05 * reference) * reference)
        noisy[..., k] = np.maximum(signal + sd * texture, 0.0)
    return noisy


def truth_on_template(fine_pet: np.ndarray, fine: ImageGrid, grid_shape, grid_affine, pose: Pose,
                      deformation: Deformation, where: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The fine native PET seen on a template grid through the true inverse map.

    This is what a perfect spatial normalisation of a noise-free, motion-free scan would
    give, at the voxels in ``where`` (0 elsewhere); returns the image and the largest
    fixed-point residual of the inversion (mm).
    """
    return push_to_template(fine_pet, fine.affine, grid_shape, grid_affine, pose, deformation, where)
