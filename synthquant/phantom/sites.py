"""Acquisition sites and size presets of the phantom cohorts.

A site is a pair of scanners (MR and PET) with fixed protocols: voxel size, field of view,
data orientation and obliquity, T1w contrast, PET resolution and noise. Sites differ in all of
these on purpose (DESIGN, "Phantom cohorts"), so that a pipeline must read orientation from
the affine and cope with harmonisation. Presets shrink every voxel by one factor per modality
and keep each field of view, so orientation and site differences survive at every size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from synthquant.errors import InputError

#: World direction of each nibabel axis code (RAS+ world, as NIfTI affines are).
AXIS_DIRECTIONS = {
    "R": (1, 0, 0), "L": (-1, 0, 0),
    "A": (0, 1, 0), "P": (0, -1, 0),
    "S": (0, 0, 1), "I": (0, 0, -1),
}


@dataclass(frozen=True)
class ImageSpec:
    """Geometry of one acquisition, at benchmark (realistic) size.

    Parameters
    ----------
    voxel_mm
        Voxel edge lengths along the data axes.
    axcodes
        The world direction each data axis points to (nibabel ``aff2axcodes`` letters), so
        ``("P", "I", "R")`` is a sagittal volume stored posterior-first.
    fov_mm
        Field of view along the data axes; the matrix is ``round(fov / voxel)``.
    oblique_deg
        Rotation of the slab about the world x, y, z axes (degrees): a tilted acquisition.
    center_offset_mm
        Where the centre of the field of view sits relative to the head centre (world mm).
    """

    voxel_mm: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    fov_mm: tuple[float, float, float]
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    center_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class T1wProtocol:
    """An MPRAGE/SPGR-like T1w protocol and the contrast it gives.

    ``contrast`` gives each tissue's signal relative to white matter; ``gain`` is the
    scanner's arbitrary intensity scale, ``noise`` the Gaussian sigma of each receive channel
    as a fraction of the WM signal (magnitude images are Rician), and ``bias`` the largest
    fractional deviation of the receive-coil bias field.
    """

    image: ImageSpec
    field_strength_t: float
    model: str
    sequence: str
    repetition_time_s: float
    echo_time_s: float
    inversion_time_s: float | None
    flip_angle_deg: float
    contrast: dict[str, float]
    gain: float = 1000.0
    noise: float = 0.03
    bias: float = 0.15


@dataclass(frozen=True)
class PetProtocol:
    """A static-window PET protocol and the image quality it gives.

    ``fwhm_mm`` is the system-plus-filter resolution along world x, y, z (transaxial,
    transaxial, axial); ``noise_cov`` is the voxel coefficient of variation of one 5-minute
    frame at the cerebellar-GM level (count-statistics scaling elsewhere).
    """

    image: ImageSpec
    model: str
    fwhm_mm: tuple[float, float, float]
    noise_cov: float
    recon_method: str
    recon_labels: tuple[str, ...]
    recon_units: tuple[str, ...]
    recon_values: tuple[float, ...]
    recon_filter: str
    recon_filter_mm: float
    attenuation_correction: str


@dataclass(frozen=True)
class Site:
    """One acquisition site: its label (participants.tsv ``site`` and the sidecars'
    InstitutionName), its scanners' manufacturer and its protocols."""

    name: str
    manufacturer: str
    t1w: T1wProtocol
    pet: PetProtocol


# T1w tissue signal relative to WM (Wansapura 1999 T1 values through an MPRAGE signal
# equation give GM/WM ~0.6-0.7 and CSF/WM ~0.2 at 3 T; lower contrast at 1.5 T). Outside
# the brain: dark cortical bone, bright scalp fat, mid-grey skin and muscle.
_CONTRAST_3T = {"wm": 1.0, "gm": 0.62, "csf": 0.16, "extra_csf": 0.16, "skull": 0.07,
                "fat": 1.2, "skin": 0.55}
_CONTRAST_15T = {"wm": 1.0, "gm": 0.70, "csf": 0.24, "extra_csf": 0.24, "skull": 0.09,
                 "fat": 1.1, "skin": 0.6}

