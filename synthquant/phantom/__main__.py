"""Command line: ``python -m synthquant.phantom OUT_DIR [--cohort amyloid|myelin] [--preset test]``."""

from __future__ import annotations

import argparse
import sys

from synthquant.errors import InputError
from synthquant.phantom.amyloid import make_amyloid_cohort
from synthquant.phantom.myelin import make_myelin_cohort
from synthquant.phantom.sites import PRESETS, SITES

COHORTS = {"amyloid": make_amyloid_cohort, "myelin": make_myelin_cohort}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synthquant.phantom",
        description="Write a synthetic BIDS cohort with ground truth under sourcedata/truth/: "
                    "florbetapir NC/MCI/AD (amyloid, the default) or HC/MS with MTR, DWI, lesion "
                    "masks and dynamic [11C]PIB PET (myelin).")
    parser.add_argument("out_dir", help="dataset folder to create (absent or empty)")
    parser.add_argument("--cohort", choices=sorted(COHORTS), default="amyloid",
                        help="which cohort to write (default: amyloid)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="benchmark",
                        help="image sizes: benchmark (realistic), demo, test (fast)")
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", nargs="+", choices=sorted(SITES), default=None,
                        help="sites to spread subjects over (default: all three)")
    parser.add_argument("--deformation-scale", type=float, default=1.0,
                        help="scale of deformation, atrophy, pose and motion (0: template space)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier phantom dataset at OUT_DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-subject lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = COHORTS[args.cohort](args.out_dir, n_subjects=args.n_subjects, preset=args.preset,
                                    seed=args.seed, sites=args.sites,
                                    deformation_scale=args.deformation_scale,
                                    overwrite=args.overwrite, verbose=not args.quiet)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
