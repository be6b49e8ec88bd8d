"""Training of mr_from_fbp on a tiny phantom cohort: pairs, split, loop, resume, card, command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from synthquant.config import apply_threads
from synthquant.errors import InputError
from synthquant.image import load_image, resample_to_grid
from synthquant.nets import NETS_REGISTRY, load_model
from synthquant.nets.inference import slice_stack, synthesize_mr
from synthquant.nets.metrics import masked_mae, masked_ssim
from synthquant.nets.training import (
    PET_FOREGROUND_LEVEL,
    TrainingPair,
    build_training_pair,
    build_training_pairs,
    pet_foreground_slices,
    scale_t1w_target,
    slice_input,
    split_by_site,
    t1w_head_mask,
    train_mr_from_fbp,
)
from synthquant.train import train_main

apply_threads(1, 0)
torch.set_num_threads(1)

TINY = {"base_features": 4, "depth": 6, "device": "cpu", "omp_nthreads": 1, "progress": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two subjects at two sites (test preset: 3 mm anatomy), their discovery and pairs."""
    from synthquant.bids import discover
    from synthquant.phantom import make_amyloid_cohort

    root = tmp_path_factory.mktemp("training")
    bids_dir = make_amyloid_cohort(root / "bids", n_subjects=2, preset="test", seed=0,
                                   sites=["northfield", "lakeside"])
    sites = pd.read_csv(bids_dir / "participants.tsv", sep="\t").set_index("participant_id")["site"]
    found = discover(bids_dir)
    work_dir = root / "work"
    pairs, skipped = build_training_pairs(found.amyloid, work_dir / "mr_from_fbp_pairs")
    assert not skipped and len(pairs) == 2
    return {"root": root, "bids": bids_dir, "work": work_dir, "inputs": found.amyloid, "pairs": pairs,
            "site_of": {key.removeprefix("sub-"): site for key, site in sites.items()}}


def _subject_at(cohort, site: str) -> str:
    return next(label for label, s in cohort["site_of"].items() if s == site)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_pairs_are_aligned_scaled_and_cached(cohort):
    for pair, inputs in zip(cohort["pairs"], cohort["inputs"]):
        assert pair.pet.shape == pair.t1w.shape == pair.foreground.shape
        assert pair.pet.shape[:2] == (192, 256)
        assert pair.t1w.dtype == np.float32 and pair.t1w.min() == -1.0 and pair.t1w.max() == 1.0
        assert 0.2 < pair.foreground.mean() < 0.5  # the head, not the background nor nothing

        # Alignment: the T1w head foreground and the PET foreground overlap on the kept slices,
        # and much better than the same T1w placed by scanner coordinates alone (the phantom
        # moves the head between the MR and PET sessions by up to 8 degrees and 10 mm).
        pet_mask = pair.pet[..., pair.slices] > PET_FOREGROUND_LEVEL
        registered = _dice(pair.foreground[..., pair.slices], pet_mask)
        t1w = load_image(inputs.t1w)
        grid_affine = np.array(pair.meta["grid_affine"])
        unregistered_head = resample_to_grid(t1w_head_mask(t1w.get_fdata(dtype=np.float32)).astype(np.uint8),
                                             t1w.affine, pair.pet.shape, grid_affine, order=0) > 0
        unregistered = _dice(unregistered_head[..., pair.slices], pet_mask)
        assert registered > 0.97 and registered > unregistered + 0.02, (registered, unregistered)

        # Kept slices: exactly those with at least 10% of the largest slice's PET foreground.
        area = (pair.pet > PET_FOREGROUND_LEVEL).sum(axis=(0, 1))
        assert np.array_equal(pair.slices, pet_foreground_slices(np.asarray(pair.pet)))
        assert area[pair.slices].min() >= 0.1 * area.max() > 0
        # Lakeside's 166 mm axial PET field of view cuts the head, so every slice can be kept;
        # northfield's longer one leaves empty slices above and below the head.
        assert 50 < pair.slices.size <= pair.pet.shape[2]

        pair_dir = cohort["work"] / "mr_from_fbp_pairs" / inputs.key
        written = {f: f.stat().st_mtime_ns for f in pair_dir.rglob("*") if f.is_file()}
        again = build_training_pair(inputs, pair_dir)
        # Loaded from the .npy cache, not rebuilt: no file of the pair was written again.
        assert written and {f: f.stat().st_mtime_ns for f in pair_dir.rglob("*") if f.is_file()} == written
        assert np.array_equal(again.t1w, pair.t1w) and np.array_equal(again.slices, pair.slices)
    assert any(pair.slices.size < pair.pet.shape[2] for pair in cohort["pairs"])  # empty slices dropped


