"""Image registration with ANTs (antspyx): the one home for it.

Plain functions, NIfTI paths in and out, written into an output folder the caller names.
antspyx is imported inside each function, after :func:`synthquant.config.apply_threads`
has set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (ITK reads it once, at import).

Reproducibility: antspyx 0.6.3 ignores ``random_seed``, and its linear stages sample the
mutual information at 20 % with random jitter. ANTs itself reads the ``ANTS_RANDOM_SEED``
environment variable, which :func:`synthquant.config.apply_threads` sets from the run's seed:
with one ITK thread two runs are then bit-identical; with more threads, transforms differ by
about 1e-3 mm (thread reduction order), below the 4 decimals of the SUVR tables. (Dense
sampling would also be deterministic, but costs 10x: 51 s instead of 6 s for an affine at 2 mm.)
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synthquant import atlases
from synthquant.image import atomic_output

#: Rigid stages run at 4x and 2x shrink only: PET is smooth (5-8 mm FWHM), so the full
#: resolution adds nothing but time (a 1.5 mm PET frame took 15-20 s per frame with it).
RIGID_SCHEDULE = {"aff_iterations": (200, 100), "aff_shrink_factors": (4, 2), "aff_smoothing_sigmas": (2, 1)}

#: SyN: cross-correlation (radius 2), the usual metric between two T1w images, with
#: iterations per level of shrink 8, 4, 2, 1 for the 1 mm template and 4, 2, 1 for coarser
#: ones (the finest level is left out: the warp is upsampled). Measured on a phantom subject
#: (2 mm template): Mattes MI left the deep grey matter and cingulate 0.08-0.10 SUVR high and
#: the composite +0.054; CC brought them to +0.02, -0.01 and -0.014.
SYN_METRIC, SYN_RADIUS = "CC", 2


def syn_iterations(resolution: float) -> tuple[int, ...]:
    """SyN iterations per level for a template of ``resolution`` mm."""
    return (40, 20, 10, 0) if resolution < 1.5 else (40, 20, 0)


def _ants():
    import ants  # noqa: PLC0415 - heavy import kept out of graph building

    return ants


@contextmanager
def ants_temporary_files(folder: str | Path | None = None):
    """Point Python's temporary files at a scratch folder (inside ``folder``, or the system's
    temporary folder), removed on exit: antspyx's Atropos writes its probability maps through
    ``tempfile`` and never deletes them (hundreds of ``/tmp/antsr*prob0N.nii.gz`` after a day of
    runs), and a node writes only inside its own folder."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ants_") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


def _read(path: str | Path):
    return _ants().image_read(str(path), pixeltype="float")


def _write(img, path: Path) -> Path:
    """Write an ANTsImage atomically."""
    with atomic_output(path) as tmp:
        img.to_file(str(tmp))
    return path


def _no_finer_than(img, resolution_mm: float):
    """The image resampled to ``resolution_mm`` isotropic voxels when its own are finer.

    Registration cost scales with the fixed image's size, while a smooth PET carries nothing
    finer than a few mm: a 2 mm fixed T1w made PET->T1w coregistration 0.95 s instead of 17 s.
    The transforms are physical, so they hold for the full-resolution images.
    """
    if min(img.spacing) >= resolution_mm - 1e-3:
        return img
    return _ants().resample_image(img, (resolution_mm,) * 3, use_voxels=False, interp_type=0)


def rigid_register(fixed: str | Path, moving: str | Path, out_dir: str | Path, *, prefix: str = "rigid_",
                   fixed_resolution: float = 2.0, warped_out: str | Path | None = None) -> Path:
    """Rigid, mutual-information registration of ``moving`` onto ``fixed``.

    Returns the forward transform (an ITK .mat file mapping moving into fixed space), and
    writes the moving image resampled on the fixed grid to ``warped_out`` when given. Used
    for PET->T1w coregistration (Choi & Lee 2018 coregister PET to MR rigidly) and frame
    realignment. The metric is computed on ``fixed`` at no finer than ``fixed_resolution`` mm.
    """
    ants = _ants()
    out_dir = Path(out_dir)
    fixed_img, moving_img = _read(fixed), _read(moving)
    result = ants.registration(
        fixed=_no_finer_than(fixed_img, fixed_resolution), moving=moving_img, type_of_transform="Rigid",
        aff_metric="mattes", outprefix=str(out_dir / prefix), **RIGID_SCHEDULE,
    )
    transform = Path(result["fwdtransforms"][0])
    if warped_out:
        warped = ants.apply_transforms(fixed=fixed_img, moving=moving_img, transformlist=[str(transform)],
                                       interpolator="linear")
        _write(warped, Path(warped_out))
    return transform


