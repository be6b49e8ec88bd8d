"""The phantom amyloid cohort: valid BIDS, site differences, PET timing, and a true truth."""

from __future__ import annotations

import hashlib
import json
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from synthquant.atlases import working_grid
from synthquant.bids import bids_validator_executable
from synthquant.errors import InputError
from synthquant.image import resample_to_grid, voxel_sizes
from synthquant.phantom import make_amyloid_cohort
from synthquant.phantom.__main__ import main as phantom_main
from synthquant.phantom.amyloid import (
    FRAME_DURATION,
    FRAME_TIMES_START,
    simulate_amyloid_subject,
    truth_support,
    uptake_map,
)
from synthquant.phantom.anatomy import push_to_template, template_anatomy
from synthquant.phantom.mri import contrast_map
from synthquant.phantom.pet import FWHM_TO_SIGMA
from synthquant.phantom.sites import PRESETS, SITES, scaled
from synthquant.quantify import regional_suvr, suvr_map

PRESET = PRESETS["test"]
N_SUBJECTS = 3  # one per site, and then NC, MCI and AD each once


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_amyloid_cohort(tmp_path_factory.mktemp("phantom") / "bids", n_subjects=N_SUBJECTS,
                               preset="test", seed=7)


@pytest.fixture(scope="module")
def participants(cohort):
    return pd.read_csv(cohort / "participants.tsv", sep="\t")


def _sidecar(image_path):
    return json.loads(image_path.with_name(image_path.name.replace(".nii.gz", ".json")).read_text())


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bids_validator_reports_no_errors(cohort):
    executable = bids_validator_executable()  # a runtime dependency: absent is a failure
    assert executable is not None, "bids-validator-deno is not installed"
    run = subprocess.run([str(executable), "--format", "json", str(cohort)], capture_output=True, text=True,
                         timeout=300)
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []


def test_participants_span_sites_and_diagnoses(cohort, participants):
    assert list(participants.columns) == ["participant_id", "site", "diagnosis", "group", "age", "sex"]
    assert participants["site"].nunique() >= 3
    assert set(participants["diagnosis"]) == {"NC", "MCI", "AD"}
    assert (participants["group"] == participants["diagnosis"].map(
        {"NC": "control", "MCI": "patient", "AD": "patient"})).all()
    described = json.loads((cohort / "participants.json").read_text())
    assert set(participants.columns) <= set(described)
    assert not list(cohort.parent.glob(".*tmp*")), "staging folder left behind"


def test_sites_differ_in_orientation_and_voxel_size(cohort, participants):
    t1w_geometry, pet_geometry = set(), set()
    for _, row in participants.iterrows():
        site, sub = SITES[row["site"]], row["participant_id"]
        for path, spec, zoom, seen in (
                (cohort / sub / "anat" / f"{sub}_T1w.nii.gz", site.t1w.image, PRESET.t1w_zoom, t1w_geometry),
                (cohort / sub / "pet" / f"{sub}_trc-FBP_pet.nii.gz", site.pet.image, PRESET.pet_zoom,
                 pet_geometry)):
            img = nib.load(path)
            assert nib.aff2axcodes(img.affine) == spec.axcodes, path.name
            assert np.allclose(voxel_sizes(img.affine), scaled(spec, zoom).voxel_mm, atol=1e-3), path.name
            assert _sidecar(path)["InstitutionName"] == site.name == row["site"]
            seen.add((spec.axcodes, voxel_sizes(img.affine)))
        params = json.loads((cohort / "sourcedata" / "truth" / sub / f"{sub}_params.json").read_text())
        assert params["brain_in_fov"] == {"t1w": 1.0, "pet": 1.0}
    assert len(t1w_geometry) == len(pet_geometry) == 3
    # The axial site's T1w is oblique: its affine is not a permuted diagonal.
    lakeside = participants.loc[participants["site"] == "lakeside", "participant_id"].iloc[0]
    linear = nib.load(cohort / lakeside / "anat" / f"{lakeside}_T1w.nii.gz").affine[:3, :3]
    assert np.count_nonzero(np.abs(linear) > 1e-3) > 3


