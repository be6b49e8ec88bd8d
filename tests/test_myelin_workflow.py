"""The myelin arm end to end, as a user runs it: participant, group, participant, group.

One small phantom cohort (test preset): sub-01 MS (its lesion mask moved to another grid),
sub-02 HC (MT pair), sub-03 MS (an empty lesion mask), sub-04 and sub-05 HC, plus sub-06
(a control whose .bval is missing: refused) and sub-07 (no DWI: skipped).
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthquant.cli import main
from synthquant.myelin import MYELIN_COLUMNS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from synthquant.image import resample_to_grid
    from synthquant.phantom import make_myelin_cohort

    root = tmp_path_factory.mktemp("myelinwf")
    bids = make_myelin_cohort(root / "bids", n_subjects=5, preset="test", seed=0)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(participants["diagnosis"]) == ["MS", "HC", "MS", "HC", "HC"]
    lesions = bids / "derivatives" / "lesions"
    # sub-01: lesion mask on a coarser grid than the T1w (resampled nearest-neighbour, noted).
    mask_file = lesions / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz"
    mask = nib.load(str(mask_file))
    coarse = mask.affine.copy()
    coarse[:3, :3] *= 1.5
    shape = tuple(int(np.ceil(s / 1.5)) for s in mask.shape)
    data = resample_to_grid(np.asarray(mask.dataobj).astype(np.float32), mask.affine, shape, coarse, order=0)
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), coarse), str(mask_file))
    # sub-03: an empty lesion mask (a patient without visible lesions).
    empty = lesions / "sub-03" / "anat" / "sub-03_label-lesion_mask.nii.gz"
    image = nib.load(str(empty))
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), str(empty))
    # sub-06: a copy of sub-04 without its .bval; sub-07: a copy without DWI.
    for new, broken in (("06", "bval"), ("07", "dwi")):
        target = bids / f"sub-{new}"
        shutil.copytree(bids / "sub-04", target)
        for path in sorted(target.rglob("*")):
            if path.is_file():
                path.rename(path.with_name(path.name.replace("sub-04", f"sub-{new}")))
        if broken == "bval":
            (target / "dwi" / f"sub-{new}_dwi.bval").unlink()
        else:
            shutil.rmtree(target / "dwi")
        row = participants[participants["participant_id"] == "sub-04"].assign(participant_id=f"sub-{new}")
        participants = pd.concat([participants, row])
    participants.to_csv(bids / "participants.tsv", sep="\t", index=False)

    out, work = root / "out", root / "work"
    args = [str(bids), str(out), "participant", "--pipeline", "myelin", "--nprocs", "2", "--template-resolution",
            "3", "--skip-bids-validation", "-w", str(work)]
    first = main(args)
    group_first = main([str(bids), str(out), "group"])
    table_first = pd.read_csv(out / "group" / "myelin_stats.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    second = main(args)
    group_second = main([str(bids), str(out), "group"])
    return {"bids": bids, "out": out, "status": (first, group_first, second, group_second),
            "table_first": table_first,
            "table": pd.read_csv(out / "group" / "myelin_stats.tsv", sep="\t", na_values="n/a",
                                 keep_default_na=False)}


def test_exit_status_and_bad_subjects(run, capsys):
    first, group_first, second, group_second = run["status"]
    # sub-06 is refused (missing .bval): 1; the group level succeeds.
    assert (first, group_first, second, group_second) == (1, 0, 1, 0)
    assert not (run["out"] / "sub-06").exists() and not (run["out"] / "sub-07").exists()


def test_group_table_and_norms(run):
    table = run["table"]
    assert list(table.columns) == MYELIN_COLUMNS
    assert sorted(table["participant_id"].unique()) == ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]
    assert len(table) == 5 * 2 * 3  # subjects x sources (synth, pib) x ROIs
    assert set(table["source"]) == {"synth", "pib"} and set(table["roi"]) == {"lesion", "nawm", "wm"}
    for source in ("pib", "synth"):
        description = json.loads((run["out"] / "group" / "hc_wm_norm" / f"hc_wm_norm_src-{source}.json").read_text())
        assert description["Subjects"] == ["sub-02", "sub-04", "sub-05"]
    # Before the norm existed, no percentage; after, on the patients' lesion rows only.
    assert run["table_first"]["demyelinated_pct"].isna().all()
    lesion = table[table["roi"] == "lesion"].set_index(["participant_id", "source"])["demyelinated_pct"]
    for source in ("pib", "synth"):
        assert 0.0 <= lesion[("sub-01", source)] <= 100.0
        assert lesion[("sub-03", source)] == 0.0  # empty mask: 0 %, not a crash
        assert np.isnan(lesion[("sub-02", source)])
    assert table[table["roi"] != "lesion"]["demyelinated_pct"].isna().all()
    wm = table[(table["roi"] == "wm") & (table["source"] == "pib")]
    assert wm["mean_dvr"].between(1.1, 1.9).all()  # PIB DVR of WM (phantom pure WM: 1.72)


def test_outputs_and_sidecar_notes(run):
    out = run["out"]
    for subject in ("01", "03"):
        for space in ("", "_space-MNI152NLin2009aSym"):
            for source in ("synth", "pib"):
                assert (out / f"sub-{subject}" / "anat" /
                        f"sub-{subject}{space}_label-demyelinated_desc-{source}_mask.nii.gz").is_file()
    assert not list((out / "sub-02").rglob("*demyelinated*"))
    notes = json.loads((out / "sub-01" / "pet" / "sub-01_trc-PIB_desc-synth_dvr.json").read_text())["Notes"]
    assert any("resampled (nearest-neighbour)" in note for note in notes)
    empty = json.loads((out / "sub-03" / "anat" / "sub-03_label-demyelinated_desc-pib_mask.json").read_text())
    assert any("empty lesion mask" in note for note in empty["Notes"])
    dvr = nib.load(str(out / "sub-04" / "pet" / "sub-04_trc-PIB_desc-synth_dvr.nii.gz"))
    assert np.allclose(dvr.header.get_zooms()[:3], 2.0) and np.isfinite(dvr.get_fdata()).all()
    sidecar = json.loads((out / "sub-04" / "pet" / "sub-04_trc-PIB_desc-synth_dvr.json").read_text())
    assert sidecar["ModelSHA256"] and sidecar["Source"] == "synth"
    assert not list(out.rglob("*.tmp*"))
