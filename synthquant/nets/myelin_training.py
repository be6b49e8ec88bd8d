"""Training of the myelin arm's DVR predictor ``dvr_from_mri`` (Wei et al., Med Image Anal 2019).

Input: :class:`synthquant.myelin.MyelinPair` s (MTR, FA, RD, AD and the true PIB DVR of one
subject on one 2 mm grid, with brain, lesion, NAWM and WM masks), from
:func:`synthquant.myelinprep.training_pairs`.

Recipe (Wei §3.1 "Training details", our choices marked):

- **Normalisation.** Each MR channel is z-scored with the mean and SD over the *training*
  subjects' brain voxels (Wei: "over all the voxels of all the images in each sequence"; in the
  brain here, see :func:`synthquant.myelin.zscore_stats`), and so is the DVR target. Voxels
  outside the brain are 0 in input and target. The statistics go into the card; inference
  (:mod:`synthquant.nets.dvr`) undoes the target's.
- **Crops** (ours; Wei trained on whole 128x160x128 images on two GPUs). Random crops whose
  sides are multiples of 32, the patch discriminator's patch (:data:`PATCH_SIZE`). A crop is
  centred on a random brain voxel, or, with probability ``lesion_crop_fraction`` for a subject
  with lesions, on a random lesion voxel, so the few lesion voxels are seen often. That holds
  for the Sketcher; the Refiner's crops are centred on brain voxels only by default
  (``refiner_lesion_crop_fraction`` 0): its eq. 5 weights already give a crop's lesion voxels
  a third of the loss, and lesion-centred crops make BatchNorm's running statistics those of
  lesion-rich tissue, which at whole-volume inference biased the WM by -0.03 DVR
  (benchmarks/results/2026-11-23-s5_myelin_validation.txt). The draw is a
  function of (seed, run, stage, step) only, so a resumed run draws the same crops.
- **Stages** (Wei §3.1): the Sketcher (G_S, D_S) first, adversarial + λS L1 (eq. 4), Adam 1e-4;
  then the Refiner (G_R, D_R) with the Sketcher frozen, adversarial + λR weighted L1 (eq. 5,
  region weights 1/N_Les, 1/N_NAWM, 1/N_other computed per crop), Adam 5e-5. By default (ours,
  ``residual_refiner``) the Refiner outputs sketch + correction and starts at the sketch; Wei's
  Refiner starts from scratch (``residual_refiner=False``, ``--refiner-from-scratch``).
- **Weight averaging** (ours, off by default: ``ema_decay`` 0). With ``ema_decay`` d > 0 each
  stage's result is an exponential moving average of its generator's weights and BatchNorm
  statistics over the steps (``torch.optim.swa_utils.AveragedModel``; horizon about 1/(1-d)
  steps) instead of the last step's, as GAN practice does to damp the step-to-step swing of
  adversarial training (Yazıcı et al., ICLR 2019); the Refiner trains on the averaged Sketcher.
  At 0.99 on the 27-subject CV (800 steps each) it moved no goal: MSE 0.0064 against 0.0065,
  lesion discrepancy 0.047 against 0.041 (benchmarks/results/2026-11-24-s9ema_myelin_*).
- **Variants** (Wei §3.2's comparison): ``sketcher_refiner`` (the proposed method), ``sketcher``
  (one cGAN), ``unet_l1`` (one 3D U-Net with plain L1 and no adversary: a Sketcher3D without a
  noise channel).
- **Cross-validation** (Wei: 3 folds by subject, controls spread over the folds): for each fold,
  a model is trained on the other subjects and the held-out ones are predicted whole-volume, as
  at inference; metrics in the brain on the DVR scale: MSE (eq. 8), PSNR (eq. 9), and the
  myelin content discrepancy |mean true - mean predicted| in control WM, NAWM and lesions
  (Table 2). Then the final model is trained on every subject.

Checkpoints (safetensors + JSON, never pickles) hold each stage's networks, Adam states and RNG
state; ``resume=True`` continues an interrupted run with the same results (CPU), and extends a
finished one: a run with more steps resumes from the shorter run's last checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthquant.errors import InputError
from synthquant.image import atomic_write_text
from synthquant.myelin import (
    MR_CHANNELS,
    MyelinPair,
    discrepancy,
    discrepancy_summary,
    zscore_stats,
)
from synthquant.nets.checkpoint import write_safetensors
from synthquant.nets.dvr import predict_dvr
from synthquant.nets.sketcher_refiner import (
    ADAM_BETAS,
    LAMBDA_REFINER,
    LAMBDA_SKETCHER,
    PATCH_SIZE,
    REFINER_LR,
    SKETCHER_LR,
    SketcherRefiner3D,
    define_patch_discriminator_3d,
    define_refiner,
    define_sketcher,
    make_refiner_optimizers,
    make_sketcher_optimizers,
    mse,
    psnr,
    refiner_train_step,
    region_weights,
    sketcher_train_step,
)

# Adam states as named tensors for safetensors: one home, shared with the mr_from_fbp loop.
from synthquant.nets.training import _flatten_optimizer, _unflatten_optimizer

MODEL_NAME = "dvr_from_mri"
#: Benchmark variants (Wei §3.2): what each trains.
VARIANTS = {
    "sketcher_refiner": "Sketcher cGAN (adversarial + λS L1, eq. 4) then Refiner cGAN on MR + sketch "
                        "(adversarial + λR weighted L1, eq. 5), Sketcher frozen (Wei 2019, proposed)",
    "sketcher": "one 3D cGAN, the Sketcher alone (adversarial + λS L1; Wei §3.2 'Sketcher', after Bi 2017)",
    "unet_l1": "one 3D U-Net with L1 only, no adversary and no noise (Wei §3.2 '3D U-Net', after Sikka 2018)",
}
#: The model's input grid (the myelin grid of synthquant.myelinprep).
VOXEL_MM = (2.0, 2.0, 2.0)
#: Our defaults for CPU training, from measured speed (1 thread, 16 base features): 32^3 crops,
#: batch 2: Sketcher step 0.37 s, Refiner step 0.45 s; 64x64x32 costs 4x per step for the same
#: voxels per second. Wei used 32 base features (1.2-1.5 s per step here).
DEFAULT_CROP = (32, 32, 32)
DEFAULT_BASE_FEATURES = 16
DEFAULT_BATCH_SIZE = 2
#: Share of crops centred on a lesion voxel, for subjects with lesions (ours): Sketcher, Refiner.
LESION_CROP_FRACTION = 0.5
REFINER_LESION_CROP_FRACTION = 0.0
#: Total weight of a crop's lesion voxels in the Refiner's eq. 5 loss (NAWM and the rest weigh 1).
REFINER_LESION_WEIGHT = 1.0
#: Loss columns written per step.
LOSS_COLUMNS = ("d", "g", "g_adversarial", "g_l1")
STAGES = ("sketcher", "refiner")
#: Wei Table 2's ROIs: WM of the controls, NAWM and lesions of the patients.
DISCREPANCY_ROIS = ("wm_control", "nawm", "lesion")

_STATE_FORMAT = "synthquant-dvr-training-state"
#: Settings only the Refiner stage reads: a finished Sketcher checkpoint stays valid when they
#: change, so a Refiner recipe can be tried on trained Sketchers (benchmarks/myelin_validation.py).
REFINER_ONLY_SETTINGS = ("refiner_steps", "refiner_lr", "lambda_refiner", "residual_refiner",
                         "refiner_lesion_crop_fraction", "refiner_lesion_weight")


def say(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def warn(message: str) -> None:
    print(f"WARNING {message}", file=sys.stderr, flush=True)


def subject_of(key: str) -> str:
    """``sub-01`` of ``sub-01_ses-2``: all sessions of a subject fall on one side of a fold."""
    return key.split("_ses-")[0]


# ------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class DVRTrainingSettings:
    """Everything that shapes the trained weights (recorded in the card and the checkpoints)."""

    variant: str = "sketcher_refiner"
    sketcher_steps: int = 1000
    refiner_steps: int = 1000
    base_features: int = DEFAULT_BASE_FEATURES
    levels: int = 3
    dropout: float = 0.5
    crop: tuple[int, int, int] = DEFAULT_CROP
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    sketcher_lr: float = SKETCHER_LR
    refiner_lr: float = REFINER_LR
    lambda_sketcher: float = LAMBDA_SKETCHER
    lambda_refiner: float = LAMBDA_REFINER
    lesion_crop_fraction: float = LESION_CROP_FRACTION
    refiner_lesion_crop_fraction: float = REFINER_LESION_CROP_FRACTION
    refiner_lesion_weight: float = REFINER_LESION_WEIGHT
    discriminator_features: int = 0  # 0: the generators' base_features
    #: The Refiner outputs sketch + correction, started at the sketch (ours; Refiner3D).
    residual_refiner: bool = True
    #: Per-step decay of the generators' weight average (ours); 0: the last step's weights.
    ema_decay: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))

    def check(self) -> None:
        """One line (InputError) for unusable settings."""
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if len(self.crop) != 3 or any(c < PATCH_SIZE or c % PATCH_SIZE for c in self.crop):
            problems.append(f"crop sides must be multiples of {PATCH_SIZE} (the patch discriminator's "
                            f"patch), got {'x'.join(map(str, self.crop))}")
        for name in ("sketcher_steps", "base_features", "levels", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.variant == "sketcher_refiner" and self.refiner_steps < 1:
            problems.append(f"refiner_steps must be at least 1, got {self.refiner_steps}")
        if self.levels > 5:
            problems.append(f"levels must be at most 5, got {self.levels}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("lesion_crop_fraction", "refiner_lesion_crop_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not (self.sketcher_lr > 0 and self.refiner_lr > 0 and self.lambda_sketcher >= 0
                and self.lambda_refiner >= 0 and self.refiner_lesion_weight > 0):
            problems.append("learning rates and the lesion weight must be positive, the λs non-negative")
        if problems:
            raise InputError(None, "; ".join(problems))

    def crop_lesion_fraction(self, stage: str) -> float:
        return self.refiner_lesion_crop_fraction if stage == "refiner" else self.lesion_crop_fraction

    def stage_steps(self) -> dict[str, int]:
        return {"sketcher": self.sketcher_steps,
                "refiner": self.refiner_steps if self.variant == "sketcher_refiner" else 0}

    def as_dict(self) -> dict:
        values = asdict(self)
        values["crop"] = list(self.crop)
        return values


_DEFAULT_SETTINGS = DVRTrainingSettings().as_dict()


# ---------------------------------------------------------------------------- normalisation

@dataclass(frozen=True)
class Normalisation:
    """Input z-scores per MR channel and the target's, from the training subjects' brains."""

    channels: dict   # {"MTR": {"mean", "sd", "n_voxels"}, ...}
    dvr_mean: float
    dvr_sd: float
    dvr_n_voxels: int

    @classmethod
    def from_pairs(cls, pairs: Sequence[MyelinPair]) -> Normalisation:
        channels = zscore_stats([pair_maps(p) for p in pairs], [p.brain for p in pairs])
        values = np.concatenate([np.asarray(p.dvr, np.float64)[p.brain & np.isfinite(p.dvr)] for p in pairs])
        if values.size == 0 or not values.std() > 0:
            raise InputError(None, "the training DVR maps have no brain voxels or no spread")
        return cls(channels, float(values.mean()), float(values.std()), int(values.size))

    def card(self) -> dict:
        """The card's ``intensity_normalisation`` (read by :func:`synthquant.nets.dvr.card_normalisation`)."""
        return {
            "input": {"method": "z-score within the brain mask with the training subjects' pooled brain "
                                "voxels (Wei 2019 §3.1); 0 outside the brain and for non-finite voxels",
                      "units": {"MTR": "percent", "FA": "1", "RD": "mm2/s", "AD": "mm2/s"},
                      "channels": {c: dict(self.channels[c]) for c in MR_CHANNELS}},
            "target": {"image": "DVR (Logan reference, cerebellar grey matter)",
                       "method": "z-score within the brain mask with the training subjects' pooled brain "
                                 "voxels; DVR = mean + sd * output; 0 outside the brain",
                       "mean": self.dvr_mean, "sd": self.dvr_sd, "n_voxels": self.dvr_n_voxels},
        }


