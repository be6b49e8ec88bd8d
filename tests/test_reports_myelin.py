"""Myelin reports: the per-session page (reports/myelin.py, MyelinReport, its sink in
init_myelin_wf) and the myelin section of the group page. Small synthetic images and tables
made here; no pipeline run."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthquant.bids import write_report_file
from synthquant.myelin import myelin_table
from synthquant.quantify import format_table
from synthquant.reports.group import myelin_pairs, write_group_report
from synthquant.reports.myelin import (
    cut_point,
    myelin_figure_names,
    render_myelin_report,
)

SHAPE = (24, 28, 22)
# The myelin grid takes the MTR's axes: LPS here, so the report has to reorient.
AFFINE = np.array([[-2.0, 0, 0, 24], [0, -2.0, 0, 28], [0, 0, 2.0, -20], [0, 0, 0, 1]])
LESION_VOXEL = (8, 12, 13)


def _save(data, path: Path) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), AFFINE), str(path))
    return str(path)


def _rows(dvr, lesion, nawm, wm, pct):
    from synthquant.myelin import myelin_roi_stats

    return myelin_roi_stats(dvr, lesion, nawm, wm, demyelinated_pct=pct)


def make_session(folder: Path, *, patient: bool = True, pib: bool = True, norm: tuple[str, ...] = ("synth", "pib"),
                 key: str = "sub-01") -> dict:
    """One session's grid files and table, as the myelin workflow hands them to the report."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.indices(SHAPE).astype(np.float32)
    centre = (np.array(SHAPE) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / (np.array(SHAPE)[:, None, None, None] / 2.3)) ** 2).sum(axis=0))
    brain, wm = radius < 1.0, radius < 0.65
    lesion = np.zeros(SHAPE, bool)
    if patient:
        i, j, k = LESION_VOXEL
        lesion[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = True
        lesion[15:17, 16:18, 6:8] = True  # a second, smaller lesion
        lesion &= wm
    nawm = wm & ~lesion
    mtr = np.where(brain, 30 + 10 * wm - 12 * lesion, 0) + rng.normal(0, 1, SHAPE) * brain
    fa = np.where(brain, 0.2 + 0.4 * wm, 0)
    rd = np.where(brain, 0.0009 - 0.0003 * wm + 0.0004 * lesion, 0)
    ad = np.where(brain, 0.0014 + 0.0002 * wm, 0)
    synth = np.where(brain, 1.0 + 0.4 * wm - 0.3 * lesion, 0) + rng.normal(0, 0.02, SHAPE) * brain
    true = np.where(brain, 1.05 + 0.45 * wm - 0.35 * lesion, 0)
    demyelinated = lesion.copy()
    demyelinated[LESION_VOXEL[0] + 1] = False
    paths = {
        "maps": {"MTR": _save(mtr, folder / "mtr.nii.gz"), "FA": _save(fa, folder / "fa.nii.gz"),
                 "RD": _save(rd, folder / "rd.nii.gz"), "AD": _save(ad, folder / "ad.nii.gz")},
        "masks": {"brain": _save(brain, folder / "brain.nii.gz"), "lesion": _save(lesion, folder / "lesion.nii.gz")},
        "dvr": {"synth": _save(synth, folder / "synth.nii.gz")},
        "saliency": _save(rng.gamma(2.0, 1.0, SHAPE) * brain, folder / "saliency.nii.gz"),
        "demyelinated": {},
    }
    pct = {}
    sources = {"synth": synth}
    if pib:
        paths["dvr"]["pib"] = _save(true, folder / "pib.nii.gz")
        sources["pib"] = true
    if patient:
        for source in norm:
            if source in sources:
                mask = demyelinated if source == "synth" else (demyelinated | lesion) & (np.indices(SHAPE)[2] > 12)
                paths["demyelinated"][source] = _save(mask, folder / f"demyelinated_{source}.nii.gz")
                pct[source] = 100.0 * mask.sum() / lesion.sum()
    identity = {"participant_id": key.split("_")[0], "session_id": "n/a", "site": "lakeside",
                "group": "patient" if patient else "control"}
    table = myelin_table([({**identity, "source": s}, _rows(d, lesion, nawm, wm, pct.get(s) if patient else None))
                          for s, d in sources.items()])
    table_file = folder / "myelinstats.tsv"
    table_file.write_text(format_table(table))
    paths["table"] = str(table_file)
    return paths


def render(folder: Path, *, key="sub-01", group="patient", **session) -> tuple[dict, str]:
    files = make_session(folder / "in", patient=group == "patient", key=key, **session)
    result = render_myelin_report(subject_key=key, site="lakeside", group=group, notes=["a note <b>"],
                                  provenance={"ModelFile": "/models/dvr_from_mri.safetensors",
                                              "ModelWarning": "demo weights"}, k=2.0, out_dir=folder / "report",
                                  **files)
    return result, Path(result["html"]).read_text()


def _publish(result: dict, key: str, output_dir: Path) -> Path:
    """What ds_myelin_report does: the page at the root, the figures under sub-X/figures/."""
    subject = key.split("_")[0]
    page = write_report_file(Path(result["html"]), output_dir, f"{key}_myelin.html")
    for figure in result["figures"]:
        write_report_file(Path(figure), output_dir, f"{subject}/figures/{Path(figure).name}")
    return page


def _figures_and_captions(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<img src="([^"]+)"[^>]*><figcaption>(.*?)</figcaption>', page, flags=re.DOTALL)


