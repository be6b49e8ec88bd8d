"""[11C]PIB myelin cohort: HC and MS subjects with T1w, MTR, DWI, lesion masks and a dynamic PIB PET.

After the data of Wei et al. (Medical Image Analysis 2019) and Bodini et al. (Ann Neurol 2016):
MTR and DTI (FA, RD, AD) as inputs, the PIB distribution volume ratio (DVR) as target, MS
lesions whose voxels are demyelinated where the DVR falls below the healthy-control (HC) white
matter norm.

**Myelin.** Every voxel of template space has a myelin content ``m`` (WM 1, cortical and
cerebellar GM 0.3, deep GM 0.55, CSF 0), per tissue class:

    m_wm(x)  = a * (1 + WM_MYELIN_FIELD_SD * e(x)) * (1 - loss(x))
    m_gm(x)  = a * m_gm_class(x)

where ``a`` is the subject's myelin scale (HC ~ N(1, 0.04); MS ~ N(0.97, 0.04), a diffuse NAWM
change too small to separate the groups, as Wei 2019 found), ``e`` a smooth unit-variance
Gaussian field (biological variation) and ``loss`` the lesion demyelination (below). The tissue
myelin map is ``wm * m_wm + gm * m_gm``.

**Lesions** (MS only): 4-8 ellipsoids in deep cerebral WM, semi-axes 3.5-9 mm, each with a known
demyelinated fraction ``f`` (the myelin lost in its core: ``loss = f`` inside, ramping to 0 over
1.5 mm at the edge) and an oedema / tissue-loss load ``w`` (0-0.3) that changes MTR, diffusion,
T1w and PD but not PIB binding, so no single MR measure gives the DVR. About 60 % of lesions are
demyelinated (``f`` 0.45-0.95, DVR well below the HC norm), the rest remyelinated (``f`` 0-0.08,
near normal); each patient has at least one of each. Lesions are T1w-hypointense ("black holes"
where ``f`` and ``w`` are large) and T2 (b0) bright.

**Measures, all nonlinear in m and tissue, with their own smooth biological fields** ``z``:

- PIB: ``VT = VT_ND (1 + B m^p)`` per tissue, ``B = 1``, ``p = 1.5``; CSF and head layers have
  low VT; ``K1`` WM 0.13, GM 0.26 /min times a subject flow factor. Reference = pure cerebellar GM
  (``m = 0.3 a``), ``DVR = VT / VT_ref`` (pure WM of an average HC: 1.72).
- MTR (%): ``s_site s_subj (27 (1 - 0.5 w) + 22 (1 - exp(-2.2 m))) (1 + 0.03 z)``; CSF 3 %. MT-off
  and MT-on images are mixed per tissue at the signal level, ``MTR = 100 (Moff - Mon) / Moff``.
- Diffusion (mm2/s): WM ``AD = (1.35 + 0.3 tanh(2 m) + 0.6 w) 1e-3``, ``RD = (0.30 + 0.75 exp(-2 m)
  + 0.5 w) 1e-3`` (radial diffusivity tracks myelin; Song et al., NeuroImage 2002), axial along a
  smooth fibre field; GM isotropic ``(0.9 - 0.2 m) 1e-3``; CSF 3e-3. Tensors are mixed by volume
  fraction, so each native voxel is exactly one tensor; a site factor scales diffusivities.

**PIB kinetics** (:mod:`synthquant.phantom.kinetics`): Feng plasma input per subject, 1TC per
voxel, 22 frames over 0-90 min. The Logan reference plot (Logan 1996; t* 35 min) recovers
``VT / VT_ref`` exactly for this model (see the kinetics docstring).

**Ground truth** (``sourcedata/truth/``): the intrinsic DVR (``VT / VT_ref``, no blur) in template
space and on the T1w grid; the PET-resolution DVR (``blur(VT) / VT_ref``, what a Logan fit of the
noise-free PET gives) on the native PET grid and in template space; the myelin map; DTI and MTR
truth maps; lesion labels and per-lesion table; the demyelinated-voxel mask (lesion voxels whose
intrinsic DVR is below the voxel-wise HC norm's mean - 2 SD; Bodini 2016). The norm is computed
from the generating distributions by Gauss-Hermite quadrature at every template voxel, from its
tissue fractions (:func:`hc_norm_maps`; a pure-WM voxel: mean 1.72, SD 0.086, :func:`hc_wm_norm`),
so partial volume with grey matter and CSF is accounted for.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from synthquant.atlases import (
    TEMPLATE_SPACE,
    WORKING_RESOLUTION,
    aal2_table,
    brain_mask,
    working_grid,
)
from synthquant.errors import InputError
from synthquant.image import atomic_write_text, resample_to_grid, voxel_sizes
from synthquant.phantom import bids_writer as bw
from synthquant.phantom.amyloid import _brain_sample_points, pet_sidecar, t1w_sidecar
from synthquant.phantom.anatomy import (
    CHUNK,
    AtrophySpec,
    Deformation,
    Pose,
    TemplateAnatomy,
    fov_coverage,
    grey_matter_labels,
    grid_points,
    head_center,
    native_to_template,
    random_deformation,
    random_pose,
    sample,
    template_anatomy,
)
from synthquant.phantom.kinetics import (
    FengInput,
    decay_correction_factors,
    one_tissue_tacs,
    plasma_frame_means,
)
from synthquant.phantom.mri import bias_field, contrast_map, rician, simulate_t1w
from synthquant.phantom.pet import (
    add_count_noise,
    fine_grid,
    psf_blur,
    truth_on_template,
)
from synthquant.phantom.sites import (
    ImageGrid,
    ImageSpec,
    Preset,
    Site,
    acquisition_grid,
    check_cohort_arguments,
    get_preset,
    resolve_sites,
    rotation_matrix,
    scaled,
)

TRACER = "PIB"
DIAGNOSES = ("HC", "MS")
GROUPS = {"HC": "control", "MS": "patient"}
#: Ages and sex of Wei 2019's cohort (MS 31 +- 6, HC 29 +- 6 years; two thirds women).
AGE_RANGE = {"HC": (21, 42), "MS": (20, 45)}
FEMALE_SHARE = 0.67
#: Ventricular and cortical atrophy (AtrophySpec; hippocampi spared): mild in MS.
ATROPHY_RANGE = {"HC": ((0.0, 0.08), (0.0, 0.03)), "MS": ((0.08, 0.3), (0.02, 0.08))}

# --- PET protocol (Wei 2019: 90-min scan from a 1-min bolus of ~358 MBq) ------------------
PIB_FRAME_DURATION: tuple[float, ...] = (15.0,) * 4 + (30.0,) * 4 + (60.0,) * 3 + (120.0,) * 2 \
    + (300.0,) * 2 + (600.0,) * 7
PIB_FRAME_TIMES_START: tuple[float, ...] = tuple(float(s) for s in np.cumsum((0.0, *PIB_FRAME_DURATION[:-1])))
C11_HALF_LIFE_S = 1221.8
PIB_MOLECULAR_WEIGHT = 256.3  # g/mol, C14H12N2OS
#: Logan reference-plot start (min) for which the truth is documented (kinetics docstring).
LOGAN_T_STAR_MIN = 35.0
#: Nominal parent-plasma input (Feng 1993 model 2; kBq/mL, 1/min) for 358 MBq in 70 kg: with the
#: rate constants below, cerebellar GM peaks near SUV 2.8 at ~1.5 min and falls to SUV ~0.55 at 60 min.
NOMINAL_INPUT = FengInput(a1=800.0, a2=18.0, a3=10.0, l1=-4.0, l2=-0.3, l3=-0.012, delay=0.3)
NOMINAL_DOSE_PER_KG = 358.0 / 70.0
#: PIB binding: VT = VT_ND (1 + B m^p) (module docstring). VT is relative to a plasma input of
#: arbitrary scale; VT_ND = 0.5 keeps every k2 = K1 / VT above ~0.06 /min, so the 90-min scan
#: reaches transient equilibrium and the Logan plot is linear from ~35 min (kinetics docstring).
VT_ND = 0.5
PIB_B = 1.0
PIB_P = 1.5
#: K1 (mL/cm3/min) of brain tissue; low-VT compartments outside brain tissue (VT relative to VT_ND).
K1_TISSUE = {"wm": 0.13, "gm": 0.26}
BACKGROUND_KINETICS = {  # tissue: (K1, VT / VT_ND); every k2 = K1 / VT stays >= 0.08 /min
    "csf": (0.02, 0.14), "extra_csf": (0.02, 0.14), "skull": (0.03, 0.4),
    "fat": (0.04, 0.5), "skin": (0.06, 0.7)}
#: PET noise: voxel CoV at the cerebellar-GM level of the 50-60 min frame, relative to the site's
#: 5-min FBP figure (11C counts are fewer); other frames follow count statistics.
PIB_NOISE_FACTOR = 1.5
#: Entries of the log-spaced k2 table from which voxel frame means are interpolated, and the
#: largest relative error of its low-rank factorisation (floor: 0.1 % of each frame's peak).
K2_TABLE_SIZE = 4096
TAC_TOLERANCE = 1e-5

# --- myelin ------------------------------------------------------------------------------
MYELIN_WM = 1.0
MYELIN_GM = 0.3            # cortical and cerebellar grey matter (the reference)
MYELIN_DEEP_GM = 0.55      # caudate, putamen, pallidum, thalamus
DEEP_GM_STEMS = ("Caudate", "Putamen", "Pallidum", "Thalamus")
MYELIN_SCALE = {"HC": 1.0, "MS": 0.97}
SUBJECT_MYELIN_SD = 0.04
WM_MYELIN_FIELD_SD = 0.06
#: Gauss-Hermite nodes per variable of the HC norm.
HC_NORM_NODES = 24
#: Smoothness (Gaussian sigma, mm) of the biological fields.
FIELD_SIGMA_MM = 5.0

# --- lesions -----------------------------------------------------------------------------
N_LESIONS = (4, 8)
LESION_SEMI_AXES_MM = (3.5, 9.0)
LESION_EDGE_MM = 1.5
DEMYELINATED_SHARE = 0.6
LESION_KINDS = {"demyelinated": (0.45, 0.95), "remyelinated": (0.0, 0.08)}
EDEMA_RANGE = (0.0, 0.3)
#: Candidate lesion centres: WM fraction >= 0.95, >= 4 mm inside the WM, above MNI z = 0.
LESION_DEPTH_MM = 4.0
#: Columns of the per-lesion truth table (``sub-<L>_lesions.tsv``).
LESION_COLUMNS = ("lesion", "kind", "demyelinated_fraction", "edema", "n_voxels", "volume_ml", "mean_dvr",
                  "mean_pet_dvr", "demyelinated_pct", "center_x_mm", "center_y_mm", "center_z_mm")

# --- MR relations -------------------------------------------------------------------------
#: Proton density (MT-off signal) and MTR (%) outside brain tissue.
PD = {"wm": 0.69, "gm": 0.80, "csf": 1.0, "extra_csf": 1.0, "skull": 0.05, "fat": 0.9, "skin": 0.7}
BACKGROUND_MTR = {"csf": 3.0, "extra_csf": 3.0, "skull": 30.0, "fat": 5.0, "skin": 40.0}
#: b0 (T2-weighted) signal relative to WM, and isotropic diffusivity (mm2/s), outside WM and GM.
S0 = {"wm": 1.0, "gm": 1.25, "csf": 2.6, "extra_csf": 2.6, "skull": 0.05, "fat": 0.1, "skin": 0.4}
BACKGROUND_DIFFUSIVITY = {"csf": 3.0e-3, "extra_csf": 3.0e-3, "skull": 0.3e-3, "fat": 0.05e-3, "skin": 1.0e-3}
#: Smoothing (mm) of the WM prior whose gradient gives the fibre direction; weight (1/mm) of the
#: default field (left-right near the midline, superior-inferior elsewhere) where it vanishes.
FIBRE_SMOOTHING_MM = 3.0
FIBRE_DEFAULT_WEIGHT = 0.02
T1W_LESION_DROP = (0.10, 0.35, 0.30)  # T1w signal loss: occupancy, myelin loss, oedema


def pib_vt_ratio(m):
    """``VT / VT_ND`` of brain tissue with myelin content ``m``."""
    return 1.0 + PIB_B * np.power(np.maximum(m, 0.0), PIB_P)


def mtr_percent(m, edema=0.0):
    """MTR (%) of brain tissue, before site and subject scaling."""
    return 27.0 * (1.0 - 0.5 * edema) + 22.0 * (1.0 - np.exp(-2.2 * m))


def wm_axial_diffusivity(m, edema=0.0):
    return (1.35 + 0.30 * np.tanh(2.0 * m) + 0.6 * edema) * 1e-3


def wm_radial_diffusivity(m, edema=0.0):
    return (0.30 + 0.75 * np.exp(-2.0 * m) + 0.5 * edema) * 1e-3


def gm_diffusivity(m):
    return (0.9 - 0.2 * m) * 1e-3


@functools.lru_cache(maxsize=1)
def _hc_quadrature(n_nodes: int = HC_NORM_NODES) -> tuple[np.ndarray, ...]:
    """Gauss-Hermite nodes over the HC subject scale ``a`` and the voxel field ``e``.

    Returns ``(a, weights, R1, R2, r_ref)``: for each node ``a_i``, the first and second moments
    over ``e`` of ``VT/VT_ND`` of pure WM, and ``VT_ref/VT_ND`` (cerebellar GM).
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    scale = MYELIN_SCALE["HC"] + SUBJECT_MYELIN_SD * nodes
    ratio = pib_vt_ratio(MYELIN_WM * scale[:, None] * (1.0 + WM_MYELIN_FIELD_SD * nodes[None, :]))
    return (scale, weights, ratio @ weights, (ratio ** 2) @ weights, pib_vt_ratio(MYELIN_GM * scale))


