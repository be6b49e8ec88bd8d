"""The ``train`` subcommand: ``run_workflow.py train MODEL BIDS_DIR --out DIR [options]``.

``mr-from-fbp`` trains the PET -> pseudo-T1w generator (Choi & Lee, J Nucl Med 2018) on the
subjects that have both a T1w and a florbetapir PET, and writes ``DIR/mr_from_fbp.safetensors``
plus its card ``DIR/mr_from_fbp.json``, ready for ``--models DIR``.

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
#: Trainable models. ``dvr-from-mri`` (the myelin arm's Sketcher-Refiner) will join this list.
MODELS = ("mr-from-fbp",)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (its default prints the usage too)."""

    def error(self, message: str):
        raise _UsageError(message)


def build_train_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_workflow.py train",
        description="Train a synthquant model on a BIDS dataset; writes NAME.safetensors + NAME.json "
                    "(the model card) into --out, for use with --models.",
    )
    parser.add_argument("model", choices=MODELS,
                        help="mr-from-fbp: florbetapir PET -> pseudo-T1w generator (pix2pix, Choi & Lee 2018)")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset with T1w and FBP PET per subject")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where the model, its card, checkpoints and the loss table go")
    parser.add_argument("-w", "--work-dir", type=Path, default=None,
                        help="cache of the preprocessed training pairs (default: OUT/work)")
    parser.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="L",
                        help="subjects to use (with or without 'sub-'); default: all")
    parser.add_argument("--validation-sites", nargs="*", default=None, metavar="SITE",
                        help="sites held out for validation (default: the alphabetically last site when there "
                             "are two or more, else 20%% of the subjects); the flag alone holds out nothing")
    parser.add_argument("--channels", type=int, choices=(1, 3, 5), default=1,
                        help="adjacent PET slices given as channels (1: 2D; 3 or 5: 2.5D)")
    parser.add_argument("--base-features", type=int, default=64, help="generator width (pix2pix ngf)")
    parser.add_argument("--depth", type=int, default=8, help="U-Net levels (8: pix2pix unet_256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--epochs", type=int, default=100,
                        help="stop after this many epochs (default 100; the smaller of --max-steps and "
                             "--epochs wins)")
    parser.add_argument("--time-limit-min", type=float, default=None, metavar="MIN",
                        help="stop (with a checkpoint and the model) after this many minutes of training")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (pix2pix: 2e-4)")
    parser.add_argument("--lambda-l1", type=float, default=100.0, help="weight of the L1 term (pix2pix: 100)")
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--omp-nthreads", type=int, default=None,
                        help="CPU threads for torch and ITK (default: all cores)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last (same settings) instead of starting over")
    return parser


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
        from synthquant.nets.training import train_mr_from_fbp  # noqa: PLC0415 - imports torch

        result = train_mr_from_fbp(
            args.bids_dir, args.out, work_dir=args.work_dir, participant_labels=tuple(args.participant_label),
            validation_sites=args.validation_sites, channels=args.channels, base_features=args.base_features,
            depth=args.depth, batch_size=args.batch_size, max_steps=args.max_steps, epochs=args.epochs,
            time_limit_s=None if args.time_limit_min is None else 60.0 * args.time_limit_min, lr=args.lr,
            lambda_l1=args.lambda_l1, seed=args.seed, device=args.device, omp_nthreads=omp_nthreads,
            resume=args.resume, checkpoint_every=args.checkpoint_every,
        )
    except InputError as err:
        print(f"synthquant train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthquant train: interrupted; rerun the same command with --resume to continue from the "
              "last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    mean = result["validation"]
    if mean["ssim_mean"] is not None:
        print(f"held-out SSIM {mean['ssim_mean']:.4f}, MAE {mean['mae_mean']:.4f} "
              f"({len(result['validation_subjects'])} subject(s))")
    print(f"model: {result['model']}\ncard:  {result['card']}")
    return EXIT_OK