def test_patient_with_pib_and_norm(tmp_path):
    result, page = render(tmp_path)
    names = myelin_figure_names("sub-01", demyelination=True)
    assert [Path(f).name for f in result["figures"]] == names
    assert len(names) == 5
    for figure in result["figures"]:
        assert Path(figure).stat().st_size > 10_000  # a real picture, not an empty canvas
    published = _publish(result, "sub-01", tmp_path / "out")
    shown = _figures_and_captions(published.read_text())
    assert [Path(src).name for src, _ in shown] == names
    for src, caption in shown:
        assert (published.parent / src).is_file(), src
        assert src.startswith("sub-01/figures/")
        assert len(caption) > 80
    captions = {Path(src).name: caption for src, caption in shown}
    assert "percent units" in captions[names[0]] and "mm<sup>2</sup>/s" in captions[names[0]]
    assert "unitless" in captions[names[1]] and "synth &minus; pib" in captions[names[1]]
    assert "share of the lesion voxels: predicted (synth) 72.7 %" in captions[names[2]]
    assert "2 SD" in captions[names[2]]
    assert "arbitrary units" in captions[names[3]]
    assert "unitless" in captions[names[4]]
    # The ROI table, the notes (escaped) and the provenance.
    assert "<th>synth &minus; pib</th>" in page and "demyelinated %, pib" in page
    assert "a note &lt;b&gt;" in page and "/models/dvr_from_mri.safetensors" in page
    assert 'class="warning">demo weights' in page
    assert "not assessed" not in page and "No demyelinated-voxel map yet" not in page


def test_control_without_lesion(tmp_path):
    result, page = render(tmp_path, key="sub-02", group="control")
    names = myelin_figure_names("sub-02", demyelination=False)
    assert [Path(f).name for f in result["figures"]] == names
    assert not any("demyelinated" in n for n in names)
    assert "not assessed for a control" in page
    assert "brain&#x27;s centre" in page or "brain's centre" in page
    assert "No lesion voxels" in page
    lesion_row = re.search(r"<tr><td>lesion</td><td>0</td>(.*?)</tr>", page).group(1)
    assert set(re.findall(r"<td>(.*?)</td>", lesion_row)) == {"n/a"}
    _publish(result, "sub-02", tmp_path / "out")
    for src, _ in _figures_and_captions(page):
        assert (tmp_path / "out" / src).is_file()


def test_patient_without_pib_or_norm(tmp_path):
    result, page = render(tmp_path, pib=False, norm=())
    assert [Path(f).name for f in result["figures"]] == myelin_figure_names("sub-01", demyelination=False)
    assert "No demyelinated-voxel map yet" in page and "--hc-norm DIR" in page
    assert "no dynamic PIB PET" in page
    assert "pib" not in re.search(r"<table>.*?</table>", page, flags=re.DOTALL).group(0)


