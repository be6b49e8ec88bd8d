"""The phantom myelin cohort: valid BIDS, site geometry, PIB kinetics, DWI tensors, MTR, and truth.

The kinetics and tensor checks are independent of the code under test: the plasma input,
the compartment convolution, the Logan reference plot (Logan et al. 1996) and the tensor fit
are written here again with numpy, from the parameters the cohort records.
"""

from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.signal import fftconvolve

from synthquant.bids import bids_validator_executable
from synthquant.errors import InputError
from synthquant.image import voxel_sizes
from synthquant.phantom import make_myelin_cohort
from synthquant.phantom.__main__ import main as phantom_main
from synthquant.phantom.anatomy import template_anatomy
from synthquant.phantom.mri import contrast_map
from synthquant.phantom.myelin import myelin_protocols, simulate_myelin_subject
from synthquant.phantom.sites import PRESETS, SITES, scaled

PRESET = PRESETS["test"]
N_SUBJECTS = 4  # three sites; two HC and two MS; sub-02 has the MT pair
SEED = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_myelin_cohort(tmp_path_factory.mktemp("myelin") / "bids", n_subjects=N_SUBJECTS,
                              preset="test", seed=SEED)


@pytest.fixture(scope="module")
def participants(cohort):
    return pd.read_csv(cohort / "participants.tsv", sep="\t")


@pytest.fixture(scope="module")
def truth(cohort):
    return pd.read_csv(cohort / "sourcedata" / "truth" / "truth.tsv", sep="\t").set_index("participant_id")


@pytest.fixture(scope="module")
def patient():
    """An MS subject at the site whose DWI affine has a positive determinant, kept in memory
    with its noise-free PET frames and DWI."""
    anatomy = template_anatomy(PRESET.anatomy_mm)
    site = SITES["lakeside"]
    return simulate_myelin_subject(np.random.default_rng(11), anatomy, site, PRESET, "MS", "F",
                                   contrast_map(anatomy, site.t1w.contrast), keep_noise_free=True)


def _sidecar(image_path):
    return json.loads(image_path.with_name(image_path.name.replace(".nii.gz", ".json")).read_text())


def _params(cohort, sub):
    return json.loads((cohort / "sourcedata" / "truth" / sub / f"{sub}_params.json").read_text())


def _truth_image(cohort, sub, name):
    return nib.load(cohort / "sourcedata" / "truth" / sub / f"{sub}_{name}.nii.gz")


def _validator_errors(path):
    executable = bids_validator_executable()  # a runtime dependency: absent is a failure
    assert executable is not None, "bids-validator-deno is not installed"
    run = subprocess.run([str(executable), "--format", "json", str(path)], capture_output=True, text=True,
                         timeout=300, check=False)
    issues = json.loads(run.stdout)["issues"]["issues"]
    return [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]


# --- independent kinetics: Feng input, numerical 1TC convolution, Logan reference plot -----

DT_MIN = 0.001


def _plasma(feng, t):
    """Feng 1993 model 2, written again from the recorded parameters."""
    u = t - feng["delay"]
    v = np.maximum(u, 0.0)
    value = ((feng["a1"] * v - feng["a2"] - feng["a3"]) * np.exp(feng["l1"] * v)
             + feng["a2"] * np.exp(feng["l2"] * v) + feng["a3"] * np.exp(feng["l3"] * v))
    return np.where(u >= 0, value, 0.0)


TIME_MIN = np.arange(0.0, 90.0 + DT_MIN / 2, DT_MIN)


def _frame_average(curve, starts_min, durations_min):
    """Mean of a curve sampled on TIME_MIN over each frame (trapezoid rule)."""
    cumulative = np.concatenate([[0.0], np.cumsum((curve[1:] + curve[:-1]) / 2 * DT_MIN)])
    first = np.rint(starts_min / DT_MIN).astype(int)
    last = np.rint((starts_min + durations_min) / DT_MIN).astype(int)
    return (cumulative[last] - cumulative[first]) / durations_min


