"""Per-subject HTML report of the amyloid arm: what a reader checks first.

- the SUVR map over the subject's own T1w in template space (registration and uptake at once);
- the real and the pseudo T1w side by side in template space, with their difference, where both
  ``mr`` and ``synthmr`` ran (does the pseudo-T1w's anatomy match the subject's?);
- the composite and its four regions as bars, with the reference line at SUVR 1;
- the regional table, Centiloid, notes and the provenance of every number.
"""

from __future__ import annotations

import html
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from synthquant.atlases.regions import SUMMARY_REGIONS

#: The slices every template-space figure shows (x, y, z in mm, MNI152NLin2009aSym).
CUT_COORDS = (0, -20, 20)


def _overlay_figure(suvr_map: str, t1w_template: str, title: str, out_png: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from nilearn import plotting  # noqa: PLC0415

    from synthquant.atlases import tissue_prior  # noqa: PLC0415

    display = plotting.plot_stat_map(suvr_map, bg_img=t1w_template, display_mode="ortho", cut_coords=CUT_COORDS,
                                      cmap="hot", vmin=0.0, vmax=2.5, threshold=0.5, symmetric_cbar=False,
                                      colorbar=True, title=title, draw_cross=False, annotate=True, dim=-0.3,
                                      transparency=0.55)
    # The template GM outline (prior = 0.5) is the mask the regions use: the subject's grey matter
    # and cortical uptake should sit inside it when normalisation worked.
    display.add_contours(str(tissue_prior("gm", 1.0)), levels=[0.5], colors="cyan", linewidths=0.6)
    display.savefig(str(out_png), dpi=110)
    display.close()
    return out_png


def _brain_normalised(path: str, grid: nib.Nifti1Image | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A skull-stripped T1w divided by its brain's 99th percentile (voxels > 0), so that a real T1w
    (scanner units) and a pseudo-T1w (network units) share one grey scale; on ``grid`` if given."""
    from synthquant.image import load_image, resample_to_grid  # noqa: PLC0415

    img = nib.as_closest_canonical(load_image(path))
    data = img.get_fdata(dtype=np.float32)
    if grid is not None and (data.shape != grid.shape or not np.allclose(img.affine, grid.affine, atol=1e-3)):
        data = resample_to_grid(data, img.affine, grid.shape, grid.affine, order=1)
        img = grid
    brain = data > 0
    scale = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
    return data / (scale or 1.0), img


def _t1w_pair_figure(real_t1w: str, pseudo_t1w: str, title: str, out_png: Path) -> tuple[Path, float]:
    """Real (``mr``) and pseudo (``synthmr``) T1w in template space on the same three slices, and the
    pseudo minus real difference; returns the figure and their correlation inside the brain."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib import patheffects  # noqa: PLC0415

    from synthquant.atlases import tissue_prior  # noqa: PLC0415
    from synthquant.image import resample_to_grid  # noqa: PLC0415

    real, grid = _brain_normalised(real_t1w)
    pseudo, _ = _brain_normalised(pseudo_t1w, grid)
    prior = nib.load(str(tissue_prior("gm", 1.0)))
    gm = resample_to_grid(prior.get_fdata(dtype=np.float32), prior.affine, grid.shape, grid.affine, order=1)
    brain = (real > 0) & (pseudo > 0)
    correlation = float(np.corrcoef(real[brain], pseudo[brain])[0, 1]) if brain.sum() > 2 else float("nan")
    difference = np.where((real > 0) | (pseudo > 0), pseudo - real, 0.0)
    centre = np.linalg.inv(grid.affine) @ np.array([*CUT_COORDS, 1.0])
    index = [int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre[:3], grid.shape)]
    zooms = np.abs(np.diag(grid.affine)[:3])

    def cut(volume: np.ndarray, view: str) -> np.ndarray:  # RAS voxels; rows = up, columns = right
        return {"sagittal": volume[index[0], :, :], "coronal": volume[:, index[1], :],
                "axial": volume[:, :, index[2]]}[view].T

    aspect = {"sagittal": zooms[2] / zooms[1], "coronal": zooms[2] / zooms[0], "axial": zooms[1] / zooms[0]}
    views = (("sagittal", f"x = {CUT_COORDS[0]} mm"), ("coronal", f"y = {CUT_COORDS[1]} mm"),
             ("axial", f"z = {CUT_COORDS[2]} mm"))
    rows = (("real T1w (mr)", real), ("pseudo-T1w (synthmr)", pseudo), ("pseudo \u2212 real", difference))
    fig, axes = plt.subplots(3, 3, figsize=(9.0, 8.4), layout="constrained")
    for r, (label, volume) in enumerate(rows):
        for c, (view, where) in enumerate(views):
            ax = axes[r, c]
            if r < 2:
                shown = ax.imshow(cut(volume, view), cmap="gray", vmin=0.0, vmax=1.0, origin="lower",
                                  aspect=aspect[view], interpolation="nearest")
                # The template GM outline: the real and the pseudo cortex should both fill it.
                ax.contour(cut(gm, view), levels=[0.5], colors="cyan", linewidths=0.7)
            else:
                diff = ax.imshow(cut(volume, view), cmap="RdBu_r", vmin=-0.5, vmax=0.5, origin="lower",
                                 aspect=aspect[view], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{view}, {where}", fontsize=10)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
            if view != "sagittal":  # neurological convention: the subject's right on the right
                for x, letter in ((0.02, "L"), (0.93, "R")):  # dark halo: readable on black and on white
                    ax.text(x, 0.03, letter, transform=ax.transAxes, color="yellow", fontsize=10, fontweight="bold",
                            path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    fig.colorbar(shown, ax=axes[:2, :], shrink=0.6, label="T1w / its brain's 99th percentile")
    fig.colorbar(diff, ax=axes[2, :], shrink=0.9, label="difference (same units)")
    fig.suptitle(f"{title}   (r = {correlation:.2f} inside the brain)", fontsize=11)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png, correlation


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
    figures, rows = {}, []  # file name -> (path, caption)
    tables = {m: pd.read_csv(t, sep="\t", na_values="n/a") for m, t in zip(methods, suvr_tables)}
    for method, suvr_map, t1w in zip(methods, suvr_maps, t1w_templates):
        name = f"{subject_key}_desc-{method}_suvr.png"
        figures[name] = (_overlay_figure(suvr_map, t1w, f"{subject_key}  SUVR ({method})", out_dir / name),
                         _overlay_caption(method))
    t1w_note = ""
    t1w_of = dict(zip(methods, t1w_templates))
    if "mr" in t1w_of and "synthmr" in t1w_of:
        name = t1w_pair_figure_name(subject_key)
        path, correlation = _t1w_pair_figure(t1w_of["mr"], t1w_of["synthmr"], f"{subject_key}  real and pseudo T1w",
                                             out_dir / name)
        figures[name] = (path, _t1w_pair_caption(correlation))
    else:
        t1w_note = ("<p>No real-against-pseudo T1w figure: it needs both methods <code>mr</code> (the real T1w) "
                    "and <code>synthmr</code> (the pseudo-T1w); this session ran "
                    f"{html.escape(', '.join(m for m in ('mr', 'synthmr') if m in t1w_of) or 'neither')}.</p>")
    bars = f"{subject_key}_desc-regions_suvr.png"
    figures[bars] = (_bars_figure(tables, out_dir / bars), _BARS_CAPTION)
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
{"".join(f'<figure><img src="{subject}/figures/{n}" width="900" alt="{html.escape(n)}">'
         f'<figcaption>{caption}</figcaption></figure>' for n, (_, caption) in figures.items())}
{t1w_note}
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"}</ul>
</body></html>
"""
    page_file = out_dir / f"{subject_key}.html"
    page_file.write_text(page)
    return {"html": str(page_file), "figures": [str(path) for path, _ in figures.values()]}


def t1w_pair_figure_name(subject_key: str) -> str:
    """The real-against-pseudo T1w figure's file name (written when ``mr`` and ``synthmr`` both ran)."""
    return f"{subject_key}_desc-pseudovsreal_T1w.png"


_BARS_CAPTION = ("Composite and regional SUVR of every method (AAL2 regions within template grey matter); the "
                 "dashed line is the reference level (SUVR 1, cerebellar grey matter).")


def _overlay_caption(method: str) -> str:
    return (f"SUVR map (method {html.escape(method)}, colour) over the subject's T1w in MNI152NLin2009aSym space "
            "(grey). Cyan: the template grey-matter outline that masks every region; the subject's cortex should "
            "fill it. Florbetapir binds white matter in every subject; amyloid shows as cortical uptake.")


def _t1w_pair_caption(correlation: float) -> str:
    return ("Real T1w (method mr, top) and pseudo-T1w synthesised from the PET (method synthmr, middle), each "
            "skull-stripped, warped to MNI152NLin2009aSym by its own registration and divided by its brain's 99th "
            "percentile, on the same slices and grey scale. Cyan: the template grey-matter outline; both cortices "
            "should fill it. Bottom: pseudo &minus; real (red: the pseudo-T1w brighter, blue: darker); a "
            "structured pattern along the cortex or ventricles means the pseudo-T1w's anatomy, and so the synthmr "
            f"regions, are off. Voxelwise correlation inside both brains: r = {correlation:.2f}.")