def test_t1w_target_scaling():
    t1w = np.zeros((20, 20, 20), np.float32)
    t1w[5:15, 5:15, 5:15] = np.linspace(0, 200, 1000, dtype=np.float32).reshape(10, 10, 10)
    head = t1w_head_mask(t1w)
    scaled = scale_t1w_target(t1w, head)
    assert scaled[0, 0, 0] == -1.0 and scaled.max() == 1.0 and scaled.min() == -1.0
    high = np.percentile(t1w[head & (t1w > 0)], 99.5)
    np.testing.assert_allclose(scaled[t1w == t1w[head].max()], 1.0)
    np.testing.assert_allclose(scale_t1w_target(t1w * 3.0, head), scaled, atol=1e-6)  # per-subject scale
    assert abs(scaled[10, 10, 10] - (2 * t1w[10, 10, 10] / high - 1)) < 1e-5


def _fake_pair(key: str, site: str) -> TrainingPair:
    empty = np.zeros((1, 1, 1), np.float32)
    return TrainingPair(key=key, subject=key.removeprefix("sub-").split("_")[0], site=site, pet=empty, t1w=empty,
                        foreground=empty > 0, slices=np.zeros(0, np.int64))


def test_split_holds_out_whole_sites():
    pairs = [_fake_pair("sub-01", "b"), _fake_pair("sub-02", "a"), _fake_pair("sub-03", "c"),
             _fake_pair("sub-04", "c")]
    train, validation, split = split_by_site(pairs)
    assert [p.key for p in validation] == ["sub-03", "sub-04"] and split["held_out_sites"] == ["c"]
    train, validation, _ = split_by_site(pairs, ["a", "b"])
    assert sorted(p.key for p in validation) == ["sub-01", "sub-02"]
    assert len(split_by_site(pairs, [])[1]) == 0
    with pytest.raises(InputError, match="zzz"):
        split_by_site(pairs, ["zzz"])
    with pytest.raises(InputError, match="no subject to train on"):
        split_by_site(pairs, ["a", "b", "c"])
    # One site: 20% of subjects (sessions of a subject together), the same for the same seed.
    one_site = [_fake_pair(f"sub-{i:02d}_ses-{s}", "a") for i in range(10) for s in (1, 2)]
    train, validation, _ = split_by_site(one_site, seed=5)
    assert len({p.subject for p in validation}) == 2 and len(validation) == 4
    assert not {p.subject for p in train} & {p.subject for p in validation}
    assert [p.key for p in split_by_site(one_site, seed=5)[1]] == [p.key for p in validation]


def test_masked_ssim_and_mae():
    rng = np.random.default_rng(0)
    real = np.clip(rng.normal(0, 0.5, (3, 48, 64)), -1, 1)
    mask = np.zeros(real.shape, bool)
    mask[:, 10:40, 10:30] = True
    assert masked_ssim(real, real, mask) == pytest.approx(1.0)
    noisy = np.clip(real + rng.normal(0, 0.3, real.shape), -1, 1)
    assert masked_ssim(noisy, real, mask) < 0.8
    # The same as the mean of the whole-slice SSIM maps over the mask (the crop is exact).
    from skimage.metrics import structural_similarity

    maps = [structural_similarity(n, r, data_range=2, full=True, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False)[1] for n, r in zip(noisy, real)]
    assert masked_ssim(noisy, real, mask) == pytest.approx(np.stack(maps)[mask].mean(), abs=1e-12)
    # Only the masked pixels count: damage outside the mask (beyond the SSIM window) is ignored.
    damaged = real.copy()
    damaged[:, :, 50:] = -1.0
    assert masked_ssim(damaged, real, mask) == pytest.approx(1.0)
    assert masked_mae(damaged, real, mask) == 0.0 and masked_mae(real + 0.25, real, mask) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        masked_ssim(real, real, np.zeros_like(mask))