def hc_norm_moments(wm, gm, gm_myelin, background) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD across healthy controls of the intrinsic DVR of voxels with these tissue
    fractions (``background``: sum of the other tissues' ``VT/VT_ND``), from the model.

    A voxel's DVR is ``(wm r(a (1 + 0.06 e)) + gm r(a m_gm) + background) / r(0.3 a)`` with
    ``r(m) = 1 + B m^p``, subject scale ``a ~ N(1, 0.04)`` and field value ``e ~ N(0, 1)``; the
    expectations over both are Gauss-Hermite sums. This is the voxel-wise HC norm of Bodini 2016,
    computed from the generating distributions instead of from a sample of controls.
    """
    scale, weights, r1, r2, r_ref = _hc_quadrature()
    wm, gm = np.asarray(wm, np.float64), np.asarray(gm, np.float64)
    mean = np.zeros(np.broadcast_shapes(wm.shape, gm.shape, np.shape(gm_myelin), np.shape(background)))
    second = np.zeros_like(mean)
    for a, w, m1, m2, ref in zip(scale, weights, r1, r2, r_ref):
        other = gm * pib_vt_ratio(a * np.asarray(gm_myelin)) + background
        mean += (w / ref) * (wm * m1 + other)
        second += (w / ref ** 2) * (wm * wm * m2 + 2.0 * wm * m1 * other + other * other)
    return mean, np.sqrt(np.maximum(second - mean * mean, 0.0))


def hc_wm_norm() -> dict:
    """The HC norm of a pure-WM voxel (the scalar summary of :func:`hc_norm_maps`)."""
    mean, sd = (float(v) for v in hc_norm_moments(1.0, 0.0, MYELIN_GM, 0.0))
    return {"roi": "pure white matter (template WM fraction 1), healthy controls",
            "mean_dvr": mean, "sd_dvr": sd, "threshold_dvr": mean - 2.0 * sd,
            "method": "Gauss-Hermite quadrature over subject myelin scale a ~ N(1, 0.04) and voxel field "
                      "e ~ N(0, 1) of DVR = (wm r(a (1 + 0.06 e)) + gm r(a m_gm) + background) / r(0.3 a), "
                      f"r(m) = 1 + {PIB_B:g} m^{PIB_P:g}; computed voxel-wise from the template tissue "
                      "fractions (hc_norm_space-*_desc-{mean,sd}_dvr.nii.gz); threshold = mean - 2 SD "
                      "(Bodini 2016). These numbers are those of a pure-WM voxel."}


# ---------------------------------------------------------------------------------------
# Site protocols for MT and DWI


@dataclass(frozen=True)
class MTProtocol:
    """An MT-weighted 3D spoiled gradient echo, with and without an off-resonance MT pulse.

    ``mtr_scale`` is the site's MTR factor (MT pulse power and offset, field strength): MTR is
    not portable between sites. ``noise`` is the Gaussian sigma per channel over the WM MT-off signal.
    """

    image: ImageSpec
    repetition_time_s: float
    echo_time_s: float
    flip_angle_deg: float
    offset_hz: float
    pulse_duration_s: float
    mtr_scale: float
    gain: float = 800.0
    noise: float = 0.03
    bias: float = 0.15


@dataclass(frozen=True)
class DWIProtocol:
    """A single-shell spin-echo EPI: ``n_b0`` b=0 volumes and ``n_directions`` at ``bvalue``.

    ``noise`` is the Gaussian sigma per channel over the WM b0 signal; ``diffusivity_scale`` a
    site factor on every diffusivity (gradient calibration, temperature).
    """

    image: ImageSpec
    n_directions: int = 30
    n_b0: int = 3
    bvalue: float = 1000.0
    repetition_time_s: float = 8.0
    echo_time_s: float = 0.085
    phase_encoding_direction: str = "j-"
    total_readout_time_s: float = 0.05
    gain: float = 800.0
    noise: float = 0.04
    diffusivity_scale: float = 1.0


@dataclass(frozen=True)
class MyelinProtocols:
    mt: MTProtocol
    dwi: DWIProtocol


#: MT and DWI field of view: whole-brain coverage, centred 8 mm below the brain centroid.
_DOWN = (0.0, 0.0, -8.0)

MYELIN_PROTOCOLS: dict[str, MyelinProtocols] = {
    # 3 T: 3D MT-FLASH at 1 x 1 x 1.1 mm (Wei 2019's MTR), 2 mm isotropic DWI, both LAS.
    "northfield": MyelinProtocols(
        mt=MTProtocol(ImageSpec((1.0, 1.0, 1.1), ("L", "A", "S"), (240.0, 240.0, 190.0), center_offset_mm=_DOWN),
                      0.030, 0.0037, 10.0, 1200.0, 0.0128, mtr_scale=1.0, noise=0.025),
        dwi=DWIProtocol(ImageSpec((2.0, 2.0, 2.0), ("L", "A", "S"), (240.0, 240.0, 190.0), center_offset_mm=_DOWN),
                        noise=0.035)),
    # 1.5 T: 2D MT with 3 mm slices and 2.5 mm DWI, LPS (positive determinant), tilted; lower MTR.
    "lakeside": MyelinProtocols(
        mt=MTProtocol(ImageSpec((0.94, 0.94, 3.0), ("L", "P", "S"), (240.0, 240.0, 189.0), (6.0, 0.0, 2.0), _DOWN),
                      0.035, 0.005, 12.0, 2000.0, 0.008, mtr_scale=0.88, noise=0.035),
        dwi=DWIProtocol(ImageSpec((2.5, 2.5, 2.5), ("L", "P", "S"), (240.0, 240.0, 190.0), (6.0, 0.0, 2.0), _DOWN),
                        repetition_time_s=10.0, echo_time_s=0.095, noise=0.05, diffusivity_scale=1.03)),
    # 3 T: MT at 1 x 1 x 1.5 mm and 1.75 x 1.75 x 2 mm DWI, RAS (positive determinant).
    "hillcrest": MyelinProtocols(
        mt=MTProtocol(ImageSpec((1.0, 1.0, 1.5), ("R", "A", "S"), (224.0, 224.0, 190.0), (0.0, 0.0, -3.0), _DOWN),
                      0.025, 0.0046, 8.0, 1100.0, 0.015, mtr_scale=1.06, noise=0.03),
        dwi=DWIProtocol(ImageSpec((1.75, 1.75, 2.0), ("R", "A", "S"), (224.0, 224.0, 190.0), (0.0, 0.0, -3.0), _DOWN),
                        phase_encoding_direction="j", noise=0.04, diffusivity_scale=0.98)),
}


def myelin_protocols(site: Site) -> MyelinProtocols:
    """The site's MT and DWI protocols; a site without its own gets ones shaped like its T1w."""
    if site.name in MYELIN_PROTOCOLS:
        return MYELIN_PROTOCOLS[site.name]
    spec = site.t1w.image
    return MyelinProtocols(
        mt=MTProtocol(ImageSpec((1.0, 1.0, 1.2), spec.axcodes, (240.0, 240.0, 190.0), spec.oblique_deg, _DOWN),
                      0.030, 0.004, 10.0, 1200.0, 0.012, mtr_scale=1.0),
        dwi=DWIProtocol(ImageSpec((2.0, 2.0, 2.0), spec.axcodes, (240.0, 240.0, 190.0), spec.oblique_deg, _DOWN)))


def gradient_directions(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors on a hemisphere (Fibonacci spiral), shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def dwi_scheme(protocol: DWIProtocol) -> tuple[np.ndarray, np.ndarray]:
    """b-values (n,) and world-frame unit gradients (n, 3); b0s spread through the series."""
    n = protocol.n_directions + protocol.n_b0
    b0_at = set(np.linspace(0, n - 1, protocol.n_b0).round().astype(int)) if protocol.n_b0 else set()
    directions = iter(gradient_directions(protocol.n_directions))
    bvals, bvecs = [], []
    for k in range(n):
        if k in b0_at:
            bvals.append(0.0)
            bvecs.append(np.zeros(3))
        else:
            bvals.append(protocol.bvalue)
            bvecs.append(next(directions))
    return np.array(bvals), np.array(bvecs)


def world_to_bvec(gradients: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World-frame gradients (n, 3) as BIDS/FSL ``.bvec`` rows (3, n).

    BIDS follows the FSL format: vectors in the image's voxel axes (direction cosines of the
    affine), with the x component negated when the affine's determinant is positive (FSL's
    radiological voxel convention; BIDS spec "Diffusion imaging", FSL FDT user guide).
    """
    directions = affine[:3, :3] / np.asarray(voxel_sizes(affine))
    voxel = gradients @ directions  # g_vox = M^T g_world for each row
    if np.linalg.det(affine[:3, :3]) > 0:
        voxel[:, 0] *= -1.0
    return voxel.T


# ---------------------------------------------------------------------------------------
# Template-space ingredients


def _pull_back_maps(maps, grid: ImageGrid, pose: Pose, deformation: Deformation) -> list[np.ndarray]:
    """Several template-space maps seen in one native grid, the map psi computed once.

    ``maps`` holds ``(volume, affine, order)``: order 1 for fractions and continuous maps, 0 for
    labels. Same chunking as :func:`synthquant.phantom.anatomy.pull_back`.
    """
    outs = [np.empty(grid.shape, np.float32 if order else volume.dtype) for volume, _, order in maps]
    slabs = max(1, CHUNK // (grid.shape[1] * grid.shape[2]))
    for start in range(0, grid.shape[0], slabs):
        stop = min(start + slabs, grid.shape[0])
        points = native_to_template(grid_points(grid.shape, grid.affine, start, stop), pose, deformation)
        for (volume, affine, order), out in zip(maps, outs):
            out[start:stop] = sample(volume, affine, points, order).reshape(stop - start, *grid.shape[1:])
    return outs


def _trilinear_operator(shape, affine: np.ndarray, points: np.ndarray) -> sparse.csr_matrix:
    """Trilinear sampling of a volume on ``(shape, affine)`` at world ``points`` (3, N) as a sparse
    matrix (N, voxels): the values of :func:`~synthquant.phantom.anatomy.sample` (order 1) away from
    the volume's outermost voxels, 0 beyond. Built once, it samples every PET basis image."""
    inverse = np.linalg.inv(affine)
    ijk = inverse[:3, :3] @ points + inverse[:3, 3:4]
    base = np.floor(ijk).astype(np.int64)
    inside = np.all((base >= 0) & (base < np.array(shape)[:, None] - 1), axis=0)
    base, frac = base[:, inside], (ijk[:, inside] - base[:, inside]).astype(np.float32)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    first = strides @ base
    corners = list(np.ndindex(2, 2, 2))
    columns = np.stack([first + strides @ np.array(c) for c in corners], axis=1)
    weights = np.stack([np.prod([f if c else 1.0 - f for c, f in zip(corner, frac)], axis=0)
                        for corner in corners], axis=1)
    indptr = np.concatenate([[0], np.cumsum(inside * len(corners))])
    return sparse.csr_matrix((weights.ravel(), columns.ravel(), indptr),
                             shape=(points.shape[1], int(np.prod(shape))))


def smooth_field(rng: np.random.Generator, shape, resolution: float, sigma_mm: float = FIELD_SIGMA_MM) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_mm / resolution,
                                    mode="wrap")
    field -= field.mean()
    return field / field.std()


