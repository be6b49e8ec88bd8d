"""[11C]PIB DVR from MTR and DTI with a trained ``dvr_from_mri`` model (Wei et al., Med Image
Anal 2019): the myelin arm's inference.

The MR maps (MTR, FA, RD, AD, on one grid of the model card's voxel size) are z-scored inside the
brain with the *training set's* statistics kept in the card (Wei §3.1 "Training details"),
stacked in :data:`synthquant.myelin.MR_CHANNELS` order, and the whole volume goes through the
network (a 3D U-Net sees the whole image, Wei §2.1.2 "working on the whole images"); sliding
windows only when the volume exceeds :data:`WHOLE_VOLUME_BUDGET`. The prediction is taken back
to DVR units with the card's target normalisation and set to 0 outside the brain.

No training code is imported here: the training loop (:mod:`synthquant.nets.myelin_training`)
evaluates its folds through :func:`predict_dvr`, so validation and inference are one code path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from synthquant.errors import InputError
from synthquant.image import load_image, save_image, voxel_sizes
from synthquant.myelin import MR_CHANNELS, mr_input_stack, zscore_maps

#: Architectures that map the MR channels alone to DVR (a Refiner3D alone needs a sketch).
DVR_ARCHITECTURES = ("SketcherRefiner3D", "Sketcher3D")
#: An input voxel size may differ from the card's by this fraction per axis (e.g. 2.2 mm for a
#: 2 mm model); beyond it the network would see anatomy at another scale than it learnt.
VOXEL_TOLERANCE = 0.10
#: Whole-volume inference while voxels x widest base features stays below this (2**26: about
#: 4 million voxels, e.g. 160^3, at 16 base features; 128^3 at 32). Peak CPU memory is then
#: ~2 GB; beyond it, sliding windows of :data:`WINDOW` voxels overlapping by :data:`OVERLAP`.
WHOLE_VOLUME_BUDGET = 2**26
WINDOW = 128
OVERLAP = 64
SALIENCY_NOTE = ("saliency (Wei 2019 eq. 7, after Simonyan 2013): max over MR channels of "
                 "|d(sum of the predicted z-scored DVR in the brain) / d(input)|; the true DVR that eq. 7's "
                 "loss needs is absent at inference, and an L1 to the model's own prediction has zero gradient")


# ------------------------------------------------------------------------------------- card

def check_dvr_card(card: Mapping, card_path: str | Path) -> None:
    """Refuse a card that is not a DVR-from-MRI model this code can feed (one line, InputError).

    Checks the architecture, the input grid's voxel size, the modality order (== MR_CHANNELS)
    and that the intensity normalisation (input z-scores per channel, target scaling) is there.
    """
    architecture = card.get("architecture")
    if architecture not in DVR_ARCHITECTURES:
        raise InputError(card_path, f"architecture {architecture!r} is not a DVR-from-MRI generator "
                                    f"({' or '.join(DVR_ARCHITECTURES)})")
    card_voxel_mm(card, card_path)
    modalities = card.get("modalities")
    if isinstance(modalities, Mapping):
        modalities = modalities.get("input")
    if list(modalities or []) != list(MR_CHANNELS):
        raise InputError(card_path, f"model card modalities {modalities!r} are not {list(MR_CHANNELS)} "
                                    "(the MR channels in Wei 2019's order)")
    card_normalisation(card, card_path)


def card_voxel_mm(card: Mapping, card_path: str | Path) -> tuple[float, float, float]:
    """The card's ``input_grid.voxel_mm`` as three positive floats."""
    grid = card.get("input_grid")
    try:
        voxel_mm = tuple(float(v) for v in grid["voxel_mm"])
        if len(voxel_mm) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_mm):
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise InputError(card_path, "model card lacks input_grid.voxel_mm (three positive numbers)") from None
    return voxel_mm


