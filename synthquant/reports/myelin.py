"""Per-session HTML report of the myelin arm: what a reader checks first.

- the four MR inputs (MTR, FA, RD, AD) through the lesion, with the lesion outline: did the
  maps reach the grid, do they line up, is the lesion where the mask says;
- the predicted [11C]PIB DVR beside the true one (where a dynamic PIB PET exists), on one
  colour scale, and their difference (Wei et al. 2019);
- the demyelinated lesion voxels of each source (Bodini et al. 2016), once an HC norm exists;
- the saliency map of the model (Wei 2019 eq. 7);
- the mean DVR per ROI and source as bars, the ROI table, the notes and the provenance.

The plotting functions take file paths and return the path of the PNG they wrote. Every map
of a session lies on one myelin grid; the slices are cut in world millimetres, so maps on
other grids still line up (each shown in its voxel axes closest to RAS).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from synthquant.image import atomic_output

#: The figures of one session, in page order; ``demyelinated`` only where a mask exists.
FIGURE_KINDS = ("inputs", "dvr", "demyelinated", "saliency", "roi")
ROI_LABELS = {"lesion": "lesion", "nawm": "NAWM", "wm": "WM"}
SOURCE_LABELS = {"synth": "predicted (synth)", "pib": "true (PIB PET)"}
SOURCE_COLOURS = {"synth": "#e07b39", "pib": "#3b75af"}
#: MR inputs: label, colour-bar label, scale to the shown unit (diffusivities: mm²/s -> 10⁻³ mm²/s).
MR_DISPLAY = {
    "MTR": ("MTR", "MTR (percent units)", 1.0),
    "FA": ("FA", "FA (unitless, 0-1)", 1.0),
    "RD": ("RD", "RD (10$^{-3}$ mm$^2$/s)", 1e3),
    "AD": ("AD", "AD (10$^{-3}$ mm$^2$/s)", 1e3),
}
DVR_LABEL = "DVR (unitless; cerebellar GM = 1)"
LESION_COLOUR = "#00e5ff"
ORIENTATIONS = ("sagittal", "coronal", "axial")
LESION_CUT = "the centre of the largest lesion"
MONTAGE_SLICES = 8
LESION_WINDOW_MM = 50.0


def myelin_figure_names(subject_key: str, *, demyelination: bool) -> list[str]:
    """The PNG names :func:`render_myelin_report` writes, in page order (the sink needs them
    when the graph is built)."""
    return [f"{subject_key}_desc-{kind}_myelin.png" for kind in FIGURE_KINDS
            if kind != "demyelinated" or demyelination]


# ------------------------------------------------------------------------------- volumes

class _Volume(NamedTuple):
    data: np.ndarray      # voxel axes closest to RAS
    affine: np.ndarray


def _load(path: str | Path) -> _Volume:
    import nibabel as nib  # noqa: PLC0415

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return _Volume(np.nan_to_num(data), img.affine)


def _zooms(volume: _Volume) -> np.ndarray:
    return np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))


def _index(volume: _Volume, point_mm: np.ndarray) -> np.ndarray:
    ijk = np.linalg.solve(volume.affine[:3, :3], np.asarray(point_mm, dtype=float) - volume.affine[:3, 3])
    return np.clip(np.rint(ijk).astype(int), 0, np.array(volume.data.shape[:3]) - 1)


def _world(volume: _Volume, ijk) -> np.ndarray:
    return volume.affine[:3, :3] @ np.asarray(ijk, dtype=float) + volume.affine[:3, 3]


# Slice axis and the (horizontal, vertical) axes of each view; RAS voxel axes, so the subject's
# left is on the left of coronal and axial views (neurological convention), anterior up in axial.
_VIEW_AXES = {"sagittal": (0, (1, 2)), "coronal": (1, (0, 2)), "axial": (2, (0, 1))}
_VIEW_LETTERS = {"sagittal": ("P", "A"), "coronal": ("L", "R"), "axial": ("L", "R")}


def _slice(volume: _Volume, point_mm, view: str) -> tuple[np.ndarray, tuple[float, float, float, float], float]:
    """2-D slice (rows: vertical axis), its extent in world mm, and the slice's coordinate (mm)."""
    axis, (h, v) = _VIEW_AXES[view]
    ijk = _index(volume, point_mm)
    index = [slice(None)] * 3
    index[axis] = ijk[axis]
    plane = volume.data[tuple(index)].T  # rows: the vertical axis
    zooms = _zooms(volume)
    origin = volume.affine[:3, 3]
    extent = (origin[h] - zooms[h] / 2, origin[h] + (volume.data.shape[h] - 0.5) * zooms[h],
              origin[v] - zooms[v] / 2, origin[v] + (volume.data.shape[v] - 0.5) * zooms[v])
    return plane, extent, float(_world(volume, ijk)[axis])


