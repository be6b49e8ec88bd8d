"""Cross-validated validation of the myelin arm's DVR predictor (Wei et al., Med Image Anal 2019).

k-fold cross-validation by subject (Wei §3.1: 3 folds, controls spread over them) on the
prepared training pairs of a phantom myelin cohort, for the three variants of
:mod:`synthquant.nets.myelin_training` trained with identical steps, crops and seeds:

- ``unet_l1``: one 3D U-Net, L1 only (Wei's "3D U-Net");
- ``sketcher``: one 3D cGAN (Wei's "Sketcher");
- ``sketcher_refiner``: the Sketcher, then the Refiner with the eq. 5 lesion/NAWM weighting.

The folds, the training and the normalisation are the library's (``subject_folds``,
``train_model``, ``predict_dvr``): no second training loop. The ``sketcher`` variant is the
``sketcher_refiner`` run's first stage: ``train_model`` draws the same crops (a function of seed,
fold, stage and step) and seeds the Sketcher the same way for both variants, so training it twice
would give the same weights. The script checks that on a few steps before the run and prints
the result.

Printed (and written to ``benchmarks/results/<tag>_myelin_validation.txt``, per-subject values
in ``..._myelin_validation.json``):

- Table 1 analogue: MSE and PSNR (Wei eq. 8-9) in the brain, DVR units, mean ± SD over the
  held-out subjects, with the MSE of a constant prediction (the training mean DVR);
- Table 2 analogue: myelin content discrepancy |mean true - mean predicted| in the WM of
  controls, the NAWM and the lesions of patients, mean (SD) over subjects;
- §3.5 analogue: Dice between the demyelination masks of the true and of the predicted DVR in
  each held-out patient's lesions, and the % demyelinated. Bodini 2016's rule: lesion voxels
  whose DVR is below mean - k SD of a voxel-wise healthy-control WM norm in template space
  (``build_hc_wm_norm``, 6 mm FWHM). The training pairs' work folders hold each subject's
  normalisation, so the maps reach template space through ``grid_to_template``, as in the
  participant workflow. Three choices of norm are printed:

  - primary (one true norm): built per fold from the *training* folds' controls' true DVR and
    applied to the true and to the predicted DVR of the held-out patient;
  - the pipeline's (README, group level): the true DVR against the norm of the held-out
    controls' true DVR, the predicted DVR against the norm of the same controls' out-of-fold
    predicted DVR, as the pipeline does for a cohort without PIB;
  - a cruder one: one scalar threshold per fold, mean - k SD of the pooled WM voxels of the
    training controls' true DVR on their own grids.
- The phantom's ceiling in every table: the noise-free DVR of ``sourcedata/truth`` as the
  prediction (``noise_free_prediction``), the best any predictor can score against the noisy
  measured DVR.
- Bland-Altman plots of ROI-mean DVR, predicted against true (WM of controls / NAWM, lesions),
  per variant: ``benchmarks/results/<tag>_myelin_bland_altman.png``.

Goals (Wei 2019's results): lesion discrepancy <= 0.022, Dice >= 0.83, and the Refiner beats the
Sketcher. Each is printed as met or not met.

    .venv/bin/python benchmarks/myelin_validation.py --bids /tmp/dvrtrain/bids --work /tmp/dvrtrain \\
        --out /tmp/dvrval/bench --folds 3 --steps 250 --omp-nthreads 1 --tag 2026-11-23

That command took 18 minutes on 2026-11-23 (1 thread of a 2-core CPU shared with other jobs;
training 15.8 min at 0.24-0.51 s per U-Net step, 0.36-0.62 per Sketcher step, 0.42-0.55 per
Refiner step). ``--work`` is the ``-w`` of ``run_workflow.py train dvr-from-mri``: the pairs are cached under
``WORK/dvr_from_mri_pairs`` and are prepared there first if missing (ANTs, minutes per subject).
Checkpoints under ``--out`` make a rerun with the same settings skip the training; ``--fold N``
trains one fold, so the folds can run in parallel processes before the run that prints the tables.
``--more-bids`` pools more phantom cohorts (other seeds) into the cross-validation, for more
training subjects per fold and more held-out patients behind each goal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
VARIANT_ORDER = ("unet_l1", "sketcher", "sketcher_refiner")
VARIANT_LABEL = {"unet_l1": "3D U-Net (L1)", "sketcher": "Sketcher (cGAN)", "sketcher_refiner": "Sketcher-Refiner"}
#: Wei 2019 Table 1, 2 and §3.5, for the printout.
WEI = {"unet_l1": {"mse": "0.0107 (0.0041)", "psnr": "29.297 (0.986)", "wm_control": "0.053 (0.034)",
                   "nawm": "0.039 (0.033)", "lesion": "0.035 (0.027)"},
       "sketcher": {"mse": "0.0094 (0.0038)", "psnr": "29.475 (0.981)", "wm_control": "0.053 (0.041)",
                    "nawm": "0.034 (0.022)", "lesion": "0.030 (0.017)"},
       "sketcher_refiner": {"mse": "0.0083 (0.0037)", "psnr": "30.044 (1.095)", "wm_control": "0.048 (0.026)",
                            "nawm": "0.029 (0.021)", "lesion": "0.022 (0.015)", "dice": "0.83 (0.12)"}}
#: The phantom ceiling's row (see ``noise_free_prediction``): printed in the tables, never trained.
CEILING = "noise_free_truth"
CEILING_LABEL = "noise-free truth"
GOAL_LESION_DISCREPANCY = 0.022
GOAL_DICE = 0.83
ROI_LABEL = {"wm_control": "WM in HC", "nawm": "NAWM", "lesion": "MS lesions"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=Path, required=True, help="phantom myelin cohort (BIDS)")
    parser.add_argument("--work", type=Path, required=True, help="holds dvr_from_mri_pairs/ (train's -w)")
    parser.add_argument("--out", type=Path, required=True, help="scratch: checkpoints, template-space maps")
    parser.add_argument("--participant-label", nargs="+", default=[], metavar="L", help="default: all subjects")
    parser.add_argument("--more-bids", type=Path, nargs="+", default=[], metavar="DIR",
                        help="more phantom cohorts (other seeds) pooled into the cross-validation; their subjects "
                             "are named c2-sub-01, c3-sub-01, ... (Wei: 28 subjects)")
    parser.add_argument("--more-work", type=Path, nargs="+", default=[], metavar="DIR",
                        help="one per --more-bids, holding its dvr_from_mri_pairs/ (default: OUT/cohort-2, ...)")
    parser.add_argument("--folds", type=int, default=3, help="Wei: 3")
    parser.add_argument("--fold", type=int, default=None, metavar="N",
                        help="train and evaluate fold N only, then stop (folds in parallel processes; a later run "
                             "without --fold finds their checkpoints under --out and prints the tables)")
    parser.add_argument("--steps", type=int, default=300,
                        help="steps of every network: the U-Net, the Sketcher and the Refiner each")
    parser.add_argument("--refiner-steps", type=int, default=None, metavar="N",
                        help="steps of the Refiner (default --steps); more than a finished run under --out "
                             "extends its Refiners from their checkpoints")
    parser.add_argument("--k", type=float, default=2.0, help="demyelinated: DVR < HC WM mean - k SD (Bodini: 2)")
    parser.add_argument("--refiner-from-scratch", action="store_true",
                        help="Wei's Refiner (its output is the DVR, trained from scratch) instead of ours "
                             "(sketch + a learnt correction, starting at the sketch)")
    parser.add_argument("--refiner-lesion-crop-fraction", type=float, default=None,
                        help="share of the Refiner's crops centred on a lesion voxel (default: the training default)")
    parser.add_argument("--refiner-lesion-weight", type=float, default=None,
                        help="weight of the lesion class in the Refiner's eq. 5 loss (default: the training default)")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="every network's result is a moving average of its weights with this per-step "
                             "decay (default: the training default, 0 = the last step's weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--tag", default=time.strftime("%Y-%m-%d"), help="prefix of the files in results/")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args(argv)


class Report:
    """Lines printed as they come and kept for the results file."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def mean_sd(values) -> tuple[float, float, int]:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan, int(values.size)