#: The trained model: lakeside's subject trains (165 slices, 21 steps of 8 per epoch), so 24 steps
#: cross an epoch boundary; northfield's subject is held out.
TRAINED = {"batch_size": 8, "lr": 2e-3, "seed": 0, **TINY}


@pytest.fixture(scope="module")
def trained(cohort):
    out = cohort["root"] / "model"
    result = train_mr_from_fbp(cohort["bids"], out, work_dir=cohort["work"], max_steps=24, checkpoint_every=100,
                               **TRAINED)
    return out, result


def test_training_lowers_the_l1_loss(trained):
    out, result = trained
    l1 = [row["g_l1"] for row in result["losses"]]
    assert len(l1) == 24 and result["steps"] == 24 and result["stopped_by"] == "max_steps"
    assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:5])
    table = pd.read_csv(out / "training_losses.tsv", sep="\t")
    assert list(table["step"]) == list(range(1, 25)) and list(table["epoch"])[-1] == 1


def test_card_is_complete_and_the_model_synthesizes(trained, cohort, tmp_path):
    out, result = trained
    northfield, lakeside = _subject_at(cohort, "northfield"), _subject_at(cohort, "lakeside")
    card = json.loads((out / "mr_from_fbp.json").read_text())
    for key in ("architecture", "kwargs", "input_grid", "intensity_normalisation", "modalities", "training",
                "validation", "weights_sha256", "synthetic_phantom_only", "warning"):
        assert key in card, key
    assert card["input_grid"]["voxel_mm"] == [1.2, 1.0, 1.0] and card["input_grid"]["matrix"] == [192, 256]
    assert card["modalities"] == {"input": ["FBP_PET"], "output": "T1w"}
    assert card["synthetic_phantom_only"] is True and "synthetic" in card["warning"]
    training = card["training"]
    assert training["dataset"].startswith("synthquant phantom")
    assert training["subjects"] == [f"sub-{lakeside}"] and training["sites"] == ["lakeside"]
    assert training["steps"] == 24 and training["batch_size"] == 8 and training["lr"] == 2e-3
    assert training["n_slices"] > 50 and training["device"] == "cpu" and training["seed"] == 0
    validation = card["validation"]
    assert validation["held_out_sites"] == ["northfield"] and validation["subjects"] == [f"sub-{northfield}"]
    scores = validation["per_subject"][f"sub-{northfield}"]
    assert -1 <= scores["ssim"] <= 1 and 0 < scores["mae"] < 2
    assert validation["ssim_mean"] == scores["ssim"] and result["validation"] == {
        k: validation[k] for k in ("per_subject", "ssim_mean", "mae_mean")}

    loaded = load_model(out / "mr_from_fbp", NETS_REGISTRY)
    assert loaded.sha256 == card["weights_sha256"]
    static_pet = cohort["work"] / "mr_from_fbp_pairs" / f"sub-{northfield}" / "static" / "static_pet.nii.gz"
    synthesized = synthesize_mr(static_pet, out / "mr_from_fbp", tmp_path / "pseudo_t1w.nii.gz", device="cpu")
    pseudo, pet = load_image(synthesized["pseudo_t1w"], require_nonzero=False), load_image(static_pet)
    assert pseudo.shape == pet.shape and np.isfinite(pseudo.get_fdata()).all()


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(cohort, trained):
    # The same run stopped at step 12 and resumed to 24 must end where the uninterrupted run of
    # the `trained` fixture ended; the resumed part crosses the epoch boundary (step 21), so it
    # must also redraw the same shuffle.
    whole, _ = trained
    parts = cohort["root"] / "parts"
    first = train_mr_from_fbp(cohort["bids"], parts, work_dir=cohort["work"], max_steps=12, checkpoint_every=5,
                              **TRAINED)
    assert first["steps"] == 12
    resumed = train_mr_from_fbp(cohort["bids"], parts, work_dir=cohort["work"], max_steps=24, checkpoint_every=5,
                                resume=True, **TRAINED)
    assert resumed["steps"] == 24 and [r["step"] for r in resumed["losses"]] == list(range(1, 25))

    a, b = load_file(whole / "checkpoints" / "last.safetensors"), load_file(parts / "checkpoints" / "last.safetensors")
    assert set(a) == set(b)
    assert any(k.startswith("optimizer_g.state.") for k in a) and any(k.startswith("optimizer_d.") for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    final_a, final_b = load_file(whole / "mr_from_fbp.safetensors"), load_file(parts / "mr_from_fbp.safetensors")
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], rtol=0, atol=1e-6, msg=name)

    with pytest.raises(InputError, match="other settings"):
        train_mr_from_fbp(cohort["bids"], parts, work_dir=cohort["work"], max_steps=30, resume=True,
                          **{**TRAINED, "batch_size": 4})


