"""End to end, as a user runs it: a phantom cohort with good and bad subjects through the CLI.

One participant run is shared by every test here (it is the expensive part): three good
phantom subjects on three sites, plus one subject per kind of bad input. The bad ones must
each give one line naming the file and the reason, with no traceback, while the good ones
complete; then a group run, a cached rerun, and the accuracy against the phantom's truth.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthquant.cli import main
from synthquant.evaluation import compare_to_truth
from synthquant.group import AMYLOID_COLUMNS
from synthquant.phantom import make_amyloid_cohort

GOOD = ["01", "02", "03"]


def _clone_subject(bids: Path, source: str, target: str) -> tuple[Path, Path]:
    """Copy sub-<source> to sub-<target> (renaming files); return its PET and T1w paths."""
    shutil.copytree(bids / f"sub-{source}", bids / f"sub-{target}")
    for path in sorted((bids / f"sub-{target}").rglob(f"sub-{source}_*")):
        path.rename(path.with_name(path.name.replace(f"sub-{source}_", f"sub-{target}_")))
    with open(bids / "participants.tsv", "a") as table:
        table.write(f"sub-{target}\thillcrest\tNC\tcontrol\t70\tF\n")
    return (bids / f"sub-{target}/pet/sub-{target}_trc-FBP_pet.nii.gz",
            bids / f"sub-{target}/anat/sub-{target}_T1w.nii.gz")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    bids = make_amyloid_cohort(root / "bids", n_subjects=len(GOOD), preset="test", seed=3)
    header = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str).columns
    bad = {}

    pet, _ = _clone_subject(bids, "01", "corrupt")         # gzip stream cut in half
    raw = pet.read_bytes()
    pet.write_bytes(raw[: len(raw) // 2])
    bad["corrupt"] = (pet.name, "corrupt or truncated")

    pet, _ = _clone_subject(bids, "01", "nan")             # NaNs in the PET
    img = nib.load(pet)
    data = img.get_fdata(dtype=np.float32)
    data[10:12, 10:12, 10:12, :] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), pet)
    bad["nan"] = (pet.name, "NaN")

    pet, _ = _clone_subject(bids, "01", "zero")            # all-zero PET
    img = nib.load(pet)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header), pet)
    bad["zero"] = (pet.name, "all zeros")

    pet, _ = _clone_subject(bids, "01", "trunc")           # valid gzip, truncated NIfTI payload
    raw = gzip.decompress(pet.read_bytes())
    pet.write_bytes(gzip.compress(raw[: len(raw) * 2 // 3]))
    bad["trunc"] = (pet.name, "corrupt or truncated")

    pet, _ = _clone_subject(bids, "01", "notiming")        # 4D PET, sidecar without frame timing
    sidecar = pet.with_name(pet.name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    meta.pop("FrameTimesStart")
    sidecar.write_text(json.dumps(meta))
    bad["notiming"] = (sidecar.name, "FrameTimesStart")

    pet, _ = _clone_subject(bids, "01", "fbb")             # florbetaben: not FBP, no equation named
    for path in list(pet.parent.glob("sub-fbb_trc-FBP_pet.*")):
        path.rename(path.with_name(path.name.replace("trc-FBP", "trc-FBB")))
    sidecar = pet.parent / "sub-fbb_trc-FBB_pet.json"
    meta = json.loads(sidecar.read_text())
    meta["TracerName"] = "florbetaben"
    sidecar.write_text(json.dumps(meta))
    bad["fbb"] = ("sub-fbb_trc-FBB_pet.nii.gz", "not florbetapir")

    pet, t1w = _clone_subject(bids, "01", "not1w")         # PET only: method mr skipped
    t1w.unlink()
    t1w.with_name(t1w.name.replace(".nii.gz", ".json")).unlink(missing_ok=True)

    pet, _ = _clone_subject(bids, "02", "static")          # 3D PET: taken as already averaged
    img = nib.load(pet)
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32).mean(axis=3), img.affine, img.header), pet)
    assert list(pd.read_csv(bids / "participants.tsv", sep="\t").columns) == list(header)
    return {"bids": bids, "root": root, "bad": bad}


@pytest.fixture(scope="session")
def participant_run(dataset, capsys_session) -> dict:
    out, work = dataset["root"] / "out", dataset["root"] / "work"
    args = [str(dataset["bids"]), str(out), "participant", "--methods", "mr", "--template-resolution", "3",
            "--nprocs", "2", "-w", str(work)]
    status = main(args)
    captured = capsys_session()
    return {"status": status, "out": out, "work": work, "args": args, "stdout": captured[0], "stderr": captured[1]}


@pytest.fixture(scope="session")
def capsys_session():
    """Session-scoped stand-in for capsys: capture the CLI's stdout/stderr via redirect."""
    import contextlib
    import io

    buffers = {"out": io.StringIO(), "err": io.StringIO()}
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(buffers["out"]))
    stack.enter_context(contextlib.redirect_stderr(buffers["err"]))

    def read():
        stack.close()
        return buffers["out"].getvalue(), buffers["err"].getvalue()

    return read