def confidence_interval(values, level: float = 0.95) -> str:
    """``[low, high]`` of the mean, from the subjects' spread (t distribution)."""
    mean, sd, n = mean_sd(values)
    if n < 2:
        return "[n/a]"
    from scipy import stats  # noqa: PLC0415 - as main() imports it: scipy only when the benchmark runs
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return f"[{mean - half:.3f}, {mean + half:.3f}]"


def cell(values, digits: int = 4) -> str:
    mean, sd, n = mean_sd(values)
    return "n/a" if n == 0 else f"{mean:.{digits}f} ({sd:.{digits}f})"


# --------------------------------------------------------------------------------- helpers

def rois_of(pair) -> dict[str, np.ndarray]:
    """Wei Table 2's ROIs, by the rule of ``myelin_training.evaluate_subject``."""
    brain = np.asarray(pair.brain, bool)
    lesion = np.asarray(pair.lesion, bool) & brain
    if lesion.any() or pair.group == "patient":
        return {"nawm": np.asarray(pair.nawm, bool) & brain & ~lesion, "lesion": lesion}
    return {"wm_control": np.asarray(pair.wm, bool) & brain}


def subject_metrics(pair, predicted: np.ndarray, baseline_mean: float) -> dict:
    from synthquant.myelin import discrepancy
    from synthquant.nets.sketcher_refiner import mse, psnr

    brain = np.asarray(pair.brain, bool)
    truth = np.asarray(pair.dvr, np.float32)
    row = {"mse": mse(predicted, truth, brain), "psnr": psnr(predicted, truth, brain),
           "baseline_mse": mse(np.full_like(truth, baseline_mean), truth, brain),
           "discrepancy": {}, "true_mean": {}, "pred_mean": {}}
    for roi, mask in rois_of(pair).items():
        if mask.any():
            row["discrepancy"][roi] = discrepancy(predicted, truth, mask)
            row["true_mean"][roi] = float(truth[mask].mean())
            row["pred_mean"][roi] = float(predicted[mask].mean())
    return row