def test_slice_input_matches_inference_slices():
    volume = np.random.default_rng(0).normal(size=(4, 5, 7)).astype(np.float32)
    for channels in (1, 3, 5):
        stack = slice_stack(volume, channels)
        for k in range(7):
            np.testing.assert_array_equal(slice_input(volume, k, channels), stack[k])


def test_time_limit_stops_with_a_checkpoint_and_a_25d_model(cohort):
    out = cohort["root"] / "timed"
    result = train_mr_from_fbp(cohort["bids"], out, work_dir=cohort["work"],
                               participant_labels=[_subject_at(cohort, "lakeside")], channels=3, batch_size=2,
                               max_steps=1000, time_limit_s=1e-3, **TINY)
    assert result["steps"] == 1 and result["stopped_by"] == "time_limit"
    assert (out / "checkpoints" / "last.safetensors").is_file()
    card = json.loads((out / "mr_from_fbp.json").read_text())
    assert card["kwargs"]["in_channels"] == 3 and card["training"]["stopped_by"] == "time_limit"
    assert card["modalities"]["input"] == ["FBP_PET[z-1]", "FBP_PET[z]", "FBP_PET[z+1]"]


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_cli_refuses_a_dataset_without_t1w_pet_pairs(cohort, tmp_path, capsys):
    pet_only = tmp_path / "pet_only"
    shutil.copytree(cohort["bids"], pet_only, ignore=shutil.ignore_patterns("anat"))
    assert train_main(["mr-from-fbp", str(pet_only), "--out", str(tmp_path / "out"), "--omp-nthreads", "1"]) == 2
    captured = capsys.readouterr()
    assert "no subject has both a T1w and a florbetapir" in _one_line(captured.err)
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("argv", [
    ["mr-from-fbp", "{missing}", "--out", "{out}"],
    ["mr-from-fbp", "{bids}", "--out", "{out}", "--channels", "2"],
    ["dvr-from-mri", "{bids}", "--out", "{out}"],
    ["mr-from-fbp", "{bids}"],
])
def test_cli_bad_arguments_exit_2_with_one_line(cohort, tmp_path, capsys, argv):
    names = {"missing": str(tmp_path / "nowhere"), "out": str(tmp_path / "out"), "bids": str(cohort["bids"])}
    assert train_main([a.format(**names) for a in argv] + ["--omp-nthreads", "1"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("synthquant train: error:")


def test_cli_skips_a_corrupt_subject_and_trains_on_the_rest(cohort, tmp_path, capsys):
    northfield, lakeside = _subject_at(cohort, "northfield"), _subject_at(cohort, "lakeside")
    copy = tmp_path / "bids"
    shutil.copytree(cohort["bids"], copy)  # copy2 keeps file times: the pair cache still applies
    corrupt = copy / f"sub-{northfield}" / "anat" / f"sub-{northfield}_T1w.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:500])
    out = tmp_path / "out"
    status = train_main(["mr-from-fbp", str(copy), "--out", str(out), "--work-dir", str(cohort["work"]),
                         "--base-features", "4", "--depth", "6", "--batch-size", "2", "--max-steps", "2",
                         "--device", "cpu", "--omp-nthreads", "1"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"sub-{northfield}" in warnings[0] and "corrupt" in warnings[0]
    card = json.loads((out / "mr_from_fbp.json").read_text())
    assert card["training"]["subjects"] == [f"sub-{lakeside}"] and card["validation"]["subjects"] == []