@dataclass(frozen=True)
class Normalization:
    """The outputs of T1w -> template normalisation."""

    t1w_brain: Path          # skull-stripped, bias-corrected T1w in native space
    brain_mask: Path         # native-space brain mask
    t1w_template: Path       # the T1w brain resampled into template space
    transforms: list[Path]   # native -> template, in antsApplyTransforms order (warp, affine)
    #: template -> native: (file, invert) pairs in antsApplyTransforms order (affine inverted,
    #: then the inverse warp), for pulling template masks back onto the subject.
    inverse_transforms: tuple[tuple[Path, bool], ...] = ()


def normalize_to_template(t1w: str | Path, out_dir: str | Path, *, resolution: float = 1.0) -> Normalization:
    """Spatially normalise a whole-head T1w (or pseudo-T1w) to MNI152 2009a symmetric.

    1. Affine of the whole head onto the brain-only template at 2 mm, with the
       metric restricted to the template's dilated brain mask, so scalp is pushed out.
    2. The template brain mask, pulled back through that affine and dilated, strips the
       skull; N4 removes the bias field inside it.
    3. Affine of the brain onto the template brain at 2 mm, then SyN (CC) at
       ``resolution`` mm; the transforms returned chain both (warp, then affine).
    """
    ants = _ants()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = _read(t1w)

    # The affine stages always run at 2 mm, whatever the SyN resolution: at 3 mm the head affine
    # of a pseudo-T1w (soft scalp and skull) could slip, e.g. demo sub-04's synthmr composite
    # 1.144 with 3 mm affines against 1.317 with 2 mm ones (mr: 1.366).
    coarse = atlases.WORKING_RESOLUTION
    template_coarse = _read(atlases.template_t1w(coarse))
    mask_coarse = _read(atlases.brain_mask(coarse))
    mask_coarse_dilated = ants.iMath(mask_coarse, "MD", 2)
    initial = ants.registration(
        fixed=template_coarse, moving=head, type_of_transform="Affine",
        aff_metric="mattes", mask=mask_coarse_dilated, outprefix=str(out_dir / "init_"),
    )

    # Skull-strip: template brain mask into native space, dilated 2 voxels to keep the cortex.
    mask_native = ants.apply_transforms(
        fixed=head, moving=_read(atlases.brain_mask(coarse)), transformlist=initial["fwdtransforms"],
        whichtoinvert=[True], interpolator="linear",
    )
    mask_native = ants.iMath(ants.threshold_image(mask_native, 0.5, 2.0), "MD", 2)
    corrected = ants.n4_bias_field_correction(head, mask=mask_native, shrink_factor=4)
    brain = corrected * mask_native

    # Affine of the brain at 2 mm (cheap), then SyN alone at the requested resolution: the
    # affine stage of a combined "SyN" at 1 mm cost 20 s more for the same result.
    brain_affine = ants.registration(
        fixed=template_coarse, moving=brain, type_of_transform="Affine", initial_transform=initial["fwdtransforms"],
        aff_metric="mattes", outprefix=str(out_dir / "affine_"),
    )
    template = _read(atlases.template_t1w(resolution))
    result = ants.registration(
        fixed=template, moving=brain, type_of_transform="SyNOnly", initial_transform=brain_affine["fwdtransforms"],
        syn_metric=SYN_METRIC, syn_sampling=SYN_RADIUS, reg_iterations=syn_iterations(resolution),
        outprefix=str(out_dir / "norm_"),
    )
    return Normalization(
        t1w_brain=_write(brain, out_dir / "t1w_brain.nii.gz"),
        brain_mask=_write(mask_native, out_dir / "brain_mask.nii.gz"),
        t1w_template=_write(result["warpedmovout"], out_dir / "t1w_template.nii.gz"),
        transforms=[Path(p) for p in result["fwdtransforms"]],
        inverse_transforms=_inverse_pairs(result["invtransforms"]),
    )


def _inverse_pairs(invtransforms: list[str]) -> tuple[tuple[Path, bool], ...]:
    """antspyx's ``invtransforms`` with their inversion flags: linear ones (.mat) are inverted
    when applied, warps are already inverse fields (its own ``whichtoinvert`` convention)."""
    return tuple((Path(p), str(p).endswith(".mat")) for p in invtransforms)


def to_template(moving: str | Path, transforms: list[str | Path], out_file: str | Path,
                *, resolution: float = atlases.WORKING_RESOLUTION, interpolation: str = "linear") -> Path:
    """Resample a native image into template space (the template grid at ``resolution`` mm)
    through ``transforms``, given in antsApplyTransforms order (last applied first)."""
    ants = _ants()
    warped = ants.apply_transforms(
        fixed=_read(atlases.template_t1w(resolution)), moving=_read(moving),
        transformlist=[str(t) for t in transforms], interpolator=interpolation,
    )
    return _write(warped, Path(out_file))
