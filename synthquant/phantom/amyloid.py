"""Florbetapir (FBP) amyloid cohort: NC, MCI and AD subjects with a T1w and a 4-frame PET.

Uptake model (template space, relative to cerebellar grey matter):

    U = gm * u_gm(AAL2 region) + wm * u_wm + csf * u_csf + head layers

- Cerebellar GM is the reference and carries no amyloid: ``u = 1``.
- Cortex: ``u = 1.05 + LOAD_GAIN * amyloid_load * w(region)``. ``w`` is ~0.85-1.1 in the
  composite regions (Choi & Lee 2018) and the precuneus, lower in sensorimotor, occipital
  and mesial temporal cortex, which FBP plaques reach late (Thal phases). ``LOAD_GAIN``
  makes up for partial volume: at 5-8 mm FWHM the composite recovers only about half of a
  grey-matter contrast, and the gain puts the measured composite SUVR where FBP studies
  report it (NC ~1.1, AD ~1.4-1.7).
- White matter is high, ``u_wm`` ~ U(1.6, 1.8): FBP binds non-specifically to myelin.
- Deep grey nuclei sit between (WM-adjacent), CSF and the scalp are low.

The map is scaled to kBq/mL by a cerebellar SUV times injected activity over body weight,
and decay-corrected to injection (TimeZero). Amyloid load is U(0, 0.05) in NC, U(0, 0.35)
in MCI (a mix of amyloid-negative and -positive) and U(0.3, 0.6) in AD.

Ground truth: the noise-free, motion-free, PSF-blurred native PET seen on the working grid
through the true inverse deformation, then :func:`synthquant.quantify.suvr_map` and
:func:`synthquant.quantify.regional_suvr`: what a perfect normalisation would measure.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from synthquant import __version__
from synthquant.atlases import (
    TEMPLATE_SPACE,
    WORKING_RESOLUTION,
    aal2_table,
    brain_mask,
    region_masks,
    working_grid,
)
from synthquant.atlases.regions import COMPOSITE_REGIONS
from synthquant.errors import InputError
from synthquant.image import atomic_write_text
from synthquant.phantom import bids_writer as bw
from synthquant.phantom.anatomy import (
    AtrophySpec,
    TemplateAnatomy,
    grey_matter_labels,
    head_center,
    fov_coverage,
    random_deformation,
    random_pose,
    template_anatomy,
)
from synthquant.phantom.mri import contrast_map, simulate_t1w
from synthquant.phantom.pet import (
    acquire_frames,
    add_count_noise,
    blurred_native_pet,
    frame_motions,
    truth_on_template,
)
from synthquant.phantom.sites import (
    Preset,
    Site,
    acquisition_grid,
    check_cohort_arguments,
    get_preset,
    resolve_sites,
    scaled,
)
from synthquant.quantify import regional_suvr, suvr_map

TRACER = "FBP"
DIAGNOSES = ("NC", "MCI", "AD")
GROUPS = {"NC": "control", "MCI": "patient", "AD": "patient"}
AMYLOID_LOAD_RANGE = {"NC": (0.0, 0.05), "MCI": (0.0, 0.35), "AD": (0.3, 0.6)}
AGE_RANGE = {"NC": (60, 80), "MCI": (62, 85), "AD": (64, 88)}
#: Ranges of the atrophy components (:class:`AtrophySpec`: ventricular, cerebral-GM and
#: hippocampal volume loss prescribed to the deformation). Measured native volume ratios at
#: the AD end: ventricles ~1.6-2x, cerebral GM ~0.95, hippocampi ~0.7-0.8 (Fox & Schott,
#: Lancet 2004); each subject's ratios are in its params JSON.
ATROPHY_RANGE = {
    "NC": ((0.05, 0.2), (0.0, 0.05), (0.0, 0.08)),
    "MCI": ((0.3, 0.45), (0.06, 0.12), (0.1, 0.2)),
    "AD": ((0.55, 0.75), (0.12, 0.2), (0.25, 0.4)),
}

#: PET timing (s from injection): four 5-minute frames, 50-70 min (the FBP label's window).
FRAME_TIMES_START = (3000.0, 3300.0, 3600.0, 3900.0)
FRAME_DURATION = (300.0, 300.0, 300.0, 300.0)
#: Slow washout over the window; it scales every region alike, so SUVR is unchanged.
FRAME_WASHOUT = (1.0, 0.992, 0.984, 0.976)
F18_HALF_LIFE_S = 6586.2
FBP_MOLECULAR_WEIGHT = 359.4  # g/mol, [18F]florbetapir, C20H25(18F)N2O3

#: Amyloid-load weight of each composite sub-region (Choi & Lee 2018's composite).
COMPOSITE_LOAD_WEIGHTS = {"frontal": 1.0, "cingulate": 1.1, "superior_parietal": 0.9,
                          "lateral_temporal": 0.85}
CORTEX_BASELINE = 1.05
#: Grey-matter uptake gained per unit of amyloid load (before the regional weight).
LOAD_GAIN = 1.8
#: Other grey matter: AAL2 stem -> (baseline uptake, amyloid-load weight).
OTHER_GM_UPTAKE: dict[str, tuple[float, float]] = {
    "Precuneus": (1.05, 1.05),
    **{s: (1.05, 0.8) for s in ("Parietal_Inf", "SupraMarginal", "Angular")},
    **{s: (1.05, 0.65) for s in ("Insula", "Cingulate_Mid")},
    **{s: (1.05, 0.5) for s in ("Temporal_Pole_Sup", "Temporal_Pole_Mid", "Fusiform")},
    **{s: (1.05, 0.35) for s in ("Occipital_Sup", "Occipital_Mid", "Occipital_Inf", "Calcarine",
                                 "Cuneus", "Lingual")},
    **{s: (1.05, 0.3) for s in ("Precentral", "Postcentral", "Supp_Motor_Area",
                                "Paracentral_Lobule", "Rolandic_Oper", "Heschl", "Olfactory")},
    **{s: (1.0, 0.2) for s in ("Hippocampus", "ParaHippocampal", "Amygdala")},
    **{s: (1.15, 0.45) for s in ("Caudate", "Putamen")},
    **{s: (1.25, 0.1) for s in ("Pallidum", "Thalamus")},
}
REFERENCE_STEMS = ("Cerebelum_", "Vermis_")
#: GM with no AAL2 label nearby (brainstem, rim far from any region): baseline, load weight.
UNLABELLED_GM_UPTAKE = (1.1, 0.3)
UNLABELLED = "unlabelled"
#: Uptake outside grey and white matter, relative to cerebellar GM.
BACKGROUND_UPTAKE = {"csf": 0.15, "extra_csf": 0.15, "skull": 0.2, "fat": 0.25, "skin": 0.4}

PARTICIPANT_COLUMNS = {
    "participant_id": {"Description": "Unique participant label"},
    "site": {"Description": "Acquisition site (also the image sidecars' InstitutionName)"},
    "diagnosis": {"Description": "Clinical diagnosis",
                  "Levels": {"NC": "normal cognition", "MCI": "mild cognitive impairment",
                             "AD": "Alzheimer's disease dementia"}},
    "group": {"Description": "Study group",
              "Levels": {"control": "normal control", "patient": "MCI or AD"}},
    "age": {"Description": "Age at the PET scan", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
}
TRUTH_COLUMNS = ("participant_id", "site", "diagnosis", "amyloid_load", "composite_suvr", "centiloid")


def _stem(name: str) -> str:
    return name[:-2] if name.endswith(("_L", "_R")) else name


def gm_uptake(amyloid_load: float, jitter: np.ndarray) -> pd.Series:
    """Grey-matter uptake of every AAL2 region (relative to cerebellar GM), by name.

    The last entry, ``"unlabelled"``, is for grey matter with no AAL2 label nearby.
    ``jitter`` (one value per AAL2 row) perturbs each region's load weight, so that
    subjects do not share one regional pattern.
    """
    composite = {stem: COMPOSITE_LOAD_WEIGHTS[region]
                 for region, stems in COMPOSITE_REGIONS.items() for stem in stems}
    names = aal2_table()["name"]
    values = []
    for name, wobble in zip(names, jitter):
        stem = _stem(name)
        if name.startswith(REFERENCE_STEMS):
            values.append(1.0)
            continue
        if stem in composite:
            baseline, weight = CORTEX_BASELINE, composite[stem]
        elif stem in OTHER_GM_UPTAKE:
            baseline, weight = OTHER_GM_UPTAKE[stem]
        else:
            raise KeyError(f"AAL2 region {name} has no uptake rule")
        values.append(baseline + LOAD_GAIN * amyloid_load * weight * (1.0 + wobble))
    baseline, weight = UNLABELLED_GM_UPTAKE
    values.append(baseline + LOAD_GAIN * amyloid_load * weight)
    return pd.Series(values, index=[*names, UNLABELLED], name="u_gm")


def uptake_map(anatomy: TemplateAnatomy, regional: pd.Series, u_wm: float) -> np.ndarray:
    """The template-space FBP uptake map ``U`` (cerebellar GM = 1); see the module docstring."""
    table = aal2_table()
    lookup = np.full(int(table["index"].max()) + 1, regional[UNLABELLED], np.float32)
    lookup[table["index"].to_numpy()] = regional.reindex(table["name"]).to_numpy()
    uptake = anatomy.tissues["gm"] * lookup[grey_matter_labels(anatomy)]
    uptake += np.float32(u_wm) * anatomy.tissues["wm"]
    for tissue, value in BACKGROUND_UPTAKE.items():
        uptake += np.float32(value) * anatomy.tissues[tissue]
    return uptake


@functools.lru_cache(maxsize=1)
def truth_support() -> np.ndarray:
    """Working-grid voxels where the truth is computed: the brain and every quantified region."""
    support = np.asarray(nib.load(str(brain_mask(WORKING_RESOLUTION))).dataobj) > 0
    for mask in region_masks().values():
        support |= mask
    support.flags.writeable = False
    return support


@functools.lru_cache(maxsize=1)
def _brain_sample_points() -> np.ndarray:
    """Every other working-grid voxel of the brain mask along each axis, as world points (3, N)."""
    grid = working_grid()
    mask = np.zeros(grid.shape, bool)
    mask[::2, ::2, ::2] = np.asarray(nib.load(str(brain_mask(WORKING_RESOLUTION))).dataobj)[::2, ::2, ::2] > 0
    return grid.affine[:3, :3] @ np.argwhere(mask).T + grid.affine[:3, 3:4]


def cohort_roster(n_subjects: int, sites: list[Site], seed: int) -> pd.DataFrame:
    """participants.tsv: NC/MCI/AD balanced over sites (:func:`bids_writer.balanced_roster`)."""
    return bw.balanced_roster(n_subjects, sites, seed, stream=1_000_003, diagnoses=DIAGNOSES, age_range=AGE_RANGE,
                              groups=GROUPS, draw_sex=lambda rng: str(rng.choice(["F", "M"])))


def simulate_amyloid_subject(rng: np.random.Generator, anatomy: TemplateAnatomy, site: Site,
                             preset: Preset, diagnosis: str, sex: str, t1w_signal: np.ndarray,
                             deformation_scale: float = 1.0) -> dict:
    """Images, sidecar values and ground truth of one subject (nothing written).

    Parameters
    ----------
    rng
        The subject's own generator; consumed in a fixed order whatever the options.
    t1w_signal
        The site's template-space T1w contrast (:func:`synthquant.phantom.mri.contrast_map`).
    deformation_scale
        Multiplies the random deformation, atrophy, size, pose and motion; 0 leaves the
        subject in template space (identity map), which makes the truth checkable.
    """
    load = float(rng.uniform(*AMYLOID_LOAD_RANGE[diagnosis]))
    atrophy = AtrophySpec(*(float(rng.uniform(*r)) for r in ATROPHY_RANGE[diagnosis]))
    size_scale = float(np.clip((1.03 if sex == "M" else 0.98) + rng.normal(0, 0.03), 0.9, 1.1))
    u_wm = float(rng.uniform(1.6, 1.8))
    jitter = rng.normal(0.0, 0.05, len(aal2_table()))
    suv_reference = float(rng.uniform(1.0, 1.4))
    injected_mbq = float(rng.uniform(340.0, 400.0))
    weight_kg = float(rng.uniform(55.0, 95.0))
    injected_ug = float(rng.uniform(2.0, 8.0))
    injection_minute = int(rng.integers(8 * 60, 14 * 60))

    deformation = random_deformation(rng, anatomy, atrophy=atrophy, size_scale=size_scale,
                                     deformation_scale=deformation_scale)
    t1w_pose = random_pose(rng, max_rotation_deg=(8, 4, 4), max_translation_mm=(6, 8, 8),
                           deformation_scale=deformation_scale)
    pet_pose = random_pose(rng, max_rotation_deg=(6, 3, 3), max_translation_mm=(5, 8, 10),
                           deformation_scale=deformation_scale)
    motions = frame_motions(rng, len(FRAME_TIMES_START), scale=deformation_scale)

    # T1w: the site's contrast through this subject's anatomy and MR pose.
    t1w_grid = acquisition_grid(scaled(site.t1w.image, preset.t1w_zoom), head_center(t1w_pose, deformation))
    t1w, t1w_noise_free = simulate_t1w(rng, t1w_signal, anatomy, t1w_grid, t1w_pose, deformation, site.t1w)

    # PET: kBq/mL decay-corrected to injection; SUV = C / (activity / weight).
    regional = gm_uptake(load, jitter)
    reference_kbq_ml = suv_reference * injected_mbq * 1000.0 / (weight_kg * 1000.0)
    uptake = uptake_map(anatomy, regional, u_wm) * np.float32(reference_kbq_ml)
    fine_pet, fine = blurred_native_pet(uptake, anatomy, pet_pose, deformation, site.pet.fwhm_mm)
    pet_grid = acquisition_grid(scaled(site.pet.image, preset.pet_zoom), head_center(pet_pose, deformation))
    frames = acquire_frames(fine_pet, fine, pet_grid, motions, head_center(pet_pose, deformation),
                            FRAME_WASHOUT)
    frames = add_count_noise(rng, frames, reference_kbq_ml, site.pet.noise_cov)

    grid = working_grid()
    truth_pet, residual = truth_on_template(fine_pet, fine, grid.shape, grid.affine, pet_pose, deformation,
                                            where=truth_support())
    truth_suvr, reference = suvr_map(truth_pet)
    table = regional_suvr(truth_suvr)
    composite = table.set_index("region").loc["composite"]

    # How much of the brain each field of view holds (a coarse sample of the mask suffices).
    brain_points = _brain_sample_points()
    coverage = {"t1w": fov_coverage(brain_points, t1w_pose, deformation, t1w_grid),
                "pet": fov_coverage(brain_points, pet_pose, deformation, pet_grid)}

    params = {
        "diagnosis": diagnosis,
        "amyloid_load": load,
        "anatomy": {**deformation.params, "template_space": TEMPLATE_SPACE,
                    "anatomy_resolution_mm": anatomy.resolution},
        "t1w_pose": t1w_pose.as_dict(),
        "pet_pose": pet_pose.as_dict(),
        "pet_frame_motion": [m.as_dict() for m in motions],
        "uptake": {
            "u_wm": u_wm,
            "background": BACKGROUND_UPTAKE,
            "u_gm": {k: round(float(v), 6) for k, v in regional.items()},
            "cerebellar_suv": suv_reference,
            "cerebellar_gm_kbq_ml": reference_kbq_ml,
            "frame_washout": list(FRAME_WASHOUT),
        },
        "pet_fwhm_mm": list(site.pet.fwhm_mm),
        "brain_in_fov": {k: round(v, 4) for k, v in coverage.items()},
        "truth": {"reference_kbq_ml": reference, "inverse_residual_mm": residual,
                  "composite_suvr": float(composite["suvr"]), "centiloid": float(composite["centiloid"])},
    }
    return {
        "t1w": t1w, "t1w_affine": t1w_grid.affine, "t1w_noise_free": t1w_noise_free,
        "pet": frames, "pet_affine": pet_grid.affine,
        "truth_table": table, "truth_suvr": truth_suvr,
        "composite_suvr": float(composite["suvr"]), "centiloid": float(composite["centiloid"]),
        "amyloid_load": load, "params": params, "brain_in_fov": coverage,
        "deformation": deformation, "t1w_pose": t1w_pose, "pet_pose": pet_pose,
        "injected_mbq": injected_mbq, "injected_ug": injected_ug, "weight_kg": weight_kg,
        "injection_minute": injection_minute,
    }


def t1w_sidecar(site: Site) -> dict:
    """T1w JSON sidecar of a site's protocol."""
    p = site.t1w
    sidecar = {
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": p.model,
        "InstitutionName": site.name,
        "InstitutionalDepartmentName": "Radiology",
        "StationName": f"{site.name.upper()}-MR1",
        "DeviceSerialNumber": f"{site.name}-mr-0001",
        "SoftwareVersions": f"synthquant.phantom {__version__}",
        "MagneticFieldStrength": p.field_strength_t,
        "ReceiveCoilName": "Head32",
        "CoilCombinationMethod": "rSOS",
        "NonlinearGradientCorrection": True,
        "MRAcquisitionType": "3D",
        "PulseSequenceType": p.sequence,
        "ScanningSequence": "GR\\IR" if p.inversion_time_s is not None else "GR",
        "SequenceVariant": "SK\\SP\\MP" if p.inversion_time_s is not None else "SK\\SP\\SS",
        "SequenceName": p.sequence.lower(),
        "RepetitionTime": p.repetition_time_s,
        "EchoTime": p.echo_time_s,
        "FlipAngle": p.flip_angle_deg,
    }
    if p.inversion_time_s is not None:
        sidecar["InversionTime"] = p.inversion_time_s
    return sidecar


