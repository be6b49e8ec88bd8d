"""Pseudo-T1w from a florbetapir PET with a trained generator (Choi & Lee 2018).

The PET is resliced to the generator's grid (:mod:`synthquant.nets.grid`), cut into axial
slices (with k adjacent slices as channels for a 2.5D model), run in batches under
``torch.inference_mode`` (autocast on CUDA only), and the pseudo-T1w is written back on the
PET's own grid with the PET's affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthquant.errors import InputError
from synthquant.image import load_image, save_image, voxel_sizes
from synthquant.nets.grid import AXIAL_MATRIX, VOXEL_MM, from_generator_grid, to_generator_grid

#: A PET voxel more than this factor larger or smaller than the model's, on any axis, is "far"
#: from the model's grid: it is still resampled, and the sidecar says so.
FAR_GRID_RATIO = 1.5


def slice_stack(volume: np.ndarray, channels: int) -> np.ndarray:
    """(z, channels, x, y) slices: each axial slice with its ``channels // 2`` neighbours on
    either side as channels (edges repeat the outermost slice); 1 channel is plain 2D."""
    if channels < 1 or channels % 2 == 0:
        raise ValueError(f"a 2.5D input needs an odd number of channels, got {channels}")
    half = channels // 2
    n = volume.shape[2]
    index = np.clip(np.arange(n)[:, None] + np.arange(-half, half + 1)[None, :], 0, n - 1)
    return np.ascontiguousarray(np.moveaxis(volume[:, :, index], (2, 3), (0, 1)))


def check_card_grid(card: dict, model_path: Path) -> None:
    """Refuse a model trained on another input grid than the one this code produces."""
    grid = card.get("input_grid")
    if grid is None:
        return
    if tuple(grid.get("voxel_mm", VOXEL_MM)) != VOXEL_MM or tuple(grid.get("matrix", AXIAL_MATRIX)) != AXIAL_MATRIX:
        raise InputError(model_path, f"model expects a {grid} input grid; synthquant makes {VOXEL_MM} mm, "
                                     f"{AXIAL_MATRIX} slices")


def grid_note(pet_affine: np.ndarray) -> str | None:
    """A sidecar note when the PET's voxels are far from the generator's 1.2 x 1.0 x 1.0 mm.

    Every PET is resliced to the model grid (trilinear) and the pseudo-T1w back; a coarse PET
    (e.g. 2 x 2 x 3.3 mm) gives the network slices interpolated well beyond what it saw in
    training when those were acquired near 1 mm, so the user is told.
    """
    # Voxel sizes in world (RAS) axis order, as VOXEL_MM is: a sagittal or coronal PET stores
    # its axes in another order.
    data_mm = np.asarray(voxel_sizes(pet_affine), float)
    world_axis = np.abs(pet_affine[:3, :3]).argmax(axis=0)
    pet_mm = data_mm.copy()
    if len(set(world_axis)) == 3:
        pet_mm[world_axis] = data_mm
    ratio = np.maximum(pet_mm / np.asarray(VOXEL_MM), np.asarray(VOXEL_MM) / pet_mm)
    if np.all(ratio <= FAR_GRID_RATIO):
        return None
    sizes = " x ".join(f"{v:.2f}" for v in pet_mm)
    return (f"PET voxels ({sizes} mm) are far from the synthesis model's grid "
            f"({' x '.join(f'{v:g}' for v in VOXEL_MM)} mm): the PET was resampled (trilinear) to the model "
            "grid and the pseudo-T1w resampled back to the PET grid")


def synthesize_mr(pet_file: str | Path, model_path: str | Path, out_file: str | Path, *, device: str = "auto",
                  batch_size: int = 16, omp_nthreads: int = 1, bf16: bool = False) -> dict:
    """Write the pseudo-T1w of a static PET; return its path, the model's SHA-256 and the device.

    Convolutions run channels-last (same numbers, faster on CPU: shared NOTES.md measured
    0.08 s/slice against 0.11-0.22 s); ``bf16`` adds bfloat16 autocast on the CPU (about
    0.06 s/slice, at bfloat16 precision). On CUDA, autocast is always on.
    """
    import torch  # noqa: PLC0415

    from synthquant.nets import NETS_REGISTRY, load_model  # noqa: PLC0415
    from synthquant.nets.device import choose_device  # noqa: PLC0415

    torch_device = choose_device(device, omp_nthreads=omp_nthreads)
    loaded = load_model(model_path, NETS_REGISTRY, device=str(torch_device))
    model = loaded.model.to(memory_format=torch.channels_last)
    check_card_grid(loaded.card, Path(model_path))
    pet = load_image(pet_file)
    pet_data = pet.get_fdata(dtype=np.float32)
    volume, grid = to_generator_grid(pet_data, pet.affine)
    channels = int(loaded.card.get("kwargs", {}).get("in_channels", 1))
    slices = slice_stack(volume, channels)
    output = np.empty((slices.shape[0], *volume.shape[:2]), np.float32)
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            batch = torch.from_numpy(slices[start:start + batch_size]).to(torch_device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            on_cuda = torch_device.type == "cuda"
            with torch.autocast(torch_device.type, dtype=torch.float16 if on_cuda else torch.bfloat16,
                                enabled=on_cuda or bf16):
                pseudo = model(batch)
            output[start:start + len(batch)] = pseudo[:, 0].float().cpu().numpy()
    pseudo_t1w = np.moveaxis(output, 0, 2)  # back to (x, y, z)
    on_pet_grid = from_generator_grid(pseudo_t1w, grid, pet_data.shape, pet.affine)
    save_image(on_pet_grid, pet.affine, out_file)
    note = grid_note(pet.affine)
    return {"pseudo_t1w": str(out_file), "model_sha256": loaded.sha256, "device": torch_device.type,
            "n_slices": int(len(slices)), "notes": [note] if note else []}
