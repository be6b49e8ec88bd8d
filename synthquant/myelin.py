"""The myelin arm between maps on disk and tables: preprocessing, the healthy-control (HC) white
matter norm, demyelinated voxels, ROI statistics and validation metrics.

After Wei et al., Med Image Anal 2019 ("Wei") for the inputs and the validation, and Bodini et
al., Ann Neurol 2016 ("Bodini") for the demyelination analysis, which Wei §3.5 reuses: each
lesional voxel of a patient is compared, in MNI space, with the same voxel of the HC white
matter, and called demyelinated when its [11C]PIB DVR falls below the HC norm.

Plain functions: NIfTI paths, nibabel images or arrays in; arrays or files out. ANTs (antspyx)
is imported lazily through :mod:`synthquant.registration`, after
:func:`synthquant.config.apply_threads` has set the ITK thread count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from synthquant.errors import InputError
from synthquant.image import atomic_write_text, load_image, resample_to_grid, save_image, voxel_sizes
from synthquant.quantify import format_table, roi_mean

#: The MR channel order of Wei 2019 (§3.1 a): MTR, then the three DTI measures. The same tuple as
#: ``synthquant.nets.sketcher_refiner.MR_CHANNELS`` (a test holds them equal); kept here too so
#: that preprocessing and the group tables do not import torch.
MR_CHANNELS = ("MTR", "FA", "RD", "AD")
#: DESIGN "Outputs": the exact columns of ``group/myelin_stats.tsv``.
MYELIN_COLUMNS = ["participant_id", "session_id", "site", "group", "source", "roi", "mean_dvr", "n_voxels",
                  "demyelinated_pct"]
#: DESIGN: ``roi`` values, in table order.
MYELIN_ROIS = ("lesion", "nawm", "wm")
#: DESIGN: ``source`` values: the predicted DVR, or the true DVR from a dynamic PIB PET.
DVR_SOURCES = {"synth": "DVR predicted by the Sketcher-Refiner (dvr_from_mri)",
               "pib": "true DVR from the dynamic [11C]PIB PET (Logan reference)"}

#: Two images of one subject and session share the scanner's frame: their fields of view (FOVs)
#: overlap and their centres lie within a few cm (protocols centre on the brain; a DWI slab may
#: sit a little lower or higher). 50 mm is a third of a brain's length: further apart, the pair is
#: not of one session, or a header is broken, and the rigid coregistration (which starts by
#: aligning centres of mass) would align them anyway and hide it.
MAX_CENTRE_DISTANCE_MM = 50.0

#: The lesion filling of Wei §3.1 a ("a 'lesion-filling' procedure in patients only" before
#: segmenting the T1w) replaces lesion voxels by normal-appearing WM intensity, so that
#: T1-hypointense lesions are not classed as GM or CSF (as FSL lesion_filling, Battaglini et al.,
#: Hum Brain Mapp 2012, which samples the surrounding NAWM). We fill with the mean of the WM
#: within FILL_SHELL_MM of the lesion: deterministic, and local, so a bias field left after N4
#: does not matter. Below FILL_MIN_VOXELS such voxels, the whole WM's mean is used.
FILL_SHELL_MM = 3.0
FILL_MIN_VOXELS = 10
#: Atropos (Avants et al., Neuroinformatics 2011): 3 classes (CSF, GM, WM) initialised by
#: k-means, a light Markov random field (smoothing 0.2, 1-voxel neighbourhood; antspyx's 2D
#: default radius "1x1" is wrong for volumes), 5 iterations (its own default).
ATROPOS_CLASSES = 3
ATROPOS_MRF = "[0.2,1x1x1]"
ATROPOS_CONVERGENCE = "[5,0]"

#: HC WM norm (Bodini 2016, Wei §3.5). A template voxel belongs to a control's WM where its WM
#: mask, warped to template space (linear interpolation gives fractions), is at least 0.5.
WM_MASK_THRESHOLD = 0.5
#: Fewer contributing controls than this leave a voxel's norm undefined (NaN): an SD needs two,
#: and with two it is too unstable to threshold at mean - 2 SD.
MIN_HC_SUBJECTS = 3
#: Smoothing of the norm's statistics (not of the data): 6 mm FWHM, 3 voxels of the 2 mm working
#: grid. The voxel-wise SD of ~10 controls has a relative standard error of ~24 %
#: (sqrt(1/(2(n-1)))); averaging over the ~90 voxels a 6 mm Gaussian spans (fewer independent
#: ones, as PET voxels are correlated at its ~2.5-5 mm resolution) brings that to a few %, while
#: the WM's DVR varies over centimetres. The data are not smoothed: a patient's unsmoothed voxel is
#: compared with the spread of unsmoothed control voxels. Our choice; Wei and Bodini give no value
#: we could check here.
HC_NORM_FWHM_MM = 6.0
#: Bodini 2016 (as Wei §3.5 reuses it): a lesional voxel is demyelinated when its DVR is below
#: the HC WM mean - k SD of that voxel; k = 2 is the threshold the project's phantom truth uses.
DEMYELINATION_K = 2.0

EMPTY_LESION_NOTE = "empty lesion mask: 0 % demyelinated"


# ------------------------------------------------------------------------------------ helpers

def _image(source) -> nib.Nifti1Image:
    """A nibabel image from a path (checked by :func:`load_image`) or an image."""
    if isinstance(source, nib.spatialimages.SpatialImage):
        return source
    return load_image(source, require_nonzero=False)


def _array(source, *, dtype=np.float32) -> np.ndarray:
    """A 3D array from a path, a nibabel image or an array."""
    if isinstance(source, (str, Path)):
        return load_image(source, require_nonzero=False).get_fdata(dtype=np.float32).astype(dtype, copy=False)
    if isinstance(source, nib.spatialimages.SpatialImage):
        return np.asarray(source.get_fdata(dtype=np.float32), dtype=dtype)
    return np.asarray(source, dtype=dtype)


def _same_shape(reference: np.ndarray, other: np.ndarray, what: str, source=None) -> None:
    if other.shape != reference.shape:
        reason = f"{what} shape {other.shape} differs from the image's {reference.shape}"
        if isinstance(source, (str, Path)):
            raise InputError(source, reason)
        raise ValueError(reason)


def _grid_text(shape, affine) -> str:
    sizes = "x".join(f"{v:g}" for v in np.round(voxel_sizes(affine), 3))
    return f"{'x'.join(str(int(s)) for s in shape[:3])} @ {sizes} mm"


def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, atol=1e-3)


# ------------------------------------------------------------------------------ training pairs

class MyelinPair(NamedTuple):
    """One subject's network input and target on one grid (the Sketcher-Refiner's training unit).

    Made by :func:`synthquant.myelinprep.training_pairs` (MR maps brought onto the PIB PET's
    grid, Wei §3.1 a) and read by :mod:`synthquant.nets.myelin_training`.
    """

    key: str               # "sub-01" or "sub-01_ses-1"
    site: str
    group: str             # "control", "patient" or "n/a"
    mr: np.ndarray         # (4, X, Y, Z) float32, MR_CHANNELS order, native units (MTR %, FA, RD and AD mm2/s)
    dvr: np.ndarray        # (X, Y, Z) float32, true DVR (Logan reference, cerebellar GM)
    brain: np.ndarray      # (X, Y, Z) bool
    lesion: np.ndarray     # (X, Y, Z) bool (all False for a control)
    nawm: np.ndarray       # (X, Y, Z) bool, WM - lesion
    wm: np.ndarray         # (X, Y, Z) bool, WM including lesions
    affine: np.ndarray     # (4, 4) of the grid


# ------------------------------------------------------------------------------ preprocessing

class BrainExtraction(NamedTuple):
    """Brain mask and bias-corrected, skull-stripped T1w (native space), and how they were made."""

    brain_mask: Path
    t1w_brain: Path
    method: str


def brain_mask_and_n4(t1w: str | Path, out_dir: str | Path, *, normalization=None) -> BrainExtraction:
    """Brain mask and N4-corrected T1w (Wei §3.1: brain extraction, then N4, Tustison 2010).

    With ``normalization`` (the :class:`synthquant.registration.Normalization` of this T1w),
    its ``brain_mask`` and ``t1w_brain`` are returned as they are: the myelin arm normalises the
    T1w to MNI anyway (for the HC norm), and that step already strips the skull with the
    template's brain mask pulled back through a whole-head affine and runs N4 inside it. One
    skull-strip per subject, and the better one.

    Without it (no template registration wanted), a standalone intensity method: N4 over the
    whole image, then ``ants.get_mask`` (threshold at the mean, erode, largest component,
    dilate, fill holes) on the corrected image, then N4 again inside that mask. It is fit for an
    already skull-stripped T1w, or one whose scalp is darker than brain; it does not remove
    bright scalp fat, which only a template (or BET-like) method does.
    """
    if normalization is not None:
        return BrainExtraction(Path(normalization.brain_mask), Path(normalization.t1w_brain),
                               "template brain mask via the T1w->MNI affine, N4 inside it "
                               "(synthquant.registration.normalize_to_template)")
    from synthquant.registration import _ants, _read, _write  # noqa: PLC0415 - the one ANTs entry point

    ants = _ants()
    out_dir = Path(out_dir)
    load_image(t1w)  # one-line InputError for a bad file, before ANTs sees it
    head = _read(t1w)
    rough = ants.n4_bias_field_correction(head, shrink_factor=4)
    mask = ants.get_mask(rough, cleanup=2)
    corrected = ants.n4_bias_field_correction(head, mask=mask, shrink_factor=4)
    return BrainExtraction(_write(mask, out_dir / "brain_mask.nii.gz"),
                           _write(corrected * mask, out_dir / "t1w_brain.nii.gz"),
                           "ants.get_mask on the N4-corrected image (intensity threshold at the mean, "
                           "cleanup 2), then N4 inside the mask")


class WMSegmentation(NamedTuple):
    """Boolean masks on the T1w grid, the WM probability, and the filled T1w."""

    wm: np.ndarray              # WM ∪ lesion
    nawm: np.ndarray            # WM - lesion (Wei §3.1 a)
    lesion: np.ndarray          # the lesion mask, within the brain
    wm_probability: np.ndarray  # Atropos posterior of the brightest class
    t1w_filled: np.ndarray      # the T1w that was segmented
    fill_value: float | None    # the intensity written into the lesions (None: no filling)


def fill_lesions(t1w: np.ndarray, brain: np.ndarray, lesion: np.ndarray, *,
                 voxel_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, float]:
    """The T1w with lesion voxels set to the mean of the surrounding normal-appearing WM.

    A first WM estimate, before any segmentation, is the brightest of three Otsu classes
    (Liao's multi-level Otsu) of the brain outside the lesions: enough to pick NAWM intensities
    in the lesion's neighbourhood (within :data:`FILL_SHELL_MM`).
    """
    from skimage.filters import threshold_multiotsu  # noqa: PLC0415

    outside = brain & ~lesion
    thresholds = threshold_multiotsu(t1w[outside], classes=ATROPOS_CLASSES)
    wm_guess = outside & (t1w > thresholds[-1])
    radius = [max(1, round(FILL_SHELL_MM / v)) for v in voxel_mm]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grid, radius)) <= 1.0
    shell = ndimage.binary_dilation(lesion, structure=ball) & wm_guess
    source = shell if shell.sum() >= FILL_MIN_VOXELS else wm_guess
    value = float(t1w[source].mean())
    filled = t1w.copy()
    filled[lesion] = value
    return filled, value


def segment_wm(t1w_brain, brain_mask, lesion_mask=None, *, fill: bool = True) -> WMSegmentation:
    """White matter of a skull-stripped, bias-corrected T1w; lesions filled first.

    Parameters
    ----------
    t1w_brain
        The T1w (path, nibabel image or array), e.g. from :func:`brain_mask_and_n4`.
    brain_mask, lesion_mask
        On the T1w's grid (paths or arrays; values > 0 are in). Put a lesion mask from another
        grid there first with :func:`lesion_mask_on`.
    fill
        Lesion filling (default, Wei §3.1 a). ``False`` only to show what it prevents.

    The filling neighbourhood (:data:`FILL_SHELL_MM`) uses the T1w's voxel size when it is a
    file or image; a bare array is taken as 1 mm voxels.

    Atropos (3 classes, k-means initialisation) segments the filled T1w inside the brain; the
    classes are ordered by their mean T1w intensity (CSF < GM < WM) rather than trusting label
    numbers. Then WM := WM ∪ lesion and NAWM := WM - lesion (Wei §3.1 a: "the NAWM is then
    defined as the WM outside visible lesions").
    """
    from synthquant.registration import _ants, ants_temporary_files  # noqa: PLC0415

    t1w = _array(t1w_brain)
    brain = _array(brain_mask) > 0
    _same_shape(t1w, brain, "brain mask", brain_mask)
    lesion = np.zeros_like(brain)
    if lesion_mask is not None:
        lesion = _array(lesion_mask) > 0
        _same_shape(t1w, lesion, "lesion mask", lesion_mask)
        lesion &= brain
    if not brain.any():
        raise ValueError("the brain mask is empty")
    voxel_mm = voxel_sizes(_image(t1w_brain).affine) if isinstance(
        t1w_brain, (str, Path, nib.spatialimages.SpatialImage)) else (1.0, 1.0, 1.0)

    fill_value = None
    image = t1w
    if fill and lesion.any():
        image, fill_value = fill_lesions(t1w, brain, lesion, voxel_mm=voxel_mm)

    ants = _ants()
    # Voxel units throughout (the MRF radius is in voxels), so the world geometry is not needed.
    with ants_temporary_files():
        result = ants.atropos(a=ants.from_numpy(image.astype(np.float32)),
                              x=ants.from_numpy(brain.astype(np.float32)),
                              i=f"Kmeans[{ATROPOS_CLASSES}]", m=ATROPOS_MRF, c=ATROPOS_CONVERGENCE)
    labels = result["segmentation"].numpy().astype(np.int16)
    class_means = [float(image[labels == k].mean()) if (labels == k).any() else -np.inf
                   for k in range(1, ATROPOS_CLASSES + 1)]
    wm_class = int(np.argmax(class_means))
    wm_probability = result["probabilityimages"][wm_class].numpy().astype(np.float32)
    tissue_wm = (labels == wm_class + 1) & brain
    wm = tissue_wm | lesion
    return WMSegmentation(wm=wm, nawm=wm & ~lesion, lesion=lesion, wm_probability=wm_probability,
                          t1w_filled=image.astype(np.float32), fill_value=fill_value)


def zscore_stats(maps: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
                 brain_masks) -> dict[str, dict[str, float]]:
    """Per-channel mean and SD over the brain voxels of one subject or of a training set.

    Wei §3.1 "Training details": x̄ = (x - mean) / std, "mean and std calculated over all the
    voxels of all the images in each sequence". Over the brain only here: the background's share
    depends on each site's field of view, the brain's does not. Give one ``maps`` dict and one
    mask, or iterables of both (pooled over all their brain voxels). Population SD (ddof 0).
    Returns plain floats, ``{"MTR": {"mean": ..., "sd": ..., "n_voxels": ...}, ...}``, in
    :data:`MR_CHANNELS` order, ready for the model card.
    """
    if isinstance(maps, Mapping):
        maps, brain_masks = [maps], [brain_masks]
    sums = {c: [0.0, 0.0, 0] for c in MR_CHANNELS}
    for subject_maps, mask in zip(maps, brain_masks, strict=True):
        brain = _array(mask) > 0
        for channel in MR_CHANNELS:
            if channel not in subject_maps:
                raise ValueError(f"missing MR channel {channel!r}; need {MR_CHANNELS}")
            data = _array(subject_maps[channel], dtype=np.float64)
            _same_shape(brain, data, f"{channel} map")
            values = data[brain & np.isfinite(data)]
            sums[channel][0] += float(values.sum())
            sums[channel][1] += float((values ** 2).sum())
            sums[channel][2] += int(values.size)
    stats = {}
    for channel, (total, total_sq, count) in sums.items():
        if count == 0:
            raise ValueError(f"no brain voxels to compute {channel} z-score statistics from")
        mean = total / count
        sd = math.sqrt(max(total_sq / count - mean ** 2, 0.0))
        stats[channel] = {"mean": mean, "sd": sd, "n_voxels": count}
    _check_stats(stats)
    return stats


def _check_stats(stats: Mapping) -> None:
    for channel in MR_CHANNELS:
        entry = stats.get(channel)
        if not isinstance(entry, Mapping) or "mean" not in entry or "sd" not in entry:
            raise ValueError(f"z-score statistics lack channel {channel!r} (mean and sd)")
        if not (math.isfinite(entry["mean"]) and math.isfinite(entry["sd"]) and entry["sd"] > 0):
            raise ValueError(f"z-score statistics of {channel} are unusable: {dict(entry)}")


def zscore_maps(maps: Mapping[str, np.ndarray], brain_mask, stats: Mapping | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Z-score the MR channels within the brain (Wei §3.1, "Training details").

    ``maps`` holds at least :data:`MR_CHANNELS` (others, e.g. MD, are ignored). With ``stats``
    (the training set's, from the model card) those are used, so a subject is scaled as the
    network saw its training data; without, the subject's own are computed. Voxels outside the
    brain, and non-finite ones, are 0 (the mean). Returns the z-maps in :data:`MR_CHANNELS`
    order and the statistics used.
    """
    brain = _array(brain_mask) > 0
    if stats is None:
        stats = zscore_stats(maps, brain)
    _check_stats(stats)
    zmaps = {}
    for channel in MR_CHANNELS:
        if channel not in maps:
            raise ValueError(f"missing MR channel {channel!r}; need {MR_CHANNELS}")
        data = _array(maps[channel], dtype=np.float64)
        _same_shape(brain, data, f"{channel} map")
        z = (data - float(stats[channel]["mean"])) / float(stats[channel]["sd"])
        zmaps[channel] = np.where(brain & np.isfinite(z), z, 0.0).astype(np.float32)
    used = {c: {k: (int(stats[c][k]) if k == "n_voxels" else float(stats[c][k]))
                for k in ("mean", "sd", "n_voxels") if k in stats[c]} for c in MR_CHANNELS}
    return zmaps, used


def mr_input_stack(zmaps: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (C, X, Y, Z) network input in :data:`MR_CHANNELS` order (for ``predict_volume``)."""
    return np.stack([np.asarray(zmaps[c], dtype=np.float32) for c in MR_CHANNELS])


def _fov_box(shape, affine) -> np.ndarray:
    """World-space axis-aligned box (2x3: min, max) around a grid's voxel-edge corners."""
    lo, hi = -0.5, np.asarray(shape[:3], float) - 0.5
    corners = np.array([[x, y, z, 1.0] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
    world = (affine @ corners.T).T[:, :3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def _header(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable header is one line
        raise InputError(path, f"not a readable NIfTI image ({err})") from None
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise InputError(path, "image has an invalid (singular or non-finite) affine")
    return tuple(int(s) for s in img.shape[:3]), img.affine


def check_same_subject_grid(mtr_file: str | Path, dwi_file: str | Path, *other_files: str | Path,
                            max_centre_distance_mm: float = MAX_CENTRE_DISTANCE_MM) -> dict[str, float]:
    """Check that the MTR, the DWI (and e.g. the T1w) can be one subject's images of one session.

    Rule, on the headers only (the world frame each image claims): every file's field of view
    (the world box around its voxel grid) must intersect the MTR's, and the centres of the two
    boxes must lie within ``max_centre_distance_mm`` (:data:`MAX_CENTRE_DISTANCE_MM`). Otherwise
    an :class:`InputError` names the offending file in one line. It catches images of another
    session or scanner frame and broken headers; it cannot tell two subjects scanned in the same
    frame apart (the rigid coregistration's residual is the check for that).

    Returns the centre distance (mm) of each other file from the MTR, keyed by file name.
    """
    ref_shape, ref_affine = _header(mtr_file)
    ref_box = _fov_box(ref_shape, ref_affine)
    distances = {}
    for other in (dwi_file, *other_files):
        shape, affine = _header(other)
        box = _fov_box(shape, affine)
        distance = float(np.linalg.norm(box.mean(axis=0) - ref_box.mean(axis=0)))
        overlap = np.minimum(box[1], ref_box[1]) - np.maximum(box[0], ref_box[0])
        if (overlap <= 0).any():
            raise InputError(other, f"field of view does not overlap {Path(mtr_file).name}'s in world space "
                                    f"(centres {distance:.0f} mm apart): not the same subject and session, "
                                    "or a broken header")
        if distance > max_centre_distance_mm:
            raise InputError(other, f"field-of-view centre is {distance:.0f} mm from {Path(mtr_file).name}'s "
                                    f"(limit {max_centre_distance_mm:g} mm): not the same subject and session, "
                                    "or a broken header")
        distances[Path(other).name] = distance
    return distances


def lesion_mask_on(lesion_file: str | Path, reference_img) -> tuple[np.ndarray, str | None]:
    """A lesion mask on the reference image's grid, and a sidecar note (or None).

    Values > 0 are lesion (binary, label or probability masks alike). A mask on another grid is
    resampled nearest-neighbour (it stays a mask, no partial volumes invented); the note says so.
    An empty mask gives an all-zero mask and the note :data:`EMPTY_LESION_NOTE`, never an
    error (a patient may have no visible lesion). A non-empty mask that lands wholly outside
    the reference's field of view is an :class:`InputError` naming the lesion file.
    """
    reference = _image(reference_img)
    ref_shape = reference.shape[:3]
    img = load_image(lesion_file, require_nonzero=False)
    lesion = np.asarray(img.dataobj) > 0
    notes = []
    if not _same_grid(img.shape, img.affine, ref_shape, reference.affine):
        resampled = resample_to_grid(lesion.astype(np.uint8), img.affine, ref_shape, reference.affine, order=0) > 0
        if lesion.any() and not resampled.any():
            raise InputError(lesion_file, "lesion mask lies outside the reference image's field of view "
                                          f"({_grid_text(img.shape, img.affine)} vs "
                                          f"{_grid_text(ref_shape, reference.affine)})")
        notes.append(f"lesion mask resampled (nearest-neighbour) from grid {_grid_text(img.shape, img.affine)} "
                     f"to {_grid_text(ref_shape, reference.affine)}")
        lesion = resampled
    if not lesion.any():
        notes.append(EMPTY_LESION_NOTE)
    return lesion, ("; ".join(notes) or None)


# ------------------------------------------------------------------------------ demyelination

class HCWMNorm(NamedTuple):
    """Voxel-wise HC white-matter DVR norm in template space (NaN where undefined)."""

    mean: np.ndarray
    sd: np.ndarray
    n: np.ndarray  # controls whose WM covers each voxel


def _fwhm_to_sigma_voxels(fwhm_mm: float, affine: np.ndarray) -> list[float]:
    sigma_mm = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return [sigma_mm / v for v in voxel_sizes(affine)]


def _masked_smooth(values: np.ndarray, weights: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Normalised convolution: a weighted Gaussian mean that never draws from weight-0 voxels."""
    num = ndimage.gaussian_filter(np.where(weights > 0, values * weights, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(weights, sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / den, np.nan)


def build_hc_wm_norm(dvr_maps_in_template: Sequence, wm_masks_in_template: Sequence, *,
                     affine: np.ndarray | None = None, smoothing_fwhm_mm: float = HC_NORM_FWHM_MM,
                     min_subjects: int = MIN_HC_SUBJECTS) -> HCWMNorm:
    """Voxel-wise mean and SD of healthy-control WM DVR in template space (Bodini 2016).

    Parameters
    ----------
    dvr_maps_in_template, wm_masks_in_template
        One DVR map and one WM mask (or WM fraction, in at :data:`WM_MASK_THRESHOLD`) per
        control, all on one template grid: paths, nibabel images or arrays.
    affine
        The grid's affine, for the smoothing's voxel size; taken from the first map when it is
        a file or image, else the 2 mm working grid's.
    smoothing_fwhm_mm
        Gaussian FWHM applied to the mean and variance maps (:data:`HC_NORM_FWHM_MM`), 0 for none.
    min_subjects
        Voxels covered by fewer controls' WM have no norm (NaN mean and SD).

    At each voxel, the controls whose WM covers it give a mean and a sample SD (ddof 1). The
    mean and the variance maps are then smoothed by normalised convolution weighted by the
    count, over defined voxels only, so GM and CSF never leak into the norm and the mean is a
    pooled mean, the variance a pooled variance. Returns ``HCWMNorm(mean, sd, n)``.
    """
    if len(dvr_maps_in_template) != len(wm_masks_in_template):
        raise ValueError(f"{len(dvr_maps_in_template)} DVR maps but {len(wm_masks_in_template)} WM masks")
    if not dvr_maps_in_template:
        raise ValueError("no healthy-control DVR maps")
    if min_subjects < 2:
        raise ValueError(f"min_subjects must be at least 2 (an SD needs two values), got {min_subjects}")
    if affine is None:
        first = dvr_maps_in_template[0]
        if isinstance(first, (str, Path, nib.spatialimages.SpatialImage)):
            affine = _image(first).affine
        else:
            from synthquant.atlases import working_grid  # noqa: PLC0415

            affine = working_grid().affine
    total = total_sq = count = None
    for dvr_source, wm_source in zip(dvr_maps_in_template, wm_masks_in_template):
        dvr = _array(dvr_source, dtype=np.float64)
        wm = _array(wm_source) >= WM_MASK_THRESHOLD
        _same_shape(dvr, wm, "WM mask", wm_source)
        if total is None:
            total, total_sq, count = np.zeros(dvr.shape), np.zeros(dvr.shape), np.zeros(dvr.shape, np.int32)
        _same_shape(total, dvr, "DVR map", dvr_source)
        inside = wm & np.isfinite(dvr)
        total[inside] += dvr[inside]
        total_sq[inside] += dvr[inside] ** 2
        count[inside] += 1
    defined = count >= min_subjects
    n = np.maximum(count, 1)
    mean = total / n
    variance = np.where(count > 1, (total_sq - n * mean ** 2) / np.maximum(count - 1, 1), np.nan)
    variance = np.maximum(variance, 0.0)
    weights = np.where(defined, count, 0).astype(np.float64)
    if smoothing_fwhm_mm > 0:
        sigma = _fwhm_to_sigma_voxels(smoothing_fwhm_mm, affine)
        mean = _masked_smooth(mean, weights, sigma)
        variance = _masked_smooth(variance, weights, sigma)
    mean = np.where(defined, mean, np.nan).astype(np.float32)
    sd = np.where(defined, np.sqrt(variance), np.nan).astype(np.float32)
    return HCWMNorm(mean=mean, sd=sd, n=count.astype(np.int16))


def save_hc_wm_norm(norm: HCWMNorm, out_dir: str | Path, *, affine: np.ndarray, source: str,
                    subjects: Sequence[str] = (), smoothing_fwhm_mm: float = HC_NORM_FWHM_MM,
                    min_subjects: int = MIN_HC_SUBJECTS, space: str | None = None) -> Path:
    """Write the norm as three NIfTI maps and a JSON description; returns the JSON path.

    Files: ``hc_wm_norm_src-<source>_{mean,sd,n}.nii.gz`` and ``hc_wm_norm_src-<source>.json``.
    ``source`` is ``pib`` (true DVR of the controls) or ``synth`` (their predicted DVR): a
    patient's predicted DVR is best compared with a norm of predicted DVR, so prediction bias
    cancels; which one was used goes into the patient's sidecar.
    """
    if source not in DVR_SOURCES:
        raise ValueError(f"source must be one of {tuple(DVR_SOURCES)}, got {source!r}")
    from synthquant.atlases import TEMPLATE_SPACE  # noqa: PLC0415

    out_dir = Path(out_dir)
    stem = f"hc_wm_norm_src-{source}"
    files = {}
    for part, data, dtype in (("mean", norm.mean, np.float32), ("sd", norm.sd, np.float32), ("n", norm.n, np.int16)):
        files[part] = save_image(data, affine, out_dir / f"{stem}_{part}.nii.gz", dtype=dtype).name
    description = {
        "Description": "Voxel-wise healthy-control white-matter [11C]PIB DVR norm (Bodini et al. 2016)",
        "Source": source,
        "SourceDescription": DVR_SOURCES[source],
        "Space": space or TEMPLATE_SPACE,
        "NControls": len(subjects) if subjects else int(norm.n.max()),
        "Subjects": list(subjects),
        "SmoothingFWHMmm": float(smoothing_fwhm_mm),
        "Smoothing": "normalised Gaussian convolution of the mean and variance maps over defined voxels",
        "MinSubjects": int(min_subjects),
        "WMMaskThreshold": WM_MASK_THRESHOLD,
        "SD": "sample SD across controls (ddof 1), square root of the smoothed variance",
        "Files": files,
    }
    return atomic_write_text(json.dumps(description, indent=2) + "\n", out_dir / f"{stem}.json")


def load_hc_wm_norm(json_file: str | Path) -> tuple[HCWMNorm, np.ndarray, dict]:
    """Read a norm written by :func:`save_hc_wm_norm`: ``(norm, affine, description)``."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise InputError(json_file, "HC WM norm description not found")
    try:
        description = json.loads(json_file.read_text())
        files = description["Files"]
        source = description["Source"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(json_file, f"not an HC WM norm description ({type(err).__name__}: {err})") from None
    if source not in DVR_SOURCES:
        raise InputError(json_file, f"unknown Source {source!r}; one of {tuple(DVR_SOURCES)}")
    images = {}
    for part in ("mean", "sd", "n"):
        if part not in files:
            raise InputError(json_file, f"Files lacks the {part!r} map")
        images[part] = load_image(json_file.parent / files[part], require_finite=False, require_nonzero=False)
    affine = images["mean"].affine
    for part in ("sd", "n"):
        if not _same_grid(images[part].shape, images[part].affine, images["mean"].shape, affine):
            raise InputError(json_file.parent / files[part], "not on the grid of the norm's mean map")
    norm = HCWMNorm(mean=images["mean"].get_fdata(dtype=np.float32), sd=images["sd"].get_fdata(dtype=np.float32),
                    n=np.asarray(images["n"].dataobj).astype(np.int16))
    return norm, affine, description


def demyelinated_voxels(dvr_template: np.ndarray, lesion_template: np.ndarray, norm_mean: np.ndarray,
                        norm_sd: np.ndarray, *, k: float = DEMYELINATION_K) -> np.ndarray:
    """Lesional voxels whose DVR is below the HC WM norm's mean - k SD (Bodini 2016; Wei §3.5).

    Only where the norm is defined (finite mean and SD): elsewhere a voxel is not classified.
    All arrays on one template grid.
    """
    dvr = np.asarray(dvr_template, dtype=np.float64)
    lesion = np.asarray(lesion_template) > 0
    mean, sd = np.asarray(norm_mean, dtype=np.float64), np.asarray(norm_sd, dtype=np.float64)
    for what, other in (("lesion", lesion), ("norm mean", mean), ("norm SD", sd)):
        _same_shape(dvr, other, what)
    defined = np.isfinite(mean) & np.isfinite(sd) & np.isfinite(dvr)
    with np.errstate(invalid="ignore"):
        return lesion & defined & (dvr < mean - k * sd)


def demyelinated_percent(mask: np.ndarray, lesion: np.ndarray) -> tuple[float, str | None]:
    """Percentage of lesion voxels that are demyelinated (Wei §3.5, "over total lesion load").

    An empty lesion gives 0 % and the note :data:`EMPTY_LESION_NOTE`.
    """
    mask, lesion = np.asarray(mask) > 0, np.asarray(lesion) > 0
    _same_shape(lesion, mask, "demyelinated mask")
    if (mask & ~lesion).any():
        raise ValueError("demyelinated voxels outside the lesion mask")
    n_lesion = int(lesion.sum())
    if n_lesion == 0:
        return 0.0, EMPTY_LESION_NOTE
    return 100.0 * int(mask.sum()) / n_lesion, None


# ----------------------------------------------------------------------------------- tables

def myelin_roi_stats(dvr: np.ndarray, lesion: np.ndarray, nawm: np.ndarray, wm: np.ndarray, *,
                     demyelinated_pct: float | None = None) -> list[dict]:
    """Mean DVR and voxel count in the lesion, NAWM and WM (Wei §3.2, §3.4 ROIs).

    ``demyelinated_pct`` goes on the lesion row only (DESIGN); None leaves it n/a (e.g. a
    control, who has no lesion mask). An empty ROI has n_voxels 0 and mean n/a.
    """
    dvr = np.asarray(dvr, dtype=np.float32)
    rows = []
    for roi, mask in zip(MYELIN_ROIS, (lesion, nawm, wm)):
        mask = np.asarray(mask) > 0
        _same_shape(dvr, mask, f"{roi} mask")
        mean, n = roi_mean(dvr, mask)
        pct = demyelinated_pct if roi == "lesion" and demyelinated_pct is not None else np.nan
        rows.append({"roi": roi, "mean_dvr": mean, "n_voxels": n, "demyelinated_pct": pct})
    return rows


def _text(value) -> str:
    """A table cell: ``n/a`` for None, NaN or empty (BIDS), else the value as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "n/a"):
        return "n/a"
    return str(value)


def _entity(value, prefix: str) -> str:
    value = _text(value)
    return value if value == "n/a" or value.startswith(prefix) else f"{prefix}{value}"


def myelin_table(subjects: Iterable[tuple[Mapping, Sequence[Mapping]]]) -> pd.DataFrame:
    """The ``group/myelin_stats.tsv`` table from per-subject ROI rows.

    Each item is ``(identity, rows)``: ``identity`` holds ``participant_id`` and ``source``
    (``synth`` or ``pib``), and optionally ``session_id``, ``site``, ``group`` (missing: n/a);
    ``rows`` come from :func:`myelin_roi_stats`. Columns are exactly :data:`MYELIN_COLUMNS`,
    sorted by participant, session, source and ROI. Write it with :func:`write_myelin_table`.
    """
    records = []
    for identity, rows in subjects:
        source = identity.get("source")
        if source not in DVR_SOURCES:
            raise ValueError(f"source must be one of {tuple(DVR_SOURCES)}, got {source!r}")
        base = {"participant_id": _entity(identity["participant_id"], "sub-"),
                "session_id": _entity(identity.get("session_id"), "ses-"),
                "site": _text(identity.get("site")), "group": _text(identity.get("group")),
                "source": source}
        for row in rows:
            if row["roi"] not in MYELIN_ROIS:
                raise ValueError(f"roi must be one of {MYELIN_ROIS}, got {row['roi']!r}")
            pct = row.get("demyelinated_pct", np.nan)
            records.append({**base, "roi": row["roi"], "mean_dvr": row["mean_dvr"], "n_voxels": int(row["n_voxels"]),
                            "demyelinated_pct": pct if row["roi"] == "lesion" else np.nan})
    table = pd.DataFrame(records, columns=MYELIN_COLUMNS)
    if table.empty:
        return table
    table["_roi_order"] = table["roi"].map({r: i for i, r in enumerate(MYELIN_ROIS)})
    table = table.sort_values(["participant_id", "session_id", "source", "_roi_order"], kind="stable")
    table = table.drop(columns="_roi_order").reset_index(drop=True)
    table["n_voxels"] = table["n_voxels"].astype(int)
    table["mean_dvr"] = table["mean_dvr"].astype(float)
    table["demyelinated_pct"] = table["demyelinated_pct"].astype(float)
    return table[MYELIN_COLUMNS]


def write_myelin_table(table: pd.DataFrame, group_dir: str | Path) -> Path:
    """Write ``myelin_stats.tsv`` atomically, ``n/a`` for missing values (BIDS)."""
    if list(table.columns) != MYELIN_COLUMNS:
        raise ValueError(f"columns {list(table.columns)} are not {MYELIN_COLUMNS}")
    return atomic_write_text(format_table(table), Path(group_dir) / "myelin_stats.tsv")


# ------------------------------------------------------------------------------- validation

def discrepancy(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Wei 2019 §3.2 (Table 2) myelin content prediction discrepancy of one subject and ROI.

    Wei §3.2: "the mean absolute difference between the mean myelin content of the ground
    truth and that of the prediction PET across subjects and ROIs". Per subject and ROI that is
    |mean_ROI(true DVR) - mean_ROI(predicted DVR)|; Table 2 reports the mean (SD) of it over
    subjects, per ROI (WM of controls, NAWM, lesions): :func:`discrepancy_summary`. It is not
    the voxel-wise mean absolute error: voxel errors of opposite sign cancel within the ROI.
    """
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    _same_shape(truth, pred, "prediction")
    mask = np.asarray(mask) > 0
    _same_shape(truth, mask, "mask")
    if not mask.any():
        raise ValueError("the ROI mask is empty")
    return abs(float(truth[mask].mean()) - float(pred[mask].mean()))


def discrepancy_summary(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1) of per-subject discrepancies: one cell of Wei's Table 2."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no discrepancies to summarise")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice index 2|A∩B| / (|A| + |B|) of two masks (Wei §3.5: true vs predicted demyelination).

    Undefined (NaN) when both are empty: there is no overlap to score; the caller decides
    whether such a subject counts.
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total