def test_bad_subjects_fail_alone_with_one_line_each(participant_run, dataset):
    assert participant_run["status"] == 1  # some failed, the others completed
    stderr = participant_run["stderr"]
    assert "Traceback" not in stderr + participant_run["stdout"]
    for label, (filename, reason) in dataset["bad"].items():
        lines = [line for line in stderr.splitlines() if line.startswith(f"ERROR sub-{label}:")]
        assert len(lines) == 1, (label, stderr)
        assert filename in lines[0] and reason in lines[0], lines[0]
        assert not (participant_run["out"] / f"sub-{label}").exists()  # nothing half-written
    assert "WARNING sub-not1w: method 'mr' skipped: no T1w" in stderr
    # The BIDS validator runs first and reports (without stopping the run) the missing timing.
    assert "WARNING BIDS validator: /sub-notiming/pet/sub-notiming_trc-FBP_pet.nii.gz: SIDECAR_KEY_REQUIRED" in stderr


def test_output_tree_is_complete(participant_run):
    out = participant_run["out"]
    for label in [*GOOD, "static"]:
        names = sorted(p.relative_to(out).as_posix() for p in (out / f"sub-{label}").rglob("*") if p.is_file())
        stem = f"sub-{label}/pet/sub-{label}_trc-FBP"
        mni = f"{stem}_space-MNI152NLin2009aSym"
        assert names == sorted([
            f"sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_desc-mr_T1w.json",
            f"sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_desc-mr_T1w.nii.gz",
            f"{stem}_desc-static_pet.json", f"{stem}_desc-static_pet.nii.gz",
            f"{stem}_motion.json", f"{stem}_motion.tsv",
            f"{mni}_desc-mr_pet.json", f"{mni}_desc-mr_pet.nii.gz",
            f"{mni}_desc-mr_suvr.json", f"{mni}_desc-mr_suvr.nii.gz",
            f"{mni}_seg-AAL2_desc-mr_suvr.json", f"{mni}_seg-AAL2_desc-mr_suvr.tsv",
            f"sub-{label}/figures/sub-{label}_desc-mr_suvr.png",
            f"sub-{label}/figures/sub-{label}_desc-regions_suvr.png",
        ]), label
        report = (out / f"sub-{label}.html").read_text()
        assert f'src="sub-{label}/figures/sub-{label}_desc-mr_suvr.png"' in report
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "synthquant"
    assert not list(out.rglob(".*.tmp*"))  # no temporary files left behind


