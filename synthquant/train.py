"""The ``train`` subcommand: ``run_workflow.py train MODEL BIDS_DIR --out DIR [options]``.

``mr-from-fbp`` trains the PET -> pseudo-T1w generator (Choi & Lee, J Nucl Med 2018) on the
subjects that have both a T1w and a florbetapir PET, and writes ``DIR/mr_from_fbp.safetensors``
plus its card ``DIR/mr_from_fbp.json``, ready for ``--models DIR``.

``dvr-from-mri`` trains the myelin arm's Sketcher-Refiner GANs (Wei et al., Med Image Anal 2019)
on the subjects with MTR, DWI, T1w and a dynamic [11C]PIB PET (the true DVR), optionally
cross-validated by subject first (``--folds``), and writes ``DIR/dvr_from_mri.safetensors`` and
``DIR/dvr_from_mri.json``.

Exit status: 0 on success, 2 for a usage or input error (one line, no traceback), 130 when
interrupted (rerun with ``--resume`` to continue from the last checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from synthquant.config import apply_threads
from synthquant.errors import InputError

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
#: Trainable models.
MODELS = ("mr-from-fbp", "dvr-from-mri")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (its default prints the usage too)."""

    def error(self, message: str):
        raise _UsageError(message)


def _common_options() -> argparse.ArgumentParser:
    """Options every model takes (a parent parser: each model's parser lists them)."""
    common = _Parser(add_help=False)
    common.add_argument("bids_dir", type=Path, help="BIDS dataset")
    common.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where the model, its card, checkpoints and the loss table go")
    common.add_argument("-w", "--work-dir", type=Path, default=None,
                        help="cache of the preprocessed training pairs (default: OUT/work)")
    common.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="L",
                        help="subjects to use (with or without 'sub-'); default: all")
    common.add_argument("--base-features", type=int, default=None,
                        help="generator width (default: 64 for mr-from-fbp, 16 for dvr-from-mri)")
    common.add_argument("--batch-size", type=int, default=None,
                        help="default: 8 slices for mr-from-fbp, 2 crops for dvr-from-mri")
    common.add_argument("--time-limit-min", type=float, default=None, metavar="MIN",
                        help="stop (with a checkpoint and the model) after this many minutes of training")
    common.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                        help="default: 500 for mr-from-fbp, 200 for dvr-from-mri")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    common.add_argument("--omp-nthreads", type=int, default=None,
                        help="CPU threads for torch and ITK (default: all cores)")
    common.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints (same settings; more steps extend a finished run) "
                             "instead of starting over")
    return common