def cut_point(lesion: str | Path | None = None, brain: str | Path | None = None,
              reference: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Where the orthogonal slices cross (world mm) and what it is.

    The centroid of the largest lesion, moved to its nearest lesion voxel so that every view
    shows the lesion; without lesion voxels, the brain mask's centre of mass; else the centre
    of ``reference``.
    """
    from scipy import ndimage  # noqa: PLC0415

    if lesion is not None:
        volume = _load(lesion)
        labels, n = ndimage.label(volume.data > 0.5)
        if n:
            largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))))
            voxels = np.argwhere(labels == largest)
            centre = voxels.mean(axis=0)
            nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
            return _world(volume, nearest), LESION_CUT
    if brain is not None:
        volume = _load(brain)
        if (volume.data > 0.5).any():
            return _world(volume, np.argwhere(volume.data > 0.5).mean(axis=0)), "the brain's centre (no lesion)"
    if reference is not None:
        volume = _load(reference)
        return _world(volume, (np.array(volume.data.shape[:3]) - 1) / 2), "the image centre (no lesion)"
    raise ValueError("cut_point needs a lesion, a brain mask or a reference image")


def _limits(volume: _Volume, brain: _Volume | None, low=1.0, high=99.0) -> tuple[float, float]:
    inside = volume.data[brain.data > 0.5] if brain is not None and brain.data.shape == volume.data.shape \
        else volume.data[volume.data != 0]
    if inside.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(inside, [low, high])
    return float(vmin), float(vmax if vmax > vmin else vmin + 1e-6)


def _in_brain(volume: _Volume, brain: _Volume | None) -> np.ndarray:
    """The data with NaN outside the brain (drawn as the background colour)."""
    if brain is None or brain.data.shape != volume.data.shape:
        return volume.data
    return np.where(brain.data > 0.5, volume.data, np.nan)


# ------------------------------------------------------------------------------ drawing

def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, out_png: str | Path, dpi: int = 100) -> Path:
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        # "tight": row labels left of fixed-aspect panels stay inside the picture
        fig.savefig(tmp, dpi=dpi, format="png", facecolor=fig.get_facecolor(), bbox_inches="tight", pad_inches=0.08)
    _pyplot().close(fig)
    return out_png


def _view_axis(ax, view: str, coordinate: float, *, title: bool = True) -> None:
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    left, right = _VIEW_LETTERS[view]
    from matplotlib import patheffects  # noqa: PLC0415

    for x, letter, align in ((0.02, left, "left"), (0.98, right, "right")):
        ax.text(x, 0.03, letter, transform=ax.transAxes, color="white", fontsize=9, ha=align, va="bottom",
                fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    if title:
        axis = "xyz"[_VIEW_AXES[view][0]]
        ax.set_title(f"{view}, {axis} = {coordinate:.0f} mm", fontsize=9)


def _draw_map(ax, volume: _Volume, point, view: str, *, cmap, vmin, vmax, data=None, alpha=1.0):
    plane, extent, coordinate = _slice(volume if data is None else volume._replace(data=data), point, view)
    colours = _pyplot().get_cmap(cmap).with_extremes(bad=(0.0, 0.0, 0.0, 0.0 if alpha < 1 else 1.0))
    image = ax.imshow(plane, origin="lower", extent=extent, cmap=colours, vmin=vmin, vmax=vmax,
                      interpolation="nearest", alpha=alpha)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    return image, coordinate


def _draw_outline(ax, mask: _Volume | None, point, view: str, *, colour=LESION_COLOUR, width=1.0) -> bool:
    if mask is None:
        return False
    plane, extent, _ = _slice(mask, point, view)
    if not (plane > 0.5).any():
        return False
    from matplotlib import patheffects  # noqa: PLC0415

    contours = ax.contour((plane > 0.5).astype(float), levels=[0.5], origin="lower", extent=extent, colors=[colour],
                          linewidths=width)
    # A dark halo keeps the outline visible over bright white matter as well as dark background.
    contours.set_path_effects([patheffects.withStroke(linewidth=width + 1.2, foreground="black")])
    return True


def _ortho_row(fig, axes, volume: _Volume, point, *, cmap, vmin, vmax, label: str | None, data=None,
               lesion: _Volume | None = None, titles: bool = True, row_title: str | None = None,
               outline: str = LESION_COLOUR):
    """One map in the three views; its colour bar at the right unless ``label`` is None."""
    image = None
    for ax, view in zip(axes, ORIENTATIONS):
        image, coordinate = _draw_map(ax, volume, point, view, cmap=cmap, vmin=vmin, vmax=vmax, data=data)
        _draw_outline(ax, lesion, point, view, colour=outline)
        _view_axis(ax, view, coordinate, title=titles)
    if row_title:
        axes[0].set_ylabel(row_title, fontsize=11, fontweight="bold")
    if label is not None:
        _colorbar(fig, image, list(axes), label)
    return image


def _colorbar(fig, image, axes, label: str) -> None:
    bar = fig.colorbar(image, ax=axes, fraction=0.025, pad=0.01)
    bar.set_label(label, fontsize=10)
    bar.ax.tick_params(labelsize=9)


def _optional_load(path) -> _Volume | None:
    return _load(path) if path else None


# ------------------------------------------------------------------------------- figures

def plot_mr_inputs(maps: Mapping[str, str | Path], out_png: str | Path, *, lesion: str | Path | None = None,
                   brain: str | Path | None = None) -> Path:
    """MTR, FA, RD and AD (rows) in three orthogonal slices through the lesion (or brain) centre.

    ``maps`` holds the keys of :data:`MR_DISPLAY` that exist; each row has its own grey scale
    (1st-99th percentile in the brain) and unit, black outside the brain mask (what the model
    sees); the lesion is outlined in cyan.
    """
    plt = _pyplot()
    point, _ = cut_point(lesion, brain, next(iter(maps.values())))
    lesion_volume, brain_volume = _optional_load(lesion), _optional_load(brain)
    names = [name for name in MR_DISPLAY if name in maps]
    fig, axes = plt.subplots(len(names), 3, figsize=(10.5, 2.9 * len(names) + 0.4), squeeze=False,
                             layout="constrained")
    for index, (row, name) in enumerate(zip(axes, names)):
        volume = _load(maps[name])
        short, label, scale = MR_DISPLAY[name]
        if scale != 1.0 and _limits(volume, brain_volume)[1] > 0.1:
            scale, label = 1.0, f"{short} (as stored)"  # already in 10⁻³ mm²/s, or another unit
        volume = volume._replace(data=volume.data * scale)
        vmin, vmax = _limits(volume, brain_volume)
        _ortho_row(fig, row, volume, point, cmap="gray", vmin=vmin, vmax=vmax, label=label, lesion=lesion_volume,
                   data=_in_brain(volume, brain_volume), titles=index == 0, row_title=short)
    return _save(fig, out_png)


def plot_dvr(dvr: Mapping[str, str | Path], out_png: str | Path, *, lesion: str | Path | None = None,
             brain: str | Path | None = None) -> Path:
    """Predicted and (where given) true DVR in three orthogonal slices, on one colour scale, and
    their difference; the lesion outlined in cyan. ``dvr`` maps source (``synth``, ``pib``) to path."""
    plt = _pyplot()
    sources = [s for s in ("synth", "pib") if dvr.get(s)]
    point, _ = cut_point(lesion, brain, dvr[sources[0]])
    lesion_volume, brain_volume = _optional_load(lesion), _optional_load(brain)
    volumes = {s: _load(dvr[s]) for s in sources}
    limits = np.array([_limits(v, brain_volume, 1.0, 99.5) for v in volumes.values()])
    vmin, vmax = float(limits[:, 0].min()), float(limits[:, 1].max())
    rows = len(sources) + (1 if len(sources) == 2 else 0)
    fig, axes = plt.subplots(rows, 3, figsize=(10.5, 2.9 * rows + 0.4), squeeze=False, layout="constrained")
    for index, (row, source) in enumerate(zip(axes, sources)):
        image = _ortho_row(fig, row, volumes[source], point, cmap="inferno", vmin=vmin, vmax=vmax, label=None,
                           data=_in_brain(volumes[source], brain_volume), lesion=lesion_volume, titles=index == 0,
                           row_title=SOURCE_LABELS[source])
    _colorbar(fig, image, list(axes[:len(sources)].ravel()), DVR_LABEL)  # one scale for both sources
    if len(sources) == 2 and volumes["synth"].data.shape == volumes["pib"].data.shape:
        difference = volumes["synth"]._replace(data=volumes["synth"].data - volumes["pib"].data)
        span = max(abs(v) for v in _limits(difference, brain_volume, 1.0, 99.0))
        _ortho_row(fig, axes[-1], difference, point, cmap="RdBu_r", vmin=-span, vmax=span,
                   label="DVR difference (unitless)", data=_in_brain(difference, brain_volume), lesion=lesion_volume,
                   titles=False, row_title="synth \u2212 pib", outline="black")
    elif len(sources) == 2:
        for ax in axes[-1]:
            ax.set_axis_off()
    return _save(fig, out_png)


def plot_demyelinated(demyelinated: Mapping[str, str | Path], background: str | Path, out_png: str | Path, *,
                      lesion: str | Path | None = None, brain: str | Path | None = None,
                      n_panels: int = MONTAGE_SLICES) -> Path:
    """Demyelinated lesion voxels of each source over the MTR, one zoomed axial panel per lesion.

    Lesions are the connected components of the lesion mask, those with the most demyelinated
    voxels first, then the largest, up to ``n_panels``; each panel is the lesion's axial slice
    with the most demyelinated (else lesion) voxels, cropped around it. Without lesion voxels,
    whole axial slices spread over the brain. Voxels of one source only take its colour
    (:data:`SOURCE_COLOURS`), voxels of both are magenta; the lesion is outlined in cyan.
    """
    from matplotlib.patches import Patch  # noqa: PLC0415

    plt = _pyplot()
    base = _load(background)
    brain_volume, lesion_volume = _optional_load(brain), _optional_load(lesion)
    masks = {s: _load(p) for s, p in demyelinated.items() if p}
    panels = _lesion_panels(lesion_volume, masks, n_panels) if lesion_volume is not None else []
    if not panels:  # no lesion voxels: whole slices over the brain
        extent_mask = brain_volume if brain_volume is not None and (brain_volume.data > 0.5).any() else None
        ks = (np.unique(np.argwhere(extent_mask.data > 0.5)[:, 2]) if extent_mask is not None
              else np.arange(base.data.shape[2]))
        chosen = np.unique(ks[np.linspace(0, len(ks) - 1, min(n_panels, len(ks))).round().astype(int)])
        reference = extent_mask or base
        panels = [(_world(reference, (0, 0, k)), None, f"axial, z = {_world(reference, (0, 0, k))[2]:.0f} mm")
                  for k in chosen]
    vmin, vmax = _limits(base, brain_volume)
    n_rows = int(np.ceil(len(panels) / 4))
    n_cols = int(np.ceil(len(panels) / n_rows))  # rows filled evenly: 5 panels are 3 + 2, not 4 + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.8 * n_cols, 2.9 * n_rows + 0.6), squeeze=False,
                             layout="constrained")
    colours = {"synth": SOURCE_COLOURS["synth"], "pib": SOURCE_COLOURS["pib"], "both": "#e0119d"}
    for ax, (point, window, title) in zip(axes.flat, panels):
        _draw_map(ax, base, point, "axial", cmap="gray", vmin=vmin, vmax=vmax, data=_in_brain(base, brain_volume))
        planes = {s: _slice(m, point, "axial") for s, m in masks.items()}
        if planes:
            shape = next(iter(planes.values()))[0].shape
            hit = {s: p[0] > 0.5 if p[0].shape == shape else np.zeros(shape, bool) for s, p in planes.items()}
            synth, pib = hit.get("synth", np.zeros(shape, bool)), hit.get("pib", np.zeros(shape, bool))
            extent = next(iter(planes.values()))[1]
            for name, where in {"synth": synth & ~pib, "pib": pib & ~synth, "both": synth & pib}.items():
                if where.any():
                    layer = np.zeros((*shape, 4))
                    layer[where] = (*_rgb(colours[name]), 1.0)
                    ax.imshow(layer, origin="lower", extent=extent, interpolation="nearest")
        _draw_outline(ax, lesion_volume, point, "axial", width=1.5)
        if window is not None:
            ax.set_xlim(window[0], window[1])
            ax.set_ylim(window[2], window[3])
        _view_axis(ax, "axial", point[2], title=False)
        ax.set_title(title, fontsize=8.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles = [Patch(facecolor=colours[s], label=f"{SOURCE_LABELS[s]} only" if len(masks) == 2 else SOURCE_LABELS[s])
               for s in masks]
    if len(masks) == 2:
        handles.append(Patch(facecolor=colours["both"], label="both"))
    handles.append(Patch(facecolor="none", edgecolor=LESION_COLOUR, label="lesion outline"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)
    return _save(fig, out_png)


def _lesion_panels(lesion: _Volume, masks: Mapping[str, _Volume], n_panels: int,
                   min_window_mm: float = LESION_WINDOW_MM, margin_mm: float = 10.0) -> list[tuple]:
    """``(point, (x0, x1, y0, y1) window, title)`` of up to ``n_panels`` lesions, most
    demyelinated voxels first, then the largest (:func:`plot_demyelinated`)."""
    from scipy import ndimage  # noqa: PLC0415

    labels, n = ndimage.label(lesion.data > 0.5)
    if n == 0:
        return []
    per_source = {s: m.data > 0.5 for s, m in masks.items() if m.data.shape == labels.shape}
    demyelinated = np.logical_or.reduce([*per_source.values(), np.zeros(labels.shape, bool)])
    index = range(1, n + 1)
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    hits = ndimage.sum_labels(demyelinated, labels, index)
    counts = {s: ndimage.sum_labels(m, labels, index) for s, m in per_source.items()}
    order = sorted(index, key=lambda i: (-hits[i - 1], -sizes[i - 1]))[:n_panels]
    zooms = _zooms(lesion)
    panels = []
    for rank, label in enumerate(order, start=1):
        voxels = np.argwhere(labels == label)
        inside = demyelinated[labels == label]
        ks = voxels[inside, 2] if inside.any() else voxels[:, 2]
        k = int(np.bincount(ks).argmax())  # the slice with the most demyelinated (else lesion) voxels
        in_slice = voxels[voxels[:, 2] == k]
        centre = _world(lesion, (*in_slice[:, :2].mean(axis=0), k))
        half = max(min_window_mm, ((np.ptp(voxels[:, :2], axis=0) + 1) * zooms[:2]).max() + 2 * margin_mm) / 2
        window = (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)
        found = ", ".join(f"{s} {int(c[label - 1])}" for s, c in counts.items())
        title = (f"lesion {rank} ({int(sizes[label - 1])} voxels)\n"
                 + (f"demyelinated: {found}\n" if counts else "")
                 + f"axial z = {centre[2]:.0f} mm (x {centre[0]:.0f}, y {centre[1]:.0f})")
        panels.append((centre, window, title))
    return panels


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb  # noqa: PLC0415

    return to_rgb(colour)


def plot_saliency(saliency: str | Path, out_png: str | Path, *, lesion: str | Path | None = None,
                  brain: str | Path | None = None) -> Path:
    """The model's saliency in three orthogonal slices through the lesion (or brain) centre,
    inside the brain, coloured from its 1st to 99th percentile there; the lesion outlined in cyan."""
    plt = _pyplot()
    point, _ = cut_point(lesion, brain, saliency)
    salient = _load(saliency)
    brain_volume, lesion_volume = _optional_load(brain), _optional_load(lesion)
    low, high = _limits(salient, brain_volume, 1.0, 99.0)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4), squeeze=False, layout="constrained")
    _ortho_row(fig, axes[0], salient, point, cmap="magma", vmin=low, vmax=high,
               label="saliency (arbitrary units)", data=_in_brain(salient, brain_volume), lesion=lesion_volume)
    return _save(fig, out_png)


def plot_roi_bars(table: str | Path | pd.DataFrame, out_png: str | Path) -> Path:
    """Mean DVR per ROI (lesion, NAWM, WM), one bar per source, values and voxel counts written on."""
    plt = _pyplot()
    table = _read_table(table)
    sources = [s for s in ("synth", "pib") if (table["source"] == s).any()]
    rois = list(ROI_LABELS)
    width = 0.8 / max(1, len(sources))
    fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
    values = table.set_index(["source", "roi"])
    top = np.nanmax(table["mean_dvr"].to_numpy(dtype=float)) if table["mean_dvr"].notna().any() else 1.0
    counts = table.drop_duplicates("roi").set_index("roi")["n_voxels"]
    for j, roi in enumerate(rois):
        if int(counts.get(roi, 0)) == 0:
            ax.text(j, 0.05 * top, "no voxels", ha="center", va="bottom", fontsize=10, color="grey")
    for i, source in enumerate(sources):
        for j, roi in enumerate(rois):
            x = j + (i - (len(sources) - 1) / 2) * width
            mean = values["mean_dvr"].get((source, roi), np.nan)
            ax.bar(x, mean if np.isfinite(mean) else 0.0, width=width * 0.95, color=SOURCE_COLOURS[source],
                   label=SOURCE_LABELS[source] if j == 0 else None)
            if np.isfinite(mean):
                ax.text(x, mean + 0.01 * top, f"{mean:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(rois)))
    ax.set_xticklabels([f"{ROI_LABELS[r]}\n({int(counts.get(r, 0))} voxels)" for r in rois], fontsize=10)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel(DVR_LABEL, fontsize=10)
    ax.set_title("Mean [11C]PIB DVR per ROI", fontsize=11)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(sources), title="source",
              fontsize=9)
    return _save(fig, out_png)


# ---------------------------------------------------------------------------------- page

def _read_table(table: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    return pd.read_csv(table, sep="\t", na_values="n/a", keep_default_na=False, dtype={"session_id": str})


def _number(value, digits: int) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _roi_table_html(table: pd.DataFrame) -> str:
    values = table.set_index(["source", "roi"])
    sources = [s for s in ("synth", "pib") if (table["source"] == s).any()]
    head = "<th>ROI</th><th>voxels</th>" + "".join(
        f"<th>mean DVR, {html.escape(SOURCE_LABELS[s])}</th>" for s in sources)
    if len(sources) == 2:
        head += "<th>synth &minus; pib</th>"
    head += "".join(f"<th>demyelinated %, {s}</th>" for s in sources)
    rows = []
    for roi, label in ROI_LABELS.items():
        n = values["n_voxels"].get((sources[0], roi), 0)
        means = [values["mean_dvr"].get((s, roi), np.nan) for s in sources]
        cells = [f"<td>{html.escape(label)}</td><td>{int(n)}</td>"]
        cells += [f"<td>{_number(m, 3)}</td>" for m in means]
        if len(sources) == 2:
            cells.append(f"<td>{_number(means[0] - means[1], 3)}</td>")
        cells += [f"<td>{_number(values['demyelinated_pct'].get((s, roi), np.nan), 1)}</td>" for s in sources]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _demyelination_text(*, is_patient: bool, demyelinated: Mapping[str, str], dvr_sources: Sequence[str]) -> str:
    if not is_patient:
        return ("Demyelination is not assessed for a control: controls have no lesion mask and their WM DVR "
                "builds the healthy-control norm.")
    if not demyelinated:
        return ("No demyelinated-voxel map yet: no healthy-control WM norm existed when this session ran. Run the "
                "group level (it builds <code>group/hc_wm_norm</code> from at least 3 controls), then this "
                "participant again, or pass <code>--hc-norm DIR</code>.")
    missing = [s for s in dvr_sources if s not in demyelinated]
    return (f"No healthy-control norm for source {', '.join(missing)}: its demyelinated voxels are not shown."
            if missing else "")


def _captions(*, names: Sequence[str], point_what: str, has_lesion: bool, sources: Sequence[str],
              demyelinated: Mapping[str, str], table: pd.DataFrame, k: float | None) -> dict[str, str]:
    lesion_text = ("Cyan: the lesion outline." if has_lesion else
                   "No lesion voxels (a control, or an empty lesion mask), so no outline.")
    dvr_text = ("predicted DVR (Sketcher-Refiner, top) and true DVR (Logan reference plot of the dynamic PIB PET, "
                "middle) on one colour scale (inferno, 1st-99.5th percentile of brain voxels), and the difference "
                "synth &minus; pib (bottom, blue = predicted lower)" if len(sources) == 2 else
                "predicted DVR (Sketcher-Refiner), colour scale inferno (1st-99.5th percentile of brain voxels); "
                "no dynamic PIB PET, so no true DVR to compare with")
    pct = table[table["roi"] == "lesion"].set_index("source")["demyelinated_pct"]
    counts = "; ".join(f"{SOURCE_LABELS[s]} {_number(pct.get(s, np.nan), 1)} %" for s in demyelinated)
    texts = {
        "inputs": ("MR inputs of the model on the 2 mm myelin grid (the MTR's axes): MTR (percent units), FA "
                   "(unitless), RD and AD (10<sup>-3</sup> mm<sup>2</sup>/s), each on its own grey scale (1st-99th "
                   "percentile in the brain; black outside the brain mask, which the model ignores), in three "
                   f"orthogonal slices through {point_what}. {lesion_text} "
                   "Views are neurological (subject's left on the left)."),
        "dvr": (f"[11C]PIB DVR (unitless, cerebellar grey matter = 1; higher = more myelin): {dvr_text}. Slices "
                f"through {point_what}; outside the brain mask is black. {lesion_text}"),
        "demyelinated": ("Demyelinated lesion voxels (Bodini 2016): lesion voxels whose DVR is below the "
                         f"healthy-control WM norm's mean &minus; {f'{k:g}' if k is not None else 'k'} SD, "
                         "classified in template space and shown on the myelin grid over the MTR (grey). "
                         + (f"One zoomed axial panel per lesion (at least {LESION_WINDOW_MM:g} mm wide; up to "
                            f"{MONTAGE_SLICES}, most demyelinated first), through its slice with the most "
                            "demyelinated voxels; the voxel counts in the titles are on the myelin grid. "
                            if has_lesion else
                            "The lesion mask is empty, so no voxel is classified; axial slices spread over the brain. ")
                         + f"Demyelinated share of the lesion voxels: {counts} (template space, as in the ROI "
                         "table). "
                         + ("Cyan: the lesion outline." if has_lesion else "")),
        "saliency": ("Saliency of the predicted DVR (Wei 2019 eq. 7): the magnitude of the gradient of the "
                     "predicted DVR with respect to the z-scored MR inputs, maximum over MTR, FA, RD and AD "
                     "(arbitrary units; magma, 1st-99th percentile of brain voxels). Bright voxels are those whose "
                     f"MR values move the prediction most. Slices through {point_what}; outside the brain mask is "
                     f"black. {lesion_text}"),
        "roi": ("Mean DVR (unitless, cerebellar GM = 1) in the lesion, normal-appearing WM (NAWM) and all WM "
                "(lesions included), per source; voxel counts on the 2 mm myelin grid under each ROI. The dashed "
                "line is DVR 1 (the reference region). \"no voxels\": an empty ROI (a control has no lesion)."),
    }
    return {name: texts[name.split("_desc-")[1].split("_")[0]] for name in names}


def render_myelin_report(*, subject_key: str, site: str, group: str, maps: Mapping[str, str],
                         masks: Mapping[str, str], dvr: Mapping[str, str], saliency: str | None,
                         demyelinated: Mapping[str, str], table: str | Path, notes: Sequence[str] = (),
                         provenance: Mapping | None = None, k: float | None = None,
                         out_dir: str | Path) -> dict:
    """Write ``<key>_myelin.html`` and its PNG figures into ``out_dir``; return
    ``{"html": path, "figures": [paths in :func:`myelin_figure_names` order]}``.

    ``maps``: MTR, FA, RD, AD; ``masks``: brain, lesion (others ignored); ``dvr``: ``synth``
    and optionally ``pib``; ``demyelinated``: source -> mask, where one exists. The HTML refers
    to its figures as ``<sub>/figures/<file>``, where the sink puts them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subject = subject_key.split("_")[0]
    dvr = {s: p for s, p in dvr.items() if p}
    demyelinated = {s: p for s, p in demyelinated.items() if p}
    lesion, brain = masks.get("lesion"), masks.get("brain")
    rows = _read_table(table)
    _, point_what = cut_point(lesion, brain, maps["MTR"])
    has_lesion = point_what == LESION_CUT
    is_patient = group == "patient" or (group not in ("control",) and has_lesion)
    names = myelin_figure_names(subject_key, demyelination=bool(demyelinated))
    paths = {}
    for name in names:
        kind, target = name.split("_desc-")[1].split("_")[0], out_dir / name
        if kind == "inputs":
            paths[name] = plot_mr_inputs(maps, target, lesion=lesion, brain=brain)
        elif kind == "dvr":
            paths[name] = plot_dvr(dvr, target, lesion=lesion, brain=brain)
        elif kind == "demyelinated":
            paths[name] = plot_demyelinated(demyelinated, maps["MTR"], target, lesion=lesion, brain=brain)
        elif kind == "saliency":
            if saliency:
                paths[name] = plot_saliency(saliency, target, lesion=lesion, brain=brain)
            else:  # the sink expects the file: say so in it
                paths[name] = _message_figure("no saliency map was computed for this session", target)
        else:
            paths[name] = plot_roi_bars(rows, target)
    captions = _captions(names=names, point_what=point_what, has_lesion=has_lesion, sources=list(dvr),
                         demyelinated=demyelinated, table=rows, k=k)
    figures = {name: f'<figure><img src="{html.escape(subject)}/figures/{html.escape(name)}" width="900" '
                     f'alt="{html.escape(name)}"><figcaption>{captions[name]}</figcaption></figure>'
               for name in names}
    by_kind = {name.split("_desc-")[1].split("_")[0]: text for name, text in figures.items()}
    demyelination_text = _demyelination_text(is_patient=is_patient, demyelinated=demyelinated,
                                             dvr_sources=list(dvr))
    provenance = dict(provenance or {})
    warning = provenance.pop("ModelWarning", None)
    sources_text = ", ".join(SOURCE_LABELS[s] for s in dvr)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthquant myelin: {html.escape(subject_key)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}figcaption{{color:#555;font-size:90%;margin-bottom:1.5em}}
.warning{{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}}
dt{{font-weight:bold}}dd{{margin:0 0 0.5em 1em;word-break:break-all}}</style></head><body>
<h1>{html.escape(subject_key)} &mdash; myelin: [11C]PIB DVR from MTR and DTI</h1>
<p>Site: {html.escape(site)}. Group: {html.escape(group)}. DVR sources: {html.escape(sources_text)}.
DVR is the [11C]PIB distribution volume ratio (unitless; cerebellar grey matter = 1): in white matter it
tracks myelin content (Wei et al. 2019; Bodini et al. 2016).</p>
{f'<p class="warning">{html.escape(str(warning))}</p>' if warning else ""}
<h2>ROI summary</h2>
{_roi_table_html(rows)}
<p>From <code>{html.escape(subject_key)}_trc-PIB_myelinstats.tsv</code> (the rows of
<code>group/myelin_stats.tsv</code>). Demyelinated % is over the lesion voxels, in template space; n/a
without a healthy-control norm or without a lesion.</p>
<h2>MR inputs</h2>
{by_kind["inputs"]}
<h2>Predicted and true DVR</h2>
{by_kind["dvr"]}
<h2>Demyelinated lesion voxels</h2>
{f"<p>{demyelination_text}</p>" if demyelination_text else ""}
{by_kind.get("demyelinated", "")}
<h2>Saliency</h2>
{by_kind["saliency"]}
<h2>Mean DVR per ROI</h2>
{by_kind["roi"]}
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"}</ul>
<h2>Provenance</h2><dl>{"".join(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(_flat(value))}</dd>"
                                 for key, value in provenance.items())}</dl>
</body></html>
"""
    page_file = out_dir / f"{subject_key}_myelin.html"
    with atomic_output(page_file) as tmp:
        tmp.write_text(page)
    return {"html": str(page_file), "figures": [str(paths[name]) for name in names]}


def _flat(value) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _message_figure(text: str, out_png: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return _save(fig, out_png)
