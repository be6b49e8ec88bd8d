"""Accuracy of the amyloid arm against phantom ground truth (issue: foundation, "Accuracy").

Makes (or reuses) a benchmark-preset phantom cohort, runs the participant and group levels
through the real command line, and prints MAE, SD and bias of composite and regional SUVR,
and Centiloid, against the truth, overall and by diagnosis.

    python benchmarks/amyloid_accuracy.py --root /tmp/bench --n-subjects 12 --nprocs 2

Goal (method mr, 1 mm normalisation): composite MAE <= 0.02 and |bias| <= 0.01.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from synthquant.cli import main as synthquant
from synthquant.evaluation import compare_to_truth, paired_with_truth
from synthquant.phantom import make_amyloid_cohort


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="holds bids/, out/, work/")
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--preset", default="benchmark", choices=["benchmark", "demo", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template-resolution", type=float, default=1.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    bids, out, work = args.root / "bids", args.root / "out", args.root / "work"
    if not (bids / "dataset_description.json").exists():
        start = time.perf_counter()
        make_amyloid_cohort(bids, n_subjects=args.n_subjects, preset=args.preset, seed=args.seed)
        print(f"phantom cohort ({args.preset}, {args.n_subjects} subjects): {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    status = synthquant([str(bids), str(out), "participant", "--methods", "mr", "-w", str(work),
                         "--template-resolution", f"{args.template_resolution:g}", "--nprocs", str(args.nprocs),
                         "--omp-nthreads", str(args.omp_nthreads)])
    wall = time.perf_counter() - start
    synthquant([str(bids), str(out), "group"])
    table = out / "group" / "amyloid_suvr.tsv"

    pd.set_option("display.width", 160)
    print(f"\nparticipant level: exit {status}, {wall:.0f} s wall for {args.n_subjects} subjects "
          f"({args.nprocs} processes x {args.omp_nthreads} threads)")
    print(f"\nSUVR against ground truth ({args.preset} preset, SyN at {args.template_resolution:g} mm):")
    summary = compare_to_truth(table, bids)
    print(summary.to_string(index=False))

    paired = paired_with_truth(table, bids)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    composite = paired[paired["region"] == "composite"].merge(participants[["participant_id", "diagnosis"]])
    composite["error"] = composite["suvr"] - composite["suvr_true"]
    print("\ncomposite by diagnosis:")
    print(composite.groupby("diagnosis")["error"].agg(mae=lambda e: e.abs().mean(), bias="mean", n="size")
          .round(4).to_string())
    print("\nper subject (composite):")
    print(composite[["participant_id", "site", "diagnosis", "suvr", "suvr_true", "centiloid", "centiloid_true"]]
          .round(4).to_string(index=False))

    row = summary.set_index("region").loc["composite"]
    verdict = "met" if row["mae"] <= 0.02 and abs(row["bias"]) <= 0.01 else "NOT met"
    print(f"\ngoal composite MAE <= 0.02 and |bias| <= 0.01: {verdict} "
          f"(MAE {row['mae']:.4f}, bias {row['bias']:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
