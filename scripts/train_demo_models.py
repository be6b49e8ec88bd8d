#!/usr/bin/env python
"""Train the demo ``mr_from_fbp`` weights bundled in ``synthquant/data/models``.

They are trained on a synthetic phantom cohort only and their card says so; the pipeline
warns whenever they are used. Reproduce them with:

    .venv/bin/python scripts/train_demo_models.py --root /tmp/demo_models --minutes 15

The cohort is the "demo" phantom preset (the one ``--demo`` runs on) over three sites; the
hillcrest site is held out whole for validation (Choi & Lee 2018 held out subjects; here a
whole scanner site is, which is the harder test). The generator is the pix2pix U-Net at 16
base features and 6 levels (1.8 M parameters instead of 54 M): small enough to bundle
(3.7 MB in float16) and to train on 2 CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_ARCHITECTURE = {"base_features": 16, "depth": 6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="scratch folder: cohort, pairs, checkpoints")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time limit")
    parser.add_argument("--n-subjects", type=int, default=21)
    parser.add_argument("--channels", type=int, default=1, help="1 (2D) or 3/5 (2.5D)")
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true",
                        help=f"copy the result (float16) into {REPO / 'synthquant/data/models'}")
    args = parser.parse_args(argv)

    import torch

    from synthquant.models import BUNDLED_MODELS_DIR, MR_FROM_FBP
    from synthquant.nets import NETS_REGISTRY, load_model, save_model
    from synthquant.nets.training import train_mr_from_fbp
    from synthquant.phantom import make_amyloid_cohort

    bids = args.root / "bids"
    if not (bids / "dataset_description.json").exists():
        make_amyloid_cohort(bids, n_subjects=args.n_subjects, preset="demo", seed=2026)
    out = args.root / f"model_c{args.channels}"
    result = train_mr_from_fbp(bids, out, work_dir=args.root / "pairs", validation_sites=["hillcrest"],
                               channels=args.channels, batch_size=8, epochs=1000, max_steps=None,
                               time_limit_s=args.minutes * 60, seed=args.seed, device="cpu",
                               omp_nthreads=args.omp_nthreads, resume=True, **DEMO_ARCHITECTURE)
    print(json.dumps(result["validation"], indent=2, default=str))
    if args.install:
        loaded = load_model(out / MR_FROM_FBP, NETS_REGISTRY)
        card = {k: v for k, v in loaded.card.items() if k not in ("weights_sha256", "stored_dtype")}
        card["reproduce"] = "scripts/train_demo_models.py " + " ".join(argv or sys.argv[1:])
        BUNDLED_MODELS_DIR.mkdir(parents=True, exist_ok=True)
        save_model(loaded.model, BUNDLED_MODELS_DIR / MR_FROM_FBP, card, dtype=torch.float16)
        print(f"installed {BUNDLED_MODELS_DIR / MR_FROM_FBP}.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
