"""Logan graphical analysis with a reference region: the true [11C]PIB DVR map.

The myelin arm's ground truth is the voxel-wise PIB distribution volume ratio from the Logan
graphical reference method (Logan et al. 1996, J Cereb Blood Flow Metab 16:834), as used by
Wei et al. 2019 (§3.1) and Bodini et al. 2016. After t*, for every target TAC C_T and the
reference TAC C_R (Logan 1996, the reference-region form):

    ∫0^T C_T / C_T(T) = DVR · [∫0^T C_R + C_R(T) / k2'] / C_T(T) + b

so the DVR is the slope of a straight line, fitted here for all voxels at once. Without k2'
(``k2_ref_per_min=None``) the C_R(T)/k2' term is dropped: once C_R/C_T is nearly constant after
t* it only shifts the intercept (Logan 1996, the simplified form), at the cost of a small bias
while the ratio still drifts.

Defaults for PIB. Price et al. 2005 (J Cereb Blood Flow Metab 25:1528) and Lopresti et al.
2005 (J Nucl Med 46:1959) validated reference Logan for PIB with a cerebellar reference,
linear from t* = 35 min over a 90 min scan, using a population-average reference k2' of
0.149 /min; Yaqub et al. 2008 (NeuroImage 42:76) likewise fitted reference Logan from 35 min.
So t* defaults to 35 min. k2' defaults to None, the simplified form: 0.149 /min is a
cerebellar-grey-matter value from amyloid studies, while the myelin studies use other reference
regions (Bodini 2016: grey matter found by supervised clustering), for which no population
k2' is published; pass ``PIB_CEREBELLUM_K2_PER_MIN`` where the reference is the cerebellum.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from synthquant.errors import InputError
from synthquant.image import load_image, save_image

#: Start of the linear Logan segment for PIB (Price 2005; Lopresti 2005; Yaqub 2008).
T_STAR_MIN = 35.0
#: Population-average cerebellar k2' of PIB (Price 2005; Lopresti 2005), per minute.
PIB_CEREBELLUM_K2_PER_MIN = 0.149
#: Frames needed after t*: a line through two noisy points has no check on linearity.
MIN_LOGAN_FRAMES = 3
#: Voxels per chunk in :func:`logan_dvr_image`, to bound memory on whole-brain 4D images.
VOXEL_CHUNK = 200_000


class LoganFit(NamedTuple):
    dvr: np.ndarray        # (n_vox,), 0 where the voxel could not be fitted
    intercept: np.ndarray  # (n_vox,), minutes; 0 where not fitted
    valid: np.ndarray      # (n_vox,) bool: fitted (positive TAC over every frame after t*)
    frames: np.ndarray     # indices of the frames in the fit


def frame_times_min(frame_start_s, frame_duration_s, *, source=None) -> tuple[np.ndarray, np.ndarray]:
    """Frame starts and durations, seconds -> minutes, checked (BIDS PET timing is in seconds)."""
    start = np.asarray(frame_start_s, dtype=float).ravel()
    duration = np.asarray(frame_duration_s, dtype=float).ravel()
    if start.size != duration.size:
        raise InputError(source, f"FrameTimesStart ({start.size}) and FrameDuration "
                                 f"({duration.size}) differ in length")
    if start.size == 0 or not (np.isfinite(start).all() and np.isfinite(duration).all()):
        raise InputError(source, "frame timing is empty or not finite")
    if (duration <= 0).any() or (start < 0).any():
        raise InputError(source, "frame durations must be positive and starts non-negative")
    if (start[1:] < start[:-1] + duration[:-1] - 1e-6).any():
        raise InputError(source, "frames overlap or are not in time order")
    return start / 60.0, duration / 60.0


def cumulative_integral(tacs: np.ndarray, start_min: np.ndarray, duration_min: np.ndarray) -> np.ndarray:
    """∫0^t C dt at each frame mid-time, from frame-mean activities (last axis = frames).

    A frame mean times its duration is that frame's exact integral, so the frames before add
    ``C_k Δ_k`` each. The current frame's first half is ``C_k Δ_k / 2 - C'_k Δ_k^2 / 8``: the
    mean stands for the mid-time value, and the slope term (C' by central differences over
    mid-times) makes it exact for a curve linear within the frame; without it, 10 min frames
    on a sloping TAC are off by ~0.3%. Gaps between frames, and the time from injection
    (activity 0) to the first frame, are bridged linearly (trapezoids).
    """
    tacs = np.asarray(tacs, dtype=np.float64)
    previous = np.concatenate([np.zeros_like(tacs[..., :1]), tacs[..., :-1]], axis=-1)
    previous_end = np.concatenate([[0.0], start_min[:-1] + duration_min[:-1]])
    gap = np.clip(start_min - previous_end, 0.0, None)
    whole = tacs * duration_min
    before = np.cumsum(whole + gap * (previous + tacs) / 2, axis=-1) - whole
    mid = start_min + duration_min / 2
    slope = (np.gradient(tacs, mid, axis=-1) if mid.size > 1 else np.zeros_like(tacs))
    return before + whole / 2 - slope * duration_min**2 / 8


def logan_reference_dvr(frame_start_s, frame_duration_s, target_tacs: np.ndarray,
                        reference_tac: np.ndarray, *, t_star_min: float = T_STAR_MIN,
                        k2_ref_per_min: float | None = None,
                        source: str | Path | None = None) -> LoganFit:
    """Voxel-wise Logan reference DVR (Logan 1996), vectorised over voxels.

    Parameters
    ----------
    frame_start_s, frame_duration_s
        Frame timing in seconds from injection (BIDS FrameTimesStart / FrameDuration).
    target_tacs
        (n_vox, n_frames) frame-mean activities; (n_frames,) for one TAC.
    reference_tac
        (n_frames,) reference-region TAC, same units.
    t_star_min
        Frames whose mid-time is at or after t* enter the fit (35 min for PIB).
    k2_ref_per_min
        Reference-region efflux k2' (/min) for the full form; None drops the C_R/k2' term.
    source
        The file named in ``InputError`` messages.

    Voxels whose TAC is not positive on every fitted frame (outside the head) get DVR 0 and
    ``valid`` False. Raises ``InputError`` when fewer than 3 frames lie after t*, when the
    reference TAC is zero or negative after t*, or when the timing is malformed.
    """
    start_min, duration_min = frame_times_min(frame_start_s, frame_duration_s, source=source)
    target = np.atleast_2d(np.asarray(target_tacs, dtype=np.float64))
    reference = np.asarray(reference_tac, dtype=np.float64).ravel()
    n_frames = start_min.size
    if target.shape[1] != n_frames or reference.size != n_frames:
        raise InputError(source, f"{n_frames} frames in the timing but TACs of "
                                 f"{target.shape[1]} (target) and {reference.size} (reference)")
    if k2_ref_per_min is not None and not k2_ref_per_min > 0:
        raise ValueError(f"k2_ref_per_min must be positive, got {k2_ref_per_min}")
    mid = start_min + duration_min / 2
    frames = np.flatnonzero(mid >= t_star_min)
    if frames.size < MIN_LOGAN_FRAMES:
        raise InputError(source, f"only {frames.size} frames have mid-times after t* = "
                                 f"{t_star_min:g} min (last mid-time {mid[-1]:.1f} min); Logan "
                                 f"needs at least {MIN_LOGAN_FRAMES}")
    if not np.isfinite(reference).all() or (reference[frames] <= 0).any():
        raise InputError(source, "reference-region TAC is zero, negative or not finite after "
                                 f"t* = {t_star_min:g} min (empty or misplaced reference mask?)")

    integral_ref = cumulative_integral(reference, start_min, duration_min)[frames]
    if k2_ref_per_min is not None:
        integral_ref = integral_ref + reference[frames] / k2_ref_per_min
    late = target[:, frames]
    valid = np.all(late > 0, axis=1) & np.isfinite(late).all(axis=1)
    dvr = np.zeros(target.shape[0])
    intercept = np.zeros(target.shape[0])
    if valid.any():
        late_valid = late[valid]
        # Logan ordinates and abscissae, one row per voxel.
        y = cumulative_integral(target[valid], start_min, duration_min)[:, frames] / late_valid
        x = integral_ref[None, :] / late_valid
        x_centred = x - x.mean(axis=1, keepdims=True)
        sxx = np.einsum("ij,ij->i", x_centred, x_centred)
        slope = np.einsum("ij,ij->i", x_centred, y - y.mean(axis=1, keepdims=True))
        fitted = sxx > 0
        slope = np.where(fitted, slope / np.where(fitted, sxx, 1.0), 0.0)
        dvr[valid] = slope
        intercept[valid] = np.where(fitted, y.mean(axis=1) - slope * x.mean(axis=1), 0.0)
        valid[np.flatnonzero(valid)[~fitted]] = False
    return LoganFit(dvr, intercept, valid, frames)


def _mask_on_grid(mask, shape: tuple[int, int, int], affine: np.ndarray, what: str) -> np.ndarray:
    if isinstance(mask, (str, Path)):
        image = load_image(mask)
        if image.shape != shape:
            raise InputError(mask, f"{what} shape {image.shape} differs from the PET's {shape} "
                                   "(resample it to the PET grid first)")
        if not np.allclose(image.affine, affine, atol=1e-2):
            raise InputError(mask, f"{what} is not on the PET grid (affines differ)")
        return image.get_fdata(dtype=np.float32) > 0.5
    data = np.asarray(mask)
    if data.shape != shape:
        raise ValueError(f"{what} shape {data.shape} differs from the PET's {shape}")
    return data > 0.5


def logan_dvr_image(pet_4d_file: str | Path, sidecar: Mapping | str | Path,
                    reference_mask: str | Path | np.ndarray, out_file: str | Path, *,
                    t_star_min: float = T_STAR_MIN, k2_ref_per_min: float | None = None,
                    brain_mask: str | Path | np.ndarray | None = None) -> dict:
    """Write the voxel-wise Logan reference DVR map of a dynamic PIB PET.

    ``sidecar`` is the PET's JSON sidecar (dict or path) with FrameTimesStart and
    FrameDuration in seconds; ``reference_mask`` (and the optional ``brain_mask``) lie on the PET
    grid. The reference TAC is the mean over the reference mask. Voxels outside ``brain_mask``,
    or without a positive TAC after t*, are 0 in the map. Returns ``{"dvr", "t_star_min",
    "k2_ref_per_min", "n_frames_fit", "reference_voxels", "fitted_voxels"}``.
    """
    from synthquant.pet import read_sidecar  # noqa: PLC0415 - pet imports pandas

    pet = load_image(pet_4d_file, ndim=(4,))
    sidecar_source = pet_4d_file
    if not isinstance(sidecar, Mapping):
        sidecar_source = sidecar
        sidecar = read_sidecar(sidecar)
    missing = [key for key in ("FrameTimesStart", "FrameDuration") if key not in sidecar]
    if missing:
        raise InputError(sidecar_source, f"sidecar lacks {' and '.join(missing)}: Logan needs "
                                         "the frame timing")
    data = np.asarray(pet.dataobj, dtype=np.float32)
    shape = data.shape[:3]
    reference = _mask_on_grid(reference_mask, shape, pet.affine, "reference mask")
    if not reference.any():
        raise InputError(reference_mask if isinstance(reference_mask, (str, Path)) else pet_4d_file,
                         "reference mask is empty")
    reference_tac = data[reference].mean(axis=0)
    fit_region = (np.ones(shape, bool) if brain_mask is None
                  else _mask_on_grid(brain_mask, shape, pet.affine, "brain mask"))
    voxels = np.flatnonzero(fit_region.ravel())
    tacs = data.reshape(-1, data.shape[3])
    dvr = np.zeros(tacs.shape[0], dtype=np.float32)
    fitted = 0
    frames = np.array([], dtype=int)
    for begin in range(0, max(voxels.size, 1), VOXEL_CHUNK):
        chunk = voxels[begin:begin + VOXEL_CHUNK]
        fit = logan_reference_dvr(sidecar["FrameTimesStart"], sidecar["FrameDuration"],
                                  tacs[chunk], reference_tac, t_star_min=t_star_min,
                                  k2_ref_per_min=k2_ref_per_min, source=pet_4d_file)
        dvr[chunk] = fit.dvr
        fitted += int(fit.valid.sum())
        frames = fit.frames
    out = save_image(dvr.reshape(shape), pet.affine, out_file)
    return {"dvr": str(out), "t_star_min": float(t_star_min), "k2_ref_per_min": k2_ref_per_min,
            "n_frames_fit": int(frames.size), "reference_voxels": int(reference.sum()),
            "fitted_voxels": fitted}