def card_normalisation(card: Mapping, card_path: str | Path) -> tuple[dict, float, float]:
    """(MR z-score statistics per channel, target mean, target SD) from the card.

    The network's output ``y`` is DVR = mean + SD * y (SD 1 and mean 0 for a model trained on
    DVR as is).
    """
    normalisation = card.get("intensity_normalisation")
    try:
        channels = normalisation["input"]["channels"]
        stats = {c: {"mean": float(channels[c]["mean"]), "sd": float(channels[c]["sd"])} for c in MR_CHANNELS}
        target = normalisation["target"]
        mean, sd = float(target["mean"]), float(target["sd"])
    except (TypeError, KeyError, ValueError):
        raise InputError(card_path, "model card lacks intensity_normalisation (input.channels "
                                    f"{'/'.join(MR_CHANNELS)} mean and sd; target mean and sd)") from None
    values = [v for s in stats.values() for v in s.values()] + [mean, sd]
    if not all(math.isfinite(v) for v in values) or sd <= 0 or any(s["sd"] <= 0 for s in stats.values()):
        raise InputError(card_path, "model card intensity_normalisation holds non-finite or non-positive SDs")
    return stats, mean, sd


def _widest_features(model) -> int:
    config = getattr(model, "config", {}) or {}
    parts = [config[k] for k in ("sketcher", "refiner") if isinstance(config.get(k), Mapping)] or [config]
    return max(int(part.get("base_features", 32)) for part in parts)


def auto_window(model, shape) -> int | None:
    """``None`` (whole volume) within :data:`WHOLE_VOLUME_BUDGET`, else :data:`WINDOW`."""
    return None if math.prod(shape) * _widest_features(model) <= WHOLE_VOLUME_BUDGET else WINDOW


# -------------------------------------------------------------------------------- arrays

def model_input(card: Mapping, maps: Mapping[str, np.ndarray], brain_mask, *,
                card_path: str | Path = "model card") -> np.ndarray:
    """The (4, X, Y, Z) network input: the maps z-scored with the card's statistics in the brain,
    0 outside (Wei §3.1), in MR_CHANNELS order."""
    stats, _, _ = card_normalisation(card, card_path)
    zmaps, _ = zscore_maps(maps, brain_mask, stats)
    return mr_input_stack(zmaps)