@functools.lru_cache(maxsize=2)
def fibre_orientation(anatomy: TemplateAnatomy) -> np.ndarray:
    """Unit fibre direction per template voxel (3, X, Y, Z), world axes.

    The gradient of the smoothed WM prior points across the WM/GM boundary, as projection fibres
    enter the cortex; where it vanishes (deep WM) a default takes over: left-right near the
    midline (corpus callosum), superior-inferior laterally (corticospinal tract).
    """
    smooth = ndimage.gaussian_filter(anatomy.tissues["wm"].astype(np.float32),
                                     FIBRE_SMOOTHING_MM / anatomy.resolution)
    index_gradient = np.stack(np.gradient(smooth))
    linear = anatomy.affine[:3, :3]
    world_gradient = np.einsum("ij,j...->i...", np.linalg.inv(linear).T, index_gradient)
    x = anatomy.affine[0, 0] * np.arange(anatomy.shape[0]) + anatomy.affine[0, 3] - anatomy.center[0]
    midline = np.exp(-x ** 2 / (2 * 12.0 ** 2)).astype(np.float32)[:, None, None]
    default = np.stack([np.broadcast_to(midline, anatomy.shape), np.zeros(anatomy.shape, np.float32),
                        np.broadcast_to(1.0 - midline, anatomy.shape)])
    field = world_gradient + FIBRE_DEFAULT_WEIGHT * default
    field /= np.maximum(np.sqrt((field ** 2).sum(axis=0)), 1e-12)
    field = field.astype(np.float32)
    field.flags.writeable = False
    return field


@functools.lru_cache(maxsize=2)
def _deep_gm(anatomy: TemplateAnatomy) -> np.ndarray:
    table = aal2_table()
    deep = table.loc[table["name"].str.startswith(DEEP_GM_STEMS), "index"].to_numpy()
    mask = np.isin(grey_matter_labels(anatomy), deep)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=2)
