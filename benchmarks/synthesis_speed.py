"""Seconds to synthesise one subject's pseudo-T1w on this machine (issue 3 goal: <= 15 s on a
2-thread CPU; <= 1 s on a GPU).

Timing needs no trained weights: an initialised generator of the default architecture
(pix2pix U-Net, 54 M parameters) costs the same per slice. The PET is a benchmark-preset
phantom subject, or a random-valued volume of the same size if none is given.

    python benchmarks/synthesis_speed.py --pet /tmp/bench2/out/sub-01/pet/sub-01_trc-FBP_desc-static_pet.nii.gz
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pet", type=Path, required=True, help="a static PET (3D NIfTI)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    args = parser.parse_args()

    import torch

    from synthquant.nets import define_G, save_model
    from synthquant.nets.inference import synthesize_mr

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "mr_from_fbp"
        save_model(define_G(depth=args.depth), model, {"note": "untrained, for timing only"})
        print(f"device {args.device}, {args.threads} threads, generator depth {args.depth}")
        for label, bf16 in (("fp32 channels-last", False), ("bf16 autocast", True)):
            if args.device != "cpu" and bf16:
                continue
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = synthesize_mr(args.pet, model, Path(tmp) / "pseudo.nii.gz", device=args.device,
                                       omp_nthreads=args.threads, bf16=bf16)
                seconds.append(time.perf_counter() - start)
            median = statistics.median(seconds)
            print(f"{label:20s} median {median:6.1f} s per subject ({result['n_slices']} slices, "
                  f"{median / result['n_slices']:.3f} s/slice; runs: {', '.join(f'{s:.1f}' for s in seconds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
