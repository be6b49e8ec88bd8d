"""Training of the PET -> pseudo-T1w generator ``mr_from_fbp`` (Choi & Lee, J Nucl Med 2018).

Pairs (Choi & Lee, "Image Preprocessing"). For each subject with a T1w and a florbetapir PET:

1. the static PET (50-70 min frames realigned and averaged, :func:`synthquant.pet.make_static_pet`);
2. a rigid PET -> T1w registration. Choi & Lee coregister PET to MR for training only; at
   inference the PET is used as acquired, so the model learns the T1w *in the PET's frame*;
3. the T1w, N4-corrected (a subject's receive-coil bias is not predictable from PET, so it
   would only teach the generator noise), carried into the PET's frame by the inverse rigid
   transform and sampled directly on the generator grid (one interpolation, so a coarse PET
   grid does not blur it);
4. the PET on the generator grid (:func:`synthquant.nets.grid.to_generator_grid`), and the
   T1w on the *same* grid, scaled per subject to [-1, 1] by :func:`scale_t1w_target`.
   T1w voxels outside the PET's field of view are set to the background (-1), as Choi & Lee
   "replaced by zero" the MR slices out of the PET's range.

Each pair is cached as ``.npy`` files (no pickles) under the work dir; a rerun reuses it.

Training is pix2pix (Isola et al. 2017) on axial slices (``channels`` adjacent PET slices in,
the centre T1w slice out), with whole sites held out for validation, as Choi & Lee tested on
subjects "recruited from 8 sites different from training data". Checkpoints hold everything
needed to continue bit for bit: both networks, both Adam states, the step and the RNG state.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from synthquant.errors import InputError
from synthquant.image import (
    atomic_output,
    atomic_write_text,
    load_image,
    resample_to_grid,
)
from synthquant.nets.checkpoint import write_safetensors
from synthquant.nets.grid import (
    AXIAL_MATRIX,
    UPPER_PERCENTILE,
    VOXEL_MM,
    to_generator_grid,
)
from synthquant.nets.inference import slice_stack
from synthquant.nets.metrics import masked_mae, masked_ssim
from synthquant.nets.pix2pix import (
    Pix2PixLoss,
    define_D,
    define_G,
    make_optimizers,
    train_step,
)

MODEL_NAME = "mr_from_fbp"
#: Bump when the pair recipe changes: cached pairs of another version are rebuilt.
PAIR_FORMAT = 1
#: Target scaling: this percentile of the T1w inside the head maps to +1.
T1W_UPPER_PERCENTILE = 99.5
#: PET foreground: scaled PET above -0.8, i.e. above 10 % of the PET's upper anchor (its
#: 99.9th percentile). Background counts of a static FBP PET stay well below that.
PET_FOREGROUND_LEVEL = -0.8
#: Slice selection: keep axial slices whose PET foreground covers at least this fraction of
#: the subject's largest foreground slice. This drops the empty and nearly empty slices at
#: the ends of the PET's field of view (skull vertex, neck), which teach nothing but background.
MIN_SLICE_FOREGROUND = 0.10
#: Held-out subject fraction when the dataset has a single site.
VALIDATION_FRACTION = 0.2
#: N4 on a 4x shrunk image: the bias field is smooth (as in registration.normalize_to_template).
N4_SHRINK = 4
#: Loss columns of ``train_step``, in the order written to the loss table.
LOSS_COLUMNS = ("d", "g", "g_adversarial", "g_l1")

_CHECKPOINT_FORMAT = "synthquant-training-state"
_CHECKPOINT_VERSION = 1


def say(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def warn(message: str) -> None:
    print(f"WARNING {message}", file=sys.stderr, flush=True)


# --- pairs -----------------------------------------------------------------------------------

@dataclass
class TrainingPair:
    """One subject's PET and T1w target on the generator grid, (x, y, z) arrays."""

    key: str                 # sub-<L>[_ses-<S>]
    subject: str
    site: str
    pet: np.ndarray          # scaled PET in [-1, 1]
    t1w: np.ndarray          # scaled, N4-corrected T1w in [-1, 1], in the PET's frame
    foreground: np.ndarray   # bool: the T1w head foreground within the PET's field of view
    slices: np.ndarray       # axial indices kept for training and validation
    meta: dict = field(default_factory=dict)