def hc_norm_maps(anatomy: TemplateAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and SD of the HC intrinsic DVR on the template anatomy grid (cached)."""
    background = sum(anatomy.tissues[name] * np.float32(vt) for name, (_, vt) in BACKGROUND_KINETICS.items())
    gm_myelin = np.where(_deep_gm(anatomy), MYELIN_DEEP_GM, MYELIN_GM)
    mean, sd = (v.astype(np.float32) for v in hc_norm_moments(
        anatomy.tissues["wm"], anatomy.tissues["gm"], gm_myelin, background))
    for array in (mean, sd):
        array.flags.writeable = False
    return mean, sd


@functools.lru_cache(maxsize=2)
def _lesion_candidates(anatomy: TemplateAnatomy) -> np.ndarray:
    """World points (N, 3) where a lesion centre may sit: deep cerebral WM."""
    wm = anatomy.tissues["wm"]
    depth = ndimage.distance_transform_edt(wm >= 0.5, sampling=anatomy.resolution)
    ijk = np.argwhere((wm >= 0.95) & (depth >= LESION_DEPTH_MM))
    points = ijk @ anatomy.affine[:3, :3].T + anatomy.affine[:3, 3]
    return points[points[:, 2] > 0.0]


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal WM lesion in template space (mm), with its demyelinated fraction and oedema."""

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    demyelinated_fraction: float
    edema: float
    kind: str

    def as_dict(self) -> dict:
        return {"center_mm": [round(v, 3) for v in self.center_mm],
                "semi_axes_mm": [round(v, 3) for v in self.semi_axes_mm],
                "rotation_deg": [round(v, 3) for v in self.rotation_deg],
                "demyelinated_fraction": round(self.demyelinated_fraction, 6),
                "edema": round(self.edema, 6), "kind": self.kind}


def draw_lesions(rng: np.random.Generator, anatomy: TemplateAnatomy) -> list[Lesion]:
    """4-8 non-overlapping lesions in deep WM, at least one demyelinated and one remyelinated."""
    n = int(rng.integers(N_LESIONS[0], N_LESIONS[1] + 1))
    kinds = ["demyelinated", "remyelinated"] + [
        "demyelinated" if rng.random() < DEMYELINATED_SHARE else "remyelinated" for _ in range(n - 2)]
    candidates = _lesion_candidates(anatomy)
    lesions: list[Lesion] = []
    for kind in kinds:
        axes = rng.uniform(*LESION_SEMI_AXES_MM, 3)
        rotation = rng.uniform(-90.0, 90.0, 3)
        fraction = float(rng.uniform(*LESION_KINDS[kind]))
        edema = float(rng.uniform(*EDEMA_RANGE))
        for _ in range(100):
            center = candidates[int(rng.integers(len(candidates)))]
            if all(np.linalg.norm(center - np.array(other.center_mm))
                   > max(axes) + max(other.semi_axes_mm) + LESION_EDGE_MM for other in lesions):
                break
        lesions.append(Lesion(tuple(float(c) for c in center), tuple(float(a) for a in axes),
                              tuple(float(r) for r in rotation), fraction, edema, kind))
    return lesions


def lesion_maps(anatomy: TemplateAnatomy, lesions: list[Lesion]) -> dict[str, np.ndarray]:
    """Template-space lesion maps: ``occupancy`` (0-1, soft edge), ``loss`` (myelin lost),
    ``edema`` and ``labels`` (1-based lesion index wherever a lesion reaches, plus one voxel, else 0)."""
    shape = anatomy.shape
    occupancy = np.zeros(shape, np.float32)
    loss = np.zeros(shape, np.float32)
    edema = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    inverse = np.linalg.inv(anatomy.affine)
    for index, lesion in enumerate(lesions, start=1):
        reach = max(lesion.semi_axes_mm) + 2 * LESION_EDGE_MM
        center = np.array(lesion.center_mm)
        lo = np.floor(inverse[:3, :3] @ (center - reach) + inverse[:3, 3]).astype(int)
        hi = np.ceil(inverse[:3, :3] @ (center + reach) + inverse[:3, 3]).astype(int)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        lo, hi = np.maximum(lo, 0), np.minimum(hi + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        ijk = np.mgrid[box].reshape(3, -1).astype(float)
        local = rotation_matrix(lesion.rotation_deg).T @ (anatomy.affine[:3, :3] @ ijk + anatomy.affine[:3, 3:4]
                                                          - center[:, None])
        radius = np.sqrt(((local / np.array(lesion.semi_axes_mm)[:, None]) ** 2).sum(axis=0))
        mean_axis = float(np.prod(lesion.semi_axes_mm) ** (1.0 / 3.0))
        occ = np.clip(0.5 + (1.0 - radius) * mean_axis / LESION_EDGE_MM, 0.0, 1.0).reshape(hi - lo)
        occ = occ.astype(np.float32)
        region = occupancy[box]
        labels[box] = np.where((occ > 0) & (occ > region), index, labels[box])
        occupancy[box] = np.maximum(region, occ)
        loss[box] = np.maximum(loss[box], lesion.demyelinated_fraction * occ)
        edema[box] = np.maximum(edema[box], lesion.edema * occ)
    # One voxel of margin, so nearest-neighbour sampling labels every voxel of the trilinear mask.
    labels = np.where(labels == 0, ndimage.maximum_filter(labels, size=3), labels).astype(np.int16)
    return {"occupancy": occupancy, "loss": loss, "edema": edema, "labels": labels}


# ---------------------------------------------------------------------------------------
# One subject


def cohort_roster(n_subjects: int, sites: list[Site], seed: int) -> pd.DataFrame:
    """participants.tsv: HC/MS balanced over sites (:func:`bids_writer.balanced_roster`)."""
    return bw.balanced_roster(n_subjects, sites, seed, stream=2_000_003, diagnoses=DIAGNOSES, age_range=AGE_RANGE,
                              groups=GROUPS, draw_sex=lambda rng: "F" if rng.random() < FEMALE_SHARE else "M")


def _jittered(rng: np.random.Generator, pose: Pose, max_rotation_deg: float, max_translation_mm: float,
              scale: float) -> Pose:
    """The head a little moved between two series of one MR session."""
    rotation = np.asarray(pose.rotation_deg) + rng.uniform(-1, 1, 3) * max_rotation_deg * scale
    translation = np.asarray(pose.translation_mm) + rng.uniform(-1, 1, 3) * max_translation_mm * scale
    return Pose(tuple(float(v) for v in rotation), tuple(float(v) for v in translation))


def _frame_noise(frame_means_ref: np.ndarray, base_cov: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(reference, cov)`` for :func:`add_count_noise` under count statistics.

    The variance of a decay-corrected frame value ``S`` goes as ``S exp(lambda t) / D`` (counts
    ``~ S exp(-lambda t) D``, corrected by ``exp(lambda t) / D``). ``add_count_noise`` gives
    ``sd = cov sqrt(S reference)``, so ``cov = k sqrt(exp(lambda t) / (D reference))``, with ``k`` set
    so that the 50-60 min frame has ``base_cov`` at the reference level.
    """
    start, duration = np.array(PIB_FRAME_TIMES_START), np.array(PIB_FRAME_DURATION)
    rate = np.log(2.0) / C11_HALF_LIFE_S
    mid = start + duration / 2.0
    reference = np.maximum(frame_means_ref, 0.05 * frame_means_ref.max())
    anchor = int(np.flatnonzero(start == 3000.0)[0])
    k = base_cov * np.sqrt(duration[anchor] * reference[anchor] / np.exp(rate * mid[anchor]))
    return reference, k * np.sqrt(np.exp(rate * mid) / (duration * reference))


def _tensor_eig(tensor: np.ndarray, where: np.ndarray) -> dict[str, np.ndarray]:
    """FA, AD, RD and the principal direction of the tensors (6, ...) at ``where``."""
    xx, xy, xz, yy, yz, zz = (c[where] for c in tensor)
    matrix = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1),
                       np.stack([xz, yz, zz], -1)], -2).astype(np.float64)
    values, vectors = np.linalg.eigh(matrix)
    l3, l2, l1 = values[:, 0], values[:, 1], values[:, 2]
    md = values.mean(axis=1)
    norm = np.sqrt((values ** 2).sum(axis=1))
    fa = np.sqrt(1.5) * np.sqrt(((values - md[:, None]) ** 2).sum(axis=1)) / np.maximum(norm, 1e-12)
    shape = where.shape
    out = {name: np.zeros(shape, np.float32) for name in ("FA", "AD", "RD", "MD")}
    out["FA"][where], out["AD"][where], out["RD"][where], out["MD"][where] = fa, l1, (l2 + l3) / 2, md
    v1 = np.zeros((*shape, 3), np.float32)
    v1[where] = vectors[:, :, 2]
    out["V1"] = v1
    return out


def subject_maps(rng: np.random.Generator, anatomy: TemplateAnatomy, *, myelin_scale: float,
                 lesions: list[Lesion]) -> dict[str, np.ndarray]:
    """Template-space myelin, lesion and biological-field maps of one subject (module docstring).

    ``m_wm`` and ``m_gm`` are the myelin content of the voxel's WM and GM parts, ``myelin`` the
    tissue myelin map; ``*_field`` are unit-variance smooth fields for MTR, AD and RD.
    """
    res = anatomy.resolution
    fields = {name: smooth_field(rng, anatomy.shape, res) for name in ("myelin", "mtr", "ad", "rd")}
    lesion = lesion_maps(anatomy, lesions)
    wm, gm = anatomy.tissues["wm"], anatomy.tissues["gm"]
    m_wm = MYELIN_WM * myelin_scale * (1.0 + WM_MYELIN_FIELD_SD * fields["myelin"]) * (1.0 - lesion["loss"])
    m_gm = np.where(_deep_gm(anatomy), MYELIN_DEEP_GM, MYELIN_GM).astype(np.float32) * np.float32(myelin_scale)
    return {"m_wm": m_wm, "m_gm": m_gm, "myelin": (wm * m_wm + gm * m_gm).astype(np.float32), **lesion,
            "mtr_field": fields["mtr"], "ad_field": fields["ad"], "rd_field": fields["rd"]}


def pib_parameter_maps(anatomy: TemplateAnatomy, maps: dict, *, myelin_scale: float, nondisplaceable: float,
                       flow: float) -> dict:
    """Template-space ``K1`` and ``VT`` maps, and the pure cerebellar-GM reference's ``K1``, ``VT``."""
    tissue = anatomy.tissues
    wm, gm = tissue["wm"], tissue["gm"]
    vt_nd = VT_ND * nondisplaceable
    vt = vt_nd * (wm * pib_vt_ratio(maps["m_wm"]) + gm * pib_vt_ratio(maps["m_gm"]))
    k1 = flow * (wm * K1_TISSUE["wm"] * (1.0 - 0.2 * maps["edema"]) + gm * K1_TISSUE["gm"])
    for name, (k1_bg, vt_bg) in BACKGROUND_KINETICS.items():
        vt = vt + tissue[name] * np.float32(vt_nd * vt_bg)
        k1 = k1 + tissue[name] * np.float32(flow * k1_bg)
    return {"k1": k1.astype(np.float32), "vt": vt.astype(np.float32), "vt_nd": vt_nd,
            "vt_ref": float(vt_nd * pib_vt_ratio(MYELIN_GM * myelin_scale)),
            "k1_ref": float(flow * K1_TISSUE["gm"])}


def simulate_mt(rng: np.random.Generator, anatomy: TemplateAnatomy, maps: dict, protocol: MTProtocol,
                mtr_scale: float, grid: ImageGrid, pose: Pose, deformation: Deformation) -> dict:
    """MT-off and MT-on magnitude images (Rician), the MTR map computed from them, and the true MTR.

    Each tissue has its proton density and MTR; the two images mix tissues at the signal level,
    so MTR = 100 (Moff - Mon) / Moff holds voxel by voxel. A receive bias shared by both cancels.
    """
    tissue = anatomy.tissues
    wm, gm, edema = tissue["wm"], tissue["gm"], maps["edema"]
    pd_wm = PD["wm"] * (1.0 + 0.3 * (edema + 0.3 * maps["loss"]))
    modulation = mtr_scale * (1.0 + 0.03 * maps["mtr_field"])
    m_off = wm * pd_wm + gm * PD["gm"]
    m_on = (wm * pd_wm * (1.0 - mtr_percent(maps["m_wm"], edema) * modulation / 100.0)
            + gm * PD["gm"] * (1.0 - mtr_percent(maps["m_gm"]) * modulation / 100.0))
    for name, mtr_bg in BACKGROUND_MTR.items():
        m_off = m_off + tissue[name] * PD[name]
        m_on = m_on + tissue[name] * PD[name] * (1.0 - mtr_bg * mtr_scale / 100.0)
    off_native, on_native = _pull_back_maps([(m_off.astype(np.float32), anatomy.affine, 1),
                                             (m_on.astype(np.float32), anatomy.affine, 1)], grid, pose, deformation)
    with np.errstate(divide="ignore", invalid="ignore"):
        mtr_true = np.where(off_native > 0.02, 100.0 * (off_native - on_native) / off_native, 0.0)
    coil = bias_field(rng, grid.shape, protocol.bias) * np.float32(protocol.gain)
    sigma = protocol.noise * protocol.gain * PD["wm"]
    mt_off = rician(rng, off_native * coil, sigma)
    mt_on = rician(rng, on_native * coil, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        mtr_map = np.where(mt_off > 5.0 * sigma, 100.0 * (mt_off - mt_on) / mt_off, 0.0)
    return {"mt_off": mt_off, "mt_on": mt_on, "mtr_true": mtr_true.astype(np.float32),
            "mtr_map": np.clip(mtr_map, 0.0, 100.0).astype(np.float32)}


def simulate_dwi(rng: np.random.Generator, anatomy: TemplateAnatomy, maps: dict, protocol: DWIProtocol,
                 grid: ImageGrid, pose: Pose, deformation: Deformation, keep_noise_free: bool = False) -> dict:
    """A single-shell DWI series from one diffusion tensor per voxel, with its true FA, AD, RD, MD, V1.

    Tensors are built in template space (world axes; fibres along :func:`fibre_orientation`),
    mixed by tissue fraction, pulled back component-wise and rotated by the head pose, so every
    native voxel is exactly ``S = S0 exp(-b g^T D g)`` before bias and Rician noise.
    """
    tissue = anatomy.tissues
    wm, gm, edema, m_wm = tissue["wm"], tissue["gm"], maps["edema"], maps["m_wm"]
    fibre = fibre_orientation(anatomy)
    ad = wm_axial_diffusivity(m_wm, edema) * (1.0 + 0.04 * maps["ad_field"])
    rd = wm_radial_diffusivity(m_wm, edema) * (1.0 + 0.05 * maps["rd_field"])
    iso = gm * gm_diffusivity(maps["m_gm"]) * (1.0 + 0.04 * maps["ad_field"]) + wm * rd
    for name, value in BACKGROUND_DIFFUSIVITY.items():
        iso = iso + tissue[name] * np.float32(value)
    anisotropy = wm * (ad - rd)
    scale = np.float32(protocol.diffusivity_scale)
    components = []
    for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)):
        part = anisotropy * fibre[i] * fibre[j]
        components.append((((part + iso) if i == j else part) * scale).astype(np.float32))
    s0 = wm * S0["wm"] * (1.0 + 0.5 * (edema + 0.3 * maps["loss"])) + gm * S0["gm"]
    for name in BACKGROUND_DIFFUSIVITY:
        s0 = s0 + tissue[name] * S0[name]
    native = _pull_back_maps([(np.asarray(v, np.float32), anatomy.affine, 1) for v in (s0, *components)],
                             grid, pose, deformation)
    s0_native = native[0]
    # D_native = R D_template R^T: a template direction u lies along R u in the scanner.
    rotation = pose.rotation
    full = np.stack([np.stack([native[1], native[2], native[3]]), np.stack([native[2], native[4], native[5]]),
                     np.stack([native[3], native[5], native[6]])])
    world = np.einsum("ia,ab...,jb->ij...", rotation, full, rotation)
    tensor = np.stack([world[0, 0], world[0, 1], world[0, 2], world[1, 1], world[1, 2], world[2, 2]])
    del native, full, world
    bvals, gradients = dwi_scheme(protocol)
    signal = np.empty((*grid.shape, len(bvals)), np.float32)
    for k, (b, g) in enumerate(zip(bvals, gradients)):
        quad = (g[0] * g[0] * tensor[0] + 2 * g[0] * g[1] * tensor[1] + 2 * g[0] * g[2] * tensor[2]
                + g[1] * g[1] * tensor[3] + 2 * g[1] * g[2] * tensor[4] + g[2] * g[2] * tensor[5])
        signal[..., k] = s0_native * np.exp(-b * quad)
    truth = _tensor_eig(tensor, s0_native > 0.01)
    noise_free = signal.copy() if keep_noise_free else None
    signal *= (bias_field(rng, grid.shape, 0.1) * np.float32(protocol.gain))[..., None]
    image = rician(rng, signal, protocol.noise * protocol.gain * S0["wm"])
    image = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    return {"dwi": image, "bvals": bvals, "gradients": gradients, "dti_truth": truth,
            "dwi_noise_free": noise_free}


def simulate_pib(rng: np.random.Generator, anatomy: TemplateAnatomy, kinetics: dict, plasma: FengInput,
                 site: Site, preset: Preset, pose: Pose, deformation: Deformation,
                 keep_noise_free: bool = False) -> dict:
    """The dynamic PIB PET (kBq/mL, 22 frames) and its PET-resolution DVR truth.

    ``K1`` and ``VT`` are pulled back onto the fine native grid, where each voxel is a 1TC; frame
    means come from an exact table over ``k2`` (:mod:`~synthquant.phantom.kinetics`), factored by a
    truncated SVD, ``frame_k(x) = K1(x) sum_j U_j(k2(x)) S_j V_jk``: blur and sampling are linear,
    so only the ~10 basis images go through the scanner's PSF and onto the PET grid (relative
    error below TAC_TOLERANCE). Count noise follows :func:`_frame_noise`.
    """
    fine = fine_grid(anatomy, pose, deformation)
    k1_fine, vt_fine = _pull_back_maps([(kinetics["k1"], anatomy.affine, 1), (kinetics["vt"], anatomy.affine, 1)],
                                       fine, pose, deformation)
    inside = np.flatnonzero(vt_fine > 1e-4)
    k1_in = k1_fine.ravel()[inside]
    k2_in = np.maximum(k1_in / vt_fine.ravel()[inside], 0.01)
    grid = acquisition_grid(scaled(site.pet.image, preset.pet_zoom), head_center(pose, deformation))
    to_pet = _trilinear_operator(fine.shape, fine.affine, grid_points(grid.shape, grid.affine))
    fwhm, res = site.pet.fwhm_mm, anatomy.resolution
    start_min = np.array(PIB_FRAME_TIMES_START) / 60.0
    duration_min = np.array(PIB_FRAME_DURATION) / 60.0

    k2_table = np.geomspace(k2_in.min() * 0.999, k2_in.max() * 1.001, K2_TABLE_SIZE)
    table = one_tissue_tacs(plasma, start_min, duration_min, 1.0, k2_table)
    left, singular, right = np.linalg.svd(table, full_matrices=False)
    floor = np.maximum(1e-3 * table.max(axis=0), 1e-6 * table.max())
    for rank in range(1, table.shape[1] + 1):
        approximation = (left[:, :rank] * singular[:rank]) @ right[:rank]
        if (np.abs(approximation - table) / np.maximum(np.abs(table), floor)).max() < TAC_TOLERANCE:
            break
    position = np.interp(np.log(k2_in), np.log(k2_table), np.arange(K2_TABLE_SIZE, dtype=float))
    lower = np.minimum(position.astype(int), K2_TABLE_SIZE - 2)
    weight = (position - lower).astype(np.float32)
    basis = np.empty((to_pet.shape[0], rank), np.float32)
    fine_frame = np.zeros(fine.shape, np.float32)
    for j in range(rank):
        column = (left[:, j] * singular[j]).astype(np.float32)
        fine_frame.ravel()[inside] = k1_in * (column[lower] * (1.0 - weight) + column[lower + 1] * weight)
        basis[:, j] = to_pet @ psf_blur(fine_frame, res, fwhm).ravel()
    frames = np.maximum(basis @ right[:rank].astype(np.float32), 0.0).reshape(*grid.shape, len(start_min))
    del fine_frame, basis, position, lower, weight

    k1_ref, vt_ref = kinetics["k1_ref"], kinetics["vt_ref"]
    reference_tac = one_tissue_tacs(plasma, start_min, duration_min, k1_ref, k1_ref / vt_ref)
    noise_free = frames.copy() if keep_noise_free else None
    references, covs = _frame_noise(reference_tac, site.pet.noise_cov * PIB_NOISE_FACTOR)
    for k in range(frames.shape[-1]):
        frames[..., k:k + 1] = add_count_noise(rng, frames[..., k:k + 1], float(references[k]), float(covs[k]))

    # Truth: blurred VT over VT_ref, what Logan recovers from the noise-free frames (kinetics docstring).
    dvr_fine = psf_blur(vt_fine / np.float32(vt_ref), res, fwhm)
    working = working_grid()
    dvr_template, residual = truth_on_template(dvr_fine, fine, working.shape, working.affine, pose, deformation,
                                               where=_working_brain())
    return {"pet": frames, "pet_affine": grid.affine, "pet_grid": grid, "pet_noise_free": noise_free,
            "reference_tac": reference_tac, "frame_covs": covs, "svd_rank": rank,
            "dvr_pet": (to_pet @ dvr_fine.ravel()).reshape(grid.shape).astype(np.float32),
            "dvr_pet_template": dvr_template, "inverse_residual_mm": residual}


def _roi_mean(image: np.ndarray, mask: np.ndarray) -> float:
    return float(image[mask].mean()) if mask.any() else float("nan")


def simulate_myelin_subject(rng: np.random.Generator, anatomy: TemplateAnatomy, site: Site, preset: Preset,
                            diagnosis: str, sex: str, t1w_signal: np.ndarray,
                            deformation_scale: float = 1.0, keep_noise_free: bool = False) -> dict:
    """Images, sidecar values and ground truth of one HC or MS subject (nothing written).

    Parameters
    ----------
    rng
        The subject's generator; consumed in a fixed order whatever the options.
    t1w_signal
        The site's template-space T1w contrast (:func:`synthquant.phantom.mri.contrast_map`).
    deformation_scale
        Multiplies deformation, atrophy, size and poses; 0 leaves the subject in template space.
    keep_noise_free
        Also return the noise-free PET frames (``pet_noise_free``) and DWI (``dwi_noise_free``).
    """
    protocols = myelin_protocols(site)
    # Subject-level draws, in a fixed order.
    myelin_scale = float(rng.normal(MYELIN_SCALE[diagnosis], SUBJECT_MYELIN_SD))
    nondisplaceable = float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2))
    flow = float(np.clip(rng.normal(1.0, 0.1), 0.75, 1.25))
    mtr_subject = float(rng.normal(1.0, 0.02))
    injected_mbq = float(rng.normal(358.0, 34.0))
    weight_kg = float(rng.uniform(50.0, 95.0))
    injected_ug = float(rng.uniform(1.0, 5.0))
    injection_minute = int(rng.integers(8 * 60, 15 * 60))
    input_jitter = rng.uniform(0.9, 1.1, 3)
    low, high = ATROPHY_RANGE[diagnosis]
    atrophy = AtrophySpec(ventricles=float(rng.uniform(*low)), cortex=float(rng.uniform(*high)))
    size_scale = float(np.clip((1.03 if sex == "M" else 0.98) + rng.normal(0, 0.03), 0.9, 1.1))
    lesions = draw_lesions(rng, anatomy) if diagnosis == "MS" else []

    deformation = random_deformation(rng, anatomy, atrophy=atrophy, size_scale=size_scale,
                                     deformation_scale=deformation_scale)
    t1w_pose = random_pose(rng, max_rotation_deg=(8, 4, 4), max_translation_mm=(6, 8, 8),
                           deformation_scale=deformation_scale)
    mt_pose = _jittered(rng, t1w_pose, 1.5, 2.0, deformation_scale)
    dwi_pose = _jittered(rng, t1w_pose, 1.5, 2.0, deformation_scale)
    pet_pose = random_pose(rng, max_rotation_deg=(6, 3, 3), max_translation_mm=(5, 8, 10),
                           deformation_scale=deformation_scale)
    dose = injected_mbq / weight_kg / NOMINAL_DOSE_PER_KG
    plasma = replace(NOMINAL_INPUT.scaled(dose), l2=NOMINAL_INPUT.l2 * float(input_jitter[0]),
                     l3=NOMINAL_INPUT.l3 * float(input_jitter[1]), delay=NOMINAL_INPUT.delay * float(input_jitter[2]))

    maps = subject_maps(rng, anatomy, myelin_scale=myelin_scale, lesions=lesions)
    kinetics = pib_parameter_maps(anatomy, maps, myelin_scale=myelin_scale, nondisplaceable=nondisplaceable,
                                  flow=flow)
    dvr_intrinsic = kinetics["vt"] / np.float32(kinetics["vt_ref"])
    wm, affine = anatomy.tissues["wm"], anatomy.affine

    # T1w: lesions hypointense ("black holes" where demyelination and oedema are large).
    drop = (T1W_LESION_DROP[0] * maps["occupancy"] + T1W_LESION_DROP[1] * maps["loss"]
            + T1W_LESION_DROP[2] * maps["edema"])
    t1w_grid = acquisition_grid(scaled(site.t1w.image, preset.t1w_zoom), head_center(t1w_pose, deformation))
    t1w, _ = simulate_t1w(rng, t1w_signal * (1.0 - drop * wm), anatomy, t1w_grid, t1w_pose, deformation,
                          site.t1w)

    mt_grid = acquisition_grid(scaled(protocols.mt.image, preset.t1w_zoom), head_center(mt_pose, deformation))
    mt = simulate_mt(rng, anatomy, maps, protocols.mt, protocols.mt.mtr_scale * mtr_subject, mt_grid, mt_pose,
                     deformation)
    dwi_grid = acquisition_grid(scaled(protocols.dwi.image, preset.pet_zoom), head_center(dwi_pose, deformation))
    dwi = simulate_dwi(rng, anatomy, maps, protocols.dwi, dwi_grid, dwi_pose, deformation, keep_noise_free)
    pib = simulate_pib(rng, anatomy, kinetics, plasma, site, preset, pet_pose, deformation, keep_noise_free)

    # Truth in template space (working grid) and on the T1w grid. Demyelinated: lesion voxels
    # below the voxel-wise HC norm's mean - 2 SD (Bodini 2016).
    grid = working_grid()

    def to_working(volume):
        return resample_to_grid(volume, affine, grid.shape, grid.affine)

    norm_mean, norm_sd = hc_norm_maps(anatomy)
    threshold = norm_mean - 2.0 * norm_sd
    dvr_template = to_working(dvr_intrinsic)
    lesion_template = to_working(maps["occupancy"]) >= 0.5
    demyelinated_template = lesion_template & (dvr_template < to_working(threshold))
    occupancy_t1w, labels_t1w, myelin_t1w, dvr_t1w, threshold_t1w, wm_t1w, pet_dvr_t1w = _pull_back_maps(
        [(maps["occupancy"], affine, 1), (maps["labels"], affine, 0), (maps["myelin"], affine, 1),
         (dvr_intrinsic, affine, 1), (threshold, affine, 1), (wm, affine, 1),
         (pib["dvr_pet_template"], grid.affine, 1)], t1w_grid, t1w_pose, deformation)
    lesion_t1w = occupancy_t1w >= 0.5
    labels_t1w = np.where(lesion_t1w, labels_t1w, 0).astype(np.int16)
    demyelinated_t1w = lesion_t1w & (dvr_t1w < threshold_t1w)
    wm_roi = (wm_t1w >= 0.5) | lesion_t1w
    nawm = wm_roi & ~lesion_t1w

    voxel_ml = float(np.prod(voxel_sizes(t1w_grid.affine))) / 1000.0
    lesion_rows = []
    for index, item in enumerate(lesions, start=1):
        voxels = labels_t1w == index
        lesion_rows.append({
            "lesion": index, "kind": item.kind, "demyelinated_fraction": item.demyelinated_fraction,
            "edema": item.edema, "n_voxels": int(voxels.sum()), "volume_ml": voxels.sum() * voxel_ml,
            "mean_dvr": _roi_mean(dvr_t1w, voxels), "mean_pet_dvr": _roi_mean(pet_dvr_t1w, voxels),
            "demyelinated_pct": 100.0 * (demyelinated_t1w & voxels).sum() / voxels.sum() if voxels.any()
            else float("nan"),
            "center_x_mm": item.center_mm[0], "center_y_mm": item.center_mm[1], "center_z_mm": item.center_mm[2]})
    n_lesion = int(lesion_t1w.sum())
    summary = {
        "n_lesions": len(lesions),
        "lesion_volume_ml": n_lesion * voxel_ml,
        "demyelinated_pct": 100.0 * demyelinated_t1w.sum() / n_lesion if n_lesion else float("nan"),
        "dvr_lesion": _roi_mean(dvr_t1w, lesion_t1w), "dvr_nawm": _roi_mean(dvr_t1w, nawm),
        "dvr_wm": _roi_mean(dvr_t1w, wm_roi),
        "pet_dvr_lesion": _roi_mean(pet_dvr_t1w, lesion_t1w), "pet_dvr_nawm": _roi_mean(pet_dvr_t1w, nawm),
        "pet_dvr_wm": _roi_mean(pet_dvr_t1w, wm_roi),
    }
    brain_points = _brain_sample_points()
    coverage = {name: round(fov_coverage(brain_points, pose, deformation, native), 4) for name, pose, native in (
        ("t1w", t1w_pose, t1w_grid), ("mt", mt_pose, mt_grid), ("dwi", dwi_pose, dwi_grid),
        ("pet", pet_pose, pib["pet_grid"]))}

    params = {
        "diagnosis": diagnosis,
        "anatomy": {**deformation.params, "template_space": TEMPLATE_SPACE,
                    "anatomy_resolution_mm": anatomy.resolution},
        "poses": {"t1w": t1w_pose.as_dict(), "mt": mt_pose.as_dict(), "dwi": dwi_pose.as_dict(),
                  "pet": pet_pose.as_dict()},
        "myelin": {"subject_scale": myelin_scale, "wm": MYELIN_WM, "gm": MYELIN_GM, "deep_gm": MYELIN_DEEP_GM,
                   "wm_field_sd": WM_MYELIN_FIELD_SD, "field_sigma_mm": FIELD_SIGMA_MM},
        "lesions": [item.as_dict() for item in lesions],
        "kinetics": {
            "model": "one-tissue compartment per voxel, VT = K1/k2, no vascular fraction; "
                     "times in minutes, rates per minute, kBq/mL decay-corrected to injection",
            "plasma_input_feng1993": plasma.as_dict(),
            "vt_nd": kinetics["vt_nd"], "pib_b": PIB_B, "pib_p": PIB_P, "flow_scale": flow,
            "k1_tissue": K1_TISSUE, "background_k1_vt_over_vtnd": BACKGROUND_KINETICS,
            "reference": {"region": "pure cerebellar grey matter", "k1": kinetics["k1_ref"],
                          "k2": kinetics["k1_ref"] / kinetics["vt_ref"], "vt": kinetics["vt_ref"]},
            "logan_t_star_min": LOGAN_T_STAR_MIN,
            "frame_times_start_s": list(PIB_FRAME_TIMES_START), "frame_duration_s": list(PIB_FRAME_DURATION),
            "frame_noise_cov_at_reference": [round(float(c), 6) for c in pib["frame_covs"]],
            "tac_basis_rank": int(pib["svd_rank"]),
        },
        "mr": {"mtr_site_scale": protocols.mt.mtr_scale, "mtr_subject_scale": mtr_subject,
               "diffusivity_site_scale": protocols.dwi.diffusivity_scale, "bvalue": protocols.dwi.bvalue,
               "n_directions": protocols.dwi.n_directions, "n_b0": protocols.dwi.n_b0},
        "pet_fwhm_mm": list(site.pet.fwhm_mm),
        "brain_in_fov": coverage,
        "hc_wm_norm": hc_wm_norm(),
        "truth": {**summary, "inverse_residual_mm": pib["inverse_residual_mm"]},
    }
    return {
        "t1w": t1w, "t1w_affine": t1w_grid.affine, **mt, "mt_affine": mt_grid.affine,
        **dwi, "dwi_affine": dwi_grid.affine, **pib,
        "dvr_template": dvr_template, "myelin_template": to_working(maps["myelin"]),
        "lesion_template": lesion_template, "demyelinated_template": demyelinated_template,
        "lesion_t1w": lesion_t1w, "labels_t1w": labels_t1w, "demyelinated_t1w": demyelinated_t1w,
        "myelin_t1w": myelin_t1w, "dvr_t1w": dvr_t1w, "pet_dvr_t1w": pet_dvr_t1w, "wm_t1w": wm_t1w,
        "lesion_table": pd.DataFrame(lesion_rows, columns=LESION_COLUMNS),
        "plasma": plasma, "reference_k1": kinetics["k1_ref"], "reference_vt": kinetics["vt_ref"],
        "summary": summary, "params": params, "lesions": lesions,
        "deformation": deformation, "t1w_pose": t1w_pose, "pet_pose": pet_pose, "dwi_pose": dwi_pose,
        "injected_mbq": injected_mbq, "injected_ug": injected_ug, "weight_kg": weight_kg,
        "injection_minute": injection_minute,
    }


