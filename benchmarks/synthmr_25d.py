"""Does a 2.5D input help? 2D against 2.5D generators trained identically (issue 3).

Choi & Lee 2018 saw intensity inhomogeneity between slices from slice-wise generation. Here
a 2D (1 channel) and a 2.5D (3 adjacent slices as channels) generator are trained with the
same seed, architecture, batch and number of steps on the same phantom pairs (the
``scripts/train_demo_models.py`` cohort: northfield + lakeside for training, hillcrest held
out), each in its own process with one thread, and compared on the held-out site:

- SSIM and MAE against the real T1w within the T1w head mask (the cards' validation);
- slice jitter: the mean |change| between adjacent axial slices of the mean error
  (pseudo - real) within the head, the inhomogeneity that slice-wise generation causes;
- seconds per training step.

    python benchmarks/synthmr_25d.py --root /tmp/demo_models --steps 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def train_one(root: Path, channels: int, steps: int) -> None:
    from synthquant.nets.training import train_mr_from_fbp

    train_mr_from_fbp(root / "bids", root / f"cmp_c{channels}_s{steps}", work_dir=root / "pairs",
                      validation_sites=["hillcrest"], channels=channels, base_features=16, depth=6, batch_size=8,
                      max_steps=steps, epochs=1000, seed=0, device="cpu", omp_nthreads=1, progress=False)


def slice_jitter(model_dir: Path, root: Path, channels: int) -> float:
    from synthquant.bids import discover
    from synthquant.nets import NETS_REGISTRY, load_model
    from synthquant.nets.training import build_training_pairs, predict_slices

    model = load_model(model_dir / "mr_from_fbp", NETS_REGISTRY).model
    inputs = [s for s in discover(root / "bids").amyloid if s.site == "hillcrest"]
    pairs, _ = build_training_pairs(inputs, root / "pairs" / "mr_from_fbp_pairs")  # cached by training
    jitters = []
    for pair in pairs:
        pseudo = predict_slices(model, pair, channels, "cpu")
        real = np.moveaxis(np.asarray(pair.t1w[:, :, pair.slices]), 2, 0)
        mask = np.moveaxis(np.asarray(pair.foreground[:, :, pair.slices]), 2, 0)
        means = [float((p - r)[m].mean()) for p, r, m in zip(pseudo, real, mask) if m.sum() > 200]
        jitters.append(float(np.mean(np.abs(np.diff(means)))))
    return float(np.mean(jitters))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--only-channels", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only_channels is not None:
        train_one(args.root, args.only_channels, args.steps)
        return 0
    # One process per model, run side by side: each gets one core.
    procs = [subprocess.Popen([sys.executable, __file__, "--root", str(args.root), "--steps", str(args.steps),
                               "--only-channels", str(c)]) for c in (1, 3)]
    if any(p.wait() for p in procs):
        return 1
    print(f"\n2D vs 2.5D, {args.steps} steps each, held-out site hillcrest")
    print(f"{'model':6} {'ssim_head':>10} {'mae_head':>9} {'slice_jitter':>13} {'s/step':>7}")
    for channels in (1, 3):
        folder = args.root / f"cmp_c{channels}_s{args.steps}"
        card = json.loads((folder / "mr_from_fbp.json").read_text())
        validation, training = card["validation"], card["training"]
        seconds = training["minutes"] * 60 / max(1, training["steps"])
        print(f"{'2D' if channels == 1 else '2.5D':6} {validation['ssim_mean']:10.4f} {validation['mae_mean']:9.4f} "
              f"{slice_jitter(folder, args.root, channels):13.4f} {seconds:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