SITES: dict[str, Site] = {
    # 3 T sagittal MPRAGE stored posterior-first (PIR), 1 x 1 x 1.2 mm; digital-ish PET.
    "northfield": Site(
        name="northfield", manufacturer="Siemens",
        t1w=T1wProtocol(
            image=ImageSpec((1.0, 1.0, 1.2), ("P", "I", "R"), (256.0, 256.0, 192.0),
                            center_offset_mm=(0.0, 0.0, -10.0)),
            field_strength_t=3.0, model="Prisma", sequence="MPRAGE",
            repetition_time_s=2.3, echo_time_s=0.00298, inversion_time_s=0.9,
            flip_angle_deg=9.0, contrast=_CONTRAST_3T, gain=900.0, noise=0.025, bias=0.15),
        pet=PetProtocol(
            image=ImageSpec((2.0, 2.0, 2.0), ("L", "A", "S"), (256.0, 256.0, 220.0)),
            model="Biograph mCT", fwhm_mm=(6.0, 6.0, 6.5), noise_cov=0.06,
            recon_method="OSEM3D+TOF", recon_labels=("subsets", "iterations"),
            recon_units=("none", "none"), recon_values=(21, 2), recon_filter="Gaussian",
            recon_filter_mm=3.0, attenuation_correction="CT-based"),
    ),
    # 1.5 T axial SPGR stored LPS (DICOM order), tilted ~6 degrees (AC-PC-ish); an older PET
    # with coarse slices and the poorest resolution.
    "lakeside": Site(
        name="lakeside", manufacturer="GE",
        t1w=T1wProtocol(
            image=ImageSpec((0.94, 0.94, 1.1), ("L", "P", "S"), (240.0, 240.0, 176.0),
                            oblique_deg=(6.0, 0.0, 2.0), center_offset_mm=(0.0, -5.0, 0.0)),
            field_strength_t=1.5, model="Signa HDxt", sequence="SPGR",
            repetition_time_s=0.0123, echo_time_s=0.0052, inversion_time_s=None,
            flip_angle_deg=20.0, contrast=_CONTRAST_15T, gain=600.0, noise=0.035, bias=0.15),
        pet=PetProtocol(
            image=ImageSpec((2.57, 2.57, 3.27), ("L", "P", "S"), (329.0, 329.0, 173.0)),
            model="Discovery 690", fwhm_mm=(8.0, 8.0, 8.5), noise_cov=0.08,
            recon_method="OSEM3D", recon_labels=("subsets", "iterations"),
            recon_units=("none", "none"), recon_values=(16, 4), recon_filter="Gaussian",
            recon_filter_mm=5.0, attenuation_correction="CT-based"),
    ),
    # 3 T coronal TFE stored LIA, thick slices; high-resolution digital PET.
    "hillcrest": Site(
        name="hillcrest", manufacturer="Philips",
        t1w=T1wProtocol(
            image=ImageSpec((0.86, 0.86, 1.5), ("L", "I", "A"), (220.0, 220.0, 216.0),
                            oblique_deg=(0.0, 0.0, -3.0), center_offset_mm=(0.0, -3.0, -8.0)),
            field_strength_t=3.0, model="Achieva", sequence="TFE",
            repetition_time_s=0.0081, echo_time_s=0.0037, inversion_time_s=1.0,
            flip_angle_deg=8.0, contrast=_CONTRAST_3T, gain=1400.0, noise=0.03, bias=0.15),
        pet=PetProtocol(
            image=ImageSpec((1.5, 1.5, 2.0), ("R", "A", "S"), (300.0, 300.0, 200.0)),
            model="Vereos", fwhm_mm=(5.0, 5.0, 5.0), noise_cov=0.07,
            recon_method="OSEM3D+TOF", recon_labels=("subsets", "iterations"),
            recon_units=("none", "none"), recon_values=(9, 3), recon_filter="none",
            recon_filter_mm=0.0, attenuation_correction="CT-based"),
    ),
}
DEFAULT_SITES = ("northfield", "lakeside", "hillcrest")


@dataclass(frozen=True)
class Preset:
    """A cohort size: anatomy resolution and how much each modality's voxels are enlarged.

    ``anatomy_mm`` is the template resolution the tissue maps are sampled from, and the
    spacing of the fine native grid on which the PET point-spread function is applied.
    """

    name: str
    anatomy_mm: float
    t1w_zoom: float
    pet_zoom: float


PRESETS: dict[str, Preset] = {
    "benchmark": Preset("benchmark", 1.0, 1.0, 1.0),   # realistic: T1w ~1 mm, PET ~2 mm
    "demo": Preset("demo", 2.0, 1.6, 1.3),             # T1w ~1.5-2 mm, PET ~2.5-3 mm
    "test": Preset("test", 3.0, 2.6, 1.8),             # T1w ~2.5-3 mm, PET ~3-5 mm; seconds
}


def check_cohort_arguments(n_subjects, seed, deformation_scale) -> None:
    """The arguments every cohort maker shares; a bad one is one line."""
    if not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise InputError(None, f"n_subjects must be a positive integer, got {n_subjects!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(None, f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= deformation_scale <= 2.0:
        raise InputError(None, f"deformation_scale must lie in [0, 2], got {deformation_scale!r}")


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name fails with the list of known ones."""
    if name not in PRESETS:
        raise InputError(None, f"unknown phantom preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_sites(sites) -> list[Site]:
    """Sites from names (keys of :data:`SITES`) or :class:`Site` objects; default three."""
    chosen = []
    for site in sites or DEFAULT_SITES:
        if isinstance(site, Site):
            chosen.append(site)
        elif site in SITES:
            chosen.append(SITES[site])
        else:
            raise InputError(None, f"unknown phantom site {site!r}; one of {', '.join(SITES)}")
    names = [s.name for s in chosen]
    if len(set(names)) != len(names) or not all(n.isalnum() for n in names):
        raise InputError(None, f"site names must be distinct and alphanumeric, got {names}")
    return chosen


def scaled(spec: ImageSpec, zoom: float) -> ImageSpec:
    """``spec`` with voxels ``zoom`` times larger and the same field of view."""
    return replace(spec, voxel_mm=tuple(round(v * zoom, 3) for v in spec.voxel_mm))


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about world x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True, eq=False)
class ImageGrid:
    """A native voxel grid: matrix shape and voxel-to-world affine (scanner mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)


def acquisition_grid(spec: ImageSpec, head_center) -> ImageGrid:
    """The voxel grid of an acquisition centred on ``head_center`` + the spec's offset.

    The data axes point along ``spec.axcodes`` (permuted and flipped world axes), tilted by
    ``spec.oblique_deg``; this is how scanners store sagittal, coronal or LPS volumes, and
    it lives entirely in the affine.
    """
    shape = tuple(int(round(f / v)) for f, v in zip(spec.fov_mm, spec.voxel_mm))
    directions = np.array([AXIS_DIRECTIONS[c] for c in spec.axcodes], dtype=float).T
    if abs(np.linalg.det(directions)) != 1:
        raise ValueError(f"axis codes {spec.axcodes} do not name three distinct world axes")
    linear = rotation_matrix(spec.oblique_deg) @ directions @ np.diag(spec.voxel_mm)
    center = np.asarray(head_center, float) + np.asarray(spec.center_offset_mm, float)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = center - linear @ ((np.array(shape) - 1) / 2.0)
    return ImageGrid(shape, affine)