@functools.lru_cache(maxsize=1)
def _working_brain() -> np.ndarray:
    mask = np.asarray(nib.load(str(brain_mask(WORKING_RESOLUTION))).dataobj) > 0
    mask.flags.writeable = False
    return mask


# ---------------------------------------------------------------------------------------
# Sidecars and writing

_MR_SEQUENCE_KEYS = ("MRAcquisitionType", "PulseSequenceType", "ScanningSequence", "SequenceVariant",
                     "SequenceName", "RepetitionTime", "EchoTime", "FlipAngle", "InversionTime")


def _mr_scanner(site: Site) -> dict:
    """The site's MR scanner fields (those of its T1w sidecar, less the sequence)."""
    return {k: v for k, v in t1w_sidecar(site).items() if k not in _MR_SEQUENCE_KEYS}


def mt_sidecar(site: Site, state: bool | None) -> dict:
    """Sidecar of an MT image (``state`` True/False: ``mt-on``/``mt-off``) or of the MTR map (None).

    BIDS qMRI "MTR" file collection: ``MTState`` is required with the ``mt`` entity.
    """
    p = myelin_protocols(site).mt
    sidecar = {**_mr_scanner(site), "MRAcquisitionType": "3D", "PulseSequenceType": "MT-weighted spoiled GRE",
               "ScanningSequence": "GR", "SequenceVariant": "SP\\SK", "SequenceName": "mt_fl3d",
               "RepetitionTime": p.repetition_time_s, "EchoTime": p.echo_time_s, "FlipAngle": p.flip_angle_deg}
    mt_pulse = {"MTOffsetFrequency": p.offset_hz, "MTPulseBandwidth": round(2.0 / p.pulse_duration_s, 1),
                "MTPulseShape": "GAUSSIAN", "MTNumberOfPulses": 1, "MTPulseDuration": p.pulse_duration_s}
    if state is None:
        return {**sidecar, **mt_pulse, "Description": "Magnetisation transfer ratio, percent: "
                "100 (Moff - Mon) / Moff of the MT-off and MT-on images"}
    return {**sidecar, "MTState": state, **(mt_pulse if state else {})}


