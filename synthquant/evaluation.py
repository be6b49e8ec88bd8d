"""Measured SUVR against a phantom cohort's ground truth (``sourcedata/truth``).

Used by ``--demo`` and by ``benchmarks/``: mean absolute error and bias per method and
region, the summary the issues ask for (Choi & Lee 2018, Table 2, against truth).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synthquant.atlases.regions import SUMMARY_REGIONS


def truth_table(bids_dir: Path) -> pd.DataFrame:
    """Every subject's true regional SUVR/Centiloid: participant_id, region, suvr_true, centiloid_true."""
    frames = []
    for path in sorted((Path(bids_dir) / "sourcedata" / "truth").glob("sub-*/sub-*_trc-FBP_suvr.tsv")):
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        table.insert(0, "participant_id", path.name.split("_")[0])
        frames.append(table.rename(columns={"suvr": "suvr_true", "centiloid": "centiloid_true"}))
    if not frames:
        raise FileNotFoundError(f"no ground truth under {bids_dir}/sourcedata/truth")
    return pd.concat(frames, ignore_index=True)[["participant_id", "region", "suvr_true", "centiloid_true"]]


def paired_with_truth(group_table: Path | pd.DataFrame, bids_dir: Path) -> pd.DataFrame:
    """The group SUVR table joined to the truth on participant and region."""
    measured = group_table if isinstance(group_table, pd.DataFrame) else pd.read_csv(group_table, sep="\t",
                                                                                      na_values="n/a")
    return measured.merge(truth_table(bids_dir), on=["participant_id", "region"], how="inner")


def compare_to_truth(group_table: Path | pd.DataFrame, bids_dir: Path,
                     regions: tuple[str, ...] = SUMMARY_REGIONS) -> pd.DataFrame:
    """MAE, SD of the absolute error, and bias of SUVR per method and region; Centiloid on composite."""
    paired = paired_with_truth(group_table, bids_dir)
    paired = paired[paired["region"].isin(regions)]
    rows = []
    for (method, region), part in paired.groupby(["method", "region"], sort=False):
        error = part["suvr"] - part["suvr_true"]
        row = {"method": method, "region": region, "n": len(part), "mae": np.abs(error).mean(),
               "sd_abs_error": np.abs(error).std(ddof=1) if len(part) > 1 else np.nan, "bias": error.mean(),
               "max_abs_error": np.abs(error).max()}
        if region == "composite":
            cl_error = part["centiloid"] - part["centiloid_true"]
            row.update(centiloid_mae=np.abs(cl_error).mean(), centiloid_bias=cl_error.mean())
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def paired_with_method(group_table: Path | pd.DataFrame, reference: str = "mr",
                       regions: tuple[str, ...] = SUMMARY_REGIONS) -> pd.DataFrame:
    """Every other method's rows joined to ``reference``'s on the same session and region:
    the group table's columns plus ``suvr_reference`` and ``centiloid_reference``."""
    table = group_table if isinstance(group_table, pd.DataFrame) else pd.read_csv(group_table, sep="\t",
                                                                                   na_values="n/a")
    table = table[table["region"].isin(regions)]
    keys = ["participant_id", "session_id", "region"]
    gold = table[table["method"] == reference][keys + ["suvr", "centiloid"]].rename(
        columns={"suvr": "suvr_reference", "centiloid": "centiloid_reference"})
    return table[table["method"] != reference].merge(gold, on=keys, how="inner")


def compare_to_method(group_table: Path | pd.DataFrame, reference: str = "mr",
                      regions: tuple[str, ...] = SUMMARY_REGIONS) -> pd.DataFrame:
    """MAE, SD of the absolute difference and bias of each method's SUVR against ``reference``
    on the same sessions (Choi & Lee 2018, Table 2: MR-less methods against the MR-based one)."""
    paired = paired_with_method(group_table, reference, regions)
    rows = []
    for (method, region), part in paired.groupby(["method", "region"], sort=False):
        difference = part["suvr"] - part["suvr_reference"]
        rows.append({"method": method, "region": region, "n": len(part), "mae": np.abs(difference).mean(),
                     "sd_abs_error": np.abs(difference).std(ddof=1) if len(part) > 1 else np.nan,
                     "bias": difference.mean(), "max_abs_error": np.abs(difference).max()})
    return pd.DataFrame(rows, columns=["method", "region", "n", "mae", "sd_abs_error", "bias",
                                       "max_abs_error"]).round(4)


def compare_myelin_sources(myelin_table: Path | pd.DataFrame) -> pd.DataFrame:
    """Predicted (``synth``) against true (``pib``) DVR per ROI, the analogue of Wei 2019 Table 2.

    Per ROI and group (WM of controls, NAWM and lesions of patients): the discrepancy
    |mean true - mean predicted| (mean and SD over subjects, Wei §3.2), the bias, and for
    lesions the demyelinated percentage from each source.
    """
    table = myelin_table if isinstance(myelin_table, pd.DataFrame) else pd.read_csv(
        myelin_table, sep="\t", na_values="n/a", keep_default_na=False)
    keys = ["participant_id", "session_id", "group", "roi"]
    pib = table[table["source"] == "pib"][keys + ["mean_dvr", "demyelinated_pct"]]
    paired = table[table["source"] == "synth"].merge(pib, on=keys, suffixes=("", "_pib"))
    paired = paired[paired["n_voxels"] > 0]
    wanted = {("control", "wm"), ("patient", "nawm"), ("patient", "lesion")}
    rows = []
    for (group, roi), part in paired.groupby(["group", "roi"], sort=False):
        if (group, roi) not in wanted:
            continue
        difference = part["mean_dvr"] - part["mean_dvr_pib"]
        rows.append({"group": group, "roi": roi, "n": len(part), "discrepancy": difference.abs().mean(),
                     "sd": difference.abs().std(ddof=1) if len(part) > 1 else np.nan, "bias": difference.mean(),
                     "demyelinated_pct_synth": part["demyelinated_pct"].mean() if roi == "lesion" else np.nan,
                     "demyelinated_pct_pib": part["demyelinated_pct_pib"].mean() if roi == "lesion" else np.nan})
    return pd.DataFrame(rows, columns=["group", "roi", "n", "discrepancy", "sd", "bias", "demyelinated_pct_synth",
                                       "demyelinated_pct_pib"]).round(4)