def build_train_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_workflow.py train",
        description="Train a synthquant model on a BIDS dataset; writes NAME.safetensors + NAME.json "
                    "(the model card) into --out, for use with --models.",
    )
    models = parser.add_subparsers(dest="model", metavar="MODEL", required=True,
                                   help=f"one of {', '.join(MODELS)}")
    common = _common_options()

    fbp = models.add_parser("mr-from-fbp", parents=[common], help="florbetapir PET -> pseudo-T1w generator "
                                                                  "(pix2pix, Choi & Lee 2018)")
    fbp.add_argument("--validation-sites", nargs="*", default=None, metavar="SITE",
                     help="sites held out for validation (default: the alphabetically last site when there "
                          "are two or more, else 20%% of the subjects); the flag alone holds out nothing")
    fbp.add_argument("--channels", type=int, choices=(1, 3, 5), default=1,
                     help="adjacent PET slices given as channels (1: 2D; 3 or 5: 2.5D)")
    fbp.add_argument("--depth", type=int, default=8, help="U-Net levels (8: pix2pix unet_256)")
    fbp.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    fbp.add_argument("--epochs", type=int, default=100,
                     help="stop after this many epochs (default 100; the smaller of --max-steps and "
                          "--epochs wins)")
    fbp.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (pix2pix: 2e-4)")
    fbp.add_argument("--lambda-l1", type=float, default=100.0, help="weight of the L1 term (pix2pix: 100)")

    # dvr-from-mri defaults live in synthquant.nets.myelin_training.DVRTrainingSettings (None here:
    # building the parser does not import torch).
    dvr = models.add_parser("dvr-from-mri", parents=[common],
                            help="MTR + DTI (FA, RD, AD) -> [11C]PIB DVR, Sketcher-Refiner GANs (Wei 2019)")
    dvr.add_argument("--lesion-dir", type=Path, default=None, metavar="DIR",
                     help="lesion-mask derivatives (default: BIDS_DIR/derivatives/lesions)")
    dvr.add_argument("--variant", choices=("sketcher_refiner", "sketcher", "unet_l1"), default="sketcher_refiner",
                     help="sketcher_refiner (Wei 2019), sketcher (one 3D cGAN) or unet_l1 (one 3D U-Net, L1 only)")
    dvr.add_argument("--folds", type=int, default=None, metavar="K",
                     help="K-fold cross-validation by subject before the final model (Wei: 3); metrics go into "
                          "the card and OUT/cross_validation.json")
    dvr.add_argument("--sketcher-steps", type=int, default=None, metavar="N",
                     help="training steps of the Sketcher, or of the single network of the other variants "
                          "(default 1000)")
    dvr.add_argument("--refiner-steps", type=int, default=None, metavar="N",
                     help="training steps of the Refiner, sketcher_refiner only (default 1000)")
    dvr.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                     help="training crop: one side or three, multiples of 32 (default 32)")
    dvr.add_argument("--levels", type=int, default=None, help="U-Net levels (Wei: 3)")
    dvr.add_argument("--sketcher-lr", type=float, default=None, help="Adam rate of the Sketcher stage (Wei: 1e-4)")
    dvr.add_argument("--refiner-lr", type=float, default=None, help="Adam rate of the Refiner stage (Wei: 5e-5)")
    dvr.add_argument("--lambda-sketcher", type=float, default=None, help="λS of Wei eq. 6 (default: pix2pix's 100)")
    dvr.add_argument("--lambda-refiner", type=float, default=None, help="λR of Wei eq. 6 (default: pix2pix's 100)")
    dvr.add_argument("--lesion-crop-fraction", type=float, default=None,
                     help="share of the Sketcher's crops of subjects with lesions centred on a lesion voxel "
                          "(default 0.5)")
    dvr.add_argument("--refiner-lesion-crop-fraction", type=float, default=None,
                     help="the same for the Refiner's crops (default 0: brain-centred, see the docs)")
    dvr.add_argument("--refiner-lesion-weight", type=float, default=None,
                     help="total weight of a crop's lesion voxels in the Refiner's eq. 5 loss, NAWM and the "
                          "rest weighing 1 (default: see the docs; 1 is Wei's eq. 5)")
    dvr.add_argument("--ema-decay", type=float, default=None,
                     help="each stage's result is a moving average of its generator's weights with this "
                          "per-step decay, e.g. 0.99 (default 0: the last step's weights, as Wei)")
    dvr.add_argument("--refiner-from-scratch", action="store_true",
                     help="Wei's Refiner, whose output is the DVR itself, trained from scratch (default: ours, "
                          "sketch + a learnt correction, starting at the sketch)")
    dvr.add_argument("--float16", action="store_true", help="store the weights as float16 (half the file)")
    return parser


def _run_mr_from_fbp(args, omp_nthreads: int) -> int:
    from synthquant.nets.training import train_mr_from_fbp  # noqa: PLC0415 - imports torch

    result = train_mr_from_fbp(
        args.bids_dir, args.out, work_dir=args.work_dir, participant_labels=tuple(args.participant_label),
        validation_sites=args.validation_sites, channels=args.channels,
        base_features=64 if args.base_features is None else args.base_features,
        depth=args.depth, batch_size=8 if args.batch_size is None else args.batch_size, max_steps=args.max_steps,
        epochs=args.epochs, time_limit_s=None if args.time_limit_min is None else 60.0 * args.time_limit_min,
        lr=args.lr, lambda_l1=args.lambda_l1, seed=args.seed, device=args.device, omp_nthreads=omp_nthreads,
        resume=args.resume, checkpoint_every=500 if args.checkpoint_every is None else args.checkpoint_every,
    )
    mean = result["validation"]
    if mean["ssim_mean"] is not None:
        print(f"held-out SSIM {mean['ssim_mean']:.4f}, MAE {mean['mae_mean']:.4f} "
              f"({len(result['validation_subjects'])} subject(s))")
    print(f"model: {result['model']}\ncard:  {result['card']}")
    return EXIT_OK