def test_norm_for_one_source_only(tmp_path):
    result, page = render(tmp_path, norm=("synth",))
    assert len(result["figures"]) == 5
    assert "No healthy-control norm for source pib" in page


def test_patient_with_an_empty_lesion_mask(tmp_path):
    files = make_session(tmp_path / "in")
    files["masks"]["lesion"] = _save(np.zeros(SHAPE), tmp_path / "in" / "no_lesion.nii.gz")
    files["demyelinated"] = {s: _save(np.zeros(SHAPE), tmp_path / "in" / f"none_{s}.nii.gz") for s in ("synth", "pib")}
    result = render_myelin_report(subject_key="sub-03", site="a", group="patient", out_dir=tmp_path / "report", k=2.0,
                                  **files)
    assert len(result["figures"]) == 5
    page = Path(result["html"]).read_text()
    assert "The lesion mask is empty, so no voxel is classified" in page and "No lesion voxels" in page


def test_cut_point_goes_through_the_largest_lesion(tmp_path):
    files = make_session(tmp_path)
    point, what = cut_point(files["masks"]["lesion"], files["masks"]["brain"])
    assert "lesion" in what
    assert np.allclose(point, (AFFINE @ (*LESION_VOXEL, 1))[:3])
    _, what = cut_point(_save(np.zeros(SHAPE), tmp_path / "empty.nii.gz"), files["masks"]["brain"])
    assert what.startswith("the brain")


def test_report_interface_and_sink_specs(tmp_path):
    """MyelinReport renders the page from its traits; init_myelin_wf's sink names the same files."""
    from synthquant.bids import MyelinInputs
    from synthquant.interfaces.myelin import MyelinReport
    from synthquant.models import ModelChoice
    from synthquant.workflows.myelin import init_myelin_wf

    files = make_session(tmp_path / "in")
    node = MyelinReport(subject_key="sub-01", site="lakeside", group="patient", mtr=files["maps"]["MTR"],
                        fa=files["maps"]["FA"], rd=files["maps"]["RD"], ad=files["maps"]["AD"],
                        brain=files["masks"]["brain"], lesion=files["masks"]["lesion"],
                        synth_dvr=files["dvr"]["synth"], pib_dvr=files["dvr"]["pib"], saliency=files["saliency"],
                        demyelinated_synth=files["demyelinated"]["synth"], table=files["table"], k=2.0)
    (tmp_path / "work").mkdir()
    outputs = node.run(cwd=str(tmp_path / "work")).outputs  # an interface writes into its cwd
    assert Path(outputs.html).parent == tmp_path / "work"
    assert Path(outputs.html).name == "sub-01_myelin.html"
    assert [Path(f).name for f in outputs.figures] == myelin_figure_names("sub-01", demyelination=True)

    raw = {name: tmp_path / f"{name}.nii.gz" for name in ("t1w", "mtr", "dwi", "bval", "bvec", "pib", "json", "les")}
    for path in raw.values():
        path.write_text("")
    model = ModelChoice(stem=tmp_path / "dvr_from_mri", sha256="0" * 64, synthetic_only=True, card={})
    for lesion, norms in ((raw["les"], {"synth": "norm.json"}), (None, {"synth": "norm.json"})):
        inputs = MyelinInputs(subject="01", session="2", site="lakeside", group="patient" if lesion else "control",
                              t1w=raw["t1w"], mtr=raw["mtr"], mt_on=None, mt_off=None, dwi=raw["dwi"],
                              bval=raw["bval"], bvec=raw["bvec"], pib=raw["pib"], pib_sidecar=raw["json"],
                              lesion=lesion)
        workflow = init_myelin_wf(inputs=inputs, output_dir=str(tmp_path / "out"), dvr_model=model, hc_norms=norms)
        specs = [spec["path"] for spec in workflow.get_node("ds_myelin_report").inputs.specs]
        figures = myelin_figure_names("sub-01_ses-2", demyelination=lesion is not None)
        assert specs == ["sub-01_ses-2_myelin.html"] + [f"sub-01/figures/{name}" for name in figures]


# ------------------------------------------------------------------------------------- group

