"""The myelin arm's per-subject preprocessing: MR maps, masks and the true DVR on one grid.

Wei et al. (Med Image Anal 2019, §3.1 a) bring every MR map onto the PET for training; at
inference there is no PET, so the maps go onto the MTR instead (DESIGN data flow). Either way
the network sees one "myelin grid": the reference image's axes, :data:`MYELIN_VOXEL_MM`
isotropic voxels (the model card's input grid), cropped to the brain.

Every image is tied to the subject's T1w by one rigid transform (mutual information, ANTs):
the MTR, the DWI's mean b0 and the PIB PET's time-averaged image. The T1w carries the brain
mask, the WM segmentation with lesion filling, the lesion mask (on the T1w grid, DESIGN) and
the normalisation to MNI. A map reaches the myelin grid through "grid -> T1w -> its own
space" in one resampling, so nothing is interpolated twice.

Plain functions, NIfTI paths in and out, used by the Nipype interfaces
(:mod:`synthquant.interfaces.myelin`) and by the training-pair builder
(:func:`training_pairs`) alike.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthquant.errors import InputError
from synthquant.image import atomic_write_text, load_image, save_image, voxel_sizes

#: Voxel size (mm) of the myelin grid, the grid of the dvr_from_mri model (its card's
#: ``input_grid``). Wei used 2 mm PET-space volumes (128x160x128 after padding).
MYELIN_VOXEL_MM = 2.0
#: Margin (mm) around the brain's bounding box: the U-Net sees a little context past the brain.
GRID_MARGIN_MM = 8.0
#: Grid sizes are multiples of 8: the 3-level U-Net halves them three times.
GRID_MULTIPLE = 8
#: Masks are resampled linearly and kept where >= 0.5 (at least half the voxel is in): on a
#: grid coarser than the T1w's this is the mask's partial volume, where nearest-neighbour would
#: pick one sub-voxel at random.
MASK_THRESHOLD = 0.5

#: Fewest voxels of an eroded cerebellar-GM reference region (else the uneroded one is used).
MIN_REFERENCE_VOXELS = 50
#: The names of the MR maps on the grid, in the network's channel order (Wei §3.1 a).
MR_MAPS = ("MTR", "FA", "RD", "AD")
#: Masks carried onto the grid.
MASKS = ("brain", "wm", "nawm", "lesion")


# ---------------------------------------------------------------------------------- MR maps

def mtr_map(mtr: str | Path | None, mt_on: str | Path | None, mt_off: str | Path | None,
            out_dir: str | Path) -> Path:
    """The MTR map (percent): the dataset's MTRmap, or 100 (MT-off - MT-on) / MT-off."""
    if mtr is not None:
        load_image(mtr)  # one line for a corrupt file
        return Path(mtr)
    if mt_on is None or mt_off is None:
        raise InputError(mt_on or mt_off, "an MT pair needs both the MT-on and the MT-off image")
    from synthquant.diffusion import write_mtr  # noqa: PLC0415

    return write_mtr(mt_on, mt_off, Path(out_dir) / "mtr.nii.gz")


