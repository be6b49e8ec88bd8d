"""Amyloid reports: the per-subject page's real-against-pseudo T1w figure and the group page's
agreement of every MR-less method with ``mr``, on synthetic images and tables (no pipeline run)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from synthquant.atlases.regions import SUMMARY_REGIONS
from synthquant.evaluation import compare_to_method, paired_with_method
from synthquant.image import grid_affine, save_image
from synthquant.reports.amyloid import render_amyloid_report, t1w_pair_figure_name
from synthquant.reports.group import write_group_report

# A coarse template-space grid (8 mm over the MNI field of view): figures in a second.
AFFINE = grid_affine((-96.0, -132.0, -78.0), 8.0)
SHAPE = (25, 29, 25)


def _brain(scale: float, shift: int = 0) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2 for n in SHAPE), indexing="ij")
    radius = np.sqrt((x / 9) ** 2 + ((y - shift) / 11) ** 2 + (z / 8) ** 2)
    return np.where(radius < 1, scale * (1.2 - radius), 0.0)  # skull-stripped: zero outside


def _subject_inputs(tmp_path, methods):
    maps, t1ws, tables = [], [], []
    for i, method in enumerate(methods):
        maps.append(str(save_image(_brain(2.0), AFFINE, tmp_path / f"{method}_suvr.nii.gz")))
        # Real T1w in scanner units, pseudo-T1w in network units: the figure normalises each.
        t1ws.append(str(save_image(_brain(900.0 if method == "mr" else 4.0, shift=i), AFFINE,
                                   tmp_path / f"{method}_T1w.nii.gz")))
        table = pd.DataFrame({"region": list(SUMMARY_REGIONS), "suvr": 1.2 + 0.01 * i})
        tables.append(str(tmp_path / f"{method}_suvr.tsv"))
        table.to_csv(tables[-1], sep="\t", index=False)
    return {"subject_key": "sub-01", "site": "a", "tracer": "FBP", "methods": list(methods), "suvr_maps": maps,
            "t1w_templates": t1ws, "suvr_tables": tables, "metadata": [{"Centiloid": 20.0}] * len(methods),
            "notes": []}


def _figure_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_subject_report_shows_real_and_pseudo_t1w(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = render_amyloid_report(**_subject_inputs(tmp_path, ["mr", "synthmr"]), out_dir=out)
    names = [p.rsplit("/", 1)[-1] for p in result["figures"]]
    # The workflow's sink names the figures in this order (synthquant.workflows.amyloid).
    assert names == ["sub-01_desc-mr_suvr.png", "sub-01_desc-synthmr_suvr.png", t1w_pair_figure_name("sub-01"),
                     "sub-01_desc-regions_suvr.png"]
    for path in result["figures"]:
        assert (out / path.rsplit("/", 1)[-1]).stat().st_size > 5000
    page = (out / "sub-01.html").read_text()
    assert _figure_sources(page) == [f"sub-01/figures/{n}" for n in names]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.DOTALL)
    assert len(captions) == len(names) and all(len(c) > 60 for c in captions)
    assert "pseudo-T1w" in captions[2] and "r = " in captions[2] and "No real-against-pseudo" not in page


@pytest.mark.parametrize(("methods", "ran"), [(["mr"], "mr"), (["synthmr", "pettemplate"], "synthmr"),
                                              (["pettemplate"], "neither")])
def test_subject_report_without_both_t1w_says_why(tmp_path, methods, ran):
    out = tmp_path / "out"
    out.mkdir()
    result = render_amyloid_report(**_subject_inputs(tmp_path, methods), out_dir=out)
    assert not any("T1w.png" in p for p in result["figures"]) and not (out / t1w_pair_figure_name("sub-01")).exists()
    page = (out / "sub-01.html").read_text()
    assert "No real-against-pseudo T1w figure" in page and f"this session ran {ran}." in page


def _group_table(methods, n=4):
    rows = []
    for s in range(1, n + 1):
        for k, method in enumerate(methods):
            suvr = 1.1 + 0.15 * s + 0.02 * k * (-1) ** s
            rows += [{"participant_id": f"sub-{s}", "session_id": "n/a", "site": "ab"[s % 2], "tracer": "FBP",
                      "method": method, "region": region, "suvr": suvr + 0.01 * r,
                      "centiloid": 180 * suvr - 190 if region == "composite" else np.nan, "n_voxels": 100}
                     for r, region in enumerate(SUMMARY_REGIONS)]
    return pd.DataFrame(rows)


PARTICIPANTS = pd.DataFrame({"diagnosis": ["NC", "MCI", "AD", "AD"]}, index=["1", "2", "3", "4"])


def test_group_report_compares_each_mr_less_method_with_mr(tmp_path):
    amyloid = _group_table(["mr", "synthmr", "petseg"])
    page = write_group_report(tmp_path, participants=PARTICIPANTS, amyloid=amyloid).read_text()
    figures = [s.removeprefix("figures/") for s in _figure_sources(page)]
    assert figures == ["group_desc-centiloid_bysite.png", "group_desc-petsegVsMr_agreement.png",
                       "group_desc-synthmrVsMr_agreement.png"]
    for name in figures:
        assert (tmp_path / "figures" / name).stat().st_size > 5000
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.DOTALL)
    assert len(captions) == 3 and "diagnosis" in captions[0] and "site" in captions[0]
    pairs = paired_with_method(amyloid, "mr", ("composite",))
    difference = (pairs["suvr"] - pairs["suvr_reference"])[pairs["method"] == "synthmr"]
    bias, sd = difference.mean(), difference.std(ddof=1)
    assert "SUVR: n = 4" in captions[2] and f"bias {bias:+.3f}".replace("-", "&minus;") in captions[2]
    assert f"{bias + 1.96 * sd:+.3f}".replace("-", "&minus;") in captions[2] and "Centiloid: n = 4" in captions[2]
    # The table is compare_to_method's, one row per MR-less method and region.
    table = compare_to_method(amyloid, "mr")
    assert len(table) == 2 * len(SUMMARY_REGIONS)
    for row in table.itertuples():
        assert f"<td>{row.method}</td><td>{row.region.replace('_', ' ')}</td><td>{row.n}</td>" \
               f"<td>{row.bias:.3f}</td>" in page
    assert "<td>n/a</td>" in page and "<td>nan</td>" not in page  # sessions read as NaN show as n/a
    assert "Median Centiloid" in page and "<th>a</th><th>b</th>" in page


def test_group_report_without_mr_says_why(tmp_path):
    page = write_group_report(tmp_path, participants=PARTICIPANTS,
                              amyloid=_group_table(["synthmr", "pettemplate"])).read_text()
    assert _figure_sources(page) == ["figures/group_desc-centiloid_bysite.png"]
    assert "No method <code>mr</code> in this run" in page
    page = write_group_report(tmp_path, participants=None, amyloid=_group_table(["mr"])).read_text()
    assert _figure_sources(page) == ["figures/group_desc-centiloid_bysite.png"]
    assert "Only method <code>mr</code> ran" in page and "<td>n/a</td>" in page  # no participants.tsv: n/a


def test_paired_with_method_is_what_compare_to_method_summarises():
    amyloid = _group_table(["mr", "synthmr"])
    pairs = paired_with_method(amyloid, "mr")
    table = compare_to_method(amyloid, "mr").set_index("region")
    assert len(pairs) == 4 * len(SUMMARY_REGIONS) and set(pairs["method"]) == {"synthmr"}
    composite = pairs[pairs["region"] == "composite"]
    assert np.isclose(table.loc["composite", "bias"], (composite["suvr"] - composite["suvr_reference"]).mean(),
                      atol=1e-4)
    assert composite["centiloid_reference"].notna().all()
