"""Image-similarity metrics for a pseudo-T1w against the real T1w (Choi & Lee 2018, "Statistics").

Choi & Lee report SSIM (Wang et al. 2004) between generated and real MR "for the extracted
brain of both images", because PET and MR cover different fields of view. Here the SSIM map
is computed on the whole slice (so every window sees its real neighbourhood) and averaged only
over a mask the caller names. Images are the generator's [-1, 1] scale, so ``data_range`` is 2.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

#: Wang et al. 2004: an 11x11 Gaussian window of sigma 1.5, population covariance.
SSIM_WINDOW = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
#: Pixels beyond the mask's bounding box that can reach it through the window (radius 5 for
#: skimage's Gaussian truncated at 3.5 sigma), plus one: cropping to the box grown by this
#: margin leaves the SSIM map on the mask exactly as on the whole slice, at less cost.
_CROP_MARGIN = 6


def _as_slices(pseudo: np.ndarray, real: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    pseudo, real, mask = np.asarray(pseudo, np.float64), np.asarray(real, np.float64), np.asarray(mask, bool)
    if not pseudo.shape == real.shape == mask.shape:
        raise ValueError(f"shapes differ: pseudo {pseudo.shape}, real {real.shape}, mask {mask.shape}")
    if pseudo.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or an (n, H, W) stack of slices, got shape {pseudo.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: nothing to compare")
    if pseudo.ndim == 2:
        return pseudo[None], real[None], mask[None]
    return pseudo, real, mask


def masked_ssim(pseudo: np.ndarray, real: np.ndarray, mask: np.ndarray, *, data_range: float = 2.0) -> float:
    """Mean SSIM within ``mask``.

    ``pseudo``, ``real`` and ``mask`` are one 2D slice or an (n, H, W) stack of slices. Each
    slice gets its own 2D SSIM map (the generator works slice by slice), and the map values of
    all masked pixels of all slices are averaged, so every masked pixel weighs the same.
    """
    pseudo, real, mask = _as_slices(pseudo, real, mask)
    total, count = 0.0, 0
    for pseudo_slice, real_slice, mask_slice in zip(pseudo, real, mask):
        if not mask_slice.any():
            continue
        rows, cols = np.flatnonzero(mask_slice.any(axis=1)), np.flatnonzero(mask_slice.any(axis=0))
        box = (slice(max(rows[0] - _CROP_MARGIN, 0), rows[-1] + _CROP_MARGIN + 1),
               slice(max(cols[0] - _CROP_MARGIN, 0), cols[-1] + _CROP_MARGIN + 1))
        pseudo_slice, real_slice, mask_slice = pseudo_slice[box], real_slice[box], mask_slice[box]
        _, ssim_map = structural_similarity(pseudo_slice, real_slice, data_range=data_range, full=True,
                                            **SSIM_WINDOW)
        total += float(ssim_map[mask_slice].sum())
        count += int(mask_slice.sum())
    return total / count


def masked_mae(pseudo: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference within ``mask`` (same shapes as :func:`masked_ssim`)."""
    pseudo, real, mask = _as_slices(pseudo, real, mask)
    return float(np.abs(pseudo - real)[mask].mean())
