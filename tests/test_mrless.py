"""The MR-less methods through the command line: model and template checks, device choice,
and end-to-end runs on a PET-only subject.

A bad model, device or template folder is one line naming the file and the reason, exit 2,
before any subject runs (so nothing is half-written). The synthmr run uses the bundled demo
weights (trained on phantoms); the PET-template runs use templates averaged from the phantom's
true template-space SUVR maps. Both are compared with the phantom's truth.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthquant.cli import main
from synthquant.models import BUNDLED_MODELS_DIR, MR_FROM_FBP
from synthquant.nets import define_G, save_model
from synthquant.nets.inference import grid_note
from synthquant.phantom import make_amyloid_cohort


@pytest.fixture(scope="module")
def pet_only_bids(tmp_path_factory) -> Path:
    """Six phantom subjects (sub-01 and sub-04 NC) whose T1w are removed: only MR-less methods can run."""
    bids = make_amyloid_cohort(tmp_path_factory.mktemp("mrless") / "bids", n_subjects=6, preset="test", seed=1)
    for path in bids.glob("sub-*/anat/sub-*_T1w.*"):
        path.unlink()
    return bids


@pytest.fixture(scope="module")
def pet_templates(pet_only_bids, tmp_path_factory) -> Path:
    """FBP templates from the phantom's true SUVR maps in template space (what a perfect
    MR-based normalisation of these subjects would give)."""
    from synthquant.evaluation import truth_table
    from synthquant.pettemplates import build_pet_templates

    truth = truth_table(pet_only_bids)
    composite = truth[truth["region"] == "composite"].set_index("participant_id")["suvr_true"]
    participants = pd.read_csv(pet_only_bids / "participants.tsv", sep="\t").set_index("participant_id")
    maps = sorted((pet_only_bids / "sourcedata/truth").glob("sub-*/sub-*_space-MNI152NLin2009aSym_trc-FBP_suvr.nii.gz"))
    labels = [m.name.split("_")[0] for m in maps]
    folder = tmp_path_factory.mktemp("templates") / "pet_templates"
    build_pet_templates(maps, [composite[k] for k in labels], [participants.loc[k, "diagnosis"] for k in labels],
                        folder, n_levels=2, dataset="test phantom", synthetic=True)
    return folder


def _run(capsys, bids: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    status = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", "--nprocs", "1",
                   "-w", str(tmp_path / "work"), "--template-resolution", "3", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return status, captured.err


def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(define_G(base_features=4, depth=6), folder / MR_FROM_FBP,
               {"input_grid": {"voxel_mm": [1.2, 1.0, 1.0], "matrix": [192, 256]}})
    return folder


def _corrupt(folder: Path) -> tuple[str, str]:
    weights = folder / f"{MR_FROM_FBP}.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return weights.name, "truncated or corrupt"


def _pickled(folder: Path) -> tuple[str, str]:
    weights = folder / f"{MR_FROM_FBP}.safetensors"
    weights.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    return weights.name, "is a pickle"


def _wrong_architecture(folder: Path) -> tuple[str, str]:
    card_path = folder / f"{MR_FROM_FBP}.json"
    card = json.loads(card_path.read_text())
    card["architecture"] = "ResNetGenerator"
    card_path.write_text(json.dumps(card))
    return card_path.name, "unknown architecture 'ResNetGenerator'"


def _wrong_shape(folder: Path) -> tuple[str, str]:
    card_path = folder / f"{MR_FROM_FBP}.json"
    card = json.loads(card_path.read_text())
    card["kwargs"]["base_features"] = 8  # the weights are for 4
    card_path.write_text(json.dumps(card))
    return f"{MR_FROM_FBP}.safetensors", "wrong shape"


def _missing(folder: Path) -> tuple[str, str]:
    (folder / f"{MR_FROM_FBP}.safetensors").unlink()
    return f"{MR_FROM_FBP}.safetensors", "model file not found"


def _other_grid(folder: Path) -> tuple[str, str]:
    card_path = folder / f"{MR_FROM_FBP}.json"
    card = json.loads(card_path.read_text())
    card["input_grid"] = {"voxel_mm": [2.0, 2.0, 2.0], "matrix": [128, 128]}
    card_path.write_text(json.dumps(card))
    return card_path.name, "input grid"


@pytest.mark.parametrize("spoil", [_missing, _corrupt, _pickled, _wrong_architecture, _wrong_shape, _other_grid])
def test_bad_model_is_one_line_and_nothing_runs(spoil, pet_only_bids, tmp_path, capsys):
    folder = _model_dir(tmp_path)
    filename, reason = spoil(folder)
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--models", str(folder))
    assert status == 2
    errors = [line for line in stderr.splitlines() if line.startswith("synthquant: error:")]
    assert len(errors) == 1, stderr
    assert filename in errors[0] and reason in errors[0], errors[0]
    assert not (tmp_path / "out" / "sub-01").exists()


def test_missing_models_dir(pet_only_bids, tmp_path, capsys):
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--models", str(tmp_path / "nowhere"))
    assert status == 2
    assert f"{tmp_path / 'nowhere'}: --models directory not found" in stderr


def test_cuda_without_gpu_is_one_line(pet_only_bids, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--device", "cuda", "--models", str(_model_dir(tmp_path)))
    assert status == 2
    assert "--device cuda: no CUDA GPU is visible" in stderr
    assert not (tmp_path / "out" / "sub-01").exists()


def _affine(voxels, axes=(0, 1, 2), signs=(1, 1, 1)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = 0
    for data_axis, (world_axis, sign, size) in enumerate(zip(axes, signs, voxels)):
        affine[world_axis, data_axis] = sign * size
    return affine


def test_grid_note_flags_only_far_grids():
    assert grid_note(_affine((1.2, 1.0, 1.0))) is None
    assert grid_note(_affine((1.0, 1.0, 1.2))) is None  # within 1.5x on every axis
    note = grid_note(_affine((2.0, 2.0, 3.27)))
    assert note and "2.00 x 2.00 x 3.27 mm" in note and "resampled" in note
    # A sagittal PET stores (y, z, x): its 1.2 mm axis is world x, so it sits on the model grid.
    assert grid_note(_affine((1.0, 1.0, 1.2), axes=(1, 2, 0), signs=(-1, -1, 1))) is None


@pytest.mark.skipif(not (BUNDLED_MODELS_DIR / f"{MR_FROM_FBP}.safetensors").exists(),
                    reason="demo weights not bundled")
def test_pet_only_subject_runs_synthmr_with_demo_weights(pet_only_bids, tmp_path, capsys):
    # sub-01 only (the assertions' subject; the suite's 20-min budget). Default methods: synthmr (no T1w).
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--participant-label", "01")
    assert status == 0, stderr
    assert "demo weights trained on synthetic phantoms only" in stderr
    out = tmp_path / "out"
    pseudo = out / "sub-01/anat/sub-01_desc-synthmr_T1w.nii.gz"
    pet = nib.load(pet_only_bids / "sub-01/pet/sub-01_trc-FBP_pet.nii.gz")
    assert nib.load(pseudo).shape == pet.shape[:3]
    assert np.allclose(nib.load(pseudo).affine, pet.affine, atol=1e-4)
    sidecar = json.loads(next(out.rglob("sub-01_*_seg-AAL2_desc-synthmr_suvr.json")).read_text())
    bundled = json.loads((BUNDLED_MODELS_DIR / f"{MR_FROM_FBP}.json").read_text())
    assert sidecar["ModelSHA256"] == bundled["weights_sha256"]
    assert "phantom" in sidecar["ModelWarning"]
    # The test preset's PET voxels are far from 1.2 x 1 x 1 mm: the sidecar says it was resampled.
    assert any("synthesis model's grid" in note for note in sidecar.get("Notes", []))
    table = pd.read_csv(next(out.rglob("sub-01_*_seg-AAL2_desc-synthmr_suvr.tsv")), sep="\t")
    truth = pd.read_csv(pet_only_bids / "sourcedata/truth/sub-01/sub-01_trc-FBP_suvr.tsv", sep="\t")
    measured = table.set_index("region").loc["composite", "suvr"]
    expected = truth.set_index("region").loc["composite", "suvr"]
    # Coarse 3 mm SyN on a test-preset phantom: the mr method lands within ~0.03 here.
    assert abs(measured - expected) < 0.06, (measured, expected)
    shutil.rmtree(tmp_path / "work")


def test_template_methods_need_templates(pet_only_bids, tmp_path, capsys):
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--methods", "pettemplate", "multiatlas")
    assert status == 2
    assert "method(s) multiatlas, pettemplate need FBP PET templates" in stderr
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--methods", "pettemplate", "--pet-templates",
                          str(tmp_path / "none"))
    assert status == 2 and "PET template folder not found" in stderr
    assert not (tmp_path / "out" / "sub-01").exists()


def test_pet_template_methods_end_to_end(pet_only_bids, pet_templates, tmp_path, capsys):
    status, stderr = _run(capsys, pet_only_bids, tmp_path, "--methods", "pettemplate", "multiatlas", "petseg",
                          "--pet-templates", str(pet_templates), "--nprocs", "2", "--participant-label", "01")
    assert status == 0, stderr
    out = tmp_path / "out"
    tables = {m: pd.read_csv(next(out.rglob(f"sub-01_*_seg-AAL2_desc-{m}_suvr.tsv")), sep="\t").set_index("region")
              for m in ("pettemplate", "multiatlas", "petseg")}
    truth = pd.read_csv(pet_only_bids / "sourcedata/truth/sub-01/sub-01_trc-FBP_suvr.tsv", sep="\t")
    expected = truth.set_index("region").loc["composite", "suvr"]
    # sub-01 is a normal control: every PET-only method lands near the truth there (helper
    # measurements on this preset: within 0.08 for pettemplate; petseg is the loosest).
    for method, table in tables.items():
        assert abs(table.loc["composite", "suvr"] - expected) < 0.15, (method, table.loc["composite", "suvr"], expected)
    multiatlas = json.loads(next(out.rglob("sub-01_*_seg-AAL2_desc-multiatlas_suvr.json")).read_text())
    assert any(note.startswith("multiatlas: chose tpl-") for note in multiatlas["Notes"])
    assert multiatlas["PETTemplates"] and "Atropos" in json.loads(
        next(out.rglob("sub-01_*_seg-AAL2_desc-petseg_suvr.json")).read_text())["MethodDescription"]
    assert not list(out.rglob("*desc-petseg_T1w*"))  # no T1w exists for a PET-only method
    assert (out / "sub-01.html").exists()