def test_noise_free_t1w_is_the_t1w_without_its_rician_noise(cohort, participants):
    """truth/desc-noisefree_T1w: same grid; T1w - noise-free is the site's noise, zero-mean and of
    the protocol's sigma where the signal is high (Rician ~ Gaussian there)."""
    for _, row in participants.iterrows():
        sub, protocol = row["participant_id"], SITES[row["site"]].t1w
        noisy = nib.load(cohort / sub / "anat" / f"{sub}_T1w.nii.gz")
        clean = nib.load(cohort / "sourcedata" / "truth" / sub / f"{sub}_desc-noisefree_T1w.nii.gz")
        assert clean.shape == noisy.shape and np.allclose(clean.affine, noisy.affine)
        clean, noisy = clean.get_fdata(), noisy.get_fdata()
        bright = clean > 10 * protocol.noise * protocol.gain
        residual = (noisy - clean)[bright]
        sigma = protocol.noise * protocol.gain
        assert abs(residual.mean()) < 0.05 * sigma
        assert residual.std() == pytest.approx(sigma, rel=0.05)


def test_pet_has_four_frames_matching_its_sidecar(cohort, participants):
    for sub in participants["participant_id"]:
        path = cohort / sub / "pet" / f"{sub}_trc-FBP_pet.nii.gz"
        frames = nib.load(path).get_fdata(dtype=np.float32)
        sidecar = _sidecar(path)
        assert frames.ndim == 4 and frames.shape[3] == 4
        assert sidecar["FrameTimesStart"] == [3000, 3300, 3600, 3900] == list(FRAME_TIMES_START)
        assert sidecar["FrameDuration"] == [300] * 4 == list(FRAME_DURATION)
        assert sidecar["ScanStart"] == 3000 and sidecar["TracerRadionuclide"] == "F18"
        assert sidecar["TracerName"] == "florbetapir" and sidecar["Units"] == "kBq/mL"
        assert np.isfinite(frames).all() and frames.min() >= 0
        # Frames differ (motion, noise) but not grossly (same static distribution).
        means = frames.reshape(-1, 4).mean(axis=0)
        assert not np.array_equal(frames[..., 0], frames[..., 1])
        assert np.ptp(means) / means.mean() < 0.05


def test_truth_tables_rise_with_amyloid_load(cohort, participants):
    truth = pd.read_csv(cohort / "sourcedata" / "truth" / "truth.tsv", sep="\t")
    assert list(truth["participant_id"]) == list(participants["participant_id"])
    by_dx = truth.set_index("diagnosis")
    assert 1.0 < by_dx.loc["NC", "composite_suvr"] < 1.2
    assert 1.3 < by_dx.loc["AD", "composite_suvr"] < 1.8
    assert by_dx.loc["NC", "centiloid"] < by_dx.loc["AD", "centiloid"]
    for sub in participants["participant_id"]:
        table = pd.read_csv(cohort / "sourcedata" / "truth" / sub / f"{sub}_trc-FBP_suvr.tsv", sep="\t")
        assert list(table.columns) == ["region", "suvr", "centiloid", "n_voxels"]
        composite = table.set_index("region").loc["composite"]
        expected = truth.set_index("participant_id").loc[sub, "composite_suvr"]
        assert composite["suvr"] == pytest.approx(expected, abs=1e-6)
        cerebellum = table[table["region"].str.startswith("Cerebelum_")]
        assert cerebellum["suvr"].between(0.8, 1.2).all()


def test_same_seed_gives_identical_files(cohort, tmp_path):
    again = make_amyloid_cohort(tmp_path / "again", n_subjects=N_SUBJECTS, preset="test", seed=7)
    assert _digest(again) == _digest(cohort)