def test_sidecars_record_reference_and_versions(participant_run):
    sidecar = json.loads(next(participant_run["out"].rglob("sub-01_*_seg-AAL2_desc-mr_suvr.json")).read_text())
    assert "cerebellar grey matter" in sidecar["ReferenceRegion"]
    assert "Navitsky" in sidecar["CentiloidEquationSource"]
    assert sidecar["SoftwareVersions"]["antspyx"]
    assert sidecar["Site"] != "n/a"
    static = json.loads(next(participant_run["out"].rglob("sub-static_*_seg-AAL2_desc-mr_suvr.json")).read_text())
    assert any("3D PET taken as already averaged" in note for note in static["Notes"])


def test_motion_is_estimated(participant_run):
    motion = pd.read_csv(participant_run["out"] / "sub-01/pet/sub-01_trc-FBP_motion.tsv", sep="\t")
    assert len(motion) == 4
    # Phantom frames move by <= 1.5 mm / 1.5 deg: estimates in that range, not all zero.
    assert 0 < motion["displacement_mm"].max() < 5


@pytest.fixture(scope="session")
def group_table(participant_run, dataset) -> pd.DataFrame:
    out = participant_run["out"]
    assert main([str(dataset["bids"]), str(out), "group"]) == 0
    return pd.read_csv(out / "group" / "amyloid_suvr.tsv", sep="\t", na_values="n/a", keep_default_na=False)


def test_group_table_has_design_columns(group_table):
    assert list(group_table.columns) == AMYLOID_COLUMNS
    assert sorted(group_table["participant_id"].unique()) == sorted(f"sub-{s}" for s in [*GOOD, "static"])
    assert group_table["site"].nunique() >= 3
    composite = group_table[group_table["region"] == "composite"]
    assert composite["centiloid"].notna().all()
    assert group_table[group_table["region"] != "composite"]["centiloid"].isna().all()


def test_group_report_shows_every_participant(group_table, participant_run):
    page = (participant_run["out"] / "group" / "group.html").read_text()
    assert 'src="figures/group_desc-centiloid_bysite.png"' in page
    assert (participant_run["out"] / "group" / "figures" / "group_desc-centiloid_bysite.png").stat().st_size > 5000
    for participant in group_table["participant_id"].unique():
        assert f"<td>{participant}</td>" in page


def test_suvr_matches_phantom_truth(group_table, dataset):
    summary = compare_to_truth(group_table[group_table["participant_id"].isin([f"sub-{s}" for s in GOOD])],
                               dataset["bids"]).set_index("region")
    # Coarse test phantom (3 mm anatomy, 3 mm template): looser than the 1 mm benchmark goal.
    assert summary.loc["composite", "mae"] < 0.05, summary
    assert abs(summary.loc["composite", "bias"]) < 0.05, summary


def test_cached_rerun_recomputes_nothing(participant_run, dataset):
    # Every image and transform a node computed must be left untouched by the rerun.
    work = participant_run["work"]
    computed = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.suffix in (".gz", ".mat", ".tsv")}
    tables = {p: p.read_bytes() for p in participant_run["out"].rglob("*_suvr.tsv")}
    assert main(participant_run["args"]) == 1  # the same bad subjects fail again
    assert len(computed) > 20
    assert [p for p, t in computed.items() if p.stat().st_mtime_ns != t] == []
    assert all(p.read_bytes() == content for p, content in tables.items())


def test_unknown_or_unsafe_labels_are_usage_errors(dataset, tmp_path, capsys):
    for label, reason in (("../../etc", "not a BIDS label"), ("99", "not in the dataset")):
        status = main([str(dataset["bids"]), str(tmp_path / "out"), "participant", "--participant-label", label])
        err = capsys.readouterr().err
        assert status == 2 and reason in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_other_tracer_runs_when_its_centiloid_equation_is_named(dataset):
    from synthquant.bids import discover

    refused = discover(dataset["bids"], ("fbb",))
    assert "not florbetapir" in refused.refused["sub-fbb"]
    accepted = discover(dataset["bids"], ("fbb",), centiloid_equation="100,-100")
    assert [s.tracer for s in accepted.amyloid] == ["FBB"] and not accepted.refused