def pair_maps(pair: MyelinPair) -> dict[str, np.ndarray]:
    """The pair's MR channels by name."""
    return {c: pair.mr[i] for i, c in enumerate(MR_CHANNELS)}


@dataclass
class _Prepared:
    """One training subject, normalised, padded to at least the crop (zeros / False)."""

    key: str
    mr: np.ndarray        # (4, X, Y, Z) z-scored, 0 outside the brain
    target: np.ndarray    # (X, Y, Z) z-scored DVR, 0 outside the brain
    brain: np.ndarray
    lesion: np.ndarray
    nawm: np.ndarray
    brain_voxels: np.ndarray = field(default=None)
    lesion_voxels: np.ndarray = field(default=None)


def prepare_subject(pair: MyelinPair, norm: Normalisation, crop: Sequence[int]) -> _Prepared:
    from synthquant.myelin import mr_input_stack, zscore_maps  # noqa: PLC0415

    zmaps, _ = zscore_maps(pair_maps(pair), pair.brain, norm.channels)
    mr = mr_input_stack(zmaps)
    brain = np.asarray(pair.brain, bool)
    target = np.where(brain & np.isfinite(pair.dvr), (np.asarray(pair.dvr, np.float32) - norm.dvr_mean) / norm.dvr_sd,
                      0.0).astype(np.float32)
    lesion = np.asarray(pair.lesion, bool) & brain
    nawm = np.asarray(pair.nawm, bool) & brain & ~lesion
    pads = [(0, max(0, c - s)) for c, s in zip(crop, brain.shape)]
    if any(p[1] for p in pads):
        mr = np.pad(mr, [(0, 0), *pads])
        target, brain, lesion, nawm = (np.pad(a, pads) for a in (target, brain, lesion, nawm))
    return _Prepared(pair.key, mr, target, brain, lesion, nawm, np.argwhere(brain), np.argwhere(lesion))


