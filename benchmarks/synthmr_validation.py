"""Validation of MR-less quantification (issue 3; the analogue of Choi & Lee 2018, Table 2).

A phantom cohort over three sites. The generator (``--models``, default: the bundled demo
weights, trained on other phantom subjects of the northfield and lakeside sites) and the FBP
PET templates (built here from the mr-normalised PETs of the template sites) never see the
test site. On the test-site subjects every method runs through the real command line:

- MAE +- SD and bias of composite and regional SUVR of each MR-less method against ``mr``,
  and of every method against the phantom's truth;
- SSIM of pseudo- against real T1w within the brain (scikit-image; Wang et al. 2004), on the
  generator's axial grid, and the slice-to-slice intensity jitter that Choi & Lee saw from
  slice-wise generation, for the 2D model and, with ``--models-25d``, a 2.5D one; where the
  cohort keeps the T1w before noise (``sourcedata/truth/sub-X/sub-X_desc-noisefree_T1w``), also
  the SSIM of pseudo- against that noise-free T1w and the SSIM ceiling: noise-free against real,
  the best score any noise-free pseudo-T1w can reach against the real one;
- Bland-Altman plots (PNG) of composite SUVR against ``mr`` and against the truth.

    python benchmarks/synthmr_validation.py --root /tmp/synthval --nprocs 2

Goals: synthmr composite MAE <= 0.02 against mr, SSIM >= 0.93, and the paper's ordering
synthmr < petseg < multiatlas < pettemplate (composite MAE against mr).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synthquant.cli import main as synthquant
from synthquant.evaluation import compare_to_method, compare_to_truth, paired_with_truth
from synthquant.phantom import make_amyloid_cohort

MR_LESS = ("synthmr", "petseg", "multiatlas", "pettemplate")  # the paper's ordering, best first
RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="holds bids/, out/, work/, pet_templates/")
    parser.add_argument("--n-subjects", type=int, default=24, help="over three sites, round robin")
    parser.add_argument("--preset", default="demo", choices=["benchmark", "demo", "test"])
    parser.add_argument("--seed", type=int, default=7, help="cohort seed (the demo weights used 2026)")
    parser.add_argument("--test-site", default="hillcrest")
    parser.add_argument("--template-resolution", type=float, default=2.0)
    parser.add_argument("--template-levels", type=int, default=4)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--models", type=Path, default=None, help="folder with mr_from_fbp (default: bundled)")
    parser.add_argument("--models-25d", type=Path, default=None, help="a 2.5D mr_from_fbp to compare")
    parser.add_argument("--tag", default=time.strftime("%Y-%m-%d"), help="prefix of the PNG in results/")
    return parser.parse_args()


def run(args_list: list[str]) -> int:
    start = time.perf_counter()
    status = synthquant(args_list)
    methods = " ".join(a for a in args_list if a in ("mr", "synthmr", "pettemplate", "multiatlas", "petseg"))
    print(f"  exit {status} in {time.perf_counter() - start:.0f} s: {args_list[2]} {methods}")
    return status


# --- SSIM within the brain, on the generator's axial grid --------------------------------------

def _subject_work(work: Path, label: str) -> Path:
    return work / "synthquant_wf" / f"sub_{label}_wf"


def real_and_pseudo_on_generator_grid(out: Path, work: Path, label: str, pseudo_file: Path,
                                      noise_free_t1w: Path | None = None):
    """The real T1w brain (N4, skull-stripped by the mr method), its brain mask and a pseudo-T1w,
    all on the generator's RAS axial grid of this subject's PET, each scaled to [-1, 1]; with
    ``noise_free_t1w`` (the phantom's T1w before noise, truth/), also that image, N4-corrected
    within the same mask and moved the same way, else None."""
    import ants
    import nibabel as nib

    from synthquant.image import resample_to_grid
    from synthquant.nets.grid import generator_grid

    node = _subject_work(work, label)
    rigid = node / "coreg_mr" / "rigid_0GenericAffine.mat"  # static PET -> T1w
    pseudo_img = ants.image_read(str(pseudo_file))
    syn = node / "normalize_mr_wf/syn"
    native = {"t1w_brain": (ants.image_read(str(syn / "t1w_brain.nii.gz")), "linear"),
              "brain_mask": (ants.image_read(str(syn / "brain_mask.nii.gz")), "nearestNeighbor")}
    if noise_free_t1w is not None:
        mask = native["brain_mask"][0]
        clean = ants.image_read(str(noise_free_t1w), pixeltype="float")
        clean = ants.resample_image_to_target(clean, mask, interp_type="linear")
        native["clean"] = (ants.n4_bias_field_correction(clean, mask=mask) * mask, "linear")
    # Bring the native images onto the PET grid (the inverse of the PET -> T1w rigid).
    on_pet = {name: ants.apply_transforms(pseudo_img, image, [str(rigid)], whichtoinvert=[True],
                                          interpolator=interp)
              for name, (image, interp) in native.items()}
    pet_img = nib.load(str(pseudo_file))
    static = nib.load(str(next(out.glob(f"sub-{label}/pet/sub-{label}_trc-FBP_desc-static_pet.nii.gz"))))
    grid_affine, _, shape = generator_grid(static.get_fdata(dtype=np.float32), static.affine)

    def to_grid(array, order=1):
        return resample_to_grid(np.asarray(array, np.float32), pet_img.affine, shape, grid_affine, order=order)

    mask = to_grid(on_pet["brain_mask"].numpy(), order=0) > 0.5
    real = to_grid(on_pet["t1w_brain"].numpy())
    pseudo = to_grid(pet_img.get_fdata(dtype=np.float32))
    clean = scale_in_mask(to_grid(on_pet["clean"].numpy()), mask) if "clean" in on_pet else None
    return scale_in_mask(real, mask), scale_in_mask(pseudo, mask), mask, clean


def scale_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """0 -> -1 and the 99.5th percentile within the brain -> +1, as the generator's scale."""
    high = float(np.percentile(image[mask], 99.5))
    return np.clip(2.0 * image / high - 1.0, -1.0, 1.0)


def slice_jitter(pseudo: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Mean |change| between adjacent axial slices of the mean (pseudo - real) in the brain:
    the slice-to-slice intensity inhomogeneity of slice-wise generation (Choi & Lee 2018)."""
    means = [float((pseudo[..., k] - real[..., k])[mask[..., k]].mean())
             for k in range(mask.shape[2]) if mask[..., k].sum() > 200]
    return float(np.mean(np.abs(np.diff(means)))) if len(means) > 1 else float("nan")


def synthesis_quality(bids: Path, out: Path, work: Path, labels: list[str],
                      model_dirs: dict[str, Path | None]) -> pd.DataFrame:
    """Per subject and model: SSIM and MAE of the pseudo- against the real T1w in the brain, and,
    where the phantom kept it, against the T1w before noise (``ssim_noise_free``) plus the SSIM
    of that noise-free T1w against the real one (``ssim_ceiling``): what a pseudo-T1w that
    reproduced the anatomy exactly, without the scanner's noise, would score against the real T1w."""
    from synthquant.models import MR_FROM_FBP, resolve_model
    from synthquant.nets.inference import synthesize_mr
    from synthquant.nets.metrics import masked_ssim

    def axial(volume):
        return np.moveaxis(volume, 2, 0)

    rows = []
    for name, folder in model_dirs.items():
        model = resolve_model(MR_FROM_FBP, folder)
        for label in labels:
            static = next(out.glob(f"sub-{label}/pet/sub-{label}_trc-FBP_desc-static_pet.nii.gz"))
            pseudo_file = work / f"pseudo_{name}_sub-{label}.nii.gz"
            start = time.perf_counter()
            synthesize_mr(static, model.stem, pseudo_file, device="cpu", omp_nthreads=2)
            seconds = time.perf_counter() - start
            noise_free = bids / "sourcedata" / "truth" / f"sub-{label}" / f"sub-{label}_desc-noisefree_T1w.nii.gz"
            real, pseudo, mask, clean = real_and_pseudo_on_generator_grid(
                out, work, label, pseudo_file, noise_free if noise_free.exists() else None)
            row = {"model": name, "participant_id": f"sub-{label}",
                   "ssim_brain": masked_ssim(axial(pseudo), axial(real), axial(mask)),
                   "mae_brain": float(np.abs(pseudo - real)[mask].mean()),
                   "ssim_noise_free": math.nan, "ssim_ceiling": math.nan,
                   "slice_jitter": slice_jitter(pseudo, real, mask), "synthesis_s": seconds,
                   "channels": int(model.card.get("kwargs", {}).get("in_channels", 1))}
            if clean is not None:
                row["ssim_noise_free"] = masked_ssim(axial(pseudo), axial(clean), axial(mask))
                row["ssim_ceiling"] = masked_ssim(axial(clean), axial(real), axial(mask))
            rows.append(row)
    return pd.DataFrame(rows)


# --- Bland-Altman ----------------------------------------------------------------------------

def bland_altman(table: pd.DataFrame, bids: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    composite = table[table["region"] == "composite"]
    truth = paired_with_truth(composite, bids)
    mr = composite[composite["method"] == "mr"].set_index("participant_id")["suvr"]
    fig, axes = plt.subplots(2, len(MR_LESS) + 1, figsize=(4.2 * (len(MR_LESS) + 1), 8), sharey="row")
    for column, method in enumerate(("mr", *MR_LESS)):
        measured = composite[composite["method"] == method].set_index("participant_id")["suvr"]
        panels = [(axes[0, column], mr, "mr (real T1w)"),
                  (axes[1, column], truth[truth["method"] == method].set_index("participant_id")["suvr_true"],
                   "truth")]
        for ax, reference, name in panels:
            common = measured.index.intersection(reference.index)
            if method == "mr" and name.startswith("mr"):
                ax.set_axis_off()
                continue
            a, b = measured[common], reference[common]
            mean, difference = (a + b) / 2, a - b
            bias, sd = difference.mean(), difference.std(ddof=1)
            ax.scatter(mean, difference, s=18, color="tab:blue")
            for value, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
                ax.axhline(value, color="tab:red", linestyle=style, linewidth=1)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_title(f"{method} vs {name}\nbias {bias:+.3f}, LoA ±{1.96 * sd:.3f}", fontsize=10)
            ax.tick_params(labelleft=True)  # shared y axes: the first panel of the top row is empty
            ax.set_xlabel("mean composite SUVR")
            ax.set_ylabel("difference (method − reference)")
    fig.suptitle("Composite SUVR, held-out site: Bland–Altman (lines: bias and 95 % limits of agreement)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main() -> int:
    args = parse_args()
    pd.set_option("display.width", 180)
    bids, out, work = args.root / "bids", args.root / "out", args.root / "work"
    if not (bids / "dataset_description.json").exists():
        start = time.perf_counter()
        make_amyloid_cohort(bids, n_subjects=args.n_subjects, preset=args.preset, seed=args.seed)
        print(f"phantom cohort ({args.preset}, {args.n_subjects} subjects): {time.perf_counter() - start:.0f} s")
    participants = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    test = participants[participants["site"] == args.test_site]["participant_id"].str[4:].tolist()
    train = participants[participants["site"] != args.test_site]["participant_id"].str[4:].tolist()
    print(f"template sites: {sorted(set(participants['site']) - {args.test_site})} ({len(train)} subjects); "
          f"test site: {args.test_site} ({len(test)} subjects)")
    common = ["-w", str(work), "--template-resolution", f"{args.template_resolution:g}", "--nprocs",
              str(args.nprocs), "--omp-nthreads", str(args.omp_nthreads), "--skip-bids-validation"]
    models = ["--models", str(args.models)] if args.models else []

    # 1. mr everywhere: the gold standard on the test site, the template source elsewhere.
    run([str(bids), str(out), "participant", "--methods", "mr", *common])
    # 2. PET templates from the template sites only (Choi & Lee 2018: MR-normalised PETs).
    from synthquant.bids import dataset_provenance
    from synthquant.pettemplates import (
        build_pet_templates,
        training_set_from_derivatives,
    )

    maps, composites, diagnoses = training_set_from_derivatives(out, bids)
    keep = [i for i, path in enumerate(maps) if path.name.split("_")[0][4:] in train]
    name, synthetic = dataset_provenance(bids)
    templates = args.root / "pet_templates"
    build_pet_templates([maps[i] for i in keep], [composites[i] for i in keep], [diagnoses[i] for i in keep],
                        templates, n_levels=args.template_levels, dataset=f"{name} (template sites)",
                        synthetic=synthetic)
    # 3. Every method on the test site.
    start = time.perf_counter()
    run([str(bids), str(out), "participant", "--participant-label", *test, "--methods", "mr", "synthmr",
         "pettemplate", "multiatlas", "petseg", "--pet-templates", str(templates), *models, *common])
    print(f"  MR-less methods on {len(test)} test subjects: {time.perf_counter() - start:.0f} s")
    run([str(bids), str(out), "group"])
    table = pd.read_csv(out / "group" / "amyloid_suvr.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    table = table[table["participant_id"].isin([f"sub-{t}" for t in test])]

    print(f"\nHeld-out site {args.test_site}, {len(test)} subjects; SyN at {args.template_resolution:g} mm; "
          f"{args.preset} preset.")
    print("\nA. SUVR of each MR-less method against mr (Table 2 analogue): MAE, SD of |difference|, bias")
    against_mr = compare_to_method(table, "mr")
    print(against_mr.to_string(index=False))
    print("\nB. SUVR of every method against the phantom's truth")
    print(compare_to_truth(table, bids).to_string(index=False))

    composite = against_mr[against_mr["region"] == "composite"].set_index("method")["mae"]
    ordering = sorted(composite.index, key=lambda m: composite[m])
    print(f"\nComposite MAE against mr, best first: {' < '.join(f'{m} {composite[m]:.4f}' for m in ordering)}")
    print(f"paper's ordering {' < '.join(MR_LESS)}: {'holds' if ordering == list(MR_LESS) else 'does not hold'}")

    model_dirs = {"2D": args.models}
    if args.models_25d:
        model_dirs["2.5D"] = args.models_25d
    quality = synthesis_quality(bids, out, work, test, model_dirs)
    print("\nC. Pseudo- against real T1w within the brain (generator grid, [-1, 1] scale), per subject")
    print(quality.round(4).to_string(index=False))
    summary = quality.groupby("model")[["ssim_brain", "ssim_noise_free", "ssim_ceiling", "mae_brain",
                                        "slice_jitter", "synthesis_s"]].agg(["mean", "std", "median"])
    print(summary.round(4).to_string())
    print("ssim_brain: pseudo vs real T1w (the goal's measure, >= 0.93); ssim_noise_free: pseudo vs the phantom's "
          "T1w before noise; ssim_ceiling: that noise-free T1w vs the real one, i.e. the best ssim_brain a "
          "pseudo-T1w without the scanner's noise can reach on this cohort")
    png = bland_altman(table, bids, RESULTS / f"{args.tag}_synthmr_bland_altman.png")
    print(f"\nBland–Altman plots: {png}")
    card = json.loads((Path(args.models) if args.models else Path(__file__).parents[1] / "synthquant/data/models")
                      .joinpath("mr_from_fbp.json").read_text())
    print(f"model: {card.get('architecture')} {card.get('kwargs')}; trained on {card.get('training', {}).get('dataset')}"
          f" sites {card.get('training', {}).get('sites')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