def dwi_sidecar(site: Site) -> dict:
    """Sidecar of the DWI series (single-shell spin-echo EPI)."""
    p = myelin_protocols(site).dwi
    return {**_mr_scanner(site), "MRAcquisitionType": "2D", "PulseSequenceType": "SE-EPI",
            "ScanningSequence": "EP", "SequenceVariant": "SK\\SS", "SequenceName": "ep_b1000",
            "RepetitionTime": p.repetition_time_s, "EchoTime": p.echo_time_s, "FlipAngle": 90.0,
            "PhaseEncodingDirection": p.phase_encoding_direction, "TotalReadoutTime": p.total_readout_time_s}


def pib_sidecar(site: Site, subject: dict) -> dict:
    """PET sidecar: the amyloid cohort's fields (scanner, reconstruction, required PET fields)
    with the [11C]PIB tracer and the 0-90 min dynamic framing (1-min bolus; Wei 2019)."""
    sidecar = pet_sidecar(site, subject)
    start, duration = list(PIB_FRAME_TIMES_START), list(PIB_FRAME_DURATION)
    molar = subject["injected_mbq"] / subject["injected_ug"] * PIB_MOLECULAR_WEIGHT / 1000.0
    sidecar.update({
        "TracerName": "PIB",
        "TracerRadionuclide": "C11",
        "TracerMolecularWeight": PIB_MOLECULAR_WEIGHT,
        "PharmaceuticalName": "Pittsburgh compound B",
        "MolarActivity": round(molar, 3),
        "InjectionEnd": 60,
        "ScanStart": 0,
        "FrameTimesStart": start,
        "FrameDuration": duration,
        "DecayCorrectionFactor": [round(float(f), 6) for f in
                                  decay_correction_factors(start, duration, C11_HALF_LIFE_S)],
        "ScaleFactor": [1.0] * len(start),
    })
    return sidecar


