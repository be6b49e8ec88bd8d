"""Group HTML report: the composite SUVR and Centiloid of every subject, by site and diagnosis."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from synthquant.image import atomic_output, atomic_write_text


def _centiloid_figure(composite: pd.DataFrame, out_png: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sites = sorted(composite["site"].unique())
    diagnoses = sorted(composite["diagnosis"].unique())
    colours = dict(zip(diagnoses, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, site in enumerate(sites):
        for j, diagnosis in enumerate(diagnoses):
            part = composite[(composite["site"] == site) & (composite["diagnosis"] == diagnosis)]
            x = i + (j - (len(diagnoses) - 1) / 2) * 0.18
            ax.scatter([x] * len(part), part["centiloid"], color=colours[diagnosis], s=28,
                       label=diagnosis if i == 0 else None, edgecolor="k", linewidth=0.3)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(sites)))
    ax.set_xticklabels(sites)
    ax.set_ylabel("Centiloid")
    ax.set_xlabel("site")
    ax.set_title("Centiloid by site and diagnosis")
    ax.legend(title="diagnosis", frameon=False, fontsize=8)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png


def write_group_report(amyloid: pd.DataFrame, participants: pd.DataFrame, group_dir: Path) -> Path:
    """``group/group.html`` with its figure under ``group/figures/``."""
    composite = amyloid[amyloid["region"] == "composite"].copy()
    diagnosis = participants["diagnosis"] if "diagnosis" in participants else pd.Series(dtype=str)
    composite["diagnosis"] = composite["participant_id"].str.removeprefix("sub-").map(diagnosis).fillna("n/a")
    figure = _centiloid_figure(composite, group_dir / "figures" / "group_desc-centiloid_bysite.png")
    rows = "".join(
        f"<tr><td>{html.escape(r.participant_id)}</td><td>{html.escape(str(r.session_id))}</td>"
        f"<td>{html.escape(str(r.site))}</td><td>{html.escape(str(r.diagnosis))}</td>"
        f"<td>{html.escape(r.method)}</td><td>{r.suvr:.3f}</td><td>{r.centiloid:.1f}</td></tr>"
        for r in composite.sort_values(["participant_id", "method"]).itertuples())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthquant: group</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}figcaption{{color:#555}}</style>
</head><body><h1>Amyloid PET: group summary</h1>
<p>{composite['participant_id'].nunique()} participants, {composite['site'].nunique()} site(s).
Composite SUVR is referenced to cerebellar grey matter; Centiloid uses the GAAIN VOIs
(see any subject's sidecar for the equation). Full table: <code>amyloid_suvr.tsv</code>.</p>
<figure><img src="figures/{figure.name}" width="800"><figcaption>Centiloid of each participant (dots)
by site, coloured by the diagnosis in participants.tsv; the dashed line is 0 CL (young controls).
</figcaption></figure>
<table><tr><th>participant</th><th>session</th><th>site</th><th>diagnosis</th><th>method</th>
<th>composite SUVR</th><th>Centiloid</th></tr>{rows}</table>
</body></html>
"""
    return atomic_write_text(page, group_dir / "group.html")
