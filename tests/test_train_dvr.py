"""dvr_from_mri training (Wei et al. 2019): normalisation, crops, folds, learning on a toy
cohort whose DVR is a nonlinear function of the four MR channels, the written card, resume,
and the ``train dvr-from-mri`` command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthquant.errors import InputError
from synthquant.models import DVR_FROM_MRI, resolve_model
from synthquant.myelin import MR_CHANNELS, MyelinPair
from synthquant.nets import myelin_training
from synthquant.nets.myelin_training import (
    DVRTrainingSettings,
    Normalisation,
    draw_batch,
    evaluate_subject,
    prepare_subject,
    subject_folds,
    summarise_metrics,
    train_dvr_from_mri,
    train_model,
)
from synthquant.train import train_main


def synthetic_pair(seed: int, shape=(40, 40, 40), patient: bool = False, site: str = "north",
                   key: str | None = None) -> MyelinPair:
    """A toy subject on a 2 mm grid: a myelin content m (high in a deformed WM core) drives every
    channel; lesions lose myelin and gain oedema, which moves MTR and the diffusivities but not the
    DVR, so DVR = 0.9 + m^1.5 is a nonlinear function of several channels at once."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))

    def smooth(sigma):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        return field / field.std()

    radius = np.sqrt(((grid / (0.85 * rng.uniform(0.9, 1.05, 3)[:, None, None, None])) ** 2).sum(0))
    brain = radius < 1.0
    wm_fraction = 1 / (1 + np.exp(-(0.62 - radius + 0.08 * smooth(4)) * 14))
    myelin = (0.2 + 0.75 * wm_fraction * (0.88 + 0.08 * smooth(3))) * brain
    lesion, oedema = np.zeros(shape, bool), np.zeros(shape)
    if patient:
        core = np.argwhere((wm_fraction > 0.8) & brain)
        for _ in range(4):
            centre = core[rng.integers(len(core))]
            ball = brain & (((np.indices(shape) - centre[:, None, None, None]) ** 2).sum(0) <= rng.uniform(2, 3.5) ** 2)
            lesion |= ball
            myelin[ball] *= 1 - rng.uniform(0.1, 0.8)
            oedema[ball] = rng.uniform(0.3, 1.0)

    def noise(sd):
        return sd * rng.standard_normal(shape)

    mtr = (20 + 30 * myelin - 10 * oedema + noise(0.5)) * brain
    fa = (0.1 + 0.55 * wm_fraction * np.sqrt(myelin) - 0.1 * oedema + noise(0.01)) * brain
    rd = ((0.95 - 0.5 * myelin + 0.35 * oedema) * 1e-3 + noise(1e-5)) * brain
    ad = ((1.1 + 0.4 * wm_fraction - 0.1 * myelin + 0.3 * oedema) * 1e-3 + noise(1e-5)) * brain
    dvr = (0.9 + myelin ** 1.5 + noise(0.01)) * brain
    wm = ((wm_fraction > 0.5) & brain) | lesion
    return MyelinPair(key=key or f"sub-{seed:02d}", site=site, group="patient" if patient else "control",
                      mr=np.stack([mtr, fa, rd, ad]).astype(np.float32), dvr=dvr.astype(np.float32), brain=brain,
                      lesion=lesion, nawm=wm & ~lesion, wm=wm, affine=np.diag([2.0, 2.0, 2.0, 1.0]))