def dti_maps(dwi: str | Path, bval: str | Path, bvec: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """FA, RD, AD (and MD) by a dipy tensor fit inside a b0 brain mask, plus the mean b0.

    The mask is dipy's ``median_otsu`` of the mean b0 (Garyfallidis et al. 2014), dilated two
    voxels: a fit outside the head is wasted time, and a fit in noise gives meaningless FA.
    Returns paths keyed ``FA``, ``RD``, ``AD``, ``MD``, ``b0``, ``mask``.
    """
    from dipy.segment.mask import median_otsu  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    from synthquant.diffusion import B0_THRESHOLD, fit_tensor, read_gradients, write_tensor_maps  # noqa: PLC0415

    out_dir = Path(out_dir)
    image = load_image(dwi, ndim=(4,))
    bvals, _ = read_gradients(bval, bvec, image.shape[3])
    data = np.asarray(image.dataobj, dtype=np.float32)
    b0 = data[..., bvals <= B0_THRESHOLD].mean(axis=3)
    _, mask = median_otsu(b0, median_radius=2, numpass=2)
    mask = ndimage.binary_dilation(mask, iterations=2)
    maps = fit_tensor(dwi, bval, bvec, mask)
    paths = write_tensor_maps(maps, out_dir, "dti")
    paths["b0"] = save_image(b0, image.affine, out_dir / "b0_mean.nii.gz")
    paths["mask"] = save_image(mask.astype(np.uint8), image.affine, out_dir / "b0_mask.nii.gz", dtype=np.uint8)
    return paths


def pet_mean(pet_4d: str | Path, sidecar: str | Path | dict, out_file: str | Path) -> Path:
    """The frame-duration-weighted mean of a dynamic PET: the image its coregistration uses
    (it has the anatomy of both the early, flow-like and the late, binding frames)."""
    from synthquant.pet import read_sidecar  # noqa: PLC0415

    image = load_image(pet_4d, ndim=(4,))
    meta = sidecar if isinstance(sidecar, dict) else read_sidecar(sidecar)
    durations = np.asarray(meta.get("FrameDuration", [1.0] * image.shape[3]), dtype=np.float64)
    if durations.size != image.shape[3]:
        raise InputError(pet_4d, f"{image.shape[3]} frames but {durations.size} FrameDuration entries in the sidecar")
    data = np.asarray(image.dataobj, dtype=np.float32)
    mean = np.tensordot(data, durations / durations.sum(), axes=([3], [0])).astype(np.float32)
    return save_image(mean, image.affine, out_file)


# ------------------------------------------------------------------------------- the grid

def myelin_grid(reference: str | Path, brain_mask_t1w: str | Path, reference_to_t1w: str | Path,
                out_file: str | Path, *, voxel_mm: float = MYELIN_VOXEL_MM,
                margin_mm: float = GRID_MARGIN_MM) -> Path:
    """An empty image defining the myelin grid: ``reference``'s axes, ``voxel_mm`` voxels,
    covering the brain (the T1w brain mask brought onto the reference) plus ``margin_mm``.

    ``reference_to_t1w`` is the rigid transform of :func:`synthquant.registration.rigid_register`
    with the T1w fixed and the reference moving.
    """
    ref = load_image(reference, ndim=(3, 4))
    brain = resample_onto(brain_mask_t1w, reference, [(reference_to_t1w, True)], interpolation="linear")
    inside = np.argwhere(np.asarray(brain) >= MASK_THRESHOLD)
    if inside.size == 0:
        raise InputError(reference, "the T1w brain does not overlap this image after coregistration")
    ref_voxels = np.asarray(voxel_sizes(ref.affine))
    lo = inside.min(axis=0) * ref_voxels - margin_mm   # mm along the reference's own axes
    hi = inside.max(axis=0) * ref_voxels + margin_mm
    shape = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    shape = (np.ceil(shape / GRID_MULTIPLE) * GRID_MULTIPLE).astype(int)
    centre = (lo + hi) / 2.0
    start = centre - (shape - 1) * voxel_mm / 2.0
    directions = ref.affine[:3, :3] / ref_voxels
    affine = np.eye(4)
    affine[:3, :3] = directions * voxel_mm
    affine[:3, 3] = ref.affine[:3, 3] + directions @ start
    return save_image(np.zeros(tuple(shape), np.uint8), affine, out_file, dtype=np.uint8)


def resample_onto(moving: str | Path, grid: str | Path, transforms: Sequence[tuple[str | Path, bool]], *,
                  interpolation: str = "linear", out_file: str | Path | None = None):
    """``moving`` resampled onto ``grid`` through rigid/affine/warp ``transforms``.

    ``transforms`` are (file, invert) pairs in the order a *point of the grid* goes through
    them to reach the moving image's space (antsApplyTransforms' list order). Returns the array,
    or writes ``out_file`` (float32) and returns its path.
    """
    from synthquant.registration import _ants, _read, _write  # noqa: PLC0415 - the one ANTs entry point

    ants = _ants()
    warped = ants.apply_transforms(fixed=_read(grid), moving=_read(moving),
                                   transformlist=[str(t) for t, _ in transforms],
                                   whichtoinvert=[bool(inv) for _, inv in transforms],
                                   interpolator=interpolation)
    if out_file is None:
        return warped.numpy()
    return _write(warped, Path(out_file))


def _grid_image(grid: str | Path) -> nib.Nifti1Image:
    return load_image(grid, require_nonzero=False)


def maps_on_grid(grid: str | Path, grid_to_t1w: str | Path, out_dir: str | Path, *,
                 mtr: str | Path, mtr_to_t1w: str | Path,
                 dti: dict[str, str | Path], dwi_to_t1w: str | Path,
                 masks_t1w: dict[str, str | Path]) -> dict[str, Path]:
    """The MR maps and the T1w masks on the myelin grid, each resampled once.

    ``grid_to_t1w`` is the rigid transform of the grid's reference image (MTR or PIB) onto the
    T1w; a point of the grid reaches the T1w by its inverse, then a map's own space by that
    map's transform. Masks (``brain``, ``wm``, ``nawm``, ``lesion`` on the T1w grid) are
    resampled linearly and kept where >= :data:`MASK_THRESHOLD`; WM and NAWM stay inside the
    brain, NAWM outside the lesion.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_img = _grid_image(grid)
    to_t1w = (grid_to_t1w, True)
    paths = {"MTR": resample_onto(mtr, grid, [to_t1w, (mtr_to_t1w, False)], out_file=out_dir / "MTR.nii.gz")}
    for name in ("FA", "RD", "AD"):
        paths[name] = resample_onto(dti[name], grid, [to_t1w, (dwi_to_t1w, False)], out_file=out_dir / f"{name}.nii.gz")
    masks = {name: resample_onto(masks_t1w[name], grid, [to_t1w]) >= MASK_THRESHOLD for name in MASKS}
    masks["lesion"] &= masks["brain"]
    masks["wm"] = (masks["wm"] | masks["lesion"]) & masks["brain"]
    masks["nawm"] = masks["wm"] & ~masks["lesion"]
    for name, mask in masks.items():
        paths[name] = save_image(mask.astype(np.uint8), grid_img.affine, out_dir / f"{name}_mask.nii.gz",
                                 dtype=np.uint8)
    return paths


# ---------------------------------------------------------------------------------- T1w masks

def t1w_masks(t1w_brain: str | Path, brain_mask: str | Path, lesion: str | Path | None,
              template_inverse: Sequence[tuple[str | Path, bool]], out_dir: str | Path
              ) -> tuple[dict[str, Path], list[str]]:
    """Brain, WM (lesions included), NAWM and lesion masks on the T1w grid, and sidecar notes.

    The brain is the template's brain mask pulled back through the T1w's inverse normalisation
    (``template_inverse``), within ``brain_mask``: the skull-strip of the normalisation is
    dilated on purpose (it must not cut cortex before registration) and leaves scalp fat,
    which is as bright as WM on a T1w and would join the WM class (measured on a phantom
    patient: 958 mL of "WM" in the dilated mask). The lesion mask (DESIGN: on the T1w grid;
    another grid is resampled nearest-neighbour and noted; an empty one gives a note) goes
    through :func:`synthquant.myelin.lesion_mask_on`, the WM through
    :func:`synthquant.myelin.segment_wm` with lesion filling (Wei §3.1 a).
    """
    from synthquant.atlases import WORKING_RESOLUTION  # noqa: PLC0415
    from synthquant.atlases import brain_mask as template_brain_mask  # noqa: PLC0415
    from synthquant.myelin import lesion_mask_on, segment_wm  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = load_image(t1w_brain)
    notes = []
    brain = resample_onto(template_brain_mask(WORKING_RESOLUTION), t1w_brain, template_inverse) >= MASK_THRESHOLD
    brain &= np.asarray(load_image(brain_mask).dataobj) > 0
    if lesion is not None:
        lesion_array, note = lesion_mask_on(lesion, reference)
        if note:
            notes.append(note)
    else:
        lesion_array = np.zeros(reference.shape[:3], bool)
    segmentation = segment_wm(t1w_brain, brain, lesion_array)
    if segmentation.fill_value is not None:
        notes.append(f"T1w lesions filled with the surrounding NAWM intensity ({segmentation.fill_value:.4g}) "
                     "before WM segmentation")
    paths = {"brain": save_image(brain.astype(np.uint8), reference.affine, out_dir / "t1w_brain_mask.nii.gz",
                                 dtype=np.uint8)}
    for name in ("wm", "nawm", "lesion"):
        paths[name] = save_image(getattr(segmentation, name).astype(np.uint8), reference.affine,
                                 out_dir / f"t1w_{name}_mask.nii.gz", dtype=np.uint8)
    return paths, notes


# ---------------------------------------------------------------------------------- true DVR

def pib_dvr(pib: str | Path, sidecar: str | Path, pib_to_t1w: str | Path, template_to_t1w: Sequence[tuple[str, bool]],
            brain_mask_t1w: str | Path, out_dir: str | Path, *, t_star_min: float | None = None) -> dict:
    """Voxel-wise Logan reference DVR of the dynamic PIB PET on its own grid (the true DVR).

    The reference region is the template's cerebellar grey matter (AAL2 cerebellum within the
    GM prior, :func:`synthquant.atlases.region_masks`), pulled back onto the PET through the
    T1w's inverse normalisation (``template_to_t1w``: (file, invert) pairs taking a T1w point
    to the template) and the PET->T1w rigid transform. The fit runs inside the T1w brain mask
    brought onto the PET. See :func:`synthquant.kinetics.logan_dvr_image` for t*.
    """
    from synthquant.atlases import REFERENCE_REGION, region_masks, working_grid  # noqa: PLC0415
    from synthquant.kinetics import T_STAR_MIN, logan_dvr_image  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = working_grid()
    reference_template = save_image(region_masks(grid)[REFERENCE_REGION].astype(np.float32), grid.affine,
                                    out_dir / "reference_template.nii.gz")
    mean_pet = pet_mean(pib, sidecar, out_dir / "pib_mean.nii.gz")
    to_t1w = (pib_to_t1w, True)
    reference = resample_onto(reference_template, mean_pet, [to_t1w, *template_to_t1w]) >= MASK_THRESHOLD
    # The PET's resolution mixes CSF (and WM) into the edge of the thin cerebellar cortex, which
    # lowers the reference TAC and raises every DVR. One PET voxel of erosion removes that edge:
    # median DVR / truth on phantom patients went 1.035 -> 1.000 (demo preset, 2.6 mm PET) and
    # 1.098 -> 1.040 (test preset, ~5 mm PET). A region too small to erode is kept whole.
    eroded = ndimage.binary_erosion(reference)
    if eroded.sum() >= MIN_REFERENCE_VOXELS:
        reference = eroded
    brain = resample_onto(brain_mask_t1w, mean_pet, [to_t1w]) >= MASK_THRESHOLD
    pet_affine = load_image(mean_pet).affine
    reference_file = save_image(reference.astype(np.uint8), pet_affine, out_dir / "reference_mask.nii.gz",
                                dtype=np.uint8)
    if not reference.any():
        raise InputError(pib, "the cerebellar grey-matter reference region is not in the PET's field of view")
    fit = logan_dvr_image(pib, sidecar, reference_file, out_dir / "pib_dvr.nii.gz",
                          t_star_min=T_STAR_MIN if t_star_min is None else t_star_min, brain_mask=brain)
    return {**fit, "reference_mask": str(reference_file), "mean_pet": str(mean_pet)}


# ------------------------------------------------------------------------------ training pairs

#: SyN resolution (mm) when preparing training pairs: there the normalisation only pulls the
#: template's cerebellar reference and brain mask back onto the subject (eroded and
#: thresholded), which 3 mm does as well as 1 mm at a fraction of the time.
TRAINING_TEMPLATE_RESOLUTION = 3.0

def prepare_training_subject(inputs, out_dir: str | Path, *,
                             template_resolution: float = TRAINING_TEMPLATE_RESOLUTION,
                             voxel_mm: float = MYELIN_VOXEL_MM) -> dict[str, Path]:
    """Every step above for one subject with a dynamic PIB PET, onto the PIB's myelin grid.

    Returns the grid's files (``MTR``, ``FA``, ``RD``, ``AD``, the masks and ``dvr``). A
    ``done.json`` in ``out_dir`` caches them with the settings: a second call with the same
    settings reads it and recomputes nothing.
    """
    from synthquant.registration import normalize_to_template, rigid_register  # noqa: PLC0415

    out_dir = Path(out_dir)
    done = out_dir / "done.json"
    settings = {"template_resolution": float(template_resolution), "voxel_mm": float(voxel_mm)}
    if done.is_file():
        record = json.loads(done.read_text())
        cached = {k: out_dir / v for k, v in record.get("files", {}).items()}
        if record.get("settings") == settings and cached and all(p.is_file() for p in cached.values()):
            return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    if inputs.pib is None:
        raise InputError(inputs.t1w, "no dynamic [11C]PIB PET: a training subject needs the true DVR")
    norm = normalize_to_template(inputs.t1w, out_dir / "normalize", resolution=template_resolution)
    masks, _ = t1w_masks(norm.t1w_brain, norm.brain_mask, inputs.lesion, norm.inverse_transforms, out_dir / "masks")
    mtr = mtr_map(inputs.mtr, inputs.mt_on, inputs.mt_off, out_dir)
    dti = dti_maps(inputs.dwi, inputs.bval, inputs.bvec, out_dir / "dti")
    mtr_to_t1w = rigid_register(inputs.t1w, mtr, out_dir, prefix="mtr_")
    dwi_to_t1w = rigid_register(inputs.t1w, dti["b0"], out_dir, prefix="dwi_")
    mean_pet = pet_mean(inputs.pib, inputs.pib_sidecar, out_dir / "pib_mean.nii.gz")
    pib_to_t1w = rigid_register(norm.t1w_brain, mean_pet, out_dir, prefix="pib_")
    dvr = pib_dvr(inputs.pib, inputs.pib_sidecar, pib_to_t1w, [(t, inv) for t, inv in norm.inverse_transforms],
                  norm.brain_mask, out_dir / "dvr")
    grid = myelin_grid(mean_pet, norm.brain_mask, pib_to_t1w, out_dir / "grid.nii.gz", voxel_mm=voxel_mm)
    paths = maps_on_grid(grid, pib_to_t1w, out_dir / "grid", mtr=mtr, mtr_to_t1w=mtr_to_t1w, dti=dti,
                         dwi_to_t1w=dwi_to_t1w, masks_t1w=masks)
    # The true DVR is on the PET's own grid: the myelin grid shares its axes, so only the voxel
    # size changes (no transform).
    paths["dvr"] = _resample_same_space(dvr["dvr"], grid, out_dir / "grid" / "dvr.nii.gz")
    # Paths relative to out_dir, so a moved work dir keeps its cache.
    atomic_write_text(json.dumps({"settings": settings,
                                  "files": {k: str(Path(v).relative_to(out_dir)) for k, v in paths.items()}},
                                 indent=2), done)
    return paths


def _resample_same_space(moving: str | Path, grid: str | Path, out_file: Path) -> Path:
    """Linear resampling between two grids of one world frame (no transform)."""
    from synthquant.image import resample_to_grid  # noqa: PLC0415

    source = load_image(moving, require_nonzero=False)
    target = _grid_image(grid)
    data = resample_to_grid(source.get_fdata(dtype=np.float32), source.affine, target.shape[:3], target.affine,
                            order=1)
    return save_image(data.astype(np.float32), target.affine, out_file)


def load_pair(inputs, paths: dict[str, Path]):
    """A :class:`synthquant.myelin.MyelinPair` from :func:`prepare_training_subject`'s files."""
    from synthquant.myelin import MyelinPair  # noqa: PLC0415

    def array(name, dtype=np.float32):
        return np.asarray(nib.load(str(paths[name])).dataobj).astype(dtype)

    mr = np.stack([array(name) for name in MR_MAPS])
    affine = nib.load(str(paths["MTR"])).affine
    return MyelinPair(key=inputs.key, site=inputs.site, group=inputs.group, mr=mr, dvr=array("dvr"),
                      brain=array("brain", bool), lesion=array("lesion", bool), nawm=array("nawm", bool),
                      wm=array("wm", bool), affine=affine)