def _group_table(tmp_path: Path, *, pib: bool = True, pct: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    records = []
    for n in range(1, 7):
        group = "patient" if n % 2 else "control"
        for source in ("synth", "pib") if pib else ("synth",):
            offset = -0.1 if source == "synth" else 0.0
            for roi, base in (("lesion", 1.1), ("nawm", 1.4), ("wm", 1.38)):
                empty = group == "control" and roi == "lesion"
                records.append({"participant_id": f"sub-{n:02d}", "session_id": "n/a", "site": "lakeside",
                                "group": group, "source": source, "roi": roi,
                                "mean_dvr": np.nan if empty else base + offset + rng.normal(0, 0.03),
                                "n_voxels": 0 if empty else 500,
                                "demyelinated_pct": rng.uniform(10, 60) if pct and roi == "lesion" and not empty
                                else np.nan})
    return pd.DataFrame(records)


def _group_figures(page: str) -> list[str]:
    return re.findall(r'<img src="figures/([^"]+)"', page)


def test_group_myelin_only(tmp_path):
    from synthquant.myelin import write_myelin_table

    write_myelin_table(_group_table(tmp_path), tmp_path)  # read back from group/myelin_stats.tsv
    page = write_group_report(tmp_path).read_text()
    assert "Amyloid PET" not in page and "Myelin" in page
    assert _group_figures(page) == ["group_desc-roi_dvr.png", "group_desc-blandaltman_dvr.png",
                                    "group_desc-demyelinated_pct.png"]
    for name in _group_figures(page):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    assert "limits of agreement" in page and "unitless" in page
    for n in range(1, 7):
        assert f"<td>sub-{n:02d}</td>" in page


def test_group_myelin_without_pib_or_norm(tmp_path):
    page = write_group_report(tmp_path, myelin=_group_table(tmp_path, pib=False, pct=False)).read_text()
    assert _group_figures(page) == ["group_desc-roi_dvr.png"]
    assert "no Bland-Altman" in page and "No demyelinated percentages yet" in page and "this run has 3" in page
    # Once the group level has built a norm, the page says so and what to run next.
    (tmp_path / "hc_wm_norm").mkdir()
    (tmp_path / "hc_wm_norm" / "hc_wm_norm_src-synth.json").write_text('{"NControls": 3}')
    page = write_group_report(tmp_path, myelin=_group_table(tmp_path, pib=False, pct=False)).read_text()
    assert "hc_wm_norm_src-synth.json</code> (3 controls)" in page and "The norm now exists" in page


def test_group_amyloid_and_myelin(tmp_path):
    from synthquant.group import AMYLOID_COLUMNS

    amyloid = pd.DataFrame([{"participant_id": f"sub-{n}", "session_id": "n/a", "site": "a", "tracer": "FBP",
                             "method": "mr", "region": "composite", "suvr": 1.1 + 0.1 * n,
                             "centiloid": 10.0 * n, "n_voxels": 100} for n in range(1, 4)], columns=AMYLOID_COLUMNS)
    participants = pd.DataFrame({"diagnosis": ["NC", "AD", "MCI"]}, index=["1", "2", "3"])
    page = write_group_report(tmp_path, participants=participants, amyloid=amyloid).read_text()
    assert _group_figures(page) == ["group_desc-centiloid_bysite.png"] and "Myelin" not in page
    page = write_group_report(tmp_path, participants=participants, amyloid=amyloid,
                              myelin=_group_table(tmp_path)).read_text()
    assert _group_figures(page)[0] == "group_desc-centiloid_bysite.png" and len(_group_figures(page)) == 4
    assert "<td>AD</td>" in page
    with pytest.raises(ValueError, match="no group table"):
        write_group_report(tmp_path / "empty", amyloid=amyloid.iloc[:0], myelin=pd.DataFrame())


def test_bland_altman_pairs_use_one_roi_per_group(tmp_path):
    pairs = myelin_pairs(_group_table(tmp_path))
    assert set(zip(pairs["group"], pairs["roi"])) == {("control", "wm"), ("patient", "nawm"), ("patient", "lesion")}
    assert len(pairs) == 3 + 3 + 3
    assert np.allclose(pairs["difference"], pairs["synth"] - pairs["pib"])