def t1w_head_mask(t1w: np.ndarray) -> np.ndarray:
    """The head in a T1w: above the Otsu threshold of its positive voxels, closed, largest
    connected component, enclosed holes (CSF, skull) filled.

    Used to scale the target (:func:`scale_t1w_target`), as N4's mask, and as the region
    where SSIM and MAE are scored ("real T1w foreground").
    """
    from skimage.filters import threshold_otsu  # noqa: PLC0415

    positive = t1w[t1w > 0]
    if positive.size == 0:
        return np.zeros(t1w.shape, bool)
    mask = t1w > threshold_otsu(positive)
    pad = 2
    mask = ndimage.binary_closing(np.pad(mask, pad), iterations=pad)[pad:-pad, pad:-pad, pad:-pad]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def scale_t1w_target(t1w: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Scale a T1w (on the generator grid) to the generator's [-1, 1] target range.

    0 maps to -1 (the background of a magnitude image) and the 99.5th percentile of the T1w
    inside ``head`` maps to +1; values are clipped to [-1, 1]. Per subject, as Choi & Lee
    "adjusted [voxel values of each subject] in the range of -1 to 1"; a percentile inside the
    head, so that neither a few bright voxels nor the amount of background set the scale.
    """
    inside = t1w[head & (t1w > 0)]
    if inside.size == 0:
        raise ValueError("the T1w has no positive voxel inside the head mask")
    high = float(np.percentile(inside, T1W_UPPER_PERCENTILE))
    return np.clip(2.0 * t1w / high - 1.0, -1.0, 1.0).astype(np.float32)


def pet_foreground_slices(pet: np.ndarray) -> np.ndarray:
    """Axial indices of a scaled PET (x, y, z) whose foreground is large enough to train on.

    Foreground: scaled PET > ``PET_FOREGROUND_LEVEL`` (10 % of the upper anchor). Kept: slices
    whose foreground area is at least ``MIN_SLICE_FOREGROUND`` of the largest slice's.
    """
    area = (pet > PET_FOREGROUND_LEVEL).sum(axis=(0, 1))
    if area.max() == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(area >= MIN_SLICE_FOREGROUND * area.max()).astype(np.int64)


def itk_rigid_to_ras(transform_file: str | Path) -> np.ndarray:
    """The 4x4 world (RAS) matrix of an ITK rigid/affine transform file.

    ITK transforms are LPS and map points of the fixed image to the moving one:
    ``T(x) = M (x - c) + c + t`` with M and t in ``parameters`` and c in ``fixed_parameters``.
    """
    import ants  # noqa: PLC0415 - imported after config.apply_threads set ITK's threads

    transform = ants.read_transform(str(transform_file))
    params = np.asarray(transform.parameters, float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    centre = np.asarray(transform.fixed_parameters, float)[:3]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
    return flip @ lps @ flip


def _n4_t1w(t1w_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N4-corrected T1w data, its head mask and its affine (nibabel's voxel order)."""
    import ants  # noqa: PLC0415

    image = load_image(t1w_file)
    data = image.get_fdata(dtype=np.float32)
    head = t1w_head_mask(data)
    ants_t1w = ants.image_read(str(t1w_file), pixeltype="float")
    if tuple(ants_t1w.shape) != data.shape:
        raise InputError(t1w_file, f"ANTs reads shape {ants_t1w.shape}, nibabel {data.shape}")
    corrected = ants.n4_bias_field_correction(ants_t1w, mask=ants_t1w.new_image_like(head.astype(np.float32)),
                                              shrink_factor=N4_SHRINK)
    return corrected.numpy().astype(np.float32), head, image.affine


def _file_stamp(path: Path) -> list:
    # Name, size and time, not the full path: a dataset moved or copied with its times keeps its cache.
    stat = Path(path).stat()
    return [Path(path).name, stat.st_size, stat.st_mtime_ns]


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _load_npy(path: Path) -> np.ndarray:
    # Memory-mapped: a large cohort's slices are paged in as batches need them.
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_cached_pair(pair_dir: Path, inputs) -> TrainingPair | None:
    """A finished pair from ``pair_dir`` if it was built by this recipe from these files."""
    meta_file = pair_dir / "pair.json"
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != PAIR_FORMAT or meta.get("sources") != [_file_stamp(inputs.pet),
                                                                        _file_stamp(inputs.t1w)]:
            return None
        return TrainingPair(key=inputs.key, subject=inputs.subject, site=inputs.site,
                            pet=_load_npy(pair_dir / "pet.npy"), t1w=_load_npy(pair_dir / "t1w.npy"),
                            foreground=_load_npy(pair_dir / "foreground.npy"),
                            slices=np.asarray(meta["slices"], np.int64), meta=meta)
    except (OSError, ValueError, KeyError):
        return None


def build_training_pair(inputs, pair_dir: str | Path) -> TrainingPair:
    """PET and T1w target of one subject on the generator grid, cached in ``pair_dir``.

    ``inputs`` is a :class:`synthquant.bids.AmyloidInputs` with a T1w. A pair cached by an
    earlier run from the same files is loaded instead of rebuilt.
    """
    from synthquant.pet import make_static_pet  # noqa: PLC0415 - imports antspyx
    from synthquant.registration import rigid_register  # noqa: PLC0415

    pair_dir = Path(pair_dir)
    cached = load_cached_pair(pair_dir, inputs)
    if cached is not None:
        return cached
    pair_dir.mkdir(parents=True, exist_ok=True)
    (pair_dir / "pair.json").unlink(missing_ok=True)  # written last: marks a finished pair

    static = make_static_pet(inputs.pet, inputs.pet_sidecar, pair_dir / "static", tracer=inputs.tracer)
    (pair_dir / "coreg").mkdir(exist_ok=True)
    # Choi & Lee: "PET images were coregistered to corresponding MR images using rigid
    # transformation" (training only). The transform maps T1w points to PET points.
    transform = rigid_register(inputs.t1w, static["static_pet"], pair_dir / "coreg", prefix="pet_to_t1w_")
    t1w_to_pet = itk_rigid_to_ras(transform)

    pet_image = load_image(static["static_pet"])
    pet_data = pet_image.get_fdata(dtype=np.float32)
    pet, grid = to_generator_grid(pet_data, pet_image.affine)
    pet_fov = resample_to_grid(np.ones(pet_data.shape, np.uint8), pet_image.affine, grid.shape, grid.affine,
                               order=0) > 0

    t1w_n4, head_native, t1w_affine = _n4_t1w(Path(inputs.t1w))
    # The T1w's affine carried into the PET's frame: grid voxel -> PET world -> T1w voxel.
    t1w_in_pet_frame = t1w_to_pet @ t1w_affine
    t1w_on_grid = resample_to_grid(t1w_n4, t1w_in_pet_frame, grid.shape, grid.affine, order=1)
    head = resample_to_grid(head_native.astype(np.uint8), t1w_in_pet_frame, grid.shape, grid.affine,
                            order=0) > 0
    t1w_target = scale_t1w_target(t1w_on_grid, head)
    t1w_target[~pet_fov] = -1.0
    foreground = head & pet_fov
    slices = pet_foreground_slices(pet)
    if slices.size == 0:
        raise InputError(inputs.pet, "the static PET has no foreground on the generator grid")

    _save_npy(pet, pair_dir / "pet.npy")
    _save_npy(t1w_target, pair_dir / "t1w.npy")
    _save_npy(foreground, pair_dir / "foreground.npy")
    t1w_high = float(np.percentile(t1w_on_grid[head & (t1w_on_grid > 0)], T1W_UPPER_PERCENTILE))
    meta = {
        "format": PAIR_FORMAT, "key": inputs.key, "subject": inputs.subject, "session": inputs.session,
        "site": inputs.site, "tracer": inputs.tracer,
        "sources": [_file_stamp(inputs.pet), _file_stamp(inputs.t1w)],
        "grid_affine": grid.affine.tolist(), "grid_shape": list(grid.shape),
        "pet_upper_anchor": grid.intensity_high, "t1w_upper_anchor": t1w_high,
        "pet_to_t1w_transform": str(transform), "t1w_to_pet_ras": t1w_to_pet.tolist(),
        "static_pet_note": static["note"], "slices": slices.tolist(),
    }
    atomic_write_text(json.dumps(meta, indent=2) + "\n", pair_dir / "pair.json")
    # The frames and their realigned copies (uncompressed, several per subject) are not needed
    # once the pair is cached; the static PET and the transforms stay for inspection.
    for intermediate in [*(pair_dir / "static").glob("frame-*"), pair_dir / "static" / "reference.nii"]:
        intermediate.unlink(missing_ok=True)
    return load_cached_pair(pair_dir, inputs)


def build_training_pairs(amyloid_inputs, work_dir: str | Path) -> tuple[list[TrainingPair], dict[str, str]]:
    """Pairs of every session with a T1w and an FBP PET; unusable sessions are skipped.

    Returns the pairs and ``{key: one-line reason}`` for the sessions left out.
    """
    pairs, skipped = [], {}
    for inputs in amyloid_inputs:
        if inputs.t1w is None:
            skipped[inputs.key] = "no T1w to train on"
            continue
        if inputs.tracer != "FBP":
            skipped[inputs.key] = f"tracer {inputs.tracer}, not florbetapir (FBP)"
            continue
        started = time.perf_counter()
        try:
            pair = build_training_pair(inputs, Path(work_dir) / inputs.key)
        except InputError as err:
            skipped[inputs.key] = str(err)
            continue
        except (RuntimeError, ValueError) as err:  # ANTs fails with RuntimeError on bad images
            skipped[inputs.key] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        say(f"{inputs.key} ({inputs.site}): {pair.slices.size} training slices "
            f"({time.perf_counter() - started:.1f} s)")
        pairs.append(pair)
    return pairs, skipped


# --- split -----------------------------------------------------------------------------------

def split_by_site(pairs: list[TrainingPair], validation_sites=None, *, seed: int = 0
                  ) -> tuple[list[TrainingPair], list[TrainingPair], dict]:
    """Training and validation pairs; whole sites are held out.

    ``validation_sites=None`` holds out the alphabetically last site when there are two or
    more sites. With one site, ``VALIDATION_FRACTION`` of the subjects (at least one, when
    there are at least two subjects) are held out, drawn with ``seed``; all sessions of a
    subject fall on the same side. An empty list holds out nothing.
    """
    sites = sorted({p.site for p in pairs})
    if validation_sites is not None:
        held = sorted(set(validation_sites))
        unknown = [s for s in held if s not in sites]
        if unknown:
            raise InputError(None, f"validation site(s) {', '.join(unknown)} not among the training "
                                   f"data's sites ({', '.join(sites)})")
        rule = "sites named by the caller" if held else "no hold-out (empty validation site list)"
        validation_subjects = {p.subject for p in pairs if p.site in held}
    elif len(sites) >= 2:
        held = sites[-1:]
        rule = "the alphabetically last site held out"
        validation_subjects = {p.subject for p in pairs if p.site in held}
    else:
        held = []
        subjects = sorted({p.subject for p in pairs})
        n_held = max(1, round(VALIDATION_FRACTION * len(subjects))) if len(subjects) >= 2 else 0
        order = np.random.default_rng([seed, 2]).permutation(len(subjects))
        validation_subjects = {subjects[i] for i in order[:n_held]}
        rule = (f"one site only: {n_held} of {len(subjects)} subjects ({VALIDATION_FRACTION:.0%}) held out "
                f"at random (seed {seed})")
    train = [p for p in pairs if p.subject not in validation_subjects]
    validation = [p for p in pairs if p.subject in validation_subjects]
    if not train:
        raise InputError(None, f"holding out {', '.join(held) or 'these subjects'} leaves no subject to train on")
    return train, validation, {"held_out_sites": held, "rule": rule}


# --- batches ---------------------------------------------------------------------------------

def slice_input(volume: np.ndarray, index: int, channels: int) -> np.ndarray:
    """(channels, x, y): axial slice ``index`` with its neighbours, exactly as
    :func:`synthquant.nets.inference.slice_stack` makes them for the whole volume."""
    half = channels // 2
    low, high = max(0, index - half), min(volume.shape[2], index + half + 1)
    return slice_stack(np.asarray(volume[:, :, low:high]), channels)[index - low]


def _batch(pairs: list[TrainingPair], items: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    pet = np.stack([slice_input(pairs[p].pet, k, channels) for p, k in items])
    t1w = np.stack([np.asarray(pairs[p].t1w[:, :, k]) for p, k in items])[:, None]
    return pet, t1w


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled item order of one epoch: a function of (seed, epoch) only, so a resumed
    run draws the same batches without storing a shuffling state."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n_items)


def _to_device(array: np.ndarray, device, channels_last: bool):
    tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


# --- checkpoints -----------------------------------------------------------------------------

def _flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Adam's state as named tensors (for safetensors) and a JSON part (groups, scalars)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def _unflatten_optimizer(prefix: str, tensors: dict, info: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith(prefix + ".state."):
            index, key = name[len(prefix) + 7:].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in info["scalar_state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_training_state(stem: str | Path, generator, discriminator, optimizers, meta: dict) -> Path:
    """Write ``stem.safetensors`` (weights, Adam states, torch RNG) and ``stem.json``.

    Never a pickle. The JSON is renamed into place last and records the SHA-256 of the
    weights, so a crash between the two renames is detected at load time.
    """
    stem = Path(stem)
    tensors = {f"generator.{k}": v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    tensors.update({f"discriminator.{k}": v.detach().cpu().contiguous()
                    for k, v in discriminator.state_dict().items()})
    optimizer_info = {}
    for prefix, optimizer in zip(("optimizer_g", "optimizer_d"), optimizers):
        flat, info = _flatten_optimizer(prefix, optimizer)
        tensors.update(flat)
        optimizer_info[prefix] = info
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    weights = stem.with_suffix(".safetensors")
    sha256 = write_safetensors(tensors, weights, {"format": _CHECKPOINT_FORMAT})
    state = {"format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "weights_sha256": sha256,
             "optimizers": optimizer_info, "python_random_state": _python_random_state(), **meta}
    atomic_write_text(json.dumps(state, indent=1) + "\n", stem.with_suffix(".json"))
    return weights


def _python_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_training_state(stem: str | Path, generator, discriminator, optimizers) -> dict:
    """Restore networks, optimizers and RNG from :func:`save_training_state`; return its JSON."""
    from safetensors.torch import load as load_bytes  # noqa: PLC0415

    stem = Path(stem)
    weights, card = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    try:
        state = json.loads(card.read_text())
        data = weights.read_bytes()
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(card, f"training checkpoint not readable ({err})") from None
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise InputError(card, "not a synthquant training checkpoint")
    if hashlib.sha256(data).hexdigest() != state.get("weights_sha256"):
        raise InputError(weights, "checkpoint weights do not match their JSON (interrupted write?)")
    tensors = load_bytes(data)
    for prefix, net in (("generator.", generator), ("discriminator.", discriminator)):
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for prefix, optimizer in zip(("optimizer_g", "optimizer_d"), optimizers):
        optimizer.load_state_dict(_unflatten_optimizer(prefix, tensors, state["optimizers"][prefix]))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = state["python_random_state"]
    random.setstate((version, tuple(internal), gauss))
    return state


def _write_losses(rows: list[dict], path: Path) -> None:
    lines = ["\t".join(("step", "epoch", *LOSS_COLUMNS))]
    lines += ["\t".join([str(r["step"]), str(r["epoch"])] + [f"{r[c]:.6g}" for c in LOSS_COLUMNS]) for r in rows]
    atomic_write_text("\n".join(lines) + "\n", path)


def _read_losses(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [{"step": int(r["step"]), "epoch": int(r["epoch"]), **{c: float(r[c]) for c in LOSS_COLUMNS}}
            for r in rows if int(r["step"]) <= up_to_step]


# --- validation ------------------------------------------------------------------------------

def predict_slices(generator, pair: TrainingPair, channels: int, device, *, batch_size: int = 16,
                   channels_last: bool = False) -> np.ndarray:
    """Pseudo-T1w (n, x, y) of a pair's kept slices, the generator in eval mode (as at inference)."""
    generator.eval()
    stack = np.stack([slice_input(pair.pet, k, channels) for k in pair.slices])
    output = np.empty((len(stack), *stack.shape[2:]), np.float32)
    with torch.inference_mode():
        for start in range(0, len(stack), batch_size):
            batch = _to_device(stack[start:start + batch_size], device, channels_last)
            output[start:start + len(batch)] = generator(batch)[:, 0].float().cpu().numpy()
    return output


def evaluate_pairs(generator, pairs: list[TrainingPair], channels: int, device, *, batch_size: int = 16,
                   channels_last: bool = False) -> dict:
    """SSIM and MAE of each pair's pseudo-T1w against its real T1w, within the T1w foreground."""
    per_subject = {}
    for pair in pairs:
        pseudo = predict_slices(generator, pair, channels, device, batch_size=batch_size,
                                channels_last=channels_last)
        real = np.moveaxis(np.asarray(pair.t1w[:, :, pair.slices]), 2, 0)
        mask = np.moveaxis(np.asarray(pair.foreground[:, :, pair.slices]), 2, 0)
        if not mask.any():
            continue
        per_subject[pair.key] = {"site": pair.site, "n_slices": int(pair.slices.size),
                                 "ssim": round(masked_ssim(pseudo, real, mask), 5),
                                 "mae": round(masked_mae(pseudo, real, mask), 5)}
    values = list(per_subject.values())
    return {"per_subject": per_subject,
            "ssim_mean": round(float(np.mean([v["ssim"] for v in values])), 5) if values else None,
            "mae_mean": round(float(np.mean([v["mae"] for v in values])), 5) if values else None}


# --- provenance ------------------------------------------------------------------------------

PHANTOM_WARNING = ("Trained on a synthetic synthquant.phantom cohort only. Fit for demos and tests; not "
                   "validated on real florbetapir PET: do not use it to quantify real data.")


def _model_card(*, channels, dataset_name, phantom, train, validation, split, validation_metrics, settings,
                steps, epochs_done, minutes, device, stopped_by, discriminator) -> dict:
    from synthquant.bids import software_versions  # noqa: PLC0415

    half = channels // 2
    inputs = ["FBP_PET"] if channels == 1 else [
        f"FBP_PET[z{offset:+d}]" if offset else "FBP_PET[z]" for offset in range(-half, half + 1)]
    card = {
        "name": MODEL_NAME,
        "task": "florbetapir PET -> pseudo-T1w MR, axial slices (Choi & Lee, J Nucl Med 2018)",
        "input_grid": {"voxel_mm": list(VOXEL_MM), "matrix": list(AXIAL_MATRIX), "orientation": "RAS",
                       "slice_axis": "z (axial)",
                       "placement": "axis-aligned in world space, centred on the PET's centre of mass "
                                    "(synthquant.nets.grid)"},
        "intensity_normalisation": {
            "range": [-1.0, 1.0],
            "input": {"image": "static PET (50-70 min) resliced to the input grid", "zero_maps_to": -1.0,
                      "upper_anchor": f"{UPPER_PERCENTILE}th percentile of its positive voxels",
                      "upper_maps_to": 1.0, "clipped": True},
            "output": {"image": "N4-corrected T1w in the PET's frame, on the input grid", "zero_maps_to": -1.0,
                       "upper_anchor": f"{T1W_UPPER_PERCENTILE}th percentile inside the head (Otsu foreground, "
                                       "closed, holes filled)",
                       "upper_maps_to": 1.0, "clipped": True, "outside_pet_field_of_view": -1.0},
        },
        "modalities": {"input": inputs, "output": "T1w"},
        "training": {
            "dataset": dataset_name, "n_subjects": len({p.subject for p in train}),
            "subjects": [p.key for p in train], "sites": sorted({p.site for p in train}),
            "n_slices": int(sum(p.slices.size for p in train)), "steps": steps, "epochs": round(epochs_done, 3),
            "seed": settings["seed"], "lr": settings["lr"], "beta1": 0.5, "lambda_l1": settings["lambda_l1"],
            "batch_size": settings["batch_size"], "minutes": round(minutes, 2), "device": device,
            "stopped_by": stopped_by, "discriminator": discriminator,
            "pairs": "static PET rigidly coregistered to the T1w (ANTs, Mattes MI; training only); the "
                     "N4-corrected T1w carried into the PET's frame by the inverse transform",
            "slice_selection": f"axial slices whose PET foreground (scaled PET > {PET_FOREGROUND_LEVEL}, i.e. 10% "
                               f"of the upper anchor) covers >= {MIN_SLICE_FOREGROUND:.0%} of the subject's "
                               "largest foreground slice",
        },
        "validation": {
            "held_out_sites": split["held_out_sites"], "rule": split["rule"],
            "subjects": [p.key for p in validation],
            "mask": "T1w head foreground within the PET's field of view, on the kept slices",
            "ssim": "mean of the 2D SSIM map (Wang 2004, Gaussian sigma 1.5, data range 2) within the mask",
            "mae": "mean |pseudo - real| within the mask, on the [-1, 1] scale",
            **validation_metrics,
        },
        "software": software_versions(),
    }
    if phantom:
        card["synthetic_phantom_only"] = True
        card["warning"] = PHANTOM_WARNING
    return card


# --- the command -----------------------------------------------------------------------------

def _check_settings(channels, base_features, depth, batch_size, max_steps, epochs, time_limit_s, lr,
                    lambda_l1, checkpoint_every, omp_nthreads) -> None:
    problems = []
    if channels not in (1, 3, 5):
        problems.append(f"channels must be 1, 3 or 5, got {channels}")
    if not 2 <= depth <= 8:
        problems.append(f"depth must lie in 2..8, got {depth}")
    for name, value in (("base_features", base_features), ("batch_size", batch_size),
                        ("checkpoint_every", checkpoint_every), ("omp_nthreads", omp_nthreads)):
        if value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if max_steps is None and epochs is None:
        problems.append("give max_steps or epochs")
    for name, value in (("max_steps", max_steps), ("epochs", epochs)):
        if value is not None and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if time_limit_s is not None and time_limit_s <= 0:
        problems.append(f"the time limit must be positive, got {time_limit_s}")
    if not (lr > 0 and lambda_l1 >= 0):
        problems.append("lr must be positive and lambda_l1 non-negative")
    if problems:
        raise InputError(None, "; ".join(problems))


def train_mr_from_fbp(bids_dir: str | Path, out_dir: str | Path, *, work_dir: str | Path | None = None,
                      participant_labels=(), validation_sites=None, channels: int = 1,
                      base_features: int = 64, depth: int = 8, batch_size: int = 8,
                      max_steps: int | None = None, epochs: int | None = 100,
                      time_limit_s: float | None = None, lr: float = 2e-4, lambda_l1: float = 100.0,
                      seed: int = 0, device: str = "auto", omp_nthreads: int = 1, resume: bool = False,
                      checkpoint_every: int = 500, progress: bool | None = None) -> dict:
    """Train ``mr_from_fbp`` on a BIDS dataset's T1w + FBP PET pairs; write the model and its card.

    Training stops after ``max_steps`` steps or ``epochs`` epochs, whichever comes first, or
    when ``time_limit_s`` has passed. Every ``checkpoint_every`` steps (and at the end) the full
    training state goes to ``OUT/checkpoints/last``; ``resume=True`` continues from it and ends
    with the same weights as an uninterrupted run (CPU; on CUDA up to cuDNN's nondeterminism).
    ITK and torch use ``omp_nthreads`` threads (:func:`synthquant.config.apply_threads` runs here
    too, and takes effect for ITK as long as nothing imported antspyx before).

    Returns the paths written (``model``, ``card``, ``checkpoint``, ``losses_tsv``), ``steps``,
    ``train_subjects``, ``validation_subjects``, ``validation`` (metrics), ``losses`` (one dict
    per step) and ``stopped_by`` (``max_steps``, ``epochs`` or ``time_limit``).
    """
    from synthquant.bids import dataset_provenance, discover  # noqa: PLC0415
    from synthquant.config import apply_threads  # noqa: PLC0415
    from synthquant.nets.checkpoint import save_model  # noqa: PLC0415
    from synthquant.nets.device import choose_device  # noqa: PLC0415

    _check_settings(channels, base_features, depth, batch_size, max_steps, epochs, time_limit_s, lr,
                    lambda_l1, checkpoint_every, omp_nthreads)
    apply_threads(omp_nthreads, seed)
    started = time.perf_counter()
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS directory not found")
    if out_dir.resolve() == bids_dir.resolve():
        raise InputError(out_dir, "output directory must differ from the BIDS directory")
    work_dir = Path(work_dir) if work_dir is not None else out_dir / "work"
    torch_device = choose_device(device, omp_nthreads=omp_nthreads)

    found = discover(bids_dir, tuple(participant_labels))
    for key, reason in found.refused.items():
        warn(f"skipping {key}: {reason}")
    candidates = [a for a in found.amyloid if a.t1w is not None and a.tracer == "FBP"]
    if not candidates:
        raise InputError(bids_dir, "no subject has both a T1w and a florbetapir (FBP) PET: nothing to train on")
    pairs, skipped = build_training_pairs(found.amyloid, work_dir / "mr_from_fbp_pairs")
    for key, reason in skipped.items():
        warn(f"skipping {key}: {reason}")
    if not pairs:
        raise InputError(bids_dir, "no usable T1w + FBP PET pair (every candidate was skipped)")
    train, validation, split = split_by_site(pairs, validation_sites, seed=seed)
    say("training: " + ", ".join(f"{p.key} ({p.site})" for p in train))
    say(f"validation ({split['rule']}): "
        + (", ".join(f"{p.key} ({p.site})" for p in validation) or "none"))

    # Seeds: torch draws the initial weights and dropout; numpy's shuffles derive from
    # (seed, epoch); Python's random is seeded for any library that uses it.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = define_G(in_channels=channels, base_features=base_features, depth=depth).to(torch_device)
    discriminator = define_D(in_channels=channels + 1, base_features=base_features).to(torch_device)
    channels_last = torch_device.type == "cpu"  # faster CPU convolutions (shared NOTES.md), same numbers
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    optimizers = make_optimizers(generator, discriminator, lr=lr)
    loss = Pix2PixLoss(lambda_l1=lambda_l1)

    items = np.array([(index, k) for index, pair in enumerate(train) for k in pair.slices], np.int64)
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total_steps = min(max_steps or math.inf, (epochs or math.inf) * steps_per_epoch)
    settings = {"channels": channels, "base_features": base_features, "depth": depth, "batch_size": batch_size,
                "lr": lr, "lambda_l1": lambda_l1, "seed": seed, "train_subjects": [p.key for p in train],
                "n_slices": len(items)}
    checkpoint_stem = out_dir / "checkpoints" / "last"
    losses_tsv = out_dir / "training_losses.tsv"
    step, elapsed_before, history = 0, 0.0, []
    if resume and checkpoint_stem.with_suffix(".json").is_file():
        state = load_training_state(checkpoint_stem, generator, discriminator, optimizers)
        differing = [k for k in settings if state["settings"].get(k) != settings[k]]
        if differing:
            raise InputError(checkpoint_stem.with_suffix(".json"),
                             f"checkpoint was trained with other settings ({', '.join(differing)}); "
                             "rerun with the same settings or without --resume")
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        history = _read_losses(losses_tsv, step)
        say(f"resuming from {checkpoint_stem}.safetensors at step {step}")
    elif resume:
        say(f"no checkpoint at {checkpoint_stem}.safetensors: starting from scratch")
    elif checkpoint_stem.with_suffix(".json").is_file():
        say(f"starting from scratch (no --resume): {checkpoint_stem}.safetensors will be overwritten")

    from tqdm import tqdm  # noqa: PLC0415

    def checkpoint(now_step: int) -> None:
        meta = {"step": now_step, "epoch": now_step // steps_per_epoch,
                "position": now_step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "elapsed_s": elapsed_before + time.perf_counter() - loop_started, "settings": settings,
                "generator": generator.config, "discriminator": discriminator.config}
        save_training_state(checkpoint_stem, generator, discriminator, optimizers, meta)
        _write_losses(history, losses_tsv)

    say(f"{len(items)} slices, {steps_per_epoch} steps per epoch, "
        f"{'until the time limit' if total_steps == math.inf else f'{int(total_steps)} steps'} "
        f"on {torch_device.type} ({channels} channel{'s' if channels > 1 else ''}, batch {batch_size})")
    generator.train()
    discriminator.train()
    loop_started = time.perf_counter()
    stopped_by = "max_steps" if max_steps is not None and max_steps <= (epochs or math.inf) * steps_per_epoch \
        else "epochs"
    order_epoch, order = -1, None
    bar = tqdm(total=None if total_steps == math.inf else int(total_steps), initial=step, unit="step",
               dynamic_ncols=True, disable=None if progress is None else not progress)
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(items), seed, epoch)
        chosen = items[order[position * batch_size:(position + 1) * batch_size]]
        pet, t1w = _batch(train, chosen, channels)
        losses = train_step(generator, discriminator, optimizers, loss,
                            _to_device(pet, torch_device, channels_last), _to_device(t1w, torch_device, channels_last))
        step += 1
        history.append({"step": step, "epoch": epoch, **{c: losses[c] for c in LOSS_COLUMNS}})
        bar.update(1)
        bar.set_postfix(d=f"{losses['d']:.3f}", g_adv=f"{losses['g_adversarial']:.3f}",
                        l1=f"{losses['g_l1']:.4f}", refresh=False)
        out_of_time = time_limit_s is not None and time.perf_counter() - loop_started >= time_limit_s
        if step % checkpoint_every == 0 or step >= total_steps or out_of_time:
            checkpoint(step)
            bar.write(f"step {step}: D {losses['d']:.3f}  G adv {losses['g_adversarial']:.3f}  "
                      f"L1 {losses['g_l1']:.4f}  (checkpoint {checkpoint_stem}.safetensors)")
        if out_of_time:
            stopped_by = "time_limit"
            break
    bar.close()
    _write_losses(history, losses_tsv)
    minutes = (elapsed_before + time.perf_counter() - loop_started) / 60.0

    validation_metrics = evaluate_pairs(generator, validation, channels, torch_device,
                                        batch_size=max(batch_size, 16), channels_last=channels_last)
    for key, metrics in validation_metrics["per_subject"].items():
        say(f"validation {key} ({metrics['site']}): SSIM {metrics['ssim']:.4f}, MAE {metrics['mae']:.4f}")
    dataset_name, phantom = dataset_provenance(bids_dir)
    device_name = torch_device.type
    if torch_device.type == "cuda":
        device_name += f" ({torch.cuda.get_device_name(torch_device)})"
    card = _model_card(channels=channels, dataset_name=dataset_name, phantom=phantom, train=train,
                       validation=validation, split=split, validation_metrics=validation_metrics,
                       settings=settings, steps=step, epochs_done=step / steps_per_epoch, minutes=minutes,
                       device=device_name, stopped_by=stopped_by, discriminator=discriminator.config)
    model_stem = out_dir / MODEL_NAME
    save_model(generator, model_stem, card)
    say(f"wrote {model_stem}.safetensors and {model_stem}.json ({step} steps, {minutes:.1f} min, "
        f"total {time.perf_counter() - started:.0f} s)")
    return {"model": str(model_stem) + ".safetensors", "card": str(model_stem) + ".json",
            "checkpoint": str(checkpoint_stem) + ".safetensors", "losses_tsv": str(losses_tsv),
            "steps": step, "stopped_by": stopped_by, "minutes": minutes,
            "train_subjects": [p.key for p in train], "validation_subjects": [p.key for p in validation],
            "validation": validation_metrics, "losses": history}