def predict_dvr(model, card: Mapping, maps: Mapping[str, np.ndarray], brain_mask, *,
                window: int | None = None) -> np.ndarray:
    """Predicted DVR (X, Y, Z) float32 of one subject; 0 outside the brain.

    ``maps`` holds the MR_CHANNELS arrays in native units (MTR %, FA, RD and AD in mm2/s) on one
    grid, ``brain_mask`` the same grid. The model runs in eval mode on its own device (the
    Sketcher's noise z is then 0, its prior mean: deterministic). ``window`` forces sliding
    windows of that size; by default the whole volume unless it exceeds the memory budget
    (:func:`auto_window`).
    """
    from synthquant.nets.sketcher_refiner import predict_volume  # noqa: PLC0415 - imports torch

    brain = np.asarray(brain_mask) > 0
    _, mean, sd = card_normalisation(card, "model card")
    volume = model_input(card, maps, brain)
    if window is None:
        window = auto_window(model, brain.shape)
    # A forced small window overlaps by half of itself at most.
    predicted = predict_volume(model, volume, window=window,
                               **({} if window is None else {"overlap": min(OVERLAP, int(window) // 2)}))[0]
    return np.where(brain, predicted * np.float32(sd) + np.float32(mean), 0.0).astype(np.float32)


def dvr_saliency(model, card: Mapping, maps: Mapping[str, np.ndarray], brain_mask) -> np.ndarray:
    """Visual attention saliency map (Wei 2019 eq. 7, §3.6) of the whole predictor, (X, Y, Z).

    Eq. 7 differentiates the prediction loss against the true DVR, which inference does not
    have; an L1 to the model's own prediction is zero with zero gradient. So the "loss" is the
    sum of the predicted (z-scored) DVR over the brain, i.e. Simonyan et al. 2013's saliency of
    the output itself: M = max over channels |∂ Σ_brain Î_P / ∂ I_M|, 0 outside the brain.
    The whole volume is back-propagated (about 2 GB of CPU memory at 80x96x80, 16 features).
    """
    import torch  # noqa: PLC0415

    from synthquant.nets.sketcher_refiner import saliency_map  # noqa: PLC0415

    brain = np.asarray(brain_mask) > 0
    volume = torch.from_numpy(model_input(card, maps, brain))
    device = next(model.parameters()).device
    weight = torch.from_numpy(brain[None, None].astype(np.float32)).to(device)
    saliency = saliency_map(model, volume.to(device), weight, lambda predicted, inside: (predicted * inside).sum())
    return np.where(brain, saliency, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------- files

def _check_grid(files: Mapping[str, Path], images: Mapping, card: Mapping, card_path: Path) -> None:
    reference_name = next(iter(images))
    reference = images[reference_name]
    for name, image in images.items():
        if image.shape[:3] != reference.shape[:3] or not np.allclose(image.affine, reference.affine, atol=1e-3):
            raise InputError(files[name], f"{name} is not on the grid of {reference_name} "
                                          f"({files[reference_name].name}): shape {image.shape[:3]} vs "
                                          f"{reference.shape[:3]} or a different affine; resample the maps "
                                          "onto one grid first")
    model_mm = np.asarray(card_voxel_mm(card, card_path))
    data_mm = np.asarray(voxel_sizes(reference.affine), float)
    if np.any(np.abs(data_mm / model_mm - 1.0) > VOXEL_TOLERANCE):
        raise InputError(files[reference_name], f"voxels of {' x '.join(f'{v:.3g}' for v in data_mm)} mm differ "
                                                f"from the model's {' x '.join(f'{v:g}' for v in model_mm)} mm by "
                                                f"more than {VOXEL_TOLERANCE:.0%}; resample the maps to the "
                                                "model's grid first")


def synthesize_dvr(mtr, fa, rd, ad, brain_mask, model_stem, out_file, *, device: str = "cpu",
                   omp_nthreads: int = 1, saliency_out=None, window: int | None = None) -> dict:
    """Write the predicted DVR of one subject's MR maps (NIfTI, all on one grid).

    The maps are MTR (percent), FA, RD and AD (mm2/s), as the training pairs held them
    (:class:`synthquant.myelin.MyelinPair`); ``brain_mask`` (> 0 inside) on the same grid.
    The grid's voxel size must match the model card's within :data:`VOXEL_TOLERANCE`. The DVR is
    written with the input affine (temporary name, then rename); with ``saliency_out``, the
    saliency map of :func:`dvr_saliency` too.

    Returns ``{"dvr", "saliency" (path or None), "model_sha256", "device", "notes"}``.
    """
    from synthquant.nets.checkpoint import load_model  # noqa: PLC0415 - imports torch
    from synthquant.nets.device import choose_device  # noqa: PLC0415
    from synthquant.nets.sketcher_refiner import MYELIN_NETS_REGISTRY  # noqa: PLC0415

    files = {"MTR": Path(mtr), "FA": Path(fa), "RD": Path(rd), "AD": Path(ad), "brain mask": Path(brain_mask)}
    # Diffusivities and masks may hold zeros; what matters is that each file is a readable 3D image.
    images = {name: load_image(path, require_nonzero=name == "brain mask") for name, path in files.items()}
    torch_device = choose_device(device, omp_nthreads=omp_nthreads)
    loaded = load_model(model_stem, MYELIN_NETS_REGISTRY, device=str(torch_device))
    card_path = Path(str(model_stem).removesuffix(".safetensors").removesuffix(".json") + ".json")
    check_dvr_card(loaded.card, card_path)
    _check_grid(files, images, loaded.card, card_path)
    maps = {c: images[c].get_fdata(dtype=np.float32) for c in MR_CHANNELS}
    brain = images["brain mask"].get_fdata(dtype=np.float32) > 0
    affine = images["MTR"].affine
    notes = []
    chosen = window if window is not None else auto_window(loaded.model, brain.shape)
    if chosen is not None:
        notes.append(f"sliding-window inference ({chosen}^3 voxels, overlap {OVERLAP}): the volume exceeds the "
                     "whole-volume memory budget")
    dvr = predict_dvr(loaded.model, loaded.card, maps, brain, window=chosen)
    save_image(dvr, affine, out_file)
    saliency_file = None
    if saliency_out is not None:
        saliency_file = save_image(dvr_saliency(loaded.model, loaded.card, maps, brain), affine, saliency_out)
        notes.append(SALIENCY_NOTE)
    if loaded.card.get("synthetic_phantom_only"):
        notes.append("model trained on synthetic phantom data only: " + str(loaded.card.get("warning", "")).strip())
    return {"dvr": str(out_file), "saliency": None if saliency_file is None else str(saliency_file),
            "model_sha256": loaded.sha256, "device": torch_device.type, "notes": notes}
