"""Synthesis mechanics with a small generator (untrained: shapes, grids and devices, not quality)."""

import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from synthquant.errors import InputError
from synthquant.nets import define_G, save_model
from synthquant.nets.device import choose_device
from synthquant.nets.inference import slice_stack, synthesize_mr


@pytest.fixture()
def pet_file(tmp_path):
    data = np.zeros((40, 48, 30), np.float32)
    data[8:32, 10:40, 5:25] = 5.0
    affine = np.diag([-3.0, 3.0, 3.5, 1.0])    # LAS storage, 3 mm PET voxels
    affine[:3, 3] = [60.0, -70.0, -50.0]
    path = tmp_path / "static_pet.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _model(tmp_path, in_channels=1):
    torch.manual_seed(0)
    generator = define_G(in_channels=in_channels, base_features=4, depth=6)
    save_model(generator, tmp_path / "mr_from_fbp", {"input_grid": {"voxel_mm": [1.2, 1.0, 1.0],
                                                                    "matrix": [192, 256]}})
    return tmp_path / "mr_from_fbp"


@pytest.mark.parametrize("channels", [1, 3])
def test_pseudo_t1w_lies_on_the_pet_grid(tmp_path, pet_file, channels):
    result = synthesize_mr(pet_file, _model(tmp_path, channels), tmp_path / "pseudo.nii.gz", device="cpu",
                           batch_size=7)
    pseudo, pet = nib.load(result["pseudo_t1w"]), nib.load(pet_file)
    assert pseudo.shape == pet.shape
    np.testing.assert_allclose(pseudo.affine, pet.affine)
    data = pseudo.get_fdata()
    assert np.isfinite(data).all() and data.min() >= -1e-5 and data.max() <= 2 + 1e-5
    assert len(result["model_sha256"]) == 64 and result["device"] == "cpu"


def test_adjacent_slices_become_channels():
    volume = np.arange(4, dtype=np.float32)[None, None, :] * np.ones((2, 3, 4), np.float32)
    stack = slice_stack(volume, 3)
    assert stack.shape == (4, 3, 2, 3)
    assert [stack[k, :, 0, 0].tolist() for k in (0, 2, 3)] == [[0, 0, 1], [1, 2, 3], [2, 3, 3]]
    with pytest.raises(ValueError):
        slice_stack(volume, 2)


def test_model_for_another_grid_is_refused(tmp_path, pet_file):
    generator = define_G(base_features=4, depth=6)
    save_model(generator, tmp_path / "other", {"input_grid": {"voxel_mm": [2, 2, 2], "matrix": [128, 128]}})
    with pytest.raises(InputError, match="other"):
        synthesize_mr(pet_file, tmp_path / "other", tmp_path / "x.nii.gz", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_without_gpu_is_one_line_and_auto_falls_back(caplog):
    with pytest.raises(InputError, match="no CUDA GPU"):
        choose_device("cuda")
    with caplog.at_level(logging.INFO, logger="synthquant"):
        assert choose_device("auto").type == "cpu"
    assert "runs on the CPU" in caplog.text


def test_nipype_node_runs_and_declares_its_gpu_slot(tmp_path, pet_file):
    from nipype.pipeline import engine as pe

    from synthquant.interfaces import SynthesizeMR

    node = pe.Node(SynthesizeMR(pet=str(pet_file), model=str(_model(tmp_path)), device="cpu"), name="synthesize_mr",
                   base_dir=str(tmp_path / "work"))
    assert node.inputs.use_gpu is False  # MultiProc reads this to use a GPU slot
    result = node.run()
    assert nib.load(result.outputs.pseudo_t1w).shape == nib.load(pet_file).shape