def draw_batch(subjects: Sequence[_Prepared], settings: DVRTrainingSettings, run_id: int, stage: str,
               step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mr (B, 4, *crop), target (B, 1, *crop), eq. 5 weights (B, 1, *crop)) of one step.

    A function of (seed, run, stage, step) only. Subjects are drawn uniformly; the crop is centred
    (jittered by up to a quarter crop) on a brain voxel, or on a lesion voxel with probability
    ``settings.crop_lesion_fraction(stage)`` when the subject has lesions; it is then moved
    inside the volume.
    """
    rng = np.random.default_rng([settings.seed, run_id, STAGES.index(stage), step])
    crop = np.asarray(settings.crop)
    mr, target, weights = [], [], []
    for _ in range(settings.batch_size):
        subject = subjects[int(rng.integers(len(subjects)))]
        on_lesion = len(subject.lesion_voxels) > 0 and rng.random() < settings.crop_lesion_fraction(stage)
        voxels = subject.lesion_voxels if on_lesion else subject.brain_voxels
        centre = voxels[int(rng.integers(len(voxels)))] + rng.integers(-(crop // 4), crop // 4 + 1)
        start = np.clip(centre - crop // 2, 0, np.asarray(subject.brain.shape) - crop)
        box = tuple(slice(int(s), int(s + c)) for s, c in zip(start, crop))
        mr.append(subject.mr[(slice(None), *box)])
        target.append(subject.target[box][None])
        # Wei eq. 5 per crop: lesion, NAWM and the rest of the brain each weigh 1 in total (the
        # lesion class settings.refiner_lesion_weight; only the Refiner's loss reads the weights).
        weights.append(region_weights(subject.lesion[box], subject.nawm[box], subject.brain[box],
                                      lesion_weight=settings.refiner_lesion_weight)[None])
    return np.stack(mr), np.stack(target), np.stack(weights)


# ------------------------------------------------------------------------------------ folds

def subject_folds(pairs: Sequence[MyelinPair], folds: int, seed: int) -> list[list[str]]:
    """Subjects (not sessions) dealt into ``folds`` folds, each group spread evenly.

    Wei §3.1 used 3 folds with 3-4 controls in each. Subjects are shuffled (``seed``) within each
    group (control, patient, n/a) and dealt round-robin, the deal continuing across groups, so
    fold sizes differ by at most one.
    """
    group_of: dict[str, str] = {}
    for pair in pairs:  # a subject's first session names its group
        group_of.setdefault(subject_of(pair.key), pair.group)
    groups: dict[str, set[str]] = {}
    for subject, group in group_of.items():
        groups.setdefault(group, set()).add(subject)
    n_subjects = sum(len(s) for s in groups.values())
    if not 2 <= folds <= n_subjects:
        raise InputError(None, f"--folds must lie in 2..{n_subjects} (the number of subjects), got {folds}")
    rng = np.random.default_rng([seed, 7])
    dealt: list[list[str]] = [[] for _ in range(folds)]
    position = 0
    for group in sorted(groups):
        members = sorted(groups[group])
        for index in rng.permutation(len(members)):
            dealt[position % folds].append(members[index])
            position += 1
    return [sorted(fold) for fold in dealt]


# ------------------------------------------------------------------------------ checkpoints

def _save_state(stem: Path, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                meta: dict) -> None:
    """Networks, Adam states and the torch RNG as safetensors; the rest as JSON (renamed last)."""
    tensors, optimizer_info = {}, {}
    for name, net in nets.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
    for name, optimizer in optimizers.items():
        flat, info = _flatten_optimizer(name, optimizer)
        tensors.update(flat)
        optimizer_info[name] = info
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    sha256 = write_safetensors(tensors, stem.with_suffix(".safetensors"), {"format": _STATE_FORMAT})
    atomic_write_text(json.dumps({"format": _STATE_FORMAT, "weights_sha256": sha256,
                                  "optimizers": optimizer_info, **meta}) + "\n", stem.with_suffix(".json"))


def _load_state(stem: Path, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    import hashlib  # noqa: PLC0415

    from safetensors.torch import load as load_bytes  # noqa: PLC0415

    card = stem.with_suffix(".json")
    try:
        meta = json.loads(card.read_text())
        data = stem.with_suffix(".safetensors").read_bytes()
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(card, f"training checkpoint not readable ({err})") from None
    if meta.get("format") != _STATE_FORMAT or hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise InputError(card, "not a dvr_from_mri training checkpoint, or its weights do not match its JSON")
    tensors = load_bytes(data)
    for name, net in nets.items():
        net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_unflatten_optimizer(name, tensors, meta["optimizers"][name]))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


# -------------------------------------------------------------------------------- training

def l1_train_step(generator: nn.Module, optimizer: torch.optim.Optimizer, mr: torch.Tensor,
                  dvr: torch.Tensor) -> dict[str, float]:
    """One step of the ``unet_l1`` baseline: mean L1 only (Wei §3.2's 3D U-Net), no adversary."""
    generator.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.l1_loss(generator(mr), dvr)
    loss.backward()
    optimizer.step()
    value = loss.item()
    return {"d": math.nan, "g": value, "g_adversarial": math.nan, "g_l1": value}


def _torch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class StageResult:
    steps: int
    steps_requested: int
    stopped_by: str
    seconds: float
    losses: list = field(default_factory=list)   # [step, d, g, g_adversarial, g_l1]

    def summary(self, lr: float, lambda_l1: float | None) -> dict:
        last = self.losses[-min(len(self.losses), 50):]
        means = {c: (round(float(np.nanmean([r[i + 1] for r in last])), 5)
                     if last and not all(math.isnan(r[i + 1]) for r in last) else None)
                 for i, c in enumerate(LOSS_COLUMNS)}
        return {"steps": self.steps, "steps_requested": self.steps_requested, "stopped_by": self.stopped_by,
                "seconds": round(self.seconds, 1),
                "seconds_per_step": round(self.seconds / self.steps, 4) if self.steps else None,
                "lr": lr, "lambda_l1": lambda_l1, "losses_last_50_steps": means}


def weight_average(generator: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``generator``'s weights and buffers (BatchNorm
    statistics), or None for ``decay`` 0. Its first update copies the generator."""
    if decay <= 0.0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: PLC0415

    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _to_device(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)


def same_training_run(stored, current: dict) -> bool:
    """Whether a checkpoint's fingerprint belongs to this stage of this run.

    The fingerprints must be equal (a setting added after the checkpoint was written counts as
    its default) except for the stage's own step count, so a longer run
    continues a shorter one: the learning rates are constant and the crops a function of the
    step (``draw_batch``), so the state at step ``s`` is the same whatever the target count. A
    Sketcher stage also ignores :data:`REFINER_ONLY_SETTINGS`; a Refiner stage keeps the
    Sketcher's step count, since it trains on that Sketcher.
    """
    if not isinstance(stored, dict):
        return False
    stage = current.get("stage")
    ignored = ("sketcher_steps", *REFINER_ONLY_SETTINGS) if stage == "sketcher" else ("refiner_steps",)

    def view(fingerprint: dict) -> dict:
        settings = fingerprint.get("settings")
        if isinstance(settings, dict):
            # A setting newer than the checkpoint took its default value there.
            settings = {k: v for k, v in {**_DEFAULT_SETTINGS, **settings}.items() if k not in ignored}
        return {**fingerprint, "settings": settings}
    return view(stored) == view(current)


def _run_stage(*, stage: str, label: str, run_id: int, subjects, settings: DVRTrainingSettings, steps: int,
               step_fn: Callable, nets: dict, optimizers: dict, device, deadline: float | None,
               checkpoint_stem: Path | None, fingerprint: dict, resume: bool, checkpoint_every: int,
               progress: bool | None, ema: torch.optim.swa_utils.AveragedModel | None = None) -> StageResult:
    """Train one stage for ``steps`` steps (or until ``deadline``, a perf_counter time).

    With ``ema`` (a weight average of ``nets["generator"]``, checkpointed with the nets), the
    average takes every step and is copied into the generator at the end.
    """
    if ema is not None:
        nets = {**nets, "generator_ema": ema}
    from tqdm import tqdm  # noqa: PLC0415

    step, seconds_before, losses = 0, 0.0, []
    if resume and checkpoint_stem is not None and checkpoint_stem.with_suffix(".json").is_file():
        meta = json.loads(checkpoint_stem.with_suffix(".json").read_text())
        if not same_training_run(meta.get("fingerprint"), fingerprint):
            say(f"{label} {stage}: checkpoint settings differ; starting this stage from scratch")
        elif int(meta.get("step", 0)) > steps:
            say(f"{label} {stage}: checkpoint is at step {meta['step']}, past the {steps} asked for; "
                "starting this stage from scratch")
        else:
            meta = _load_state(checkpoint_stem, nets, optimizers)
            step, seconds_before, losses = int(meta["step"]), float(meta["seconds"]), meta["losses"]
            say(f"{label} {stage}: resuming at step {step} from {checkpoint_stem}.safetensors")

    def checkpoint() -> None:
        if checkpoint_stem is not None:
            _save_state(checkpoint_stem, nets, optimizers,
                        {"step": step, "seconds": seconds_before + time.perf_counter() - started,
                         "fingerprint": fingerprint, "losses": losses})

    started = time.perf_counter()
    stopped_by = "steps"
    bar = tqdm(total=steps, initial=step, desc=f"{label} {stage}", unit="step", dynamic_ncols=True,
               disable=None if progress is None else not progress, file=sys.stderr)
    while step < steps:
        if deadline is not None and time.perf_counter() >= deadline:
            stopped_by = "time_limit"
            break
        mr, target, weights = draw_batch(subjects, settings, run_id, stage, step)
        result = step_fn(_to_device(mr, device), _to_device(target, device), _to_device(weights, device))
        if ema is not None:
            ema.update_parameters(nets["generator"])
        step += 1
        losses.append([step, *(float(result[c]) for c in LOSS_COLUMNS)])
        bar.update(1)
        bar.set_postfix(l1=f"{result['g_l1']:.4f}", d=f"{result['d']:.3f}", refresh=False)
        if step % checkpoint_every == 0 and step < steps:
            checkpoint()
    bar.close()
    checkpoint()
    if ema is not None and step > 0:
        nets["generator"].load_state_dict(ema.module.state_dict())
    return StageResult(step, steps, stopped_by, seconds_before + time.perf_counter() - started, losses)


@dataclass
class TrainedDVRModel:
    model: nn.Module                 # SketcherRefiner3D or Sketcher3D, eval mode, on the device
    sketcher: nn.Module | None       # the Sketcher alone (for the sketch-only metrics), or None
    normalisation: Normalisation
    stages: dict                     # stage -> summary
    discriminator: dict | None       # D's config
    subjects: list

    def card_normalisation(self) -> dict:
        return {"intensity_normalisation": self.normalisation.card()}


def train_model(pairs: Sequence[MyelinPair], settings: DVRTrainingSettings, *, device="cpu",
                time_limit_s: float | None = None, checkpoint_dir: str | Path | None = None,
                resume: bool = False, checkpoint_every: int = 200, progress: bool | None = None,
                run_id: int = 0, label: str = "final") -> TrainedDVRModel:
    """Train one model of ``settings.variant`` on ``pairs`` (the z-scores are theirs).

    ``time_limit_s`` bounds the whole run, split between the stages in proportion to their
    steps (the Refiner gets whatever the Sketcher left). Checkpoints go to
    ``checkpoint_dir/{sketcher,refiner}`` when given.
    """
    settings.check()
    device = torch.device(device)
    if not pairs:
        raise InputError(None, "no training subject")
    norm = Normalisation.from_pairs(pairs)
    subjects = [prepare_subject(p, norm, settings.crop) for p in pairs]
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    steps = settings.stage_steps()
    base = {"settings": settings.as_dict(), "subjects": [p.key for p in pairs], "run": label}
    generator_kwargs = {"base_features": settings.base_features, "levels": settings.levels,
                        "dropout": settings.dropout}
    d_features = settings.discriminator_features or settings.base_features
    stages: dict = {}

    # Stage 1: the Sketcher (or the single U-Net of unet_l1).
    torch.manual_seed(_torch_seed(settings.seed, run_id, 0))
    adversarial = settings.variant != "unet_l1"
    sketcher = define_sketcher(in_channels=len(MR_CHANNELS), noise_channels=1 if adversarial else 0,
                               **generator_kwargs).to(device)
    discriminator_config = None
    if adversarial:
        d_sketcher = define_patch_discriminator_3d(in_channels=len(MR_CHANNELS), base_features=d_features).to(device)
        discriminator_config = d_sketcher.config
        opt_g, opt_d = make_sketcher_optimizers(sketcher, d_sketcher, lr=settings.sketcher_lr)
        nets, optimizers = {"generator": sketcher, "discriminator": d_sketcher}, {"g": opt_g, "d": opt_d}

        def sketcher_step(mr, target, _weights):
            return sketcher_train_step(sketcher, d_sketcher, (opt_g, opt_d), mr, target,
                                       lambda_l1=settings.lambda_sketcher)
        step_fn = sketcher_step
    else:
        opt_g = torch.optim.Adam(sketcher.parameters(), lr=settings.sketcher_lr, betas=ADAM_BETAS)
        nets, optimizers = {"generator": sketcher}, {"g": opt_g}

        def step_fn(mr, target, _weights):
            return l1_train_step(sketcher, opt_g, mr, target)
    total_steps = sum(steps.values())
    stage_deadline = None if deadline is None else started + time_limit_s * steps["sketcher"] / total_steps
    result = _run_stage(stage="sketcher", label=label, run_id=run_id, subjects=subjects, settings=settings,
                        steps=steps["sketcher"], step_fn=step_fn, nets=nets, optimizers=optimizers, device=device,
                        deadline=stage_deadline,
                        checkpoint_stem=None if checkpoint_dir is None else checkpoint_dir / "sketcher",
                        fingerprint={**base, "stage": "sketcher"}, resume=resume,
                        checkpoint_every=checkpoint_every, progress=progress,
                        ema=weight_average(sketcher, settings.ema_decay))
    stages["sketcher"] = result.summary(settings.sketcher_lr, settings.lambda_sketcher if adversarial else None)
    sketcher.eval()
    if settings.variant != "sketcher_refiner":
        return TrainedDVRModel(sketcher, None, norm, stages, discriminator_config, [p.key for p in pairs])

    # Stage 2: the Refiner from scratch, the Sketcher frozen (Wei §3.1).
    for parameter in sketcher.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(_torch_seed(settings.seed, run_id, 1))
    refiner = define_refiner(in_channels=len(MR_CHANNELS), residual=settings.residual_refiner,
                             **generator_kwargs).to(device)
    d_refiner = define_patch_discriminator_3d(in_channels=len(MR_CHANNELS), base_features=d_features).to(device)
    opt_rg, opt_rd = make_refiner_optimizers(refiner, d_refiner, lr=settings.refiner_lr)

    def refiner_step(mr, target, weights):
        return refiner_train_step(refiner, d_refiner, (opt_rg, opt_rd), sketcher, mr, target, weights,
                                  lambda_l1=settings.lambda_refiner)
    result = _run_stage(stage="refiner", label=label, run_id=run_id, subjects=subjects, settings=settings,
                        steps=steps["refiner"], step_fn=refiner_step,
                        nets={"generator": refiner, "discriminator": d_refiner},
                        optimizers={"g": opt_rg, "d": opt_rd}, device=device, deadline=deadline,
                        checkpoint_stem=None if checkpoint_dir is None else checkpoint_dir / "refiner",
                        fingerprint={**base, "stage": "refiner", "sketcher_steps_done": stages["sketcher"]["steps"]},
                        resume=resume, checkpoint_every=checkpoint_every, progress=progress,
                        ema=weight_average(refiner, settings.ema_decay))
    stages["refiner"] = result.summary(settings.refiner_lr, settings.lambda_refiner)
    model = SketcherRefiner3D.from_models(sketcher, refiner).to(device).eval()
    return TrainedDVRModel(model, sketcher, norm, stages, discriminator_config, [p.key for p in pairs])


# ------------------------------------------------------------------------------ evaluation

def evaluate_subject(trained: TrainedDVRModel, pair: MyelinPair, *, window: int | None = None) -> dict:
    """Held-out metrics of one subject, in its brain, on the DVR scale (Wei eq. 8-9, Table 2).

    ``mse``, ``psnr`` (peak = the true DVR's brain maximum), ``mae``, ``discrepancy`` per ROI
    (``wm_control`` for a subject without lesions outside the patient group, else ``nawm`` and
    ``lesion``), ``baseline_mse``: the MSE of predicting the training mean DVR everywhere (what
    the network must beat), and ``sketcher_mse`` for the Sketcher-Refiner's first stage.
    """
    card = trained.card_normalisation()
    maps = pair_maps(pair)
    brain = np.asarray(pair.brain, bool)
    truth = np.asarray(pair.dvr, np.float32)
    predicted = predict_dvr(trained.model, card, maps, brain, window=window)
    metrics = {"site": pair.site, "group": pair.group,
               "mse": mse(predicted, truth, brain), "psnr": psnr(predicted, truth, brain),
               "mae": float(np.mean(np.abs(predicted[brain] - truth[brain]))),
               "baseline_mse": mse(np.full_like(truth, trained.normalisation.dvr_mean), truth, brain)}
    if trained.sketcher is not None:
        metrics["sketcher_mse"] = mse(predict_dvr(trained.sketcher, card, maps, brain, window=window), truth, brain)
    lesion = np.asarray(pair.lesion, bool) & brain
    rois = {}
    if lesion.any() or pair.group == "patient":
        rois["nawm"] = np.asarray(pair.nawm, bool) & brain & ~lesion
        rois["lesion"] = lesion
    else:
        rois["wm_control"] = np.asarray(pair.wm, bool) & brain
    metrics["discrepancy"] = {roi: discrepancy(predicted, truth, mask) for roi, mask in rois.items() if mask.any()}
    return _rounded(metrics)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def summarise_metrics(per_subject: dict[str, dict]) -> dict:
    """Means over subjects of MSE, PSNR, MAE and the baselines; discrepancy mean and SD per ROI."""
    rows = list(per_subject.values())
    summary: dict = {"n_subjects": len(rows)}
    for metric in ("mse", "psnr", "mae", "baseline_mse", "sketcher_mse"):
        values = [r[metric] for r in rows if r.get(metric) is not None]
        if values:
            summary[f"{metric}_mean"] = round(float(np.mean(values)), 6)
    if summary.get("mse_mean") and summary.get("baseline_mse_mean"):
        summary["mse_over_baseline"] = round(summary["mse_mean"] / summary["baseline_mse_mean"], 4)
    discrepancies = {}
    for roi in DISCREPANCY_ROIS:
        values = [r["discrepancy"][roi] for r in rows if roi in r.get("discrepancy", {})]
        if values:
            mean, sd = discrepancy_summary(values)
            discrepancies[roi] = {"mean": round(mean, 6), "sd": round(sd, 6) if math.isfinite(sd) else None,
                                  "n_subjects": len(values)}
    summary["discrepancy"] = discrepancies
    return summary


# ------------------------------------------------------------------------------- the loop

def _check_pairs(pairs: Sequence[MyelinPair]) -> None:
    for pair in pairs:
        shape = np.shape(pair.dvr)
        if np.shape(pair.mr) != (len(MR_CHANNELS), *shape) or any(
                np.shape(m) != shape for m in (pair.brain, pair.lesion, pair.nawm, pair.wm)):
            raise InputError(None, f"{pair.key}: MR {np.shape(pair.mr)}, DVR {shape} and masks are not on one grid")
        if not np.asarray(pair.brain).any():
            raise InputError(None, f"{pair.key}: empty brain mask")
        sizes = np.sqrt((np.asarray(pair.affine)[:3, :3] ** 2).sum(axis=0))
        if np.any(np.abs(sizes / np.asarray(VOXEL_MM) - 1) > 0.1):
            raise InputError(None, f"{pair.key}: voxels {np.round(sizes, 3).tolist()} mm, not the model's "
                                   f"{list(VOXEL_MM)} mm grid")


PHANTOM_WARNING = ("Trained on a synthetic synthquant.phantom cohort only. Fit for demos and tests; not "
                   "validated on real MTR, DTI or [11C]PIB PET: do not use it to quantify real data.")


def train_dvr_from_mri(pairs: Sequence[MyelinPair], out_dir: str | Path, *,
                       settings: DVRTrainingSettings | None = None, folds: int | None = None,
                       device: str = "auto", omp_nthreads: int = 1, time_limit_s: float | None = None,
                       resume: bool = False, checkpoint_every: int = 200, progress: bool | None = None,
                       dataset_name: str = "n/a", phantom: bool = False, refused: dict | None = None,
                       dtype: torch.dtype | None = None) -> dict:
    """Cross-validate (``folds``) then train the final model on every pair; write the model.

    Writes ``OUT/dvr_from_mri.safetensors`` + ``.json`` (the card), ``OUT/training_losses.tsv``
    and, with folds, ``OUT/cross_validation.json``; checkpoints under ``OUT/checkpoints``.
    ``time_limit_s`` bounds all the training runs together: each run gets an equal share of what
    is left when it starts. Returns the paths, the card and the cross-validation metrics.
    """
    from synthquant.bids import software_versions  # noqa: PLC0415
    from synthquant.nets.checkpoint import save_model  # noqa: PLC0415
    from synthquant.nets.device import choose_device  # noqa: PLC0415

    settings = settings or DVRTrainingSettings()
    settings.check()
    if time_limit_s is not None and time_limit_s <= 0:
        raise InputError(None, f"the time limit must be positive, got {time_limit_s}")
    if checkpoint_every < 1:
        raise InputError(None, f"checkpoint_every must be at least 1, got {checkpoint_every}")
    pairs = list(pairs)
    if not pairs:
        raise InputError(None, "no training pair")
    _check_pairs(pairs)
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        raise InputError(None, "training pairs with the same key")
    fold_subjects = subject_folds(pairs, folds, settings.seed) if folds else []
    torch_device = choose_device(device, omp_nthreads=omp_nthreads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    n_runs = len(fold_subjects) + 1
    loss_rows: list[str] = []

    def budget(runs_left: int) -> float | None:
        return None if deadline is None else max(1e-3, (deadline - time.perf_counter()) / runs_left)

    def record_losses(trained_label: str) -> None:
        for stage in STAGES:
            stem = out_dir / "checkpoints" / trained_label / stage
            if stem.with_suffix(".json").is_file():
                for row in json.loads(stem.with_suffix(".json").read_text())["losses"]:
                    loss_rows.append("\t".join([trained_label, stage, str(row[0]),
                                                *(f"{v:.6g}" for v in row[1:])]))

    say(f"{len(pairs)} subject(s): " + ", ".join(f"{p.key} ({p.site}, {p.group})" for p in pairs))
    say(f"variant {settings.variant}: {settings.stage_steps()} steps, crop {'x'.join(map(str, settings.crop))}, "
        f"batch {settings.batch_size}, {settings.base_features} base features on {torch_device.type}"
        + (f"; {len(fold_subjects)}-fold cross-validation first" if fold_subjects else ""))
    cross_validation = None
    if fold_subjects:
        per_fold, per_subject = [], {}
        for index, held in enumerate(fold_subjects):
            label = f"fold-{index + 1}"
            train_pairs = [p for p in pairs if subject_of(p.key) not in held]
            test_pairs = [p for p in pairs if subject_of(p.key) in held]
            trained = train_model(train_pairs, settings, device=torch_device,
                                  time_limit_s=budget(n_runs - index),
                                  checkpoint_dir=out_dir / "checkpoints" / label, resume=resume,
                                  checkpoint_every=checkpoint_every, progress=progress, run_id=index + 1,
                                  label=label)
            record_losses(label)
            metrics = {p.key: evaluate_subject(trained, p) for p in test_pairs}
            for key, values in metrics.items():
                say(f"{label} held-out {key}: MSE {values['mse']:.4g} (constant {values['baseline_mse']:.4g}), "
                    f"PSNR {values['psnr']:.2f} dB, discrepancy "
                    + ", ".join(f"{roi} {v:.4f}" for roi, v in values["discrepancy"].items()))
            per_subject.update(metrics)
            per_fold.append({"fold": index + 1, "held_out": [p.key for p in test_pairs],
                             "train": [p.key for p in train_pairs], "stages": trained.stages,
                             "metrics": summarise_metrics(metrics)})
        cross_validation = {
            "folds": len(fold_subjects),
            "rule": "subjects dealt into folds round-robin after a seeded shuffle within each group (control, "
                    "patient), as Wei 2019 §3.1 spread its controls over 3 folds; every fold's model is trained "
                    "on the other folds with its own z-score statistics",
            "metrics": "whole-volume prediction of each held-out subject, in its brain mask, DVR units: mse "
                       "(Wei eq. 8, per-voxel mean), psnr (eq. 9, peak = the true DVR's brain maximum), mae, "
                       "discrepancy |mean true - mean predicted| per ROI (Table 2: wm_control = WM of subjects "
                       "without lesions, nawm and lesion of patients), baseline_mse = MSE of the training mean "
                       "DVR as a constant prediction, sketcher_mse = the first stage alone",
            "per_fold": per_fold, "per_subject": per_subject, "mean": summarise_metrics(per_subject),
        }
        atomic_write_text(json.dumps(cross_validation, indent=2) + "\n", out_dir / "cross_validation.json")
        mean = cross_validation["mean"]
        say(f"cross-validation ({len(per_subject)} held-out subjects): MSE {mean['mse_mean']:.4g} vs constant "
            f"{mean['baseline_mse_mean']:.4g}, PSNR {mean['psnr_mean']:.2f} dB")

    final = train_model(pairs, settings, device=torch_device, time_limit_s=budget(1),
                        checkpoint_dir=out_dir / "checkpoints" / "final", resume=resume,
                        checkpoint_every=checkpoint_every, progress=progress, run_id=0, label="final")
    record_losses("final")
    # Training time summed over every stage trained for this card (folds and final): the stages
    # keep their seconds in the checkpoints, so a resumed run reports the whole training.
    runs = [fold["stages"] for fold in (cross_validation or {}).get("per_fold", [])] + [final.stages]
    minutes = sum(stage.get("seconds", 0.0) for stages in runs for stage in stages.values()) / 60.0
    device_name = torch_device.type
    if torch_device.type == "cuda":
        device_name += f" ({torch.cuda.get_device_name(torch_device)})"
    groups: dict[str, int] = {}
    for pair in pairs:
        groups[pair.group] = groups.get(pair.group, 0) + 1
    card = {
        "name": MODEL_NAME,
        "task": "multimodal MRI (MTR, FA, RD, AD) -> [11C]PIB PET DVR, 3D whole volume "
                "(Sketcher-Refiner GANs, Wei et al., Med Image Anal 2019)",
        "variant": settings.variant, "variant_description": VARIANTS[settings.variant],
        "input_grid": {"voxel_mm": list(VOXEL_MM), "matrix": "any (padded internally to a multiple of "
                                                             f"{2 ** settings.levels})",
                       "frame": "the subject's myelin grid (synthquant.myelinprep): MR maps on one grid, "
                                "brain mask on the same grid"},
        "modalities": list(MR_CHANNELS),
        "output": "DVR",
        "intensity_normalisation": final.normalisation.card(),
        "training": {
            "dataset": dataset_name, "n_subjects": len(pairs), "subjects": keys,
            "groups": groups, "sites": sorted({p.site for p in pairs}),
            "refused": dict(refused or {}),
            "stages": final.stages, "crop": list(settings.crop), "batch_size": settings.batch_size,
            "crop_sampling": "centred on a random brain voxel, or on a random lesion voxel for "
                             f"{settings.lesion_crop_fraction:.0%} (Sketcher) and "
                             f"{settings.refiner_lesion_crop_fraction:.0%} (Refiner) of the crops of subjects "
                             "with lesions, jittered by up to a quarter crop",
            "region_weights": f"Wei eq. 5 per crop: {settings.refiner_lesion_weight:g}/N_lesion, 1/N_NAWM, "
                              "1/N_other brain voxels",
            "weights": (f"exponential moving average over each stage's steps (decay {settings.ema_decay:g} per "
                        "step), weights and BatchNorm statistics" if settings.ema_decay
                        else "the last step's of each stage"),
            "adam_betas": list(ADAM_BETAS), "discriminator": final.discriminator,
            "settings": settings.as_dict(), "seed": settings.seed,
            "minutes": round(minutes, 2), "device": device_name,
            "omp_nthreads": int(omp_nthreads),
        },
        "software": software_versions(),
    }
    if cross_validation is not None:
        card["cross_validation"] = {k: v for k, v in cross_validation.items() if k != "per_fold"}
        card["cross_validation"]["per_fold"] = [{k: v for k, v in fold.items() if k != "stages"}
                                               for fold in cross_validation["per_fold"]]
    if phantom:
        card["synthetic_phantom_only"] = True
        card["warning"] = PHANTOM_WARNING
    model_stem = out_dir / MODEL_NAME
    sha256 = save_model(final.model.cpu(), model_stem, card, dtype=dtype)
    losses_tsv = atomic_write_text("\n".join(["\t".join(("run", "stage", "step", *LOSS_COLUMNS)), *loss_rows]) + "\n",
                                   out_dir / "training_losses.tsv")
    say(f"wrote {model_stem}.safetensors and {model_stem}.json ({minutes:.1f} min)")
    return {"model": f"{model_stem}.safetensors", "card": f"{model_stem}.json", "sha256": sha256,
            "losses_tsv": str(losses_tsv), "cross_validation": cross_validation, "stages": final.stages,
            "minutes": minutes, "subjects": keys}


def train_dvr_from_mri_bids(bids_dir: str | Path, out_dir: str | Path, *, work_dir: str | Path | None = None,
                            participant_labels: Sequence[str] = (), lesion_dir: str | Path | None = None,
                            omp_nthreads: int = 1, progress: bool | None = None, **options) -> dict:
    """``train dvr-from-mri``: training pairs from a BIDS dataset, then :func:`train_dvr_from_mri`.

    Pairs come from :func:`synthquant.myelinprep.training_pairs` (cached under ``work_dir``,
    default ``OUT/work``); refused subjects are warned about and recorded in the card.
    """
    from synthquant.bids import dataset_provenance  # noqa: PLC0415

    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS directory not found")
    if out_dir.resolve() == bids_dir.resolve():
        raise InputError(out_dir, "output directory must differ from the BIDS directory")
    (options.get("settings") or DVRTrainingSettings()).check()  # bad settings before hours of preprocessing
    from synthquant.myelinprep import training_pairs  # noqa: PLC0415 - imports antspyx

    work_dir = Path(work_dir) if work_dir is not None else out_dir / "work"
    pairs, refused = training_pairs(bids_dir, work_dir / "dvr_from_mri_pairs", participant_labels=participant_labels,
                                    lesion_dir=lesion_dir, omp_nthreads=omp_nthreads,
                                    progress=sys.stderr.isatty() if progress is None else progress)
    for key, reason in refused.items():
        warn(f"skipping {key}: {reason}")
    if not pairs:
        raise InputError(bids_dir, "no subject with MTR, DWI, T1w and a dynamic [11C]PIB PET (trc-PIB) could be "
                                   "prepared: nothing to train dvr-from-mri on")
    dataset_name, phantom = dataset_provenance(bids_dir)
    return train_dvr_from_mri(pairs, out_dir, omp_nthreads=omp_nthreads, progress=progress,
                              dataset_name=dataset_name, phantom=phantom, refused=refused, **options)
