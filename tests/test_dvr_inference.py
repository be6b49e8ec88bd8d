"""dvr_from_mri inference (Wei et al. 2019): the card's normalisation applied and undone, the
whole-volume/sliding-window choice, NIfTI in and out with grid checks, saliency (eq. 7), and the
SynthesizeDVR Nipype interface."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthquant.errors import InputError
from synthquant.interfaces import SynthesizeDVR
from synthquant.myelin import MR_CHANNELS
from synthquant.nets.checkpoint import save_model
from synthquant.nets.dvr import (
    OVERLAP,
    SALIENCY_NOTE,
    WINDOW,
    auto_window,
    check_dvr_card,
    predict_dvr,
    synthesize_dvr,
)
from synthquant.nets.sketcher_refiner import Sketcher3D, SketcherRefiner3D, init_weights_3d, predict_volume

SHAPE = (24, 28, 20)
#: Native units as the training pairs hold them (MTR %, FA, RD and AD mm2/s).
STATS = {"MTR": (35.0, 8.0), "FA": (0.3, 0.15), "RD": (6e-4, 1.5e-4), "AD": (1.3e-3, 2e-4)}
TARGET_MEAN, TARGET_SD = 1.4, 0.25


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_card(**changes) -> dict:
    card = {
        "input_grid": {"voxel_mm": [2.0, 2.0, 2.0]},
        "modalities": list(MR_CHANNELS),
        "intensity_normalisation": {
            "input": {"channels": {c: {"mean": m, "sd": s, "n_voxels": 100} for c, (m, s) in STATS.items()}},
            "target": {"mean": TARGET_MEAN, "sd": TARGET_SD},
        },
        "synthetic_phantom_only": True, "warning": "phantom weights",
    }
    card.update(changes)
    return card


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SketcherRefiner3D({"base_features": 4}, {"base_features": 4})
    init_weights_3d(net)
    return net.eval()


@pytest.fixture(scope="module")
def subject():
    rng = np.random.default_rng(1)
    maps = {c: (m + s * rng.standard_normal(SHAPE)).astype(np.float32) for c, (m, s) in STATS.items()}
    brain = np.zeros(SHAPE, bool)
    brain[3:-3, 4:-4, 2:-2] = True
    return maps, brain


def test_predict_dvr_applies_and_undoes_the_cards_normalisation(model, subject):
    maps, brain = subject
    card = make_card()
    stacked = np.stack([np.where(brain, (maps[c] - m) / s, 0.0) for c, (m, s) in STATS.items()]).astype(np.float32)
    expected = np.where(brain, predict_volume(model, stacked)[0] * TARGET_SD + TARGET_MEAN, 0.0)
    dvr = predict_dvr(model, card, maps, brain)
    assert dvr.dtype == np.float32 and dvr.shape == SHAPE
    np.testing.assert_allclose(dvr, expected, rtol=1e-5, atol=1e-5)
    assert np.all(dvr[~brain] == 0) and dvr[brain].std() > 0
    # The channel order comes from MR_CHANNELS, not from the dict's order.
    shuffled = {c: maps[c] for c in reversed(MR_CHANNELS)}
    np.testing.assert_array_equal(predict_dvr(model, card, shuffled, brain), dvr)


def test_sliding_windows_only_beyond_the_budget(model, subject):
    assert auto_window(model, (80, 96, 80)) is None
    wide = Sketcher3D(base_features=32)
    assert auto_window(wide, (80, 96, 80)) is None and auto_window(wide, (160, 192, 160)) == WINDOW
    maps, brain = subject
    windowed = predict_dvr(model, make_card(), maps, brain, window=16)
    assert windowed.shape == SHAPE and np.isfinite(windowed).all() and np.all(windowed[~brain] == 0)
    assert OVERLAP < WINDOW


def test_card_checks(tmp_path):
    good = {**make_card(), "architecture": "SketcherRefiner3D"}
    check_dvr_card(good, tmp_path / "m.json")
    for change, reason in [({"architecture": "UNetGenerator2D"}, "architecture"),
                           ({"modalities": ["MTR", "FA", "AD", "RD"]}, "modalities"),
                           ({"input_grid": {}}, "voxel_mm"),
                           ({"intensity_normalisation": {"input": {"channels": {}}}}, "intensity_normalisation")]:
        with pytest.raises(InputError, match=reason) as error:
            check_dvr_card({**good, **change}, tmp_path / "m.json")
        assert "m.json" in str(error.value) and "\n" not in str(error.value)


def _write_maps(folder, maps, brain, affine) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in [*maps.items(), ("brain", brain.astype(np.uint8))]:
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data), affine), str(files[name]))
    return files


@pytest.fixture(scope="module")
def model_stem(model, tmp_path_factory):
    stem = tmp_path_factory.mktemp("models") / "dvr_from_mri"
    save_model(model, stem, make_card())
    return stem


#: An oblique 2 mm grid: the output must keep the input affine exactly.
AFFINE = np.array([[-2.0, 0.1, 0.0, 90.0], [0.0, 1.99, -0.2, -120.0], [0.0, 0.2, 1.99, -70.0], [0, 0, 0, 1]])


def test_synthesize_dvr_writes_the_prediction_on_the_input_grid(model, model_stem, subject, tmp_path):
    maps, brain = subject
    files = _write_maps(tmp_path / "in", maps, brain, AFFINE)
    result = synthesize_dvr(files["MTR"], files["FA"], files["RD"], files["AD"], files["brain"], model_stem,
                            tmp_path / "out" / "dvr.nii.gz", saliency_out=tmp_path / "out" / "saliency.nii.gz")
    image = nib.load(result["dvr"])
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
    loaded_maps = {c: nib.load(str(files[c])).get_fdata(dtype=np.float32) for c in MR_CHANNELS}
    np.testing.assert_allclose(image.get_fdata(), predict_dvr(model, make_card(), loaded_maps, brain), atol=1e-5)
    assert result["device"] == "cpu" and len(result["model_sha256"]) == 64
    assert SALIENCY_NOTE in result["notes"] and any("phantom" in note for note in result["notes"])
    saliency = nib.load(result["saliency"]).get_fdata()
    assert np.all(saliency >= 0) and np.all(saliency[~brain] == 0) and saliency[brain].max() > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dvr.nii.gz", "saliency.nii.gz"]


def test_synthesize_dvr_refuses_mismatched_grids(model_stem, subject, tmp_path):
    maps, brain = subject
    files = _write_maps(tmp_path / "in", maps, brain, AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0
    nib.save(nib.Nifti1Image(maps["FA"], shifted), str(files["FA"]))
    with pytest.raises(InputError, match="not on the grid of MTR") as error:
        synthesize_dvr(files["MTR"], files["FA"], files["RD"], files["AD"], files["brain"], model_stem,
                       tmp_path / "dvr.nii.gz")
    assert str(files["FA"]) in str(error.value)

    coarse = _write_maps(tmp_path / "coarse", maps, brain, np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(InputError, match="differ from the model's 2 x 2 x 2 mm") as error:
        synthesize_dvr(coarse["MTR"], coarse["FA"], coarse["RD"], coarse["AD"], coarse["brain"], model_stem,
                       tmp_path / "dvr.nii.gz")
    assert str(coarse["MTR"]) in str(error.value)
    assert not (tmp_path / "dvr.nii.gz").exists()

    near = _write_maps(tmp_path / "near", maps, brain, np.diag([2.15, 2.15, 2.15, 1.0]))  # within 10 %
    synthesize_dvr(near["MTR"], near["FA"], near["RD"], near["AD"], near["brain"], model_stem, tmp_path / "dvr.nii.gz")
    assert (tmp_path / "dvr.nii.gz").is_file()


def test_synthesize_dvr_refuses_a_card_with_other_modalities(model, subject, tmp_path):
    maps, brain = subject
    files = _write_maps(tmp_path / "in", maps, brain, AFFINE)
    stem = tmp_path / "dvr_from_mri"
    save_model(model, stem, make_card(modalities=["T1w", "FA", "RD", "AD"]))
    with pytest.raises(InputError, match="modalities"):
        synthesize_dvr(files["MTR"], files["FA"], files["RD"], files["AD"], files["brain"], stem, tmp_path / "d.nii.gz")


def test_synthesize_dvr_interface(model_stem, subject, tmp_path):
    maps, brain = subject
    files = _write_maps(tmp_path / "in", maps, brain, AFFINE)
    node = SynthesizeDVR(mtr=str(files["MTR"]), fa=str(files["FA"]), rd=str(files["RD"]), ad=str(files["AD"]),
                         brain_mask=str(files["brain"]), model=str(model_stem), device="cpu", saliency=True)
    (tmp_path / "node").mkdir()
    (tmp_path / "plain").mkdir()
    outputs = node.run(cwd=str(tmp_path / "node")).outputs
    assert outputs.dvr.endswith("dvr.nii.gz") and outputs.saliency.endswith("saliency.nii.gz")
    assert json.loads((model_stem.parent / "dvr_from_mri.json").read_text())["weights_sha256"] == outputs.model_sha256
    assert outputs.device == "cpu" and SALIENCY_NOTE in outputs.notes
    plain = SynthesizeDVR(mtr=str(files["MTR"]), fa=str(files["FA"]), rd=str(files["RD"]), ad=str(files["AD"]),
                          brain_mask=str(files["brain"]), model=str(model_stem), device="cpu")
    assert not plain.run(cwd=str(tmp_path / "plain")).outputs.saliency
