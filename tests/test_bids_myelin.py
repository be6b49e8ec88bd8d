"""Discovery of the myelin arm's inputs (T1w, MTR map or MT pair, DWI, PIB PET, lesion masks).

One phantom cohort (3 subjects, "test" preset) is generated per module; the refusals run on one
copy of it where each bad subject is a clone of a good one with one file broken, so a single
discovery covers them all (the others go on).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthquant.bids import (
    MyelinInputs,
    discover,
    discover_myelin,
    group_of,
    lesion_path,
    participants_table,
)
from synthquant.errors import InputError
from synthquant.phantom import make_myelin_cohort

LESIONS = Path("derivatives") / "lesions"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """sub-01 (HC, MTRmap), sub-02 (MS, MT pair, lesion mask), sub-03 (HC, MTRmap)."""
    bids = make_myelin_cohort(tmp_path_factory.mktemp("myelin") / "bids", n_subjects=3, preset="test", seed=1)
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str).set_index("participant_id")
    assert list(table["group"]) == ["control", "patient", "control"]
    return bids


def _clone(bids: Path, source: str, target: str, *, session: str | None = None, keep_pet: bool = False,
           lesion: bool = True, row: dict | None = None) -> Path:
    """Copy sub-<source> to sub-<target>[/ses-<session>] with files renamed; its lesion mask too."""
    old, new = f"sub-{source}_", f"sub-{target}_" + (f"ses-{session}_" if session else "")
    folder = bids / f"sub-{target}" / (f"ses-{session}" if session else "")
    shutil.copytree(bids / f"sub-{source}", folder, ignore=None if keep_pet else shutil.ignore_patterns("pet"))
    for path in sorted(folder.rglob(f"{old}*")):
        path.rename(path.with_name(path.name.replace(old, new)))
    mask = bids / lesion_path(LESIONS, source, None)
    if lesion and mask.exists():
        target_mask = bids / lesion_path(LESIONS, target, session)
        target_mask.parent.mkdir(parents=True)
        shutil.copyfile(mask, target_mask)
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    values = table[table["participant_id"] == f"sub-{source}"].iloc[0].to_dict() | {"participant_id": f"sub-{target}"}
    table = pd.concat([table, pd.DataFrame([values | (row or {})])], ignore_index=True)
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    return folder


def _numbers(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def _write_numbers(path: Path, values: np.ndarray) -> None:
    np.savetxt(path, values, fmt="%.6f")


@pytest.fixture(scope="module")
def broken(cohort, tmp_path_factory) -> dict:
    """A copy of the cohort with one bad clone per refusal, plus skipped and noted clones."""
    root = tmp_path_factory.mktemp("broken")
    bids = root / "bids"
    shutil.copytree(cohort, bids, ignore=shutil.ignore_patterns("sourcedata"))
    expect = {}   # key -> (file name in the refusal, phrase)

    dwi = _clone(bids, "01", "nobval") / "dwi"
    (dwi / "sub-nobval_dwi.bval").unlink()
    expect["sub-nobval"] = ("sub-nobval_dwi.bval", "b-value file not found")

    dwi = _clone(bids, "01", "nobvec") / "dwi"
    (dwi / "sub-nobvec_dwi.bvec").unlink()
    expect["sub-nobvec"] = ("sub-nobvec_dwi.bvec", "b-vector file not found")

    dwi = _clone(bids, "01", "bvalcount") / "dwi"
    bvals = _numbers(dwi / "sub-bvalcount_dwi.bval")
    _write_numbers(dwi / "sub-bvalcount_dwi.bval", bvals[:, :-1])
    expect["sub-bvalcount"] = ("sub-bvalcount_dwi.bval", f"{bvals.size - 1} b-values for {bvals.size} DWI volumes")

    dwi = _clone(bids, "01", "bveccount") / "dwi"
    bvecs = _numbers(dwi / "sub-bveccount_dwi.bvec")
    _write_numbers(dwi / "sub-bveccount_dwi.bvec", np.hstack([bvecs, bvecs[:, -1:]]))
    expect["sub-bveccount"] = ("sub-bveccount_dwi.bvec", f"{bvecs.shape[1] + 1} b-vectors for {bvecs.shape[1]} DWI")

    dwi = _clone(bids, "01", "fewdirs") / "dwi"
    bvals = _numbers(dwi / "sub-fewdirs_dwi.bval").ravel()
    bvecs = _numbers(dwi / "sub-fewdirs_dwi.bvec")
    weighted = np.flatnonzero(bvals > 50)
    bvecs[:, weighted] = bvecs[:, weighted[np.arange(weighted.size) % 10]]   # 10 directions, repeated
    _write_numbers(dwi / "sub-fewdirs_dwi.bvec", bvecs)
    expect["sub-fewdirs"] = ("sub-fewdirs_dwi.bvec", "too few diffusion directions: 10 distinct")

    dwi = _clone(bids, "01", "elsewhere") / "dwi"   # DWI header claims a head 300 mm away
    image = nib.load(dwi / "sub-elsewhere_dwi.nii.gz")
    affine = image.affine.copy()
    affine[:3, 3] += 300.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header), dwi / "sub-elsewhere_dwi.nii.gz")
    expect["sub-elsewhere"] = ("sub-elsewhere_dwi.nii.gz", "not the same subject and session")

    anat = _clone(bids, "02", "mtononly") / "anat"   # MT pair without its MT-off image
    for path in anat.glob("sub-mtononly_mt-off_MTR.*"):
        path.unlink()
    expect["sub-mtononly"] = ("sub-mtononly_mt-on_MTR.nii.gz", "without its MT-off partner")

    anat = _clone(bids, "01", "badheader") / "anat"   # gzip fine, NIfTI header garbage
    (anat / "sub-badheader_T1w.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 40))
    expect["sub-badheader"] = ("sub-badheader_T1w.nii.gz", "not a readable NIfTI image")

    anat = _clone(bids, "03", "truncated") / "anat"   # MTR map cut in half
    payload = (anat / "sub-truncated_MTRmap.nii.gz").read_bytes()
    (anat / "sub-truncated_MTRmap.nii.gz").write_bytes(payload[: len(payload) // 2])
    expect["sub-truncated"] = ("sub-truncated_MTRmap.nii.gz", "corrupt or truncated image")

    pet = _clone(bids, "03", "pibtiming", keep_pet=True) / "pet"
    sidecar = pet / "sub-pibtiming_trc-PIB_pet.json"
    meta = json.loads(sidecar.read_text())
    meta.pop("FrameDuration")
    sidecar.write_text(json.dumps(meta))
    expect["sub-pibtiming"] = ("sub-pibtiming_trc-PIB_pet.json", "sidecar lacks FrameDuration")

    _clone(bids, "02", "lesionlink", lesion=False)   # lesion mask linked to a file outside the lesion dir
    outside = root / "outside_mask.nii.gz"
    shutil.copyfile(bids / lesion_path(LESIONS, "02", None), outside)
    link = bids / lesion_path(LESIONS, "lesionlink", None)
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    expect["sub-lesionlink"] = ("sub-lesionlink_label-lesion_mask.nii.gz", "resolves outside the lesion directory")

    shutil.rmtree(_clone(bids, "03", "nodwi") / "dwi")
    for path in (_clone(bids, "03", "nomtr") / "anat").glob("*MTRmap*"):
        path.unlink()
    for path in (_clone(bids, "03", "not1w") / "anat").glob("*T1w*"):
        path.unlink()
    # a patient by diagnosis only (group n/a), without a lesion mask: a note, not a refusal
    _clone(bids, "02", "nolesion", lesion=False, row={"group": "n/a"})
    _clone(bids, "02", "withses", session="1")   # sessions, and a session-level lesion mask

    found = discover_myelin(bids)
    return {"bids": bids, "found": found, "expect": expect, "root": root}


def _by_key(found) -> dict[str, MyelinInputs]:
    return {inputs.key: inputs for inputs in found.myelin}


def test_happy_path(cohort):
    found = discover_myelin(cohort)
    assert found.refused == {} and found.skipped == {}
    inputs = _by_key(found)
    assert sorted(inputs) == ["sub-01", "sub-02", "sub-03"]
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype=str).set_index("participant_id")
    for key, item in inputs.items():
        assert item.site == table.loc[key, "site"]
        assert item.group == table.loc[key, "group"]
        assert item.session is None
        assert item.t1w == cohort / key / "anat" / f"{key}_T1w.nii.gz"
        assert item.dwi == cohort / key / "dwi" / f"{key}_dwi.nii.gz"
        assert (item.bval.name, item.bvec.name) == (f"{key}_dwi.bval", f"{key}_dwi.bvec")
        assert item.pib == cohort / key / "pet" / f"{key}_trc-PIB_pet.nii.gz"
        assert item.pib_sidecar == item.pib.with_name(f"{key}_trc-PIB_pet.json")
        assert item.notes == ()
    # an MTR map, or the MT pair where there is none
    assert inputs["sub-01"].mtr.name == "sub-01_MTRmap.nii.gz" and inputs["sub-01"].mt_on is None
    pair = inputs["sub-02"]
    assert pair.mtr is None
    assert (pair.mt_on.name, pair.mt_off.name) == ("sub-02_mt-on_MTR.nii.gz", "sub-02_mt-off_MTR.nii.gz")
    # a lesion mask for the patient, none for the controls
    assert inputs["sub-02"].lesion == cohort / LESIONS / "sub-02" / "anat" / "sub-02_label-lesion_mask.nii.gz"
    assert inputs["sub-01"].lesion is None and inputs["sub-03"].lesion is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs["sub-01"].site = "x"


def test_participant_labels_select(cohort):
    found = discover_myelin(cohort, ("sub-02",))
    assert [inputs.key for inputs in found.myelin] == ["sub-02"]


@pytest.mark.parametrize("label", ["../etc", "01/../../x", "~root", "sub-01/.."])
def test_path_traversal_label_refused(cohort, label):
    with pytest.raises(InputError, match="not a BIDS label"):
        discover_myelin(cohort, (label,))


def test_each_refusal_names_the_file(broken):
    refused = broken["found"].refused
    assert sorted(refused) == sorted(broken["expect"])
    for key, (name, phrase) in broken["expect"].items():
        line = refused[key]
        assert "\n" not in line
        assert name in line and phrase in line, (key, line)


def test_the_others_go_on(broken):
    inputs = _by_key(broken["found"])
    assert {"sub-01", "sub-02", "sub-03", "sub-nolesion", "sub-withses_ses-1"} == set(inputs)


def test_missing_modality_is_skipped(broken):
    skipped = broken["found"].skipped
    assert skipped == {
        "sub-nodwi": "myelin arm skipped: no DWI",
        "sub-nomtr": "myelin arm skipped: no MTR (MTRmap or MT-on/MT-off pair)",
        "sub-not1w": "myelin arm skipped: no T1w",
    }


def test_patient_without_lesion_gets_a_note(broken):
    item = _by_key(broken["found"])["sub-nolesion"]
    assert item.group == "patient"   # from diagnosis MS, the group column being n/a
    assert item.lesion is None
    assert len(item.notes) == 1 and "patient without a lesion mask" in item.notes[0]


def test_sessions(broken):
    item = _by_key(broken["found"])["sub-withses_ses-1"]
    assert (item.subject, item.session) == ("withses", "1")
    assert item.mt_on.name == "sub-withses_ses-1_mt-on_MTR.nii.gz"
    assert item.lesion == (broken["bids"] / LESIONS / "sub-withses" / "ses-1" / "anat"
                           / "sub-withses_ses-1_label-lesion_mask.nii.gz")


def test_lesion_dir_elsewhere(cohort, tmp_path):
    elsewhere = tmp_path / "my_lesions"
    mask = lesion_path(elsewhere, "02", None)
    mask.parent.mkdir(parents=True)
    shutil.copyfile(cohort / lesion_path(LESIONS, "02", None), mask)
    inputs = _by_key(discover_myelin(cohort, ("02", "03"), lesion_dir=elsewhere))
    assert inputs["sub-02"].lesion == mask and inputs["sub-02"].notes == ()
    assert inputs["sub-03"].lesion is None and inputs["sub-03"].notes == ()
    mask.unlink()   # the dataset's own derivatives/lesions is not a fallback
    item = _by_key(discover_myelin(cohort, ("02",), lesion_dir=elsewhere))["sub-02"]
    assert item.lesion is None and "patient without a lesion mask" in item.notes[0]
    with pytest.raises(InputError, match="lesion directory"):
        discover_myelin(cohort, ("01",), lesion_dir=tmp_path / "absent")


def test_amyloid_discovery_leaves_pib_to_the_myelin_arm(cohort):
    assert discover(cohort).amyloid == []


def test_group_of():
    table = pd.DataFrame({"group": ["control", "", "n/a", "Patient", ""],
                          "diagnosis": ["MS", "HC", "MS", "HC", "AD"]},
                         index=["a", "b", "c", "d", "e"])
    assert [group_of(s, table) for s in "abcdez"] == ["control", "control", "patient", "patient", "n/a", "n/a"]
    assert group_of("a", pd.DataFrame()) == "n/a"


def test_inputs_need_an_mtr():
    with pytest.raises(ValueError, match="MTR map or both"):
        MyelinInputs(subject="01", session=None, site="n/a", group="n/a", t1w=Path("t"), mtr=None,
                     mt_on=Path("on"), mt_off=None, dwi=Path("d"), bval=Path("b"), bvec=Path("v"))


def test_participants_listed_twice_refused(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tsite\nsub-01\ta\nsub-01\tb\n")
    with pytest.raises(InputError, match="participants.tsv: participant_id listed more than once: sub-01"):
        participants_table(tmp_path)