def pet_sidecar(site: Site, subject: dict) -> dict:
    """PET JSON sidecar: every field BIDS requires for PET, plus the recommended timing."""
    p = site.pet
    decay = np.log(2.0) / F18_HALF_LIFE_S
    start, duration = np.array(FRAME_TIMES_START), np.array(FRAME_DURATION)
    # Decay correction to injection, averaged over each frame's duration.
    decay_factor = np.exp(decay * start) * decay * duration / (1.0 - np.exp(-decay * duration))
    minute = subject["injection_minute"]
    time_zero = f"{minute // 60:02d}:{minute % 60:02d}:00"
    return {
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": p.model,
        "InstitutionName": site.name,
        "InstitutionalDepartmentName": "Nuclear Medicine",
        "StationName": f"{site.name.upper()}-PET1",
        "DeviceSerialNumber": f"{site.name}-pet-0001",
        "SoftwareVersions": f"synthquant.phantom {__version__}",
        "BodyPart": "Brain",
        "Units": "kBq/mL",
        "TracerName": "florbetapir",
        "TracerRadionuclide": "F18",
        "TracerMolecularWeight": FBP_MOLECULAR_WEIGHT,
        "TracerMolecularWeightUnits": "g/mol",
        "PharmaceuticalName": "Amyvid",
        "InjectedRadioactivity": round(subject["injected_mbq"], 2),
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": round(subject["injected_ug"], 3),
        "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(subject["injected_mbq"] / subject["injected_ug"], 3),
        "SpecificRadioactivityUnits": "MBq/ug",
        "SpecificRadioactivityMeasTime": time_zero,
        "InjectedMassPerWeight": round(subject["injected_ug"] / subject["weight_kg"], 4),
        "InjectedMassPerWeightUnits": "ug/kg",
        # g/mol is ug/umol, so MBq/ug times g/mol is MBq/umol.
        "MolarActivity": round(
            subject["injected_mbq"] / subject["injected_ug"] * FBP_MOLECULAR_WEIGHT / 1000.0, 3),
        "MolarActivityUnits": "GBq/umol",
        "MolarActivityMeasTime": time_zero,
        "InjectedVolume": 10.0,
        "Purity": 99.0,
        "BodyWeight": round(subject["weight_kg"], 1),
        "ModeOfAdministration": "bolus",
        "TimeZero": time_zero,
        "InjectionStart": 0,
        "InjectionEnd": 10,
        "ScanStart": FRAME_TIMES_START[0],
        "FrameTimesStart": list(FRAME_TIMES_START),
        "FrameDuration": list(FRAME_DURATION),
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "DecayCorrectionFactor": [round(float(f), 6) for f in decay_factor],
        "ScaleFactor": [1.0] * len(FRAME_TIMES_START),
        "ReconMethodName": p.recon_method,
        "ReconMethodImplementationVersion": f"synthquant.phantom {__version__}",
        "ReconMethodParameterLabels": list(p.recon_labels),
        "ReconMethodParameterUnits": list(p.recon_units),
        "ReconMethodParameterValues": list(p.recon_values),
        "ReconFilterType": p.recon_filter,
        "ReconFilterSize": p.recon_filter_mm,
        "AttenuationCorrection": p.attenuation_correction,
        "ScatterCorrectionMethod": "single scatter simulation",
        "RandomsCorrectionMethod": "delayed coincidences",
    }