def phantom_truth_dvr(bids: Path, key: str) -> Path | None:
    """The phantom's noise-free PET-resolution DVR of subject ``key`` on its PET grid, if any."""
    subject = key.split("_")[0]
    path = bids / "sourcedata" / "truth" / subject / f"{key}_trc-PIB_desc-true_dvr.nii.gz"
    return path if path.is_file() else None


def noise_free_prediction(pair, truth_file: Path) -> np.ndarray:
    """The phantom ceiling: the noise-free DVR on the pair's grid, times ``a`` so that it matches
    the measured DVR in the brain in the least-squares sense.

    The myelin grid shares the PET's axes (``myelinprep``), so the truth, on the PET grid, needs
    no transform. The one factor absorbs the pipeline's estimated cerebellar reference (the truth
    divides by pure cerebellar-GM VT); it is fitted over ~10^5 brain voxels, so it cannot fit
    the lesions.
    """
    import nibabel as nib

    from synthquant.image import resample_to_grid

    image = nib.load(str(truth_file))
    truth = resample_to_grid(np.asarray(image.dataobj, np.float32), image.affine, pair.dvr.shape, pair.affine,
                             order=1)
    brain = np.asarray(pair.brain, bool)
    t, m = truth[brain].astype(np.float64), np.asarray(pair.dvr, np.float64)[brain]
    return (truth * (t @ m) / (t @ t)).astype(np.float32)


