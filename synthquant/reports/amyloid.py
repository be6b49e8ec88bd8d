"""Per-subject HTML report of the amyloid arm: what a reader checks first.

- the SUVR map over the subject's own T1w in template space (registration and uptake at once);
- the composite and its four regions as bars, with the reference line at SUVR 1;
- the regional table, Centiloid, notes and the provenance of every number.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from synthquant.atlases.regions import SUMMARY_REGIONS


def _overlay_figure(suvr_map: str, t1w_template: str, title: str, out_png: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from nilearn import plotting  # noqa: PLC0415

    from synthquant.atlases import tissue_prior  # noqa: PLC0415

    display = plotting.plot_stat_map(suvr_map, bg_img=t1w_template, display_mode="ortho", cut_coords=(0, -20, 20),
                                      cmap="hot", vmin=0.0, vmax=2.5, threshold=0.5, symmetric_cbar=False,
                                      colorbar=True, title=title, draw_cross=False, annotate=True, dim=-0.3,
                                      transparency=0.55)
    # The template GM outline (prior = 0.5) is the mask the regions use: the subject's grey matter
    # and cortical uptake should sit inside it when normalisation worked.
    display.add_contours(str(tissue_prior("gm", 1.0)), levels=[0.5], colors="cyan", linewidths=0.6)
    display.savefig(str(out_png), dpi=110)
    display.close()
    return out_png


def _bars_figure(tables: dict[str, pd.DataFrame], out_png: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / max(1, len(tables))
    for i, (method, table) in enumerate(tables.items()):
        values = table.set_index("region").loc[list(SUMMARY_REGIONS), "suvr"]
        ax.bar([x + i * width for x in range(len(values))], values, width=width, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([x + width * (len(tables) - 1) / 2 for x in range(len(SUMMARY_REGIONS))])
    ax.set_xticklabels([r.replace("_", " ") for r in SUMMARY_REGIONS])
    ax.set_ylabel("SUVR (cerebellar GM = 1)")
    ax.set_title("Composite cortex and its regions")
    # Below the axes, in one row: with five methods a legend inside covers the bars.
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(tables), title="method")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def render_amyloid_report(*, subject_key: str, site: str, tracer: str, methods: list[str], suvr_maps: list[str],
                          t1w_templates: list[str], suvr_tables: list[str], metadata: list[dict], notes: list[str],
                          out_dir: str | Path) -> dict[str, str]:
    """Write ``<key>.html`` and its PNG figures into ``out_dir``; return name -> path.

    The HTML refers to its figures as ``<sub>/figures/<file>``, where the sink puts them.
    """
    out_dir = Path(out_dir)
    subject = subject_key.split("_")[0]
    figures, rows = {}, []
    tables = {m: pd.read_csv(t, sep="\t", na_values="n/a") for m, t in zip(methods, suvr_tables)}
    for method, suvr_map, t1w in zip(methods, suvr_maps, t1w_templates):
        name = f"{subject_key}_desc-{method}_suvr.png"
        figures[name] = str(_overlay_figure(suvr_map, t1w, f"{subject_key}  SUVR ({method})", out_dir / name))
    bars = f"{subject_key}_desc-regions_suvr.png"
    figures[bars] = str(_bars_figure(tables, out_dir / bars))
    for method, meta in zip(methods, metadata):
        table = tables[method].set_index("region")
        rows.append("<tr><td>{}</td>{}<td>{:.1f}</td></tr>".format(
            html.escape(method), "".join(f"<td>{table.loc[r, 'suvr']:.3f}</td>" for r in SUMMARY_REGIONS),
            meta.get("Centiloid", float("nan"))))
    provenance = metadata[0] if metadata else {}
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthquant: {html.escape(subject_key)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}figcaption{{color:#555;font-size:90%}}</style></head><body>
<h1>{html.escape(subject_key)} &mdash; amyloid PET ({html.escape(tracer)})</h1>
<p>Site: {html.escape(site)}. Methods: {html.escape(", ".join(methods))}.</p>
<h2>Summary</h2>
<table><tr><th>method</th>{"".join(f"<th>{r.replace('_', ' ')}</th>" for r in SUMMARY_REGIONS)}<th>Centiloid</th></tr>
{"".join(rows)}</table>
<p>SUVR = PET / mean of the reference region: {html.escape(str(provenance.get("ReferenceRegion", "")))}.
Centiloid: {html.escape(str(provenance.get("CentiloidEquation", "")))}
({html.escape(str(provenance.get("CentiloidEquationSource", "")))}).</p>
{"".join(f'<figure><img src="{subject}/figures/{n}" width="900"><figcaption>{_caption(n)}</figcaption></figure>'
         for n in figures)}
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"}</ul>
</body></html>
"""
    page_file = out_dir / f"{subject_key}.html"
    page_file.write_text(page)
    return {"html": str(page_file), "figures": list(figures.values())}


def _caption(name: str) -> str:
    if "regions" in name:
        return ("Composite and regional SUVR (AAL2 regions within template grey matter); the dashed line is "
                "the reference level.")
    method = name.split("desc-")[1].split("_")[0]
    return (f"SUVR map (method {html.escape(method)}, colour) over the subject's T1w in MNI152NLin2009aSym space "
            "(grey). Cyan: the template grey-matter outline that masks every region; the subject's cortex should "
            "fill it. Florbetapir binds white matter in every subject; amyloid shows as cortical uptake.")