def _frame_means_1tc(feng, k1, k2, starts_min, durations_min):
    """K1 exp(-k2 t) convolved with Cp on a 0.001-min grid (trapezoid), averaged over frames."""
    cp = _plasma(feng, TIME_MIN)
    tissue = k1 * (fftconvolve(cp, np.exp(-k2 * TIME_MIN))[: TIME_MIN.size] * DT_MIN - 0.5 * DT_MIN * cp)
    return _frame_average(tissue, starts_min, durations_min)


def _logan_reference_dvr(tacs, reference, starts_min, durations_min, t_star=35.0):
    """Voxel-wise Logan reference-tissue slope (Logan 1996, k2' term dropped), frames from t*."""
    def integral_to_mid(c):
        return np.cumsum(c * durations_min, axis=-1) - c * durations_min / 2

    late = starts_min + durations_min / 2 >= t_star
    x = integral_to_mid(reference)[late] / tacs[:, late]
    y = integral_to_mid(tacs)[:, late] / tacs[:, late]
    x0, y0 = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    return (x0 * y0).sum(axis=1) / (x0 * x0).sum(axis=1)


def _frames_min(kinetics):
    return (np.array(kinetics["frame_times_start_s"]) / 60.0, np.array(kinetics["frame_duration_s"]) / 60.0)


# --- tests ----------------------------------------------------------------------------------