class TemplateMaps:
    """Grid maps of the training pairs carried into template space (cached NIfTIs)."""

    def __init__(self, pairs_dir: Path, out_dir: Path, prefix: str = ""):
        # prefix: what the benchmark put before the pair cache's subject keys (a pooled cohort's "c2-")
        self.pairs_dir, self.out_dir, self.prefix = pairs_dir, out_dir, prefix

    def transforms(self, key: str):
        subject = self.pairs_dir / key.removeprefix(self.prefix)
        forward = [subject / "normalize" / "norm_1Warp.nii.gz", subject / "normalize" / "norm_0GenericAffine.mat"]
        grid_to_t1w = subject / "pib_0GenericAffine.mat"
        missing = [p for p in (*forward, grid_to_t1w) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{key}: no normalisation in the pair cache ({missing[0]})")
        return grid_to_t1w, forward

    def map(self, pair, array: np.ndarray, name: str, *, cache: bool = True) -> np.ndarray:
        import nibabel as nib

        from synthquant.image import save_image
        from synthquant.myelinprep import grid_to_template

        out = self.out_dir / pair.key / f"{name}_template.nii.gz"
        if not (cache and out.is_file()):
            out.parent.mkdir(parents=True, exist_ok=True)
            grid_file = save_image(np.asarray(array, np.float32), pair.affine, out.parent / f"{name}_grid.nii.gz",
                                   dtype=np.float32)
            grid_to_t1w, forward = self.transforms(pair.key)
            grid_to_template(grid_file, grid_to_t1w, forward, out)
        return np.asarray(nib.load(str(out)).dataobj, dtype=np.float32)


def check_shared_sketcher(pairs, settings_cls, train_model, seed: int) -> str:
    """Train the ``sketcher`` variant and the ``sketcher_refiner``'s first stage for a few steps;
    their Sketchers must be equal tensor for tensor."""
    import torch

    steps = 3
    alone = train_model(pairs, settings_cls(variant="sketcher", sketcher_steps=steps, seed=seed), device="cpu",
                        progress=False, run_id=1, label="check")
    staged = train_model(pairs, settings_cls(variant="sketcher_refiner", sketcher_steps=steps, refiner_steps=1,
                                             seed=seed), device="cpu", progress=False, run_id=1, label="check")
    a, b = alone.model.state_dict(), staged.sketcher.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return (f"sketcher variant == sketcher_refiner stage 1 after {steps} steps on {len(pairs)} subjects: "
            f"{'identical' if same else 'DIFFERENT'} ({len(a)} tensors)")


# ------------------------------------------------------------------------------- Bland-Altman

def bland_altman(per_subject: dict, out_png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("wm", "WM of controls (o) / NAWM of patients (^)"), ("lesion", "lesions of patients"))
    fig, axes = plt.subplots(2, len(VARIANT_ORDER), figsize=(4.2 * len(VARIANT_ORDER), 7.4), sharey="row")
    for col, variant in enumerate(VARIANT_ORDER):
        for row, (panel, panel_title) in enumerate(panels):
            ax = axes[row, col]
            rois = ("wm_control", "nawm") if panel == "wm" else ("lesion",)
            means, diffs = [], []
            for roi, marker in zip(rois, ("o", "^")):
                m, d = [], []
                for subject in per_subject.values():
                    values = subject["variants"][variant]
                    if roi in values["true_mean"]:
                        t, p = values["true_mean"][roi], values["pred_mean"][roi]
                        m.append((t + p) / 2)
                        d.append(p - t)
                ax.scatter(m, d, marker=marker, s=28, color="C0" if roi != "lesion" else "C3", alpha=0.8)
                means += m
                diffs += d
            if diffs:
                bias, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
                ax.axhline(bias, color="k", lw=1)
                for sign in (-1, 1):
                    ax.axhline(bias + sign * 1.96 * sd, color="k", lw=0.8, ls="--")
                ax.axhline(0, color="0.7", lw=0.6)
                ax.text(0.02, 0.96, f"bias {bias:+.3f}, LoA ±{1.96 * sd:.3f} (n={len(diffs)})",
                        transform=ax.transAxes, va="top", fontsize=8)
            ax.set_title(f"{VARIANT_LABEL[variant]}: {panel_title}", fontsize=8.5)
            ax.set_xlabel("mean of true and predicted ROI DVR", fontsize=8)
            if col == 0:
                ax.set_ylabel("predicted - true ROI DVR", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from synthquant.config import apply_threads

    apply_threads(args.omp_nthreads, args.seed)  # before antspyx and torch pick their thread counts
    import torch
    from scipy import stats

    from synthquant.myelin import build_hc_wm_norm, demyelinated_voxels, dice
    from synthquant.myelinprep import MASK_THRESHOLD, training_pairs
    from synthquant.nets.dvr import predict_dvr
    from synthquant.nets.myelin_training import (
        DVRTrainingSettings,
        pair_maps,
        subject_folds,
        subject_of,
        train_model,
    )

    torch.set_num_threads(args.omp_nthreads)
    report = Report()
    report(f"$ python benchmarks/myelin_validation.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    report(f"({time.strftime('%Y-%m-%d %H:%M')}; CPU, {args.omp_nthreads} torch/ITK thread(s), torch "
           f"{torch.__version__}; the machine's 2 cores were shared with other jobs, so seconds are inflated)")

    t0 = time.perf_counter()
    pairs_dir = args.work / "dvr_from_mri_pairs"
    pairs, refused = training_pairs(args.bids, pairs_dir, participant_labels=tuple(args.participant_label),
                                    omp_nthreads=args.omp_nthreads, progress=False)
    for key, reason in refused.items():
        report(f"refused {key}: {reason}")
    templates = dict.fromkeys((p.key for p in pairs), TemplateMaps(pairs_dir, args.out / "template"))
    truth_files = {p.key: phantom_truth_dvr(args.bids, p.key) for p in pairs}
    report(f"{len(pairs)} training pairs from {args.bids} ({time.perf_counter() - t0:.0f} s): "
           + ", ".join(f"{p.key} {p.site} {p.group}" for p in sorted(pairs, key=lambda p: p.key)))
    if len(args.more_work) not in (0, len(args.more_bids)):
        raise SystemExit("--more-work takes one folder per --more-bids")
    for number, bids in enumerate(args.more_bids, start=2):
        t0 = time.perf_counter()
        work = args.more_work[number - 2] if args.more_work else args.out / f"cohort-{number}"
        prefix = f"c{number}-"
        more, more_refused = training_pairs(bids, work / "dvr_from_mri_pairs", omp_nthreads=args.omp_nthreads,
                                            progress=False)
        for key, reason in more_refused.items():
            report(f"refused {prefix}{key}: {reason}")
        more = [p._replace(key=prefix + p.key) for p in more]
        pooled_template = TemplateMaps(work / "dvr_from_mri_pairs", args.out / f"template-{number}", prefix=prefix)
        templates.update({p.key: pooled_template for p in more})
        truth_files.update({p.key: phantom_truth_dvr(bids, p.key.removeprefix(prefix)) for p in more})
        pairs += more
        report(f"{len(more)} training pairs from {bids} ({time.perf_counter() - t0:.0f} s): "
               + ", ".join(f"{p.key} {p.site} {p.group}" for p in sorted(more, key=lambda p: p.key)))
    pairs.sort(key=lambda p: p.key)
    shapes = sorted({'x'.join(map(str, p.dvr.shape)) for p in pairs})
    report(f"grids (2 mm): {', '.join(shapes)}; lesion voxels per patient: "
           + ", ".join(f"{p.key} {int(p.lesion.sum())}" for p in pairs if p.lesion.any()))

    refiner_recipe = {name: value for name, value in (("refiner_lesion_crop_fraction", args.refiner_lesion_crop_fraction),
                                                      ("refiner_lesion_weight", args.refiner_lesion_weight))
                      if value is not None}
    refiner_steps = args.steps if args.refiner_steps is None else args.refiner_steps
    settings = {variant: DVRTrainingSettings(variant=variant, sketcher_steps=args.steps, refiner_steps=refiner_steps,
                                             seed=args.seed, residual_refiner=not args.refiner_from_scratch,
                                             **refiner_recipe,
                                             **({} if args.ema_decay is None else {"ema_decay": args.ema_decay}))
                for variant in ("unet_l1", "sketcher_refiner")}
    base = settings["sketcher_refiner"]
    report(f"settings: {args.folds}-fold CV by subject (seed {args.seed}); {args.steps} steps per network "
           + (f"(Refiner {refiner_steps}) " if refiner_steps != args.steps else "")
           + f"(U-Net; Sketcher; Refiner), batch {base.batch_size} crops of {'x'.join(map(str, base.crop))}, "
           f"{base.base_features} base features, {base.levels} levels, lesion-centred crops "
           f"{base.lesion_crop_fraction:.0%} (Sketcher, U-Net) / {base.refiner_lesion_crop_fraction:.0%} (Refiner), "
           f"Refiner eq. 5 lesion weight {base.refiner_lesion_weight:g}, "
           + (f"weights averaged over steps (EMA decay {base.ema_decay:g}), " if base.ema_decay else "")
           + f"Adam {base.sketcher_lr:g} (U-Net, Sketcher) / {base.refiner_lr:g} "
           f"(Refiner), λS=λR={base.lambda_sketcher:g}; Refiner "
           + ("residual (sketch + correction, started at the sketch)" if base.residual_refiner
              else "from scratch (Wei)") + "; same crops for every variant of a fold")
    t0 = time.perf_counter()
    small = [p for p in pairs if p.lesion.any()][:1] + [p for p in pairs if not p.lesion.any()][:1]
    report(check_shared_sketcher(small, DVRTrainingSettings, train_model, args.seed)
           + f" ({time.perf_counter() - t0:.0f} s)")

    folds = subject_folds(pairs, args.folds, args.seed)
    per_subject: dict[str, dict] = {}
    fold_info, train_seconds, predict_seconds, template_seconds = [], 0.0, 0.0, 0.0
    # Template-space maps for the pipeline's rule (after the folds): every held-out control's true and
    # out-of-fold predicted DVR build the norms; every held-out patient's maps are classified against them.
    held_controls: dict[str, list] = {"wm": [], "true": []}
    held_patients: dict[str, dict] = {}
    for index, held in enumerate(folds):
        if args.fold is not None and index + 1 != args.fold:
            continue
        label = f"fold-{index + 1}"
        train_pairs = [p for p in pairs if subject_of(p.key) not in held]
        test_pairs = [p for p in pairs if subject_of(p.key) in held]
        trained, stage_info = {}, {}
        for variant, variant_settings in settings.items():
            t0 = time.perf_counter()
            trained[variant] = train_model(train_pairs, variant_settings, device="cpu",
                                           checkpoint_dir=args.out / "checkpoints" / variant / label, resume=True,
                                           checkpoint_every=max(1, min(args.steps, refiner_steps)), progress=False,
                                           run_id=index + 1, label=label)
            train_seconds += time.perf_counter() - t0
            stage_info[variant] = {stage: {k: v[k] for k in ("steps", "seconds", "seconds_per_step", "stopped_by")}
                                   for stage, v in trained[variant].stages.items()}
        models = {"unet_l1": trained["unet_l1"].model, "sketcher": trained["sketcher_refiner"].sketcher,
                  "sketcher_refiner": trained["sketcher_refiner"].model}
        norm = trained["sketcher_refiner"].normalisation
        card = trained["sketcher_refiner"].card_normalisation()

        # HC WM norms of this fold, from the training folds' controls' true DVR.
        t0 = time.perf_counter()
        controls = [p for p in train_pairs if p.group == "control"]
        norm_tpl = build_hc_wm_norm([templates[p.key].map(p, p.dvr, "dvr_true") for p in controls],
                                    [templates[p.key].map(p, p.wm, "wm") for p in controls])
        pooled = np.concatenate([p.dvr[p.wm & p.brain] for p in controls]).astype(np.float64)
        scalar_threshold = float(pooled.mean() - args.k * pooled.std(ddof=1))
        template_seconds += time.perf_counter() - t0
        fold_info.append({"fold": index + 1, "held_out": [p.key for p in test_pairs],
                          "train": [p.key for p in train_pairs], "norm_controls": [p.key for p in controls],
                          "scalar_threshold": scalar_threshold,
                          "template_norm_threshold_median_in_wm": float(np.nanmedian(norm_tpl.mean - args.k * norm_tpl.sd)),
                          "stages": stage_info})
        for pair in test_pairs:
            brain = np.asarray(pair.brain, bool)
            entry = {"site": pair.site, "group": pair.group, "fold": index + 1, "variants": {}}
            predictions = {}
            for variant, model in models.items():
                t0 = time.perf_counter()
                predictions[variant] = predict_dvr(model, card, pair_maps(pair), brain)
                predict_seconds += time.perf_counter() - t0
                entry["variants"][variant] = subject_metrics(pair, predictions[variant], norm.dvr_mean)
            if truth_files[pair.key] is not None:
                predictions[CEILING] = noise_free_prediction(pair, truth_files[pair.key])
                entry["variants"][CEILING] = subject_metrics(pair, predictions[CEILING], norm.dvr_mean)
            lesion = np.asarray(pair.lesion, bool) & brain
            if pair.group == "control" and args.fold is None:  # the pipeline's rule needs every fold
                t0 = time.perf_counter()
                held_controls["wm"].append(templates[pair.key].map(pair, pair.wm, "wm"))
                held_controls["true"].append(templates[pair.key].map(pair, pair.dvr, "dvr_true"))
                for variant, predicted in predictions.items():
                    held_controls.setdefault(variant, []).append(
                        templates[pair.key].map(pair, predicted, f"dvr_{variant}_{label}", cache=False))
                template_seconds += time.perf_counter() - t0
            if lesion.any():
                t0 = time.perf_counter()
                pair_template = templates[pair.key]
                lesion_tpl = pair_template.map(pair, lesion, "lesion") >= MASK_THRESHOLD
                true_mask = demyelinated_voxels(pair_template.map(pair, pair.dvr, "dvr_true"), lesion_tpl,
                                                norm_tpl.mean, norm_tpl.sd, k=args.k)
                true_scalar = lesion & (pair.dvr < scalar_threshold)
                entry["lesion_voxels_template"] = int(lesion_tpl.sum())
                entry["true_demyelinated_pct"] = 100.0 * true_mask.sum() / max(1, lesion_tpl.sum())
                entry["true_demyelinated_pct_scalar"] = 100.0 * true_scalar.sum() / lesion.sum()
                held_patients[pair.key] = {"lesion": lesion_tpl, "true": pair_template.map(pair, pair.dvr, "dvr_true")}
                for variant, predicted in predictions.items():
                    pred_tpl = pair_template.map(pair, predicted, f"dvr_{variant}_{label}", cache=False)
                    held_patients[pair.key][variant] = pred_tpl
                    pred_mask = demyelinated_voxels(pred_tpl, lesion_tpl, norm_tpl.mean, norm_tpl.sd, k=args.k)
                    pred_scalar = lesion & (predicted < scalar_threshold)
                    entry["variants"][variant].update({
                        "dice": dice(true_mask, pred_mask),
                        "demyelinated_pct": 100.0 * pred_mask.sum() / max(1, lesion_tpl.sum()),
                        "dice_scalar": dice(true_scalar, pred_scalar),
                        "demyelinated_pct_scalar": 100.0 * pred_scalar.sum() / lesion.sum()})
                template_seconds += time.perf_counter() - t0
            per_subject[pair.key] = entry
            v = entry["variants"]
            report(f"  {label} {pair.key} ({pair.group}): MSE " + " / ".join(
                f"{v[x]['mse']:.4f}" for x in VARIANT_ORDER) + "  (U-Net / Sketcher / Sketcher-Refiner)"
                + ("; Dice " + " / ".join(f"{v[x]['dice']:.2f}" for x in VARIANT_ORDER) + ", true demyelinated "
                   f"{entry['true_demyelinated_pct']:.0f} %" if "dice" in v["unet_l1"] else ""))
        report(f"{label}: trained on {len(train_pairs)} ({len(controls)} controls), held out "
               f"{', '.join(p.key for p in test_pairs)}; " + "; ".join(
                   f"{variant} " + ", ".join(f"{stage} {s['steps']} steps {s['seconds_per_step']} s/step"
                                             for stage, s in info.items())
                   for variant, info in stage_info.items()))

    if args.fold is not None:
        report(f"fold {args.fold} done; run without --fold for the tables")
        return 0

    # The pipeline's rule (README, group level): a patient's true DVR against the norm of the controls'
    # true DVR, its predicted DVR against the norm of the controls' predicted DVR (here out-of-fold).
    t0 = time.perf_counter()
    pipeline_norms = {source: build_hc_wm_norm(maps, held_controls["wm"])
                      for source, maps in held_controls.items() if source != "wm"}
    for key, maps in held_patients.items():
        entry, true_norm = per_subject[key], pipeline_norms["true"]
        true_mask = demyelinated_voxels(maps["true"], maps["lesion"], true_norm.mean, true_norm.sd, k=args.k)
        entry["true_demyelinated_pct_pipeline"] = 100.0 * true_mask.sum() / max(1, maps["lesion"].sum())
        for variant in entry["variants"]:
            pred_norm = pipeline_norms[variant]
            pred_mask = demyelinated_voxels(maps[variant], maps["lesion"], pred_norm.mean, pred_norm.sd, k=args.k)
            entry["variants"][variant].update({
                "dice_pipeline": dice(true_mask, pred_mask),
                "demyelinated_pct_pipeline": 100.0 * pred_mask.sum() / max(1, maps["lesion"].sum())})
    template_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------------------ tables
    subjects = list(per_subject.values())
    patients = [s for s in subjects if "true_demyelinated_pct" in s]

    def values(variant, getter):
        out = []
        for s in subjects:
            try:
                out.append(getter(s["variants"][variant]))
            except KeyError:
                continue
        return out

    rows = [*VARIANT_ORDER, *([CEILING] if values(CEILING, lambda r: r["mse"]) else [])]
    LABELS = {**VARIANT_LABEL, CEILING: CEILING_LABEL}
    report()
    report(f"Held-out subjects: {len(subjects)} ({sum(s['group'] == 'control' for s in subjects)} controls, "
           f"{len(patients)} patients with lesions), {args.folds} folds; DVR units, in each subject's brain mask "
           "on its own 2 mm grid. Wei's numbers (real data, 28 subjects, whole 1.22 mm volumes, 400 epochs) for "
           "orientation only: the phantom and the training length differ.")
    report()
    report("Table 1 analogue: image quality, mean (SD) over held-out subjects")
    report(f"{'method':<18} {'MSE':>17} {'PSNR (dB)':>17} {'MSE/constant':>13}   Wei MSE / PSNR")
    for variant in rows:
        ratio = np.mean(values(variant, lambda r: r["mse"] / r["baseline_mse"]))
        report(f"{LABELS[variant]:<18} {cell(values(variant, lambda r: r['mse'])):>17} "
               f"{cell(values(variant, lambda r: r['psnr']), 2):>17} {ratio:>13.3f}   "
               + (f"{WEI[variant]['mse']} / {WEI[variant]['psnr']}" if variant in WEI else "-"))
    report(f"{'constant (train mean)':<18} {cell(values('unet_l1', lambda r: r['baseline_mse'])):>17}")
    report()
    report("Table 2 analogue: myelin content discrepancy |mean true DVR - mean predicted DVR| per ROI, mean (SD)")
    headers = [f"{ROI_LABEL[r]} (n={len(values('unet_l1', lambda x, r=r: x['discrepancy'][r]))})" for r in ROI_LABEL]
    report(f"{'method':<18} " + " ".join(f"{h:>22}" for h in headers) + "   Wei (WM HC / NAWM / lesions)")
    for variant in rows:
        report(f"{LABELS[variant]:<18} " + " ".join(
            f"{cell(values(variant, lambda x, r=r: x['discrepancy'][r])):>22}" for r in ROI_LABEL)
            + "   " + (" / ".join(WEI[variant][r] for r in ROI_LABEL) if variant in WEI else "-"))
    report()
    report("Bias (mean predicted - true ROI DVR) per ROI:")
    for variant in rows:
        report(f"  {LABELS[variant]:<18} " + ", ".join(
            f"{ROI_LABEL[r]} {np.mean(values(variant, lambda x, r=r: x['pred_mean'][r] - x['true_mean'][r])):+.4f}"
            for r in ROI_LABEL))
    report()
    report(f"§3.5 analogue: demyelinated lesion voxels, true vs predicted DVR, {len(patients)} held-out patients.")
    report(f"  Rule (primary, one true norm): template space (MNI152NLin2009aSym, 2 mm), lesion voxels with DVR < "
           f"voxel-wise HC WM mean - {args.k:g} SD (Bodini 2016; build_hc_wm_norm, 6 mm FWHM), the norm built per "
           "fold from the training folds' controls' TRUE DVR and applied to both the true and the predicted DVR of "
           "the held-out patient.")
    true_pct = [s["true_demyelinated_pct"] for s in patients]
    report(f"  true DVR: {cell(true_pct, 1)} % of lesion voxels demyelinated (per patient: "
           + ", ".join(f"{k} {s['true_demyelinated_pct']:.0f}" for k, s in per_subject.items()
                       if "true_demyelinated_pct" in s) + ")")
    trivial = [2 * (q / 100) / (1 + q / 100) if q > 0 else math.nan for q in true_pct]
    report(f"  {'every lesion voxel':<18} Dice {cell(trivial, 3)}: the score of calling every lesion voxel demyelinated "
           "(2p/(1+p), p = true fraction), the floor a prediction must clear")

    def dice_rows(rule: str = "", counted: str = "") -> None:
        """One line per method: Dice and % demyelinated under a rule (``rule``: the key suffix)."""
        for variant in rows:
            d = [s["variants"][variant]["dice" + rule] for s in patients]
            pct = [s["variants"][variant]["demyelinated_pct" + rule] for s in patients]
            wei = f"   Wei: Dice {WEI[variant]['dice']}" if not rule and "dice" in WEI.get(variant, {}) else ""
            report(f"  {LABELS[variant]:<18} Dice {cell(d, 3)} (n={mean_sd(d)[2]}{counted}), predicted demyelinated "
                   f"{cell(pct, 1)} %{wei}")

    dice_rows()
    thresholds = [f["scalar_threshold"] for f in fold_info]
    report(f"  Rule (secondary, cruder): one scalar threshold per fold, mean - {args.k:g} SD of the pooled WM voxels "
           f"of the training controls' true DVR on their grids ({', '.join(f'{t:.3f}' for t in thresholds)}); the "
           "pooled SD includes the WM's spatial spread (partial volume at 2 mm), so the threshold is low.")
    report(f"  true DVR: {cell([s['true_demyelinated_pct_scalar'] for s in patients], 1)} % demyelinated")
    dice_rows("_scalar", " with a non-empty mask")
    report(f"  Rule (the pipeline's, README group level): the patient's true DVR against the norm of all "
           f"{len(held_controls['true'])} held-out controls' true DVR, its predicted DVR against the norm of the same "
           "controls' out-of-fold predicted DVR (what the pipeline does where no PIB exists), so a bias common to "
           "patients and controls cancels.")
    report(f"  true DVR: {cell([s['true_demyelinated_pct_pipeline'] for s in patients], 1)} % demyelinated")
    dice_rows("_pipeline")

    if CEILING in rows:
        report()
        report(f"'{CEILING_LABEL}' is the phantom's ceiling, not a model: the noise-free PET-resolution DVR "
               "(sourcedata/truth, what Logan gives from noise-free frames) on the subject's grid, scaled by one "
               "least-squares factor in the brain to the measured DVR (whose cerebellar reference is estimated). "
               "It is the best any predictor of the noise-free DVR can score against the noisy measured DVR: "
               "what remains is the PET noise of the 'true' DVR, which no MR input can predict.")

    # ------------------------------------------------------------------------------ goals
    report()
    report("Goals (Wei 2019's results) and this run:")
    sr, sk = "sketcher_refiner", "sketcher"
    lesion_discs = values(sr, lambda x: x["discrepancy"]["lesion"])
    lesion_disc = mean_sd(lesion_discs)[0]
    sr_dices = [s["variants"][sr]["dice"] for s in patients]
    sr_dice = mean_sd(sr_dices)[0]
    report(f"  lesion discrepancy <= {GOAL_LESION_DISCREPANCY} (Sketcher-Refiner): {lesion_disc:.4f} "
           f"{confidence_interval(lesion_discs)} -> {'MET' if lesion_disc <= GOAL_LESION_DISCREPANCY else 'NOT MET'}")
    report(f"  Dice >= {GOAL_DICE} (Sketcher-Refiner, primary rule): {sr_dice:.3f} {confidence_interval(sr_dices)} -> "
           f"{'MET' if sr_dice >= GOAL_DICE else 'NOT MET'} (calling every lesion voxel demyelinated: "
           f"{mean_sd(trivial)[0]:.3f})")
    pipeline_dices = [s["variants"][sr]["dice_pipeline"] for s in patients]
    report(f"  Dice >= {GOAL_DICE} (Sketcher-Refiner, the pipeline's rule): {mean_sd(pipeline_dices)[0]:.3f} "
           f"{confidence_interval(pipeline_dices)} -> {'MET' if mean_sd(pipeline_dices)[0] >= GOAL_DICE else 'NOT MET'}")
    report("  (95 % CI: the patients' spread, t distribution; a goal inside the interval is not resolved by "
           "this cohort's size)")
    if args.more_bids:
        for number, bids in enumerate([args.bids, *args.more_bids], start=1):
            part = [s for key, s in per_subject.items() if "true_demyelinated_pct" in s
                    and (key.startswith(f"c{number}-") if number > 1 else key.startswith("sub-"))]
            discs = [s["variants"][sr]["discrepancy"]["lesion"] for s in part]
            dices = [s["variants"][sr]["dice"] for s in part]
            report(f"    patients of {bids} ({len(part)}): lesion discrepancy {mean_sd(discs)[0]:.4f} "
                   f"{confidence_interval(discs)}, Dice {mean_sd(dices)[0]:.3f} {confidence_interval(dices)}")
    if CEILING in rows:
        discs = values(CEILING, lambda x: x["discrepancy"]["lesion"])
        dices = [s["variants"][CEILING]["dice"] for s in patients if CEILING in s["variants"]]
        report(f"  phantom ceiling ({CEILING_LABEL} as the prediction): lesion discrepancy {mean_sd(discs)[0]:.4f} "
               f"{confidence_interval(discs)}, Dice {mean_sd(dices)[0]:.3f} {confidence_interval(dices)}")
    comparisons = []
    for name, getter, better in (("MSE", lambda x: x["mse"], "lower"), ("PSNR", lambda x: x["psnr"], "higher"),
                                 *((f"discrepancy {ROI_LABEL[r]}", (lambda x, r=r: x["discrepancy"][r]), "lower")
                                   for r in ROI_LABEL)):
        a, b = np.asarray(values(sr, getter)), np.asarray(values(sk, getter))
        wins = (a < b).sum() if better == "lower" else (a > b).sum()
        p = stats.ttest_rel(a, b).pvalue if len(a) > 1 else math.nan
        ok = a.mean() < b.mean() if better == "lower" else a.mean() > b.mean()
        comparisons.append(ok)
        report(f"    {name}: Sketcher-Refiner {a.mean():.4f} vs Sketcher {b.mean():.4f} ({better} is better; "
               f"better in {wins}/{len(a)} subjects, paired t-test p = {p:.3g}) -> {'better' if ok else 'not better'}")
    report(f"  Refiner beats Sketcher (mean MSE, PSNR and all three discrepancies): "
           f"{'MET' if all(comparisons) else 'NOT MET'} ({sum(comparisons)}/{len(comparisons)} criteria)")

    png = bland_altman(per_subject, args.results / f"{args.tag}_myelin_bland_altman.png",
                       f"ROI-mean DVR, held-out subjects ({args.folds}-fold CV, {args.steps} steps per network"
                       + (f", Refiner {refiner_steps}" if refiner_steps != args.steps else "") + "): "
                       "Bland-Altman (lines: bias and 95 % limits of agreement)")
    minutes = (time.perf_counter() - started) / 60
    report()
    report(f"Bland-Altman plots: {png}")
    report(f"wall time {minutes:.1f} min: training {train_seconds / 60:.1f} min, whole-volume prediction "
           f"{predict_seconds / 60:.1f} min, template maps and norms {template_seconds / 60:.1f} min")
    results = {"settings": {"folds": args.folds, "steps": args.steps, "refiner_steps": refiner_steps,
                            "seed": args.seed, "k": args.k, "omp_nthreads": args.omp_nthreads,
                            "training": base.as_dict()},
               "folds": fold_info, "per_subject": per_subject, "minutes": round(minutes, 2)}
    out_json = args.results / f"{args.tag}_myelin_validation.json"
    out_json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    (args.results / f"{args.tag}_myelin_validation.txt").write_text("\n".join(report.lines) + "\n")
    print(f"wrote {out_json} and {args.results / f'{args.tag}_myelin_validation.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