README = """\
# Synthetic florbetapir amyloid cohort (synthquant.phantom)

Synthetic NC, MCI and AD subjects across {n_sites} sites ({sites}), made by
`synthquant.phantom.make_amyloid_cohort` with preset `{preset}` and seed {seed}.
No human data: the anatomy is the MNI152 2009a template's tissue priors under random smooth
deformations, head pose, brain-size scaling and atrophy (ventricular expansion, cortical
thinning, hippocampal shrinkage), with a synthesised scalp and skull.

Each subject has a T1w (site-specific voxel size, orientation, contrast, bias field, Rician
noise) and a florbetapir PET of four 5-minute frames from 50 to 70 min after injection
(site-specific resolution and voxel size, inter-frame head motion, count noise), in kBq/mL.

Ground truth is under `sourcedata/truth/`: per subject, the regional SUVR table
(cerebellar grey-matter reference, AAL2 regions masked by template GM, and the composite
cortex) that a perfect spatial normalisation of the noise-free, motion-free PET would give,
the true SUVR map on the 2 mm template grid, the T1w before noise (`desc-noisefree`, on the
T1w's grid: what a perfect pseudo-MR could reproduce), and the simulation parameters (JSON);
`truth.tsv` summarises composite SUVR and Centiloid per subject.
"""