PARTICIPANT_COLUMNS = {
    "participant_id": {"Description": "Unique participant label"},
    "site": {"Description": "Acquisition site (also the image sidecars' InstitutionName)"},
    "diagnosis": {"Description": "Clinical diagnosis",
                  "Levels": {"HC": "healthy control", "MS": "multiple sclerosis"}},
    "group": {"Description": "Study group", "Levels": {"control": "healthy control", "patient": "MS patient"}},
    "age": {"Description": "Age at the PET scan", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
}

TRUTH_COLUMNS = {
    "participant_id": {"Description": "Participant label"},
    "site": {"Description": "Acquisition site"},
    "diagnosis": {"Description": "HC or MS"},
    "group": {"Description": "control or patient"},
    "n_lesions": {"Description": "Number of simulated lesions (0 in HC)"},
    "lesion_volume_ml": {"Description": "Lesion-mask volume on the T1w grid", "Units": "mL"},
    "demyelinated_pct": {"Description": "Percentage of lesion voxels (T1w grid) whose intrinsic DVR is "
                                        "below the HC WM norm mean - 2 SD (hc_norm.json; Bodini 2016)"},
    "dvr_lesion": {"Description": "Mean intrinsic DVR (VT/VT_ref, no PET blur) in the lesion mask"},
    "dvr_nawm": {"Description": "Mean intrinsic DVR in normal-appearing WM (WM fraction >= 0.5, "
                                "outside lesions), T1w grid"},
    "dvr_wm": {"Description": "Mean intrinsic DVR in all WM (NAWM and lesions), T1w grid"},
    "pet_dvr_lesion": {"Description": "Mean PET-resolution DVR (blurred VT / VT_ref: Logan reference "
                                      "DVR of the noise-free PET) in the lesion mask, T1w grid"},
    "pet_dvr_nawm": {"Description": "Mean PET-resolution DVR in NAWM, T1w grid"},
    "pet_dvr_wm": {"Description": "Mean PET-resolution DVR in all WM, T1w grid"},
}

README = """\
# Synthetic [11C]PIB myelin cohort (synthquant.phantom)

Synthetic healthy controls (HC) and multiple-sclerosis patients (MS) across {n_sites} sites
({sites}), made by `synthquant.phantom.make_myelin_cohort` with preset `{preset}` and seed {seed},
after the data of Wei et al. (Medical Image Analysis 2019) and Bodini et al. (Ann Neurol 2016).
No human data: the anatomy is the MNI152 2009a template's tissue priors under random smooth
deformations, head pose and mild atrophy.

Each subject has a T1w (MS lesions hypointense), an MTR map in percent (`_MTRmap`) or, for some,
the MT-off/MT-on pair it comes from (`_mt-off_MTR`, `_mt-on_MTR`; MTR = 100 (Moff - Mon) / Moff),
a single-shell DWI ({n_dirs} directions at b = {bvalue:g} s/mm2 and {n_b0} b = 0 volumes) and a
dynamic [11C]PIB PET of {n_frames} frames over 0-90 min in kBq/mL (decay-corrected to injection).
Patients' lesion masks are the derivatives dataset `derivatives/lesions/` (T1w grid).

The PET follows a one-tissue compartment model per voxel from a Feng plasma input, so the
Logan reference-tissue plot (Logan 1996; pure cerebellar grey matter, t* = 35 min) of the
noise-free PET recovers the true PET-resolution DVR.

Ground truth is under `sourcedata/truth/`: per subject the true DVR (intrinsic and at PET
resolution, native and template space), the myelin map, DTI and MTR truth maps, lesion labels and
demyelinated-voxel masks, the kinetic parameters and noise-free reference TAC; `truth.tsv`
summarises each subject and `hc_norm.json` (with voxel-wise maps) gives the HC white-matter DVR
norm and the demyelination threshold (mean - 2 SD; Bodini 2016).
"""


def make_myelin_cohort(out_dir: str | Path, *, n_subjects: int = 12, preset: str = "benchmark",
                       seed: int = 0, sites=None, deformation_scale: float = 1.0,
                       overwrite: bool = False, verbose: bool = False) -> Path:
    """Write a BIDS dataset of a synthetic HC/MS myelin cohort with ground truth.

    Parameters
    ----------
    out_dir
        The dataset folder; built aside and renamed into place when complete. It must be
        absent or empty, or (with ``overwrite``) an earlier phantom dataset.
    n_subjects
        Number of subjects, spread over the sites with HC and MS balanced. Every fourth subject
        (``sub-02``, ``sub-06``, ...) has the MT-off/MT-on pair instead of the MTR map.
    preset
        ``"benchmark"`` (1 mm anatomy; T1w ~1 mm, DWI ~2 mm, PET ~2 mm), ``"demo"`` (2 mm anatomy)
        or ``"test"`` (3 mm anatomy; seconds per subject).
    seed
        Non-negative integer; the same seed and options give the same files, byte for byte.
    sites
        Site names from :data:`synthquant.phantom.sites.SITES` or :class:`Site` objects;
        default the three built-in sites.
    deformation_scale
        Scales every departure from template space (deformation, atrophy, size, poses).
    overwrite
        Replace an existing phantom dataset at ``out_dir``.
    verbose
        Print one line per subject with its time and truth.
    """
    check_cohort_arguments(n_subjects, seed, deformation_scale)
    chosen = get_preset(preset)
    site_list = resolve_sites(sites)
    site_by_name = {s.name: s for s in site_list}
    roster = cohort_roster(int(n_subjects), site_list, int(seed))
    anatomy = template_anatomy(chosen.anatomy_mm)
    t1w_signals: dict[str, np.ndarray] = {}
    dwi_example = myelin_protocols(site_list[0]).dwi

    with bw.staged_dataset(out_dir, overwrite) as root:
        bw.write_dataset_description(root, "synthquant phantom: [11C]PIB myelin cohort (HC/MS)",
                                     seed=int(seed), preset=chosen.name)
        atomic_write_text(README.format(
            n_sites=len(site_list), sites=", ".join(site_by_name), preset=chosen.name, seed=seed,
            n_dirs=dwi_example.n_directions, bvalue=dwi_example.bvalue, n_b0=dwi_example.n_b0,
            n_frames=len(PIB_FRAME_DURATION)), root / "README.md")
        bw.write_participants(root, roster, PARTICIPANT_COLUMNS)
        lesion_root = root / "derivatives" / "lesions"
        bw.write_derivative_description(
            lesion_root, "synthquant phantom: MS lesion masks", seed=int(seed), preset=chosen.name,
            description="Binary lesion masks on each patient's T1w grid (label-lesion_mask)")
        atomic_write_text("# Lesion masks (synthquant.phantom)\n\nOne binary mask per MS patient, "
                          "`sub-<L>/anat/sub-<L>_label-lesion_mask.nii.gz`, on the grid of the raw "
                          "dataset's T1w (`../../`). Healthy controls have none.\n", lesion_root / "README.md")
        truth_dir = root / "sourcedata" / "truth"
        truth_rows = []
        for index, row in roster.iterrows():
            started = time.perf_counter()
            site = site_by_name[row["site"]]
            if site.name not in t1w_signals:
                t1w_signals[site.name] = contrast_map(anatomy, site.t1w.contrast)
            rng = np.random.default_rng([int(seed), int(index), 7])
            subject = simulate_myelin_subject(rng, anatomy, site, chosen, row["diagnosis"], row["sex"],
                                              t1w_signals[site.name], deformation_scale)
            label = row["participant_id"].removeprefix("sub-")
            mt_pair = index % 4 == 1
            _write_subject(root, label, site, subject, mt_pair=mt_pair, seed=int(seed), preset=chosen.name)
            truth_rows.append({"participant_id": row["participant_id"], "site": site.name,
                               "diagnosis": row["diagnosis"], "group": row["group"], **subject["summary"]})
            if verbose:
                s = subject["summary"]
                print(f"{row['participant_id']} {site.name:<10} {row['diagnosis']:<2} lesions {s['n_lesions']} "
                      f"demyelinated {s['demyelinated_pct']:.1f}% DVR WM {s['dvr_wm']:.3f} "
                      f"lesion {s['dvr_lesion']:.3f} ({time.perf_counter() - started:.1f} s)", flush=True)
        bw.write_tsv(pd.DataFrame(truth_rows, columns=list(TRUTH_COLUMNS)), truth_dir / "truth.tsv")
        bw.write_json(TRUTH_COLUMNS, truth_dir / "truth.json")
        bw.write_json(hc_wm_norm(), truth_dir / "hc_norm.json")
        grid = working_grid()
        norm_mean, norm_sd = hc_norm_maps(anatomy)
        for desc, volume in (("mean", norm_mean), ("sd", norm_sd), ("threshold", norm_mean - 2.0 * norm_sd)):
            bw.write_nifti(resample_to_grid(volume, anatomy.affine, grid.shape, grid.affine), grid.affine,
                           truth_dir / f"hc_norm_space-{TEMPLATE_SPACE}_desc-{desc}_dvr.nii.gz", np.float32)
    return Path(out_dir)


def _sidecar_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.name.replace(".nii.gz", ".json"))


