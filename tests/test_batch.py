"""``--batch-by site``: the participant level as a pydra workflow over sites and subjects.

One small phantom cohort on two sites goes through the CLI four times, each run a fixture
that builds on the one before (the expensive part is the first):

1. three subjects, one of them unable to write its derivatives (its output folder is taken
   by a file, so it fails inside its Nipype graph), plus a subject with a truncated PET
   (refused at discovery): both are reported in one line each, the others complete, exit 1;
2. the same command again: only the failed subject runs again;
3. with the obstacle removed: every subject succeeds;
4. the same command again: nothing is recomputed, by pydra or by Nipype.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest

from synthquant.cli import main
from synthquant.group import AMYLOID_COLUMNS
from synthquant.phantom import make_amyloid_cohort
from synthquant.workflows.batch import PYDRA_CACHE, config_from_json, site_label, subject_resources


def _run(cohort: dict, *extra: str) -> dict:
    """One batch run through the CLI; the main process's stdout and stderr captured.

    (The subject tasks run in other processes and print progress lines straight to the
    terminal; the report lines checked here are the main process's.)
    """
    args = [str(cohort["bids"]), str(cohort["out"]), "participant", "--batch-by", "site", "--methods", "mr",
            "--template-resolution", "3", "--nprocs", "2", "-w", str(cohort["work"]), "--skip-bids-validation",
            *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _files(root: Path) -> dict[Path, int]:
    """Every file's mtime, but the run lock's (each run writes its holder into it)."""
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")
            if path.is_file() and path.name != ".synthquant.lock"}


def _cached_line(stdout: str) -> set[str]:
    """Subjects the main process reports as taken from pydra's cache."""
    lines = [line for line in stdout.splitlines() if "already done (pydra cache):" in line]
    return set(lines[0].split("):", 1)[1].replace(",", " ").split()) if lines else set()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("batch")
    bids = make_amyloid_cohort(root / "bids", n_subjects=3, preset="test", seed=11,
                               sites=["northfield", "lakeside"])
    roster = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    by_site = roster.groupby("site")["participant_id"].apply(list).to_dict()
    big_site = max(by_site, key=lambda site: len(by_site[site]))
    other_site = next(site for site in by_site if site != big_site)
    blocked = by_site[big_site][-1]                     # fails inside its Nipype graph
    good = sorted(set(roster["participant_id"]) - {blocked})

    # sub-04: a clone of a good subject whose PET gzip stream is cut in half (refused up front).
    source = good[0]
    shutil.copytree(bids / source, bids / "sub-04")
    for path in sorted((bids / "sub-04").rglob(f"{source}_*")):
        path.rename(path.with_name(path.name.replace(f"{source}_", "sub-04_")))
    pet = bids / "sub-04" / "pet" / "sub-04_trc-FBP_pet.nii.gz"
    pet.write_bytes(pet.read_bytes()[: len(pet.read_bytes()) // 2])
    with open(bids / "participants.tsv", "a") as table:
        table.write(f"sub-04\t{other_site}\tNC\tcontrol\t70\tF\n")

    out = root / "out"
    out.mkdir()
    (out / blocked).write_text("a file where the subject's derivatives folder goes\n")
    return {"bids": bids, "out": out, "work": root / "work", "blocked": blocked, "good": good,
            "sites": {big_site, other_site}}


@pytest.fixture(scope="module")
def first_run(cohort) -> dict:
    return _run(cohort)


@pytest.fixture(scope="module")
def second_run(cohort, first_run) -> dict:
    cache = cohort["work"] / PYDRA_CACHE
    before = {"pydra": _files(cache), "nipype": _files(cohort["work"] / "synthquant_wf"),
              "dirs": {p.name for p in cache.iterdir() if p.name.startswith("python-")}}
    run = _run(cohort)
    run["before"] = before
    run["after_dirs"] = {p.name for p in cache.iterdir() if p.name.startswith("python-")}
    return run


@pytest.fixture(scope="module")
def fixed_runs(cohort, second_run) -> dict:
    (cohort["out"] / cohort["blocked"]).unlink()
    labels = ["--participant-label", *cohort["good"], cohort["blocked"]]
    fixed = _run(cohort, *labels)
    before = {"work": _files(cohort["work"]), "out": _files(cohort["out"])}
    again = _run(cohort, *labels)
    return {"fixed": fixed, "again": again, "before": before}


def test_failed_subjects_are_reported_in_one_line_and_the_others_complete(cohort, first_run):
    assert first_run["status"] == 1
    errors = [line for line in first_run["stderr"].splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2, first_run["stderr"]
    truncated = [line for line in errors if line.startswith("ERROR sub-04:")]
    assert len(truncated) == 1 and "sub-04_trc-FBP_pet.nii.gz" in truncated[0] and "truncated" in truncated[0]
    blocked = [line for line in errors if line.startswith(f"ERROR {cohort['blocked']}:")]
    assert len(blocked) == 1 and "failed in ds_" in blocked[0], errors
    assert "Traceback" not in first_run["stderr"]
    for subject in cohort["good"]:
        suvr_table = f"{subject}_trc-FBP_space-MNI152NLin2009aSym_seg-AAL2_desc-mr_suvr.tsv"
        assert (cohort["out"] / subject / "pet" / suvr_table).is_file()
        assert (cohort["out"] / f"{subject}.html").is_file()


def test_site_tables_hold_the_group_rows_of_their_site(cohort, first_run):
    group = pd.read_csv(cohort["out"] / "group" / "amyloid_suvr.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(group.columns) == AMYLOID_COLUMNS
    assert set(group["participant_id"]) == set(cohort["good"])
    assert set(group["site"]) <= cohort["sites"]
    for site in cohort["sites"]:
        path = cohort["out"] / "group" / f"site-{site_label(site)}_amyloid_suvr.tsv"
        per_site = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        expected = group[group["site"] == site].reset_index(drop=True)
        assert len(per_site) > 0
        pd.testing.assert_frame_equal(per_site, expected)


def test_rerun_retries_only_the_failed_subject(cohort, second_run):
    assert second_run["status"] == 1
    assert _cached_line(second_run["stdout"]) == set(cohort["good"])
    assert [line for line in second_run["stderr"].splitlines() if line.startswith(f"ERROR {cohort['blocked']}:")]
    # The good subjects' pydra task results and every Nipype file computed are untouched; the
    # failed subject's task had been forgotten and ran again (a new task directory).
    before = second_run["before"]
    assert [p for p, t in before["pydra"].items() if p.exists() and p.stat().st_mtime_ns != t] == []
    good_graphs = {subject.replace("-", "_") + "_wf" for subject in cohort["good"]}
    computed = {p: t for p, t in before["nipype"].items() if good_graphs & set(p.parts)}
    assert len(computed) > 20
    assert [p for p, t in computed.items() if p.stat().st_mtime_ns != t] == []
    assert before["dirs"] <= second_run["after_dirs"] and second_run["after_dirs"] - before["dirs"]


def test_fixed_subject_completes_and_a_rerun_recomputes_nothing(cohort, fixed_runs):
    fixed, again = fixed_runs["fixed"], fixed_runs["again"]
    assert fixed["status"] == 0, fixed["stderr"]
    assert _cached_line(fixed["stdout"]) == set(cohort["good"])
    assert again["status"] == 0
    assert _cached_line(again["stdout"]) == set(cohort["good"]) | {cohort["blocked"]}
    assert "group level: up to date (pydra cache)" in again["stdout"]
    # Nothing under the work dir (pydra's and Nipype's caches) changed; no derivative was rewritten
    # (each invocation writes dataset_description.json and logs/config.json, as a participant run does).
    before = fixed_runs["before"]
    assert _files(cohort["work"]) == before["work"]
    changed = [p for p, t in before["out"].items()
               if p.stat().st_mtime_ns != t and p.name not in ("config.json", "dataset_description.json")]
    assert changed == []
    site_tables = sorted((cohort["out"] / "group").glob("site-*_amyloid_suvr.tsv"))
    assert len(site_tables) == 2
    rows = pd.concat([pd.read_csv(path, sep="\t", dtype=str) for path in site_tables])
    assert set(rows["participant_id"]) == set(cohort["good"]) | {cohort["blocked"]}


def test_resources_are_shared_out_and_the_config_round_trips(cohort, first_run):
    config = config_from_json((cohort["out"] / "logs" / "config.json").read_text())
    assert config.batch_by == "site" and config.bids_dir == cohort["bids"].resolve()
    assert subject_resources(config, 3) == (2, 1, 1)      # 2 subjects at once, 1 process each
    assert subject_resources(config, 1) == (1, 2, 2)