def dvr_settings(args):
    """:class:`DVRTrainingSettings` from the ``dvr-from-mri`` arguments (unset ones: its defaults)."""
    from synthquant.nets.myelin_training import DVRTrainingSettings  # noqa: PLC0415 - imports torch

    chosen = {"variant": args.variant, "sketcher_steps": args.sketcher_steps, "refiner_steps": args.refiner_steps,
              "base_features": args.base_features, "levels": args.levels, "batch_size": args.batch_size,
              "seed": args.seed, "sketcher_lr": args.sketcher_lr, "refiner_lr": args.refiner_lr,
              "lambda_sketcher": args.lambda_sketcher, "lambda_refiner": args.lambda_refiner,
              "lesion_crop_fraction": args.lesion_crop_fraction,
              "refiner_lesion_crop_fraction": args.refiner_lesion_crop_fraction,
              "refiner_lesion_weight": args.refiner_lesion_weight, "ema_decay": args.ema_decay,
              "residual_refiner": False if args.refiner_from_scratch else None}
    if args.crop is not None:
        if len(args.crop) not in (1, 3):
            raise InputError(None, f"--crop takes one side or three, got {len(args.crop)} values")
        chosen["crop"] = tuple(args.crop) * (3 if len(args.crop) == 1 else 1)
    settings = DVRTrainingSettings(**{k: v for k, v in chosen.items() if v is not None})
    settings.check()
    return settings


def _run_dvr_from_mri(args, omp_nthreads: int) -> int:
    import torch  # noqa: PLC0415

    from synthquant.nets.myelin_training import train_dvr_from_mri_bids  # noqa: PLC0415

    settings = dvr_settings(args)
    if args.time_limit_min is not None and args.time_limit_min <= 0:
        raise InputError(None, f"--time-limit-min must be positive, got {args.time_limit_min}")
    if args.folds is not None and args.folds < 2:
        raise InputError(None, f"--folds must be at least 2 (or left out for no cross-validation), got {args.folds}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise InputError(None, f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    result = train_dvr_from_mri_bids(
        args.bids_dir, args.out, work_dir=args.work_dir, participant_labels=tuple(args.participant_label),
        lesion_dir=args.lesion_dir, omp_nthreads=omp_nthreads, settings=settings, folds=args.folds,
        device=args.device, time_limit_s=None if args.time_limit_min is None else 60.0 * args.time_limit_min,
        resume=args.resume, checkpoint_every=200 if args.checkpoint_every is None else args.checkpoint_every,
        dtype=torch.float16 if args.float16 else None,
    )
    if result["cross_validation"] is not None:
        mean = result["cross_validation"]["mean"]
        print(f"cross-validation ({mean['n_subjects']} held-out subjects): MSE {mean['mse_mean']:.4g} "
              f"(constant prediction {mean['baseline_mse_mean']:.4g}), PSNR {mean['psnr_mean']:.2f} dB; "
              "discrepancy " + ", ".join(f"{roi} {v['mean']:.4f}" for roi, v in mean["discrepancy"].items()))
    print(f"model: {result['model']}\ncard:  {result['card']}")
    return EXIT_OK


def train_main(argv: list[str]) -> int:
    """Run ``train`` with ``argv`` (the arguments after ``train``); return the exit status."""
    os.environ.setdefault("NO_ET", "1")  # pybids/nipype: no version check over the network
    parser = build_train_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"synthquant train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return int(done.code or 0)
    omp_nthreads = args.omp_nthreads or os.cpu_count() or 1
    apply_threads(omp_nthreads, args.seed)  # before anything imports antspyx (ITK reads it once)
    try:
        if args.omp_nthreads is not None and args.omp_nthreads < 1:
            raise InputError(None, "--omp-nthreads must be at least 1")
        run = _run_mr_from_fbp if args.model == "mr-from-fbp" else _run_dvr_from_mri
        return run(args, omp_nthreads)
    except InputError as err:
        print(f"synthquant train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthquant train: interrupted; rerun the same command with --resume to continue from the "
              "last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