def test_bids_validator_reports_no_errors(cohort):
    assert _validator_errors(cohort) == []
    # The nested lesion-mask derivatives dataset is valid on its own too.
    assert _validator_errors(cohort / "derivatives" / "lesions") == []
    description = json.loads((cohort / "derivatives" / "lesions" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_participants_balance_hc_and_ms_over_sites(cohort, participants):
    assert list(participants.columns) == ["participant_id", "site", "diagnosis", "group", "age", "sex"]
    assert participants["site"].nunique() >= 2
    assert participants["diagnosis"].value_counts().to_dict() == {"HC": 2, "MS": 2}
    assert (participants["group"] == participants["diagnosis"].map({"HC": "control", "MS": "patient"})).all()
    described = json.loads((cohort / "participants.json").read_text())
    assert set(participants.columns) <= set(described)
    assert not list(cohort.parent.glob(".*tmp*")), "staging folder left behind"


def test_images_follow_site_geometry_and_dwi_tables(cohort, participants):
    geometries = set()
    for _, row in participants.iterrows():
        site, sub = SITES[row["site"]], row["participant_id"]
        protocols = myelin_protocols(site)
        anat = cohort / sub / "anat"
        t1w = nib.load(anat / f"{sub}_T1w.nii.gz")
        assert nib.aff2axcodes(t1w.affine) == site.t1w.image.axcodes
        assert np.allclose(voxel_sizes(t1w.affine), scaled(site.t1w.image, PRESET.t1w_zoom).voxel_mm, atol=1e-3)
        mt_files = sorted(p.name for p in anat.glob(f"{sub}_*MTR*.nii.gz"))
        expected = [f"{sub}_mt-off_MTR.nii.gz", f"{sub}_mt-on_MTR.nii.gz"] if sub == "sub-02" \
            else [f"{sub}_MTRmap.nii.gz"]
        assert mt_files == expected
        mt = nib.load(anat / mt_files[0])
        assert nib.aff2axcodes(mt.affine) == protocols.mt.image.axcodes
        if sub != "sub-02":
            mtr = mt.get_fdata()
            assert mtr.min() >= 0 and mtr.max() <= 100

        dwi_path = cohort / sub / "dwi" / f"{sub}_dwi.nii.gz"
        dwi = nib.load(dwi_path)
        assert nib.aff2axcodes(dwi.affine) == protocols.dwi.image.axcodes
        assert np.allclose(voxel_sizes(dwi.affine), scaled(protocols.dwi.image, PRESET.pet_zoom).voxel_mm,
                           atol=1e-3)
        bvals = np.loadtxt(dwi_path.with_name(f"{sub}_dwi.bval"), ndmin=2)
        bvecs = np.loadtxt(dwi_path.with_name(f"{sub}_dwi.bvec"), ndmin=2)
        assert bvals.shape == (1, dwi.shape[3]) and bvecs.shape == (3, dwi.shape[3])
        weighted = bvals[0] == 1000
        assert weighted.sum() >= 30 and (bvals[0] == 0).sum() >= 1 and set(bvals[0]) == {0.0, 1000.0}
        np.testing.assert_allclose(np.linalg.norm(bvecs[:, weighted], axis=0), 1.0, atol=1e-5)
        assert not bvecs[:, ~weighted].any()
        assert _sidecar(dwi_path)["InstitutionName"] == site.name
        assert _params(cohort, sub)["brain_in_fov"] == {"t1w": 1.0, "mt": 1.0, "dwi": 1.0, "pet": 1.0}
        geometries.add((protocols.dwi.image.axcodes, voxel_sizes(dwi.affine)))
    assert len(geometries) == participants["site"].nunique()


def test_pib_frames_cover_0_to_90_minutes(cohort, participants):
    for sub in participants["participant_id"]:
        path = cohort / sub / "pet" / f"{sub}_trc-PIB_pet.nii.gz"
        frames = nib.load(path).get_fdata(dtype=np.float32)
        sidecar = _sidecar(path)
        start, duration = np.array(sidecar["FrameTimesStart"]), np.array(sidecar["FrameDuration"])
        assert frames.ndim == 4 and frames.shape[3] == start.size == duration.size == 22
        assert start[0] == 0 and start[-1] + duration[-1] == 90 * 60
        np.testing.assert_array_equal(start[1:], start[:-1] + duration[:-1])
        assert sidecar["TracerName"] == "PIB" and sidecar["TracerRadionuclide"] == "C11"
        assert sidecar["Units"] == "kBq/mL" and sidecar["ScanStart"] == 0
        assert len(sidecar["DecayCorrectionFactor"]) == 22
        assert np.isfinite(frames).all() and frames.min() >= 0
        # A bolus: activity rises within minutes, then washes out.
        means = frames.reshape(-1, 22).mean(axis=0)
        assert means.argmax() < 10 and means[-1] < 0.5 * means.max()


def test_analytic_kinetics_match_numerical_convolution(cohort, participants):
    """The recorded noise-free reference and plasma TACs equal a numerical convolution of the
    recorded Feng input: the analytic 1TC solution and its frame integration are right."""
    for sub in participants["participant_id"]:
        kinetics = _params(cohort, sub)["kinetics"]
        feng, reference = kinetics["plasma_input_feng1993"], kinetics["reference"]
        starts, durations = _frames_min(kinetics)
        tacs = pd.read_csv(cohort / "sourcedata" / "truth" / sub / f"{sub}_trc-PIB_desc-noisefree_tacs.tsv",
                           sep="\t")
        numeric = _frame_means_1tc(feng, reference["k1"], reference["k2"], starts, durations)
        np.testing.assert_allclose(tacs["reference_kbq_ml"], numeric, rtol=1e-3, atol=1e-4)
        assert reference["vt"] == pytest.approx(reference["k1"] / reference["k2"])
        plasma = _frame_average(_plasma(feng, TIME_MIN), starts, durations)
        np.testing.assert_allclose(tacs["plasma_kbq_ml"], plasma, rtol=1e-3, atol=1e-4)


def test_logan_reference_plot_recovers_true_dvr(patient):
    """Logan reference DVR (t* = 35 min) of the noise-free PET, voxel by voxel, equals the true
    PET-resolution DVR within 2 % (the model makes it exact up to frame discretisation)."""
    kinetics = patient["params"]["kinetics"]
    starts, durations = _frames_min(kinetics)
    reference = _frame_means_1tc(kinetics["plasma_input_feng1993"], kinetics["reference"]["k1"],
                                 kinetics["reference"]["k2"], starts, durations)
    truth = patient["dvr_pet"]
    tissue = truth > 0.5  # brain and other tissue, away from the empty background
    assert tissue.sum() > 5000
    dvr = _logan_reference_dvr(patient["pet_noise_free"][tissue].astype(np.float64), reference, starts, durations)
    error = np.abs(dvr / truth[tissue] - 1.0)
    assert np.median(error) < 0.005 and error.max() < 0.02
    # White matter well above grey matter, lesions below (Bodini 2016's PIB contrast).
    assert truth.max() > 1.4


def test_pure_tissue_tacs_give_their_dvr(patient):
    """Single 1TC tissues of the model (WM, a demyelinated lesion core, cortex) through the test's
    own convolution and Logan fit: DVR = VT / VT_ref within 1 %."""
    kinetics = patient["params"]["kinetics"]
    starts, durations = _frames_min(kinetics)
    feng, ref = kinetics["plasma_input_feng1993"], kinetics["reference"]
    reference = _frame_means_1tc(feng, ref["k1"], ref["k2"], starts, durations)
    vt_nd, b, p = kinetics["vt_nd"], kinetics["pib_b"], kinetics["pib_p"]
    flow = kinetics["flow_scale"]
    for k1, myelin in ((0.13, 1.1), (0.12, 0.15), (0.26, 0.3)):
        vt = vt_nd * (1 + b * myelin ** p)
        tac = _frame_means_1tc(feng, flow * k1, flow * k1 / vt, starts, durations)
        dvr = _logan_reference_dvr(tac[None], reference, starts, durations)[0]
        assert dvr == pytest.approx(vt / ref["vt"], rel=0.01)


def _tensor_fit(signal, bvals, gradients):
    """Log-linear least-squares tensor (Basser 1994) in the gradients' frame; returns eigenvalues
    (ascending) and principal vectors."""
    b0 = signal[:, bvals == 0].mean(axis=1)
    weighted = bvals > 0
    g = gradients[weighted]
    design = -bvals[weighted, None] * np.stack([g[:, 0] ** 2, 2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2],
                                                g[:, 1] ** 2, 2 * g[:, 1] * g[:, 2], g[:, 2] ** 2], axis=1)
    y = np.log(np.maximum(signal[:, weighted], 1e-6) / b0[:, None])
    d = np.linalg.lstsq(design, y.T, rcond=None)[0].T
    tensors = np.stack([np.stack([d[:, 0], d[:, 1], d[:, 2]], -1), np.stack([d[:, 1], d[:, 3], d[:, 4]], -1),
                        np.stack([d[:, 2], d[:, 4], d[:, 5]], -1)], -2)
    return np.linalg.eigh(tensors)


def _fa(values):
    md = values.mean(axis=1, keepdims=True)
    return np.sqrt(1.5 * ((values - md) ** 2).sum(axis=1) / (values ** 2).sum(axis=1))


def test_dwi_noise_free_signal_follows_the_tensor(patient):
    fa_true = patient["dti_truth"]["FA"]
    rng = np.random.default_rng(0)
    white = np.flatnonzero(fa_true.ravel() > 0.45)
    other = np.flatnonzero((fa_true.ravel() > 0) & (fa_true.ravel() < 0.2))
    assert white.size > 50 and other.size > 50
    voxels = np.concatenate([rng.choice(white, 40, replace=False), rng.choice(other, 40, replace=False)])
    signal = patient["dwi_noise_free"].reshape(-1, patient["dwi_noise_free"].shape[-1])[voxels]
    values, vectors = _tensor_fit(signal.astype(np.float64), patient["bvals"], patient["gradients"])
    np.testing.assert_allclose(_fa(values), fa_true.ravel()[voxels], atol=1e-3)
    np.testing.assert_allclose(values[:, 2], patient["dti_truth"]["AD"].ravel()[voxels], rtol=1e-3)
    v1 = patient["dti_truth"]["V1"].reshape(-1, 3)[voxels[:40]]
    assert np.abs((vectors[:40, :, 2] * v1).sum(axis=1)).min() > 0.999


def test_bvecs_follow_the_fsl_convention(cohort, participants):
    """Fitting the noisy DWI with bvecs read as BIDS/FSL (image axes, x negated when the affine's
    determinant is positive) gives principal directions along the true fibres (world axes)."""
    for sub in participants["participant_id"]:
        path = cohort / sub / "dwi" / f"{sub}_dwi.nii.gz"
        image = nib.load(path)
        bvals = np.loadtxt(path.with_name(f"{sub}_dwi.bval"))
        bvecs = np.loadtxt(path.with_name(f"{sub}_dwi.bvec")).T.copy()
        if np.linalg.det(image.affine[:3, :3]) > 0:
            bvecs[:, 0] *= -1
        world = bvecs @ (image.affine[:3, :3] / np.asarray(voxel_sizes(image.affine))).T
        fa = _truth_image(cohort, sub, "space-dwi_desc-true_FA").get_fdata().ravel()
        v1 = _truth_image(cohort, sub, "space-dwi_desc-true_V1").get_fdata().reshape(-1, 3)
        voxels = np.flatnonzero(fa > 0.5)
        assert voxels.size > 30
        signal = image.get_fdata(dtype=np.float32).reshape(-1, bvals.size)[voxels].astype(np.float64)
        values, vectors = _tensor_fit(signal, bvals, world)
        alignment = np.abs((vectors[:, :, 2] * v1[voxels]).sum(axis=1))
        assert np.median(alignment) > 0.9, sub
        assert np.median(np.abs(_fa(values) - fa[voxels])) < 0.1, sub


def test_mtr_from_the_pair_matches_the_formula(cohort):
    anat = cohort / "sub-02" / "anat"
    m_off = nib.load(anat / "sub-02_mt-off_MTR.nii.gz")
    m_on = nib.load(anat / "sub-02_mt-on_MTR.nii.gz")
    assert _sidecar(anat / "sub-02_mt-off_MTR.nii.gz")["MTState"] is False
    assert _sidecar(anat / "sub-02_mt-on_MTR.nii.gz")["MTState"] is True
    assert np.allclose(m_off.affine, m_on.affine) and m_off.shape == m_on.shape
    true_mtr = _truth_image(cohort, "sub-02", "space-MT_desc-true_MTRmap").get_fdata()
    off, on = m_off.get_fdata(), m_on.get_fdata()
    tissue = (true_mtr > 30) & (off > 0.4 * np.percentile(off, 99))  # brain and scalp, not bone
    mtr = 100.0 * (off[tissue] - on[tissue]) / off[tissue]
    error = mtr - true_mtr[tissue]
    # Unbiased, with the spread of Rician noise on both images (~3 percentage points).
    assert abs(np.median(error)) < 0.5 and np.median(np.abs(error)) < 3.5
    assert np.corrcoef(mtr, true_mtr[tissue])[0, 1] > 0.8
    # The MTR maps of the other subjects are the same quantity, from their own pairs.
    for sub in ("sub-01", "sub-03", "sub-04"):
        mtr_map = nib.load(cohort / sub / "anat" / f"{sub}_MTRmap.nii.gz").get_fdata()
        reference = _truth_image(cohort, sub, "space-MT_desc-true_MTRmap").get_fdata()
        error = (mtr_map - reference)[(reference > 30) & (mtr_map > 0)]
        assert abs(np.median(error)) < 0.5 and np.median(np.abs(error)) < 3.5


def test_truth_masks_and_tables(cohort, participants, truth):
    lesion_root = cohort / "derivatives" / "lesions"
    norm = json.loads((cohort / "sourcedata" / "truth" / "hc_norm.json").read_text())
    assert norm["threshold_dvr"] == pytest.approx(norm["mean_dvr"] - 2 * norm["sd_dvr"])
    for _, row in participants.iterrows():
        sub = row["participant_id"]
        t1w = nib.load(cohort / sub / "anat" / f"{sub}_T1w.nii.gz")
        summary = truth.loc[sub]
        mask_path = lesion_root / sub / "anat" / f"{sub}_label-lesion_mask.nii.gz"
        if row["diagnosis"] == "HC":
            assert not mask_path.exists() and summary["n_lesions"] == 0
            assert np.isnan(summary["demyelinated_pct"])
            assert not list((cohort / "sourcedata" / "truth" / sub).glob("*lesion*"))
            continue
        lesion = nib.load(mask_path)
        assert lesion.shape == t1w.shape and np.allclose(lesion.affine, t1w.affine)
        lesion = lesion.get_fdata() > 0
        demyelinated = _truth_image(cohort, sub, "space-T1w_label-demyelinated_mask").get_fdata() > 0
        labels = _truth_image(cohort, sub, "space-T1w_label-lesion_dseg").get_fdata()
        assert lesion.any() and not (demyelinated & ~lesion).any()
        np.testing.assert_array_equal(labels > 0, lesion)
        assert summary["demyelinated_pct"] == pytest.approx(100 * demyelinated.sum() / lesion.sum())
        assert summary["dvr_lesion"] < summary["dvr_nawm"]
        table = pd.read_csv(cohort / "sourcedata" / "truth" / sub / f"{sub}_lesions.tsv", sep="\t")
        assert len(table) == summary["n_lesions"] >= 4
        kinds = table.groupby("kind")
        assert set(kinds.groups) == {"demyelinated", "remyelinated"}
        assert (kinds.get_group("demyelinated")["demyelinated_fraction"] >= 0.45).all()
        assert (kinds.get_group("remyelinated")["demyelinated_fraction"] <= 0.08).all()
        pct = kinds["demyelinated_pct"].mean()
        assert pct["demyelinated"] > 60 and pct["remyelinated"] < pct["demyelinated"] - 30
        # Demyelinated lesions sit well below the HC norm; lesions are T1w-hypointense.
        assert kinds.get_group("demyelinated")["mean_dvr"].max() < norm["threshold_dvr"]
        t1 = t1w.get_fdata()
        myelin = _truth_image(cohort, sub, "space-T1w_myelin").get_fdata()
        nawm = (myelin > 0.85) & ~lesion
        assert t1[lesion].mean() < 0.9 * t1[nawm].mean()


def test_hc_norm_matches_a_monte_carlo_of_the_model(cohort):
    """The pure-WM norm equals the spread of the documented generative model, sampled here."""
    norm = json.loads((cohort / "sourcedata" / "truth" / "hc_norm.json").read_text())
    kinetics = _params(cohort, "sub-01")["kinetics"]
    b, p = kinetics["pib_b"], kinetics["pib_p"]
    rng = np.random.default_rng(1)
    scale = rng.normal(1.0, 0.04, 400_000)
    myelin = scale * (1 + 0.06 * rng.standard_normal(scale.size))
    dvr = (1 + b * myelin ** p) / (1 + b * (0.3 * scale) ** p)
    assert norm["mean_dvr"] == pytest.approx(dvr.mean(), rel=2e-3)
    assert norm["sd_dvr"] == pytest.approx(dvr.std(), rel=2e-2)
    mean_map = nib.load(cohort / "sourcedata" / "truth"
                        / "hc_norm_space-MNI152NLin2009aSym_desc-mean_dvr.nii.gz").get_fdata()
    assert mean_map.max() == pytest.approx(norm["mean_dvr"], rel=0.05)


def test_same_seed_gives_the_same_subject(patient):
    anatomy = template_anatomy(PRESET.anatomy_mm)
    site = SITES["lakeside"]
    again = simulate_myelin_subject(np.random.default_rng(11), anatomy, site, PRESET, "MS", "F",
                                    contrast_map(anatomy, site.t1w.contrast))
    for key in ("t1w", "mt_off", "mt_on", "dwi", "pet", "dvr_pet", "labels_t1w", "demyelinated_t1w"):
        np.testing.assert_array_equal(again[key], patient[key], err_msg=key)
    assert again["params"] == patient["params"]


def test_cli_writes_the_myelin_cohort(tmp_path):
    out = tmp_path / "cli"
    assert phantom_main([str(out), "--cohort", "myelin", "--preset", "test", "--n-subjects", "1",
                         "--seed", "2", "--sites", "lakeside", "-q"]) == 0
    assert "myelin" in json.loads((out / "dataset_description.json").read_text())["Name"]
    assert (out / "sub-01" / "pet" / "sub-01_trc-PIB_pet.nii.gz").exists()
    assert (out / "sourcedata" / "truth" / "truth.tsv").exists()


def test_bad_input_fails_clearly(tmp_path):
    with pytest.raises(InputError, match="preset"):
        make_myelin_cohort(tmp_path / "new", preset="huge")
    with pytest.raises(InputError, match="site"):
        make_myelin_cohort(tmp_path / "new", preset="test", sites=["atlantis"])
    with pytest.raises(InputError, match="n_subjects"):
        make_myelin_cohort(tmp_path / "new", preset="test", n_subjects=0)
    assert not (tmp_path / "new").exists()