def _write_subject(root: Path, label: str, site: Site, subject: dict, *, mt_pair: bool, seed: int,
                   preset: str) -> None:
    """Write one subject's raw images and sidecars, lesion mask (MS) and truth files."""
    t1w_path = bw.bids_path(root, label, "anat", "T1w", ".nii.gz")
    bw.write_nifti(subject["t1w"], subject["t1w_affine"], t1w_path, np.int16)
    bw.write_json(t1w_sidecar(site), _sidecar_path(t1w_path))

    if mt_pair:
        for state, key in (("off", "mt_off"), ("on", "mt_on")):
            path = bw.bids_path(root, label, "anat", "MTR", ".nii.gz", (("mt", state),))
            image = np.clip(np.rint(subject[key]), 0, np.iinfo(np.int16).max).astype(np.int16)
            bw.write_nifti(image, subject["mt_affine"], path, np.int16)
            bw.write_json(mt_sidecar(site, state == "on"), _sidecar_path(path))
    else:
        path = bw.bids_path(root, label, "anat", "MTRmap", ".nii.gz")
        bw.write_nifti(subject["mtr_map"], subject["mt_affine"], path, np.float32)
        bw.write_json(mt_sidecar(site, None), _sidecar_path(path))

    dwi_path = bw.bids_path(root, label, "dwi", "dwi", ".nii.gz")
    bw.write_nifti(subject["dwi"], subject["dwi_affine"], dwi_path, np.int16)
    bw.write_json(dwi_sidecar(site), _sidecar_path(dwi_path))
    stem = dwi_path.name.removesuffix(".nii.gz")
    atomic_write_text(" ".join(f"{b:g}" for b in subject["bvals"]) + "\n", dwi_path.with_name(stem + ".bval"))
    bvec = world_to_bvec(subject["gradients"], subject["dwi_affine"])
    atomic_write_text("".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in bvec + 0.0),
                      dwi_path.with_name(stem + ".bvec"))

    pet_path = bw.bids_path(root, label, "pet", "pet", ".nii.gz", (("trc", TRACER),))
    bw.write_nifti(subject["pet"], subject["pet_affine"], pet_path, np.int16, scaled=True)
    bw.write_json(pib_sidecar(site, subject), _sidecar_path(pet_path))

    if subject["lesions"]:
        mask_path = bw.bids_path(root / "derivatives" / "lesions", label, "anat", "mask", ".nii.gz",
                                 (("label", "lesion"),))
        bw.write_nifti(subject["lesion_t1w"].astype(np.uint8), subject["t1w_affine"], mask_path, np.uint8)
        t1w_uri = f"bids:raw:sub-{label}/anat/sub-{label}_T1w.nii.gz"
        bw.write_json({"Type": "Lesion", "Description": "MS white-matter lesions (phantom truth, "
                       "occupancy >= 0.5), on the T1w grid", "Sources": [t1w_uri], "SpatialReference": t1w_uri},
                      _sidecar_path(mask_path))

    truth = root / "sourcedata" / "truth" / f"sub-{label}"
    prefix = f"sub-{label}"
    grid = working_grid()
    space = f"space-{TEMPLATE_SPACE}"
    images = [
        (subject["dvr_pet"], subject["pet_affine"], f"{prefix}_trc-{TRACER}_desc-true_dvr.nii.gz", np.float32),
        (subject["dvr_pet_template"], grid.affine, f"{prefix}_{space}_trc-{TRACER}_desc-true_dvr.nii.gz",
         np.float32),
        (subject["dvr_template"], grid.affine, f"{prefix}_{space}_desc-intrinsic_dvr.nii.gz", np.float32),
        (subject["dvr_t1w"], subject["t1w_affine"], f"{prefix}_space-T1w_desc-intrinsic_dvr.nii.gz", np.float32),
        (subject["myelin_template"], grid.affine, f"{prefix}_{space}_myelin.nii.gz", np.float32),
        (subject["myelin_t1w"], subject["t1w_affine"], f"{prefix}_space-T1w_myelin.nii.gz", np.float32),
        (subject["mtr_true"], subject["mt_affine"], f"{prefix}_space-MT_desc-true_MTRmap.nii.gz", np.float32),
    ]
    for name in ("FA", "AD", "RD", "MD", "V1"):
        images.append((subject["dti_truth"][name], subject["dwi_affine"], f"{prefix}_space-dwi_desc-true_{name}.nii.gz",
                       np.float32))
    if subject["lesions"]:
        images += [
            (subject["labels_t1w"], subject["t1w_affine"], f"{prefix}_space-T1w_label-lesion_dseg.nii.gz", np.int16),
            (subject["demyelinated_t1w"], subject["t1w_affine"],
             f"{prefix}_space-T1w_label-demyelinated_mask.nii.gz", np.uint8),
            (subject["lesion_template"], grid.affine, f"{prefix}_{space}_label-lesion_mask.nii.gz", np.uint8),
            (subject["demyelinated_template"], grid.affine, f"{prefix}_{space}_label-demyelinated_mask.nii.gz",
             np.uint8),
        ]
    for data, affine, name, dtype in images:
        bw.write_nifti(np.asarray(data).astype(dtype), affine, truth / name, dtype)
    if subject["lesions"]:
        bw.write_tsv(subject["lesion_table"], truth / f"{prefix}_lesions.tsv")
    tacs = pd.DataFrame({"frame_start_s": PIB_FRAME_TIMES_START, "frame_duration_s": PIB_FRAME_DURATION,
                         "plasma_kbq_ml": plasma_frame_means(subject["plasma"], np.array(PIB_FRAME_TIMES_START) / 60,
                                                             np.array(PIB_FRAME_DURATION) / 60),
                         "reference_kbq_ml": subject["reference_tac"]})
    bw.write_tsv(tacs, truth / f"{prefix}_trc-{TRACER}_desc-noisefree_tacs.tsv")
    bw.write_json({"participant_id": prefix, "site": site.name, "preset": preset, "seed": seed,
                   "mt_form": "pair" if mt_pair else "map", **subject["params"]},
                  truth / f"{prefix}_params.json")