def training_pairs(bids_dir: str | Path, work_dir: str | Path, *, participant_labels: Sequence[str] = (),
                   lesion_dir: str | Path | None = None, omp_nthreads: int = 1,
                   voxel_mm: float = MYELIN_VOXEL_MM, template_resolution: float = TRAINING_TEMPLATE_RESOLUTION,
                   progress: bool = True) -> tuple[list, dict[str, str]]:
    """Training pairs of every subject with MTR, DWI, T1w and a dynamic PIB PET.

    Each subject is prepared once (cached under ``work_dir/<key>``). A subject that fails
    (bad input) is refused with one line and the others go on. Returns ``(pairs, refused)``.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from synthquant.bids import discover_myelin  # noqa: PLC0415
    from synthquant.config import apply_threads  # noqa: PLC0415

    apply_threads(omp_nthreads)
    found = discover_myelin(Path(bids_dir), tuple(participant_labels), lesion_dir=lesion_dir)
    refused = dict(found.refused)
    candidates = []
    for inputs in found.myelin:
        if inputs.pib is None:
            refused[inputs.key] = "no dynamic [11C]PIB PET (trc-PIB): no true DVR to train on"
        else:
            candidates.append(inputs)
    pairs = []
    for inputs in tqdm(candidates, desc="preparing training subjects", unit="subject", disable=not progress,
                       file=sys.stderr):
        try:
            paths = prepare_training_subject(inputs, Path(work_dir) / inputs.key,
                                             template_resolution=template_resolution, voxel_mm=voxel_mm)
        except InputError as err:
            refused[inputs.key] = str(err)
            continue
        pairs.append(load_pair(inputs, paths))
    return pairs, refused


def grid_summary(grid: str | Path) -> str:
    image = _grid_image(grid)
    return f"{'x'.join(str(s) for s in image.shape[:3])} voxels of {math.prod(voxel_sizes(image.affine)) ** (1/3):.3g} mm"


# ------------------------------------------------------------------ template space, demyelination

def grid_to_template(grid_file: str | Path, grid_to_t1w: str | Path, t1w_to_template: Sequence[str | Path],
                     out_file: str | Path, *, interpolation: str = "linear") -> Path:
    """A map of the myelin grid in template space (the 2 mm working grid).

    A template point goes through the T1w's normalisation (warp, affine) to the T1w, then
    through the grid reference's rigid transform to the grid.
    """
    from synthquant.atlases import WORKING_RESOLUTION, template_t1w  # noqa: PLC0415

    transforms = [(t, False) for t in t1w_to_template] + [(grid_to_t1w, False)]
    return resample_onto(grid_file, template_t1w(WORKING_RESOLUTION), transforms, interpolation=interpolation,
                         out_file=out_file)


def template_to_grid(template_file: str | Path, grid: str | Path, grid_to_t1w: str | Path,
                     template_inverse: Sequence[tuple[str | Path, bool]], out_file: str | Path | None = None):
    """A template-space map pulled back onto the myelin grid (linear)."""
    return resample_onto(template_file, grid, [(grid_to_t1w, True), *template_inverse], out_file=out_file)


def quantify_dvr(dvr: str | Path, masks: dict[str, str | Path], grid_to_t1w: str | Path,
                 t1w_to_template: Sequence[str | Path], template_inverse: Sequence[tuple[str | Path, bool]],
                 out_dir: str | Path, *, norm_json: str | Path | None = None, k: float | None = None,
                 lesion_mask_given: bool = True) -> dict:
    """ROI means, template-space maps and demyelinated voxels of one DVR map (true or predicted).

    1. Mean DVR in the lesion, NAWM and WM masks of the myelin grid (Wei §3.2).
    2. The DVR, the lesion mask and the WM fraction in template space (the WM of controls
       builds the HC norm at the group level).
    3. With an HC WM norm (``norm_json``, :func:`synthquant.myelin.save_hc_wm_norm`): lesional
       template voxels with DVR < mean - k SD are demyelinated (Bodini 2016); the mask is
       pulled back onto the grid as well, and the percentage of lesion voxels goes on the
       lesion row. Without a norm the percentage is n/a and a note says how to get one.

    ``lesion_mask_given`` is False for a subject without a lesion mask (a control): its lesion
    row stays n/a. A patient whose mask is empty gets 0 % and a note (not an error).

    Returns ``{"rows", "dvr_template", "lesion_template", "wm_template", "demyelinated_template",
    "demyelinated", "demyelinated_pct", "notes"}`` (the two masks are None without a norm).
    """
    from synthquant.myelin import (  # noqa: PLC0415
        DEMYELINATION_K,
        demyelinated_percent,
        demyelinated_voxels,
        load_hc_wm_norm,
        myelin_roi_stats,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = DEMYELINATION_K if k is None else float(k)
    arrays = {name: np.asarray(nib.load(str(masks[name])).dataobj) > 0 for name in ("lesion", "nawm", "wm")}
    grid_img = load_image(dvr, require_nonzero=False)
    dvr_grid = grid_img.get_fdata(dtype=np.float32)
    notes = []
    dvr_template = grid_to_template(dvr, grid_to_t1w, t1w_to_template, out_dir / "dvr_template.nii.gz")
    lesion_template = grid_to_template(masks["lesion"], grid_to_t1w, t1w_to_template,
                                       out_dir / "lesion_template.nii.gz")
    wm_template = grid_to_template(masks["wm"], grid_to_t1w, t1w_to_template, out_dir / "wm_template.nii.gz")
    result = {"dvr_template": dvr_template, "lesion_template": lesion_template, "wm_template": wm_template,
              "demyelinated_template": None, "demyelinated": None, "demyelinated_pct": None}
    if norm_json is not None and lesion_mask_given:
        norm, norm_affine, description = load_hc_wm_norm(norm_json)
        template_img = nib.load(str(dvr_template))
        if norm.mean.shape != template_img.shape[:3] or not np.allclose(norm_affine, template_img.affine, atol=1e-3):
            raise InputError(norm_json, "HC WM norm is not on the 2 mm template grid of this run")
        lesion_tpl = np.asarray(nib.load(str(lesion_template)).dataobj) >= MASK_THRESHOLD
        mask_tpl = demyelinated_voxels(template_img.get_fdata(dtype=np.float32), lesion_tpl, norm.mean, norm.sd, k=k)
        pct, note = demyelinated_percent(mask_tpl, lesion_tpl)  # an empty lesion mask: 0 % and a note
        if note:
            notes.append(note)
        result["demyelinated_template"] = save_image(mask_tpl.astype(np.uint8), template_img.affine,
                                                     out_dir / "demyelinated_template.nii.gz", dtype=np.uint8)
        native = template_to_grid(result["demyelinated_template"], dvr, grid_to_t1w, template_inverse)
        result["demyelinated"] = save_image(((native >= MASK_THRESHOLD) & arrays["lesion"]).astype(np.uint8),
                                            grid_img.affine, out_dir / "demyelinated.nii.gz", dtype=np.uint8)
        result["demyelinated_pct"] = pct
        notes.append(f"demyelinated: lesion voxels with DVR < HC WM mean - {k:g} SD in template space "
                     f"(Bodini 2016); norm from {description.get('NControls', '?')} controls' "
                     f"{description['Source']} DVR ({Path(norm_json).name})")
    elif lesion_mask_given:
        notes.append("no healthy-control WM norm yet: demyelinated_pct is n/a; run the group level, then the "
                     "participant level again (or pass --hc-norm DIR)")
    result["rows"] = myelin_roi_stats(dvr_grid, arrays["lesion"], arrays["nawm"], arrays["wm"],
                                      demyelinated_pct=result["demyelinated_pct"])
    result["notes"] = notes
    return result