def toy_cohort(n: int = 6) -> list[MyelinPair]:
    """Alternating controls and patients of two grid shapes."""
    return [synthetic_pair(i, shape=(40, 44, 36) if i % 3 else (36, 40, 40), patient=i % 2 == 1,
                           site="north" if i % 2 else "south") for i in range(1, n + 1)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort()


#: Tiny networks with a fast rate, so that a few dozen CPU steps learn the toy mapping.
FAST = {"base_features": 4, "sketcher_lr": 1e-3, "refiner_lr": 5e-4}


def test_normalisation_uses_training_brains_only(cohort):
    norm = Normalisation.from_pairs(cohort[:4])
    values = np.concatenate([p.dvr[p.brain] for p in cohort[:4]]).astype(np.float64)
    assert norm.dvr_mean == pytest.approx(values.mean()) and norm.dvr_sd == pytest.approx(values.std())
    mtr = np.concatenate([p.mr[0][p.brain] for p in cohort[:4]]).astype(np.float64)
    assert norm.channels["MTR"]["mean"] == pytest.approx(mtr.mean(), rel=1e-6)
    assert list(norm.channels) == list(MR_CHANNELS)
    prepared = prepare_subject(cohort[0], norm, (32, 32, 32))
    brain = cohort[0].brain
    assert np.all(prepared.mr[:, ~brain] == 0) and np.all(prepared.target[~brain] == 0)
    assert abs(float(prepared.target[brain].mean())) < 0.5  # about zero-mean in the brain


def test_crops_are_reproducible_and_find_lesions(cohort):
    settings = DVRTrainingSettings(batch_size=4, lesion_crop_fraction=1.0, seed=3)
    norm = Normalisation.from_pairs(cohort)
    subjects = [prepare_subject(p, norm, settings.crop) for p in cohort if p.group == "patient"]
    first = draw_batch(subjects, settings, 1, "sketcher", 5)
    again = draw_batch(subjects, settings, 1, "sketcher", 5)
    other = draw_batch(subjects, settings, 1, "sketcher", 6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    mr, target, weights = first
    assert mr.shape == (4, 4, 32, 32, 32) and target.shape == weights.shape == (4, 1, 32, 32, 32)
    for crop_weights in weights:
        # Wei eq. 5 per crop: lesion, NAWM and other brain each sum to 1; every crop holds a lesion.
        levels = np.unique(crop_weights[crop_weights > 0])
        assert crop_weights.sum() == pytest.approx(len(levels), rel=1e-4) and len(levels) == 3


def test_refiner_crops_follow_their_own_lesion_fraction():
    """One 96^3 brain with a small lesion in a corner: lesion-centred crops always hold it,
    brain-centred crops mostly miss it; the Sketcher's crops ignore the Refiner's fraction."""
    shape = (96, 96, 96)
    brain = np.ones(shape, bool)
    lesion = np.zeros(shape, bool)
    lesion[4:8, 4:8, 4:8] = True
    subject = myelin_training._Prepared("sub-01", np.zeros((4, *shape), np.float32), np.zeros(shape, np.float32),
                                        brain, lesion, brain & ~lesion, np.argwhere(brain), np.argwhere(lesion))
    lesion_heavy = DVRTrainingSettings(batch_size=4, lesion_crop_fraction=1.0, refiner_lesion_crop_fraction=1.0)
    brain_only = dataclasses.replace(lesion_heavy, refiner_lesion_crop_fraction=0.0)

    def share_with_lesion(settings, stage):
        hits = [bool(np.any(crop > 1.0 / 32**3 * 2)) for step in range(25)
                for crop in draw_batch([subject], settings, 1, stage, step)[2]]
        return np.mean(hits)  # a crop holding lesion voxels has the lesion's weight 1/N_les

    assert share_with_lesion(lesion_heavy, "refiner") == 1.0
    assert share_with_lesion(brain_only, "refiner") < 0.3
    assert share_with_lesion(brain_only, "sketcher") == 1.0
    with pytest.raises(InputError, match="refiner_lesion_crop_fraction"):
        DVRTrainingSettings(refiner_lesion_crop_fraction=1.5).check()

    # The lesion class of every crop holding the lesion sums to refiner_lesion_weight.
    heavier = dataclasses.replace(lesion_heavy, refiner_lesion_weight=2.5)
    for crop in draw_batch([subject], heavier, 1, "refiner", 0)[2]:
        crop_lesion = crop[0] > 1.0 / 32**3 * 2
        assert crop[0][crop_lesion].sum() == pytest.approx(2.5, rel=1e-4)
    with pytest.raises(InputError, match="lesion weight"):
        DVRTrainingSettings(refiner_lesion_weight=0.0).check()


def test_folds_spread_groups_and_keep_sessions_together(cohort):
    sessions = cohort + [synthetic_pair(1, patient=False, key="sub-01_ses-2")]  # group as recorded
    folds = subject_folds(sessions, 3, seed=0)
    assert sorted(s for fold in folds for s in fold) == sorted({p.key.split("_ses-")[0] for p in sessions})
    for fold in folds:
        groups = {p.group for p in cohort if p.key in fold}
        assert groups == {"control", "patient"}
    assert subject_folds(sessions, 3, seed=0) == folds
    with pytest.raises(InputError, match="--folds"):
        subject_folds(cohort, 7, seed=0)


def test_bad_settings_are_one_line():
    with pytest.raises(InputError, match="multiples of 32"):
        DVRTrainingSettings(crop=(48, 32, 32)).check()
    with pytest.raises(InputError, match="variant"):
        DVRTrainingSettings(variant="pix2pix").check()


def test_unet_learns_the_toy_mapping_on_held_out_subjects(cohort):
    """The held-out MSE must beat predicting the training mean DVR by a clear factor."""
    settings = DVRTrainingSettings(variant="unet_l1", sketcher_steps=60, **FAST)
    trained = train_model(cohort[:4], settings, progress=False)
    assert trained.model.noise_channels == 0 and trained.sketcher is None
    metrics = {p.key: evaluate_subject(trained, p) for p in cohort[4:]}
    summary = summarise_metrics(metrics)
    assert summary["mse_mean"] < summary["baseline_mse_mean"] / 4, summary
    assert summary["psnr_mean"] > 24
    assert set(summary["discrepancy"]) == {"wm_control", "nawm", "lesion"}
    assert summary["discrepancy"]["wm_control"]["mean"] < 0.1


@pytest.fixture(scope="module")
def trained_out(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("dvr_model")
    settings = DVRTrainingSettings(sketcher_steps=6, refiner_steps=6, **FAST)
    result = train_dvr_from_mri(cohort[:4], out, settings=settings, folds=2, device="cpu", progress=False,
                                dataset_name="toy", phantom=True, refused={"sub-99": "no PIB"})
    return out, result


def test_cross_validated_sketcher_refiner_card(trained_out, cohort):
    out, result = trained_out
    card = json.loads((out / "dvr_from_mri.json").read_text())
    assert card["architecture"] == "SketcherRefiner3D"
    assert card["kwargs"]["sketcher"]["noise_channels"] == 1 and card["kwargs"]["refiner"]["base_features"] == 4
    assert card["input_grid"]["voxel_mm"] == [2.0, 2.0, 2.0]
    assert card["modalities"] == list(MR_CHANNELS)
    normalisation = card["intensity_normalisation"]
    assert set(normalisation["input"]["channels"]) == set(MR_CHANNELS)
    assert normalisation["target"]["sd"] > 0
    training = card["training"]
    assert training["subjects"] == [p.key for p in cohort[:4]] and training["refused"] == {"sub-99": "no PIB"}
    assert training["stages"]["sketcher"]["steps"] == 6 and training["stages"]["refiner"]["steps"] == 6
    assert training["stages"]["refiner"]["lr"] == 5e-4 and training["crop"] == [32, 32, 32]
    assert card["synthetic_phantom_only"] is True and "phantom" in card["warning"]
    cv = card["cross_validation"]
    assert cv["folds"] == 2 and len(cv["per_subject"]) == 4
    held = sorted(k for fold in cv["per_fold"] for k in fold["held_out"])
    assert held == sorted(p.key for p in cohort[:4])
    for fold in cv["per_fold"]:
        assert not set(fold["held_out"]) & set(fold["train"])
    for metrics in cv["per_subject"].values():
        assert metrics["mse"] > 0 and np.isfinite(metrics["psnr"]) and "sketcher_mse" in metrics
    assert json.loads((out / "cross_validation.json").read_text())["mean"] == cv["mean"]
    rows = (out / "training_losses.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["run", "stage", "step", "d", "g", "g_adversarial", "g_l1"]
    assert len(rows) == 1 + 3 * 12  # two folds and the final model, 6 + 6 steps each
    choice = resolve_model(DVR_FROM_MRI, out)
    assert choice.sha256 == result["sha256"] and choice.synthetic_only
    # Training minutes: every stage of the folds and the final model (kept through a resume).
    seconds = [s["seconds"] for fold in json.loads((out / "cross_validation.json").read_text())["per_fold"]
               for s in fold["stages"].values()] + [s["seconds"] for s in training["stages"].values()]
    assert len(seconds) == 6 and training["minutes"] == pytest.approx(sum(seconds) / 60, abs=0.01)


def test_resolve_model_refuses_a_wrong_card(trained_out, tmp_path):
    out, _ = trained_out
    for name in ("dvr_from_mri.safetensors", "dvr_from_mri.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    card = json.loads((tmp_path / "dvr_from_mri.json").read_text())
    card["modalities"] = ["FA", "MTR", "RD", "AD"]
    (tmp_path / "dvr_from_mri.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="modalities") as error:
        resolve_model(DVR_FROM_MRI, tmp_path)
    assert "\n" not in str(error.value) and "dvr_from_mri.json" in str(error.value)
    del card["intensity_normalisation"]
    card["modalities"] = list(MR_CHANNELS)
    (tmp_path / "dvr_from_mri.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="intensity_normalisation"):
        resolve_model(DVR_FROM_MRI, tmp_path)


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(cohort, tmp_path, monkeypatch):
    settings = DVRTrainingSettings(variant="sketcher", sketcher_steps=5, **FAST)
    whole = train_model(cohort[:2], settings, checkpoint_dir=tmp_path / "whole", checkpoint_every=2, progress=False)

    real_draw = myelin_training.draw_batch

    def crash_at_step_3(subjects, settings_, run_id, stage, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_draw(subjects, settings_, run_id, stage, step)

    monkeypatch.setattr(myelin_training, "draw_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_model(cohort[:2], settings, checkpoint_dir=tmp_path / "resumed", checkpoint_every=2, progress=False)
    monkeypatch.setattr(myelin_training, "draw_batch", real_draw)
    assert json.loads((tmp_path / "resumed" / "sketcher.json").read_text())["step"] == 2
    resumed = train_model(cohort[:2], settings, checkpoint_dir=tmp_path / "resumed", checkpoint_every=2,
                          resume=True, progress=False)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_longer_run_extends_a_finished_shorter_one(cohort, tmp_path, capsys):
    """3 steps, then the same run asked for 5 resumes at 3 and ends at the 5-step run's weights;
    a run asked for fewer steps than the checkpoint holds starts over."""
    five = DVRTrainingSettings(variant="sketcher", sketcher_steps=5, **FAST)
    whole = train_model(cohort[:2], five, progress=False)
    train_model(cohort[:2], dataclasses.replace(five, sketcher_steps=3), checkpoint_dir=tmp_path, progress=False)
    capsys.readouterr()
    extended = train_model(cohort[:2], five, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert "sketcher: resuming at step 3" in capsys.readouterr().out
    assert extended.stages["sketcher"]["steps"] == 5
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, extended.model.state_dict()[name]), name
    shorter = train_model(cohort[:2], dataclasses.replace(five, sketcher_steps=2), checkpoint_dir=tmp_path,
                          resume=True, progress=False)
    assert "past the 2 asked for" in capsys.readouterr().out and shorter.stages["sketcher"]["steps"] == 2


def test_a_new_refiner_recipe_reuses_the_trained_sketcher(cohort, tmp_path, capsys):
    """Refiner-only settings leave the Sketcher checkpoint valid; a Sketcher setting does not."""
    first = DVRTrainingSettings(variant="sketcher_refiner", sketcher_steps=3, refiner_steps=2, **FAST)
    train_model(cohort[:2], first, checkpoint_dir=tmp_path, progress=False)
    capsys.readouterr()
    refined = train_model(cohort[:2], dataclasses.replace(first, refiner_steps=3, lambda_refiner=50.0),
                          checkpoint_dir=tmp_path, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "sketcher: resuming at step 3" in out
    assert "refiner: checkpoint settings differ" in out and refined.stages["refiner"]["steps"] == 3
    train_model(cohort[:2], dataclasses.replace(first, sketcher_lr=5e-4), checkpoint_dir=tmp_path, resume=True,
                progress=False)
    assert "sketcher: checkpoint settings differ" in capsys.readouterr().out


def test_more_refiner_steps_extend_the_refiner_and_more_sketcher_steps_restart_it(cohort, tmp_path, capsys):
    first = DVRTrainingSettings(variant="sketcher_refiner", sketcher_steps=3, refiner_steps=2, **FAST)
    train_model(cohort[:2], first, checkpoint_dir=tmp_path, progress=False)
    capsys.readouterr()
    train_model(cohort[:2], dataclasses.replace(first, refiner_steps=4), checkpoint_dir=tmp_path, resume=True,
                progress=False)
    out = capsys.readouterr().out
    assert "sketcher: resuming at step 3" in out and "refiner: resuming at step 2" in out
    train_model(cohort[:2], dataclasses.replace(first, sketcher_steps=4, refiner_steps=4), checkpoint_dir=tmp_path,
                resume=True, progress=False)
    out = capsys.readouterr().out
    assert "sketcher: resuming at step 3" in out and "refiner: checkpoint settings differ" in out


def test_weight_average_is_the_moving_average_of_the_step_weights_and_resumes(cohort, tmp_path):
    """ema_decay d: the result is E_1 = W_1, E_k = d E_(k-1) + (1 - d) W_k over the weights W_k of
    the plain run after k steps (averaging does not change the training itself); a run resumed
    from a checkpoint carries the average on."""
    plain = DVRTrainingSettings(variant="sketcher", sketcher_steps=1, **FAST)
    steps = [train_model(cohort[:2], dataclasses.replace(plain, sketcher_steps=k), progress=False).model.state_dict()
             for k in (1, 2, 3)]
    decay = 0.5
    expected = {name: t.clone() for name, t in steps[0].items()}
    for later in steps[1:]:
        for name, tensor in expected.items():
            if tensor.is_floating_point():
                tensor.mul_(decay).add_(later[name], alpha=1 - decay)
    averaged = dataclasses.replace(plain, sketcher_steps=3, ema_decay=decay)
    whole = train_model(cohort[:2], averaged, progress=False).model.state_dict()
    train_model(cohort[:2], dataclasses.replace(averaged, sketcher_steps=2), checkpoint_dir=tmp_path, progress=False)
    resumed = train_model(cohort[:2], averaged, checkpoint_dir=tmp_path, resume=True, progress=False).model.state_dict()
    floats = [name for name, tensor in expected.items() if tensor.is_floating_point()]
    moved = [name for name in floats if not torch.allclose(steps[2][name], expected[name], atol=1e-6)]
    assert moved  # the average differs from the last step's weights
    for name in floats:
        torch.testing.assert_close(whole[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(resumed[name], whole[name]), name


def test_checkpoints_from_before_a_new_setting_stay_valid():
    """A fingerprint written before a setting existed (here ema_decay) matches its default."""
    current = {"settings": DVRTrainingSettings().as_dict(), "subjects": ["sub-01"], "run": "final",
               "stage": "sketcher"}
    older = {**current, "settings": {k: v for k, v in current["settings"].items() if k != "ema_decay"}}
    assert myelin_training.same_training_run(older, current)
    averaged = {**current, "settings": {**current["settings"], "ema_decay": 0.99}}
    assert not myelin_training.same_training_run(older, averaged)


def test_time_limit_stops_early(cohort):
    settings = DVRTrainingSettings(variant="sketcher_refiner", sketcher_steps=10_000, refiner_steps=10_000, **FAST)
    trained = train_model(cohort[:2], settings, time_limit_s=2.0, progress=False)
    for stage in ("sketcher", "refiner"):
        assert trained.stages[stage]["stopped_by"] == "time_limit"
        assert 0 < trained.stages[stage]["steps"] < 10_000


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(("extra", "reason"), [
    (["--crop", "48"], "multiples of 32"), (["--variant", "pix2pix"], "invalid choice"), (["--folds", "1"], "--folds"),
    (["--crop", "32", "32"], "one side or three"), (["--time-limit-min", "0"], "--time-limit-min"),
    (["--sketcher-steps", "0"], "sketcher_steps"),
])
def test_cli_bad_dvr_arguments_exit_2_with_one_line(tmp_path, capsys, extra, reason):
    """Refused before any preprocessing: the (empty) BIDS folder is never looked at."""
    bids = tmp_path / "bids"
    bids.mkdir()
    status = train_main(["dvr-from-mri", str(bids), "--out", str(tmp_path / "out"), "--omp-nthreads", "1", *extra])
    assert status == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("synthquant train: error:") and reason in line and "BIDS" not in line


def test_cli_dataset_without_pib_is_one_line(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "empty", "BIDSVersion": "1.9.0"}))
    status = train_main(["dvr-from-mri", str(bids), "--out", str(tmp_path / "out"), "--omp-nthreads", "1"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    line = _one_line(captured.err)
    assert line.startswith("synthquant train: error:") and "no subject with MTR, DWI, T1w and a dynamic" in line
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.slow
def test_cli_trains_on_a_phantom_myelin_cohort(tmp_path, capsys):
    """``train dvr-from-mri`` end to end: phantom BIDS -> myelinprep pairs -> 2-fold CV -> model that
    resolve_model accepts. Two subjects (one control, one patient) keep the ANTs preprocessing
    (about a minute per subject on one thread) within reach."""
    from synthquant.phantom import make_myelin_cohort

    bids = make_myelin_cohort(tmp_path / "bids", n_subjects=2, preset="test", seed=3)
    out = tmp_path / "out"
    status = train_main(["dvr-from-mri", str(bids), "--out", str(out), "-w", str(tmp_path / "work"), "--folds", "2",
                         "--sketcher-steps", "2", "--refiner-steps", "2", "--base-features", "4",
                         "--device", "cpu", "--omp-nthreads", "1"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "cross-validation (2 held-out subjects)" in captured.out
    card = json.loads((out / "dvr_from_mri.json").read_text())
    assert card["synthetic_phantom_only"] is True and card["training"]["n_subjects"] == 2
    assert {p["group"] for p in card["cross_validation"]["per_subject"].values()} == {"control", "patient"}
    choice = resolve_model(DVR_FROM_MRI, out)
    assert choice.synthetic_only and choice.card["modalities"] == list(MR_CHANNELS)