TRUTH_README = {
    "participant_id": {"Description": "Participant label"},
    "site": {"Description": "Acquisition site"},
    "diagnosis": {"Description": "NC, MCI or AD"},
    "amyloid_load": {"Description": "Simulated cortical amyloid load (composite uptake "
                                    "rises by load times a regional weight of ~0.85-1.1)"},
    "composite_suvr": {"Description": "True composite SUVR (cerebellar GM reference) of the "
                                      "PSF-blurred, noise-free PET under perfect normalisation"},
    "centiloid": {"Description": "True Centiloid (GAAIN VOIs, FBP equation of Navitsky 2018)"},
}


def make_amyloid_cohort(out_dir: str | Path, *, n_subjects: int = 12, preset: str = "benchmark",
                        seed: int = 0, sites=None, deformation_scale: float = 1.0,
                        overwrite: bool = False, verbose: bool = False) -> Path:
    """Write a BIDS dataset of a synthetic florbetapir cohort with ground truth.

    Parameters
    ----------
    out_dir
        The dataset folder; built aside and renamed into place when complete. It must be
        absent or empty, or (with ``overwrite``) an earlier phantom dataset.
    n_subjects
        Number of subjects, spread over the sites with diagnoses balanced.
    preset
        ``"benchmark"`` (1 mm anatomy, T1w ~1 mm, PET ~2 mm), ``"demo"`` (2 mm anatomy) or
        ``"test"`` (3 mm anatomy; seconds per subject).
    seed
        Non-negative integer; the same seed and options give the same files, byte for byte.
    sites
        Site names from :data:`synthquant.phantom.sites.SITES` or :class:`Site` objects;
        default the three built-in sites.
    deformation_scale
        Scales every departure from template space (deformation, atrophy, size, pose,
        motion); 0 makes identity subjects whose truth is checkable in template space.
    overwrite
        Replace an existing phantom dataset at ``out_dir``.
    verbose
        Print one line per subject with its time and truth.

    Returns
    -------
    Path
        ``out_dir``.
    """
    check_cohort_arguments(n_subjects, seed, deformation_scale)
    chosen = get_preset(preset)
    site_list = resolve_sites(sites)
    site_by_name = {s.name: s for s in site_list}
    roster = cohort_roster(int(n_subjects), site_list, int(seed))
    anatomy = template_anatomy(chosen.anatomy_mm)
    t1w_signals: dict[str, np.ndarray] = {}

    with bw.staged_dataset(out_dir, overwrite) as root:
        bw.write_dataset_description(root, "synthquant phantom: florbetapir amyloid cohort",
                                     seed=int(seed), preset=chosen.name)
        atomic_write_text(README.format(
            n_sites=len(site_list), sites=", ".join(site_by_name), preset=chosen.name, seed=seed),
            root / "README.md")
        bw.write_participants(root, roster, PARTICIPANT_COLUMNS)
        truth_rows = []
        for index, row in roster.iterrows():
            started = time.perf_counter()
            site = site_by_name[row["site"]]
            if site.name not in t1w_signals:
                t1w_signals[site.name] = contrast_map(anatomy, site.t1w.contrast)
            rng = np.random.default_rng([int(seed), int(index)])
            subject = simulate_amyloid_subject(rng, anatomy, site, chosen, row["diagnosis"], row["sex"],
                                               t1w_signals[site.name], deformation_scale)
            label = row["participant_id"].removeprefix("sub-")
            _write_subject(root, label, site, subject, seed=int(seed), preset=chosen.name)
            truth_rows.append({"participant_id": row["participant_id"], "site": site.name,
                               "diagnosis": row["diagnosis"], "amyloid_load": subject["amyloid_load"],
                               "composite_suvr": subject["composite_suvr"],
                               "centiloid": subject["centiloid"]})
            if verbose:
                print(f"{row['participant_id']} {site.name:<10} {row['diagnosis']:<3} "
                      f"load {subject['amyloid_load']:.3f} composite SUVR "
                      f"{subject['composite_suvr']:.3f} CL {subject['centiloid']:.1f} "
                      f"({time.perf_counter() - started:.1f} s)", flush=True)
        truth_dir = root / "sourcedata" / "truth"
        bw.write_tsv(pd.DataFrame(truth_rows, columns=list(TRUTH_COLUMNS)), truth_dir / "truth.tsv")
        bw.write_json(TRUTH_README, truth_dir / "truth.json")
    return Path(out_dir)