def test_identity_subject_truth_matches_blurred_template_uptake(tmp_path):
    """With no deformation or pose, the truth is the template-space uptake map blurred by
    the PSF and put on the working grid: computed here with scipy and the atlas code only."""
    out = tmp_path / "identity"
    assert phantom_main([str(out), "--preset", "test", "--n-subjects", "1", "--deformation-scale", "0",
                         "--seed", "3", "-q"]) == 0
    truth_dir = out / "sourcedata" / "truth" / "sub-01"
    params = json.loads((truth_dir / "sub-01_params.json").read_text())
    assert params["anatomy"]["max_displacement_mm"] == 0
    anatomy = template_anatomy(PRESET.anatomy_mm)
    uptake = uptake_map(anatomy, pd.Series(params["uptake"]["u_gm"]), params["uptake"]["u_wm"])
    sigma = np.asarray(params["pet_fwhm_mm"]) * FWHM_TO_SIGMA / PRESET.anatomy_mm
    blurred = ndimage.gaussian_filter(uptake, sigma, mode="constant")
    grid = working_grid()
    expected = regional_suvr(suvr_map(resample_to_grid(blurred, anatomy.affine, grid.shape, grid.affine))[0])
    truth = pd.read_csv(truth_dir / "sub-01_trc-FBP_suvr.tsv", sep="\t")
    assert list(truth["region"]) == list(expected["region"])
    assert (truth["n_voxels"].to_numpy() == expected["n_voxels"].to_numpy()).all()
    np.testing.assert_allclose(truth["suvr"], expected["suvr"], atol=2e-5, equal_nan=True)

    # The same subject's T1w, on the template grid, has T1 contrast: WM > GM > CSF.
    t1w = nib.load(out / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    tpl = template_anatomy(PRESET.anatomy_mm)
    on_template = resample_to_grid(t1w.get_fdata(dtype=np.float32), t1w.affine, tpl.shape, tpl.affine)
    means = {t: on_template[tpl.tissues[t] > 0.9].mean() for t in ("wm", "gm", "csf")}
    assert means["wm"] > 1.2 * means["gm"] > 1.2 * 1.2 * means["csf"]


@pytest.mark.parametrize("site_name", ["lakeside", "hillcrest"])
def test_native_images_sit_where_the_truth_says(site_name):
    """Mapping the noisy native PET and the T1w back through the true inverse map recovers
    the truth and the template contrast: image affines, poses and the truth agree (a 3 mm
    shift fails both checks)."""
    anatomy = template_anatomy(PRESET.anatomy_mm)
    site = SITES[site_name]
    signal = contrast_map(anatomy, site.t1w.contrast)
    subject = simulate_amyloid_subject(np.random.default_rng(11), anatomy, site, PRESET, "AD", "F", signal)
    grid = working_grid()
    pet, residual = push_to_template(subject["pet"].mean(axis=-1), subject["pet_affine"], grid.shape,
                                     grid.affine, subject["pet_pose"], subject["deformation"],
                                     where=truth_support())
    assert residual < 0.05
    measured = regional_suvr(suvr_map(pet)[0])
    error = (measured["suvr"] - subject["truth_table"]["suvr"]).abs()
    assert error.median() < 0.03 and error.iloc[0] < 0.05
    t1w, _ = push_to_template(subject["t1w"].astype(np.float32), subject["t1w_affine"], anatomy.shape,
                              anatomy.affine, subject["t1w_pose"], subject["deformation"],
                              where=anatomy.brain)
    assert np.corrcoef(t1w[anatomy.brain], signal[anatomy.brain])[0, 1] > 0.95


def test_bad_input_fails_clearly(tmp_path):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file.txt").write_text("not a phantom")
    with pytest.raises(InputError, match="not empty"):
        make_amyloid_cohort(tmp_path / "occupied", n_subjects=1, preset="test")
    with pytest.raises(InputError, match="not a phantom"):
        make_amyloid_cohort(tmp_path / "occupied", n_subjects=1, preset="test", overwrite=True)
    with pytest.raises(InputError, match="preset"):
        make_amyloid_cohort(tmp_path / "new", preset="huge")
    with pytest.raises(InputError, match="site"):
        make_amyloid_cohort(tmp_path / "new", preset="test", sites=["atlantis"])
    assert phantom_main([str(tmp_path / "occupied"), "--preset", "test", "-q"]) == 2
    assert not (tmp_path / "new").exists()