def _write_subject(root: Path, label: str, site: Site, subject: dict, *, seed: int, preset: str) -> None:
    """Write one subject's images, sidecars and truth files."""
    t1w_path = bw.bids_path(root, label, "anat", "T1w", ".nii.gz")
    bw.write_nifti(subject["t1w"], subject["t1w_affine"], t1w_path, np.int16)
    bw.write_json(t1w_sidecar(site), t1w_path.with_name(t1w_path.name.replace(".nii.gz", ".json")))

    pet_path = bw.bids_path(root, label, "pet", "pet", ".nii.gz", (("trc", TRACER),))
    bw.write_nifti(subject["pet"], subject["pet_affine"], pet_path, np.float32)
    bw.write_json(pet_sidecar(site, subject), pet_path.with_name(pet_path.name.replace(".nii.gz", ".json")))

    truth_dir = root / "sourcedata" / "truth" / f"sub-{label}"
    bw.write_tsv(subject["truth_table"], truth_dir / f"sub-{label}_trc-{TRACER}_suvr.tsv")
    grid = working_grid()
    bw.write_nifti(subject["truth_suvr"], grid.affine,
                   truth_dir / f"sub-{label}_space-{TEMPLATE_SPACE}_trc-{TRACER}_suvr.nii.gz", np.float32)
    # The T1w before noise (bias and gain kept; int16 rounding is below 0.1 % of WM).
    bw.write_nifti(np.rint(subject["t1w_noise_free"]), subject["t1w_affine"],
                   truth_dir / f"sub-{label}_desc-noisefree_T1w.nii.gz", np.int16)
    bw.write_json({"participant_id": f"sub-{label}", "site": site.name, "preset": preset, "seed": seed,
                   **subject["params"]}, truth_dir / f"sub-{label}_params.json")
