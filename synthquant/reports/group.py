"""Group HTML report.

- Amyloid: the Centiloid of every subject by diagnosis and site, per method; each MR-less method
  against the MR-based one (``mr``): scatter with the identity line and Bland-Altman plot of the
  composite SUVR and Centiloid, and the paired numbers of :func:`synthquant.evaluation.compare_to_method`
  (Choi & Lee 2018, Table 2).
- Myelin: the ROI-mean DVR by group and source, the agreement of predicted with true DVR
  (Bland-Altman), and the demyelinated percentage of each patient's lesions (Wei et al. 2019;
  Bodini et al. 2016).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from synthquant.image import atomic_output, atomic_write_text
from synthquant.myelin import MIN_HC_SUBJECTS

#: Clinical order on the axes; other labels follow alphabetically, ``n/a`` last.
_DIAGNOSIS_ORDER = ("NC", "CN", "HC", "SMC", "EMCI", "MCI", "LMCI", "AD")
_DIAGNOSIS_COLOURS = {"NC": "#1a9850", "CN": "#1a9850", "HC": "#1a9850", "MCI": "#fdae61", "EMCI": "#fee08b",
                      "LMCI": "#f46d43", "AD": "#d73027", "n/a": "#969696"}
_REFERENCE_METHOD = "mr"


def _ordered(values, order) -> list:
    present = list(dict.fromkeys(values))
    return ([v for v in order if v in present] + sorted(v for v in present if v not in order and v != "n/a")
            + (["n/a"] if "n/a" in present else []))


def _methods(composite: pd.DataFrame) -> list[str]:
    """The reference ``mr`` first, the others alphabetically."""
    return _ordered(composite["method"], (_REFERENCE_METHOD,))


def _diagnosis_colour(diagnosis: str) -> str:
    return _DIAGNOSIS_COLOURS.get(diagnosis, "#6a51a3")


def _centiloid_figure(composite: pd.DataFrame, out_png: Path) -> Path:
    """One panel per method (a session appears once per method): Centiloid by diagnosis on the x axis,
    coloured by site, with each diagnosis's median as a bar."""
    plt = _pyplot()
    methods = _methods(composite)
    diagnoses = _ordered(composite["diagnosis"], _DIAGNOSIS_ORDER)
    sites = sorted(composite["site"].astype(str).unique())
    site_colours = dict(zip(sites, plt.get_cmap("tab10").colors))
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols + 0.6, 2.6 * nrows + 0.7), sharey=True,
                             layout="constrained", squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: two runs give the same figure
    for ax, method in zip(axes.flat, methods):
        part = composite[composite["method"] == method]
        for x, diagnosis in enumerate(diagnoses):
            values = part[part["diagnosis"] == diagnosis]
            if values.empty:
                continue
            jitter = rng.uniform(-0.15, 0.15, len(values))
            ax.scatter(x + jitter, values["centiloid"], c=[site_colours[str(s)] for s in values["site"]], s=30,
                       edgecolor="black", linewidth=0.4, zorder=3)
            median = float(values["centiloid"].median())
            ax.hlines(median, x - 0.3, x + 0.3, color="black", lw=1.5, zorder=2)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.axhline(100, color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(diagnoses)))
        ax.set_xticklabels(diagnoses, fontsize=11)
        ax.set_xlim(-0.6, len(diagnoses) - 0.4)
        ax.set_title(f"method {method}", fontsize=12)
        ax.tick_params(axis="y", labelsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("Centiloid", fontsize=11)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    fig.suptitle("Centiloid by diagnosis (x) and site (colour), per method", fontsize=12)
    fig.legend(handles=[plt.Line2D([], [], marker="o", ls="", markerfacecolor=site_colours[s],
                                   markeredgecolor="black", label=s) for s in sites],
               title="site", title_fontsize=11, frameon=False, loc="outside lower center", ncol=min(6, len(sites)),
               fontsize=11)
    return _save(fig, out_png)


def _agreement_stats(difference: pd.Series) -> tuple[int, float, float, float]:
    """n, bias and the 95 % limits of agreement (bias \u00b1 1.96 SD; Bland & Altman 1986)."""
    n = int(difference.notna().sum())
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1)) if n > 1 else float("nan")
    return n, bias, bias - 1.96 * sd, bias + 1.96 * sd


def _agreement_figure(pairs: pd.DataFrame, method: str, out_png: Path) -> Path:
    """Composite SUVR (top) and Centiloid (bottom) of ``method`` against ``mr``: scatter with the
    identity line (left) and Bland-Altman plot (right), one dot per session coloured by diagnosis."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 7.6), layout="constrained")
    diagnoses = _ordered(pairs["diagnosis"], _DIAGNOSIS_ORDER)
    for row, (column, unit) in enumerate((("suvr", "composite SUVR"), ("centiloid", "Centiloid"))):
        both = pairs[[column, f"{column}_reference", "diagnosis"]].dropna()
        scatter, ba = axes[row]
        if both.empty:
            for ax in (scatter, ba):
                ax.text(0.5, 0.5, f"no {unit} values", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            continue
        reference, value = both[f"{column}_reference"], both[column]
        mean, difference = (value + reference) / 2, value - reference
        for diagnosis in diagnoses:
            keep = both["diagnosis"] == diagnosis
            style = {"s": 32, "color": _diagnosis_colour(diagnosis), "edgecolor": "black", "linewidth": 0.4,
                     "zorder": 3}
            scatter.scatter(reference[keep], value[keep], label=diagnosis, **style)
            ba.scatter(mean[keep], difference[keep], **style)
        low, high = float(min(reference.min(), value.min())), float(max(reference.max(), value.max()))
        pad = 0.06 * (high - low or 1.0)
        scatter.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=1.0, ls="--", zorder=1)
        scatter.set_xlim(low - pad, high + pad)
        scatter.set_ylim(low - pad, high + pad)
        scatter.set_aspect("equal")
        scatter.set_xlabel(f"{unit}, method mr", fontsize=10)
        scatter.set_ylabel(f"{unit}, method {method}", fontsize=10)
        scatter.set_title(f"{unit}\n(dashed: identity)", fontsize=10)
        n, bias, lower, upper = _agreement_stats(difference)
        ba.axhline(0, color="grey", lw=0.6)
        ba.axhline(bias, color="black", lw=1.0)
        limits = [lower, upper] if np.isfinite(lower) else []
        for limit in limits:
            ba.axhline(limit, color="black", lw=0.9, ls="--")
        span = max(float(difference.abs().max()), abs(bias), *(abs(y) for y in limits)) * 1.3 or 1.0
        ba.set_ylim(-span, span)
        # The numbers go in the title, not beside the lines, where they would cover dots.
        numbers = f"bias {_plain(bias)}" + (f", limits {_plain(lower)} to {_plain(upper)}" if limits else "")
        ba.set_xlabel(f"mean of {method} and mr {unit}", fontsize=10)
        ba.set_ylabel(f"{method} \u2212 mr {unit}", fontsize=10)
        ba.set_title(f"Bland-Altman, {unit}, n = {n}\n{numbers}", fontsize=10)
        ba.legend(handles=[plt.Line2D([], [], color="black", lw=1.0, label="bias"),
                           plt.Line2D([], [], color="black", lw=0.9, ls="--", label="bias \u00b1 1.96 SD")],
                  frameon=False, fontsize=8, loc="best")
    fig.suptitle(f"Method {method} against the MR-based method mr, composite cortex", fontsize=12)
    fig.legend(handles=[plt.Line2D([], [], marker="o", ls="", markerfacecolor=_diagnosis_colour(d),
                                   markeredgecolor="black", label=d) for d in diagnoses],
               title="diagnosis", frameon=False, loc="outside lower center", ncol=len(diagnoses), fontsize=9)
    return _save(fig, out_png)


# ------------------------------------------------------------------------------- myelin

#: Wei 2019 Table 2's ROI of each group: WM of controls, NAWM and lesions of patients; a
#: patient's WM is its NAWM plus the lesions, so it would count the same voxels twice.
AGREEMENT_ROIS = {("control", "wm"): "control WM", ("patient", "nawm"): "patient NAWM",
                  ("patient", "lesion"): "patient lesion", ("n/a", "wm"): "WM (group n/a)"}
_GROUP_SOURCE_COLOURS = {("control", "synth"): "#9ecae1", ("control", "pib"): "#2171b5",
                         ("patient", "synth"): "#fdae6b", ("patient", "pib"): "#d94801",
                         ("n/a", "synth"): "#d9d9d9", ("n/a", "pib"): "#737373"}
_AGREEMENT_COLOURS = dict(zip(AGREEMENT_ROIS.values(), ("#2171b5", "#31a354", "#d94801", "#737373")))
_SOURCE_NAMES = {"synth": "predicted", "pib": "true (PIB PET)"}
_ROI_NAMES = {"lesion": "lesion", "nawm": "NAWM", "wm": "WM"}
_DVR_UNIT = "DVR (unitless; cerebellar GM = 1)"


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, out_png: Path) -> Path:
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    return out_png


def read_myelin_stats(path: Path) -> pd.DataFrame:
    """``group/myelin_stats.tsv`` with text columns kept as text (``n/a`` sessions stay ``n/a``)."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("mean_dvr", "n_voxels", "demyelinated_pct"):
        table[column] = pd.to_numeric(table[column].replace("n/a", ""), errors="coerce")
    return _myelin_keys(table)


def _myelin_keys(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in ("session_id", "site", "group"):
        table[column] = table[column].fillna("n/a").astype(str).replace({"": "n/a", "nan": "n/a"})
    table["key"] = table["participant_id"] + table["session_id"].map(lambda s: "" if s == "n/a" else f"_{s}")
    return table


def myelin_pairs(myelin: pd.DataFrame) -> pd.DataFrame:
    """Predicted against true ROI means, one row per session and agreement ROI
    (:data:`AGREEMENT_ROIS`): ``key group roi label synth pib mean difference``."""
    myelin = myelin if "key" in myelin else _myelin_keys(myelin)
    keys = ["key", "group", "roi"]
    synth = myelin[myelin["source"] == "synth"][keys + ["mean_dvr", "n_voxels"]]
    pib = myelin[myelin["source"] == "pib"][keys + ["mean_dvr"]]
    pairs = synth.merge(pib, on=keys, suffixes=("_synth", "_pib")).rename(
        columns={"mean_dvr_synth": "synth", "mean_dvr_pib": "pib"})
    pairs["label"] = [AGREEMENT_ROIS.get((g, r)) for g, r in zip(pairs["group"], pairs["roi"])]
    pairs = pairs[pairs["label"].notna() & (pairs["n_voxels"] > 0) & pairs["synth"].notna() & pairs["pib"].notna()]
    pairs = pairs.assign(mean=(pairs["synth"] + pairs["pib"]) / 2, difference=pairs["synth"] - pairs["pib"])
    return pairs.reset_index(drop=True)


def _roi_box_figure(myelin: pd.DataFrame, out_png: Path) -> Path:
    plt = _pyplot()
    from matplotlib.patches import Patch  # noqa: PLC0415

    groups = [g for g in ("control", "patient", "n/a") if (myelin["group"] == g).any()]
    sources = [s for s in ("synth", "pib") if (myelin["source"] == s).any()]
    combos = [(g, s) for g in groups for s in sources]
    rois = list(_ROI_NAMES)
    width = 0.8 / len(combos)
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: two runs give the same figure
    for j, roi in enumerate(rois):
        for i, (group, source) in enumerate(combos):
            values = myelin[(myelin["roi"] == roi) & (myelin["group"] == group) & (myelin["source"] == source)
                            & (myelin["n_voxels"] > 0)]["mean_dvr"].dropna().to_numpy()
            if values.size == 0:
                continue
            x = j + (i - (len(combos) - 1) / 2) * width
            box = ax.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                             medianprops={"color": "black"})
            box["boxes"][0].set_facecolor(_GROUP_SOURCE_COLOURS[(group, source)])
            ax.scatter(x + rng.uniform(-width * 0.2, width * 0.2, values.size), values, s=14, color="black",
                       zorder=3, linewidth=0)
    ax.set_xticks(range(len(rois)))
    ax.set_xticklabels([_ROI_NAMES[r] for r in rois], fontsize=10)
    ax.set_xlim(-0.5, len(rois) - 0.5)
    ax.set_ylabel(f"mean {_DVR_UNIT}", fontsize=10)
    ax.set_title("Mean [11C]PIB DVR per ROI, by group and source", fontsize=11)
    fig.legend(handles=[Patch(facecolor=_GROUP_SOURCE_COLOURS[c], edgecolor="black",
                             label=f"{c[0]}, {_SOURCE_NAMES[c[1]]}") for c in combos],
              frameon=False, loc="outside lower center", ncol=min(4, len(combos)), fontsize=9)
    return _save(fig, out_png)


def _bland_altman_figure(pairs: pd.DataFrame, out_png: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    for label in [lab for lab in AGREEMENT_ROIS.values() if (pairs["label"] == lab).any()]:
        part = pairs[pairs["label"] == label]
        ax.scatter(part["mean"], part["difference"], s=30, color=_AGREEMENT_COLOURS[label], label=label,
                   edgecolor="black", linewidth=0.4, zorder=3)
    bias = float(pairs["difference"].mean())
    ax.axhline(0, color="grey", lw=0.6)
    ax.axhline(bias, color="black", lw=1.0)
    lines = [(bias, f"bias {bias:+.3f}")]
    if len(pairs) > 1:
        sd = float(pairs["difference"].std(ddof=1))
        for sign in (-1, 1):
            ax.axhline(bias + sign * 1.96 * sd, color="black", lw=0.9, ls="--")
            limit = bias + sign * 1.96 * sd
            lines.append((limit, f"{'upper' if sign > 0 else 'lower'} limit {limit:+.3f}"))
    for y, text in lines:
        ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=9)
    span = max(0.05, float(pairs["difference"].abs().max()) * 1.3, *(abs(y) * 1.15 for y, _ in lines))
    ax.set_ylim(-span, span)
    ax.set_xlabel("mean of predicted and true DVR (unitless)", fontsize=10)
    ax.set_ylabel("predicted \u2212 true DVR (unitless)", fontsize=10)
    ax.set_title("Bland-Altman: predicted against true ROI-mean DVR", fontsize=11)
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    return _save(fig, out_png)


def _demyelinated_figure(lesions: pd.DataFrame, out_png: Path) -> Path:
    plt = _pyplot()
    keys = list(dict.fromkeys(lesions["key"]))
    sources = [s for s in ("synth", "pib") if (lesions["source"] == s).any()]
    width = 0.8 / len(sources)
    values = lesions.set_index(["key", "source"])["demyelinated_pct"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(keys) + 2.5), 4.0), layout="constrained")
    colours = {"synth": "#e07b39", "pib": "#3b75af"}
    for i, source in enumerate(sources):
        for j, key in enumerate(keys):
            x = j + (i - (len(sources) - 1) / 2) * width
            value = values.get((key, source), np.nan)
            ax.bar(x, value if np.isfinite(value) else 0.0, width=width * 0.95, color=colours[source],
                   label=_SOURCE_NAMES[source] if j == 0 else None)
            ax.text(x, (value if np.isfinite(value) else 0.0) + 0.5, f"{value:.1f}" if np.isfinite(value) else "n/a",
                    ha="center", va="bottom", fontsize=9, color="black" if np.isfinite(value) else "grey")
    ax.set_xticks(range(len(keys)))
    tilt = len(keys) > 6
    ax.set_xticklabels(keys, fontsize=10, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    highest = float(np.nanmax(lesions["demyelinated_pct"].to_numpy(dtype=float)))
    ax.set_ylim(0, min(105.0, max(20.0, 1.25 * highest)))  # low percentages stay readable
    ax.set_ylabel("demyelinated lesion voxels (%)", fontsize=10)
    ax.set_title("Demyelinated % of the lesions per patient", fontsize=11)
    fig.legend(frameon=False, fontsize=9, title="DVR source", loc="outside lower center", ncol=len(sources))
    return _save(fig, out_png)


def _number(value, digits: int) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _myelin_section(myelin: pd.DataFrame, group_dir: Path) -> str:
    figures_dir = group_dir / "figures"
    myelin = _myelin_keys(myelin)
    parts = []
    box = _roi_box_figure(myelin, figures_dir / "group_desc-roi_dvr.png")
    parts.append(_figure(box, "Mean [11C]PIB DVR (unitless; cerebellar grey matter = 1) per ROI, by group (control, "
                              "patient) and DVR source (predicted by the Sketcher-Refiner from MTR and DTI; true from "
                              "the dynamic PIB PET where one exists). Boxes: median and quartiles; whiskers: 1.5 IQR; "
                              "dots: sessions. Controls have no lesion, so no lesion box."))
    pairs = myelin_pairs(myelin)
    if pairs.empty:
        parts.append("<p>No session has both a predicted and a true DVR (no dynamic PIB PET): no Bland-Altman "
                     "plot.</p>")
    else:
        ba = _bland_altman_figure(pairs, figures_dir / "group_desc-blandaltman_dvr.png")
        parts.append(_figure(ba, "Bland-Altman plot of the ROI-mean DVR (unitless): predicted &minus; true against "
                                 "their mean, one dot per session and ROI (controls' WM; patients' NAWM and "
                                 "lesions: the ROIs of Wei 2019 Table 2). Solid line: the bias; dashed: the limits "
                                 "of agreement (bias &plusmn; 1.96 SD of the differences)."))
        rows = []
        for label in [lab for lab in AGREEMENT_ROIS.values() if (pairs["label"] == lab).any()]:
            part = pairs[pairs["label"] == label]
            sd = part["difference"].std(ddof=1) if len(part) > 1 else np.nan
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{len(part)}</td>"
                        f"<td>{_number(part['difference'].mean(), 3)}</td>"
                        f"<td>{_number(part['difference'].abs().mean(), 3)}</td><td>{_number(sd, 3)}</td></tr>")
        parts.append("<table><tr><th>ROI</th><th>n</th><th>bias (predicted &minus; true)</th>"
                     "<th>mean |difference|</th><th>SD of difference</th></tr>" + "".join(rows) + "</table>")
    lesions = myelin[(myelin["roi"] == "lesion") & (myelin["group"] != "control")]
    lesions = lesions[lesions["key"].isin(lesions[lesions["demyelinated_pct"].notna()]["key"])]
    norms = _hc_norms(group_dir)
    if norms:
        parts.append("<p>Healthy-control WM DVR norm(s) of this run, the reference for demyelination: " + "; ".join(
            f"<code>hc_wm_norm/{html.escape(name)}</code> ({html.escape(str(n))} controls)"
            for name, n in norms.items()) + ".</p>")
    if lesions.empty:
        n_controls = myelin[myelin["group"] == "control"]["key"].nunique()
        parts.append("<p>No demyelinated percentages yet. " + (
            "The norm now exists: run the participant level again (it classifies the lesion voxels), then the "
            "group level." if norms else
            f"They need a healthy-control WM norm, built here from at least {MIN_HC_SUBJECTS} controls; this run "
            f"has {n_controls}. Add controls, or pass <code>--hc-norm DIR</code> at the participant level.") +
            "</p>")
    else:
        demyelinated = _demyelinated_figure(lesions, figures_dir / "group_desc-demyelinated_pct.png")
        parts.append(_figure(demyelinated, "Percentage of each patient's lesion voxels classed as demyelinated "
                                           "(DVR below the healthy-control WM norm's mean &minus; k SD, in template "
                                           "space; Bodini 2016), from the predicted and from the true DVR. n/a: no "
                                           "norm of that source, or no DVR of that source."))
    parts.append(_myelin_table_html(myelin))
    n_subjects = myelin["participant_id"].nunique()
    counts = myelin.drop_duplicates("key")["group"].value_counts()
    head = (f"<h2>Myelin: [11C]PIB DVR from MTR and DTI</h2><p>{n_subjects} participants "
            f"({', '.join(f'{n} {html.escape(g)}' for g, n in counts.items())} sessions), "
            f"{myelin['site'].nunique()} site(s). Full table: <code>myelin_stats.tsv</code>.</p>")
    return head + "\n".join(parts)


def _hc_norms(group_dir: Path) -> dict[str, object]:
    """The norm descriptions in ``group/hc_wm_norm``: file name -> number of controls."""
    import json  # noqa: PLC0415

    norms = {}
    for path in sorted((group_dir / "hc_wm_norm").glob("hc_wm_norm_src-*.json")):
        try:
            norms[path.name] = json.loads(path.read_text()).get("NControls", "?")
        except (OSError, ValueError):
            norms[path.name] = "?"
    return norms


def _myelin_table_html(myelin: pd.DataFrame) -> str:
    sources = [s for s in ("synth", "pib") if (myelin["source"] == s).any()]
    values = myelin.set_index(["key", "source", "roi"])
    head = "<th>participant</th><th>session</th><th>site</th><th>group</th>" + "".join(
        f"<th>{_ROI_NAMES[r]} DVR, {s}</th>" for r in _ROI_NAMES for s in sources) + "".join(
        f"<th>demyelinated %, {s}</th>" for s in sources)
    rows = []
    for row in myelin.drop_duplicates("key").itertuples():
        cells = [row.participant_id, row.session_id, row.site, row.group]
        cells += [_number(values["mean_dvr"].get((row.key, s, r), np.nan), 3) for r in _ROI_NAMES for s in sources]
        cells += [_number(values["demyelinated_pct"].get((row.key, s, "lesion"), np.nan), 1) for s in sources]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _figure(path: Path, caption: str) -> str:
    return (f'<figure><img src="figures/{html.escape(path.name)}" width="800" alt="{html.escape(path.name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


# ------------------------------------------------------------------------------- page

def _amyloid_section(amyloid: pd.DataFrame, participants: pd.DataFrame | None, group_dir: Path) -> str:
    from synthquant.evaluation import compare_to_method, paired_with_method  # noqa: PLC0415

    figures_dir = group_dir / "figures"
    participants = participants if participants is not None else pd.DataFrame()
    diagnosis = participants["diagnosis"] if "diagnosis" in participants else pd.Series(dtype=str)
    amyloid = amyloid.copy()
    for column in ("session_id", "site"):  # read with na_values="n/a": show "n/a", not "nan"
        amyloid[column] = amyloid[column].fillna("n/a").astype(str)
    amyloid["diagnosis"] = amyloid["participant_id"].str.removeprefix("sub-").map(diagnosis).astype(object).fillna("n/a")
    composite = amyloid[amyloid["region"] == "composite"]
    methods = _methods(composite)
    parts = []
    figure = _centiloid_figure(composite, figures_dir / "group_desc-centiloid_bysite.png")
    parts.append(_figure(figure, "Centiloid of each session (dots, coloured by the site in participants.tsv) by the "
                                 "diagnosis in participants.tsv, one panel per method; black bar: the median. "
                                 "Dashed line: 0 CL (young controls); dotted: 100 CL (typical mild AD). "
                                 "Centiloid uses the GAAIN VOIs (whole cerebellum)."))
    parts.append(_centiloid_by_diagnosis_html(composite, methods))
    others = [m for m in methods if m != _REFERENCE_METHOD]
    if _REFERENCE_METHOD not in methods:
        parts.append(f"<p>No method <code>{_REFERENCE_METHOD}</code> in this run (no subject with a T1w, or not "
                     "asked for): no agreement plots, which compare each MR-less method with the MR-based one.</p>")
    elif not others:
        parts.append(f"<p>Only method <code>{_REFERENCE_METHOD}</code> ran: no MR-less method to compare "
                     "with it.</p>")
    else:
        pairs = paired_with_method(amyloid, _REFERENCE_METHOD, ("composite",))
        parts.append(f"<h3>MR-less methods against <code>{_REFERENCE_METHOD}</code></h3>")
        for method in others:
            paired = pairs[pairs["method"] == method]
            if paired.empty:
                parts.append(f"<p>Method <code>{html.escape(method)}</code>: no session also has "
                             f"<code>{_REFERENCE_METHOD}</code>.</p>")
                continue
            figure = _agreement_figure(paired, method, figures_dir / f"group_desc-{method}VsMr_agreement.png")
            parts.append(_figure(figure, _agreement_caption(paired, method)))
        table = compare_to_method(amyloid, _REFERENCE_METHOD)
        parts.append(_compare_table_html(table))
    rows = "".join(
        f"<tr><td>{html.escape(r.participant_id)}</td><td>{html.escape(str(r.session_id))}</td>"
        f"<td>{html.escape(str(r.site))}</td><td>{html.escape(str(r.diagnosis))}</td>"
        f"<td>{html.escape(r.method)}</td><td>{_number(r.suvr, 3)}</td><td>{_number(r.centiloid, 1)}</td></tr>"
        for r in composite.sort_values(["participant_id", "method"]).itertuples())
    parts.append("<table><tr><th>participant</th><th>session</th><th>site</th><th>diagnosis</th><th>method</th>"
                 f"<th>composite SUVR</th><th>Centiloid</th></tr>{rows}</table>")
    head = (f"<h2>Amyloid PET</h2><p>{composite['participant_id'].nunique()} participants, "
            f"{composite['site'].nunique()} site(s), methods {html.escape(', '.join(methods))}. Composite SUVR is "
            "referenced to cerebellar grey matter; Centiloid uses the GAAIN VOIs (see any subject's sidecar for "
            "the equation). Full table: <code>amyloid_suvr.tsv</code>.</p>")
    return head + "\n".join(parts)


def _agreement_caption(paired: pd.DataFrame, method: str) -> str:
    text = [(f"Method {html.escape(method)} against the MR-based method mr on the same sessions, composite cortex; "
             "one dot per session, coloured by diagnosis. Left: the value of each method, dashed identity line. "
             f"Right: Bland-Altman plot, {html.escape(method)} &minus; mr against their mean; solid line the bias, "
             "dashed the 95 % limits of agreement (bias &plusmn; 1.96 SD of the differences).")]
    for column, unit, digits in (("suvr", "SUVR", 3), ("centiloid", "Centiloid", 1)):
        n, bias, lower, upper = _agreement_stats(paired[column] - paired[f"{column}_reference"])
        text.append(f"{unit}: n = {n}, bias {_signed(bias, digits)}, limits of agreement "
                    f"{_signed(lower, digits)} to {_signed(upper, digits)}.")
    return " ".join(text)


def _plain(value: float) -> str:
    """Three significant digits with a true minus sign (figures)."""
    return f"{value:+.3g}".replace("-", "\u2212")


def _signed(value: float, digits: int) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.{digits}f}".replace("-", "&minus;")


def _compare_table_html(table: pd.DataFrame) -> str:
    """:func:`synthquant.evaluation.compare_to_method`'s SUVR numbers, one row per method and region."""
    rows = "".join(
        f"<tr><td>{html.escape(r.method)}</td><td>{html.escape(r.region.replace('_', ' '))}</td><td>{r.n}</td>"
        f"<td>{_number(r.bias, 3)}</td><td>{_number(r.mae, 3)}</td><td>{_number(r.sd_abs_error, 3)}</td>"
        f"<td>{_number(r.max_abs_error, 3)}</td></tr>" for r in table.itertuples())
    return ("<p>SUVR of each MR-less method against mr on the same sessions, per region (Choi &amp; Lee 2018, "
            "Table 2); difference = method &minus; mr.</p><table><tr><th>method</th><th>region</th><th>n</th>"
            "<th>bias</th><th>mean |difference|</th><th>SD of |difference|</th><th>max |difference|</th></tr>"
            f"{rows}</table>")


def _centiloid_by_diagnosis_html(composite: pd.DataFrame, methods: list[str]) -> str:
    """Median Centiloid (n) per diagnosis and site, one row per method and diagnosis."""
    diagnoses = _ordered(composite["diagnosis"], _DIAGNOSIS_ORDER)
    sites = sorted(composite["site"].unique())
    groups = composite.groupby(["method", "diagnosis", "site"])["centiloid"]
    medians, counts = groups.median(), groups.count()
    rows = []
    for method in methods:
        for diagnosis in diagnoses:
            cells = [f"{_number(medians[(method, diagnosis, site)], 1)} ({counts[(method, diagnosis, site)]})"
                     if (method, diagnosis, site) in medians.index else "&ndash;" for site in sites]
            rows.append(f"<tr><td>{html.escape(method)}</td><td>{html.escape(diagnosis)}</td>"
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<p>Median Centiloid (number of sessions) by diagnosis and site.</p><table><tr><th>method</th>"
            "<th>diagnosis</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in sites) + "</tr>"
            + "".join(rows) + "</table>")


def write_group_report(group_dir: Path, *, participants: pd.DataFrame | None = None,
                       amyloid: pd.DataFrame | None = None, myelin: pd.DataFrame | None = None) -> Path:
    """``group/group.html`` with its figures under ``group/figures/``: an amyloid section and a
    myelin section, each where its table exists (given here, else ``amyloid_suvr.tsv`` or
    ``myelin_stats.tsv`` in ``group_dir``)."""
    group_dir = Path(group_dir)
    if amyloid is None and (group_dir / "amyloid_suvr.tsv").is_file():
        amyloid = pd.read_csv(group_dir / "amyloid_suvr.tsv", sep="\t", na_values="n/a")
    if myelin is None and (group_dir / "myelin_stats.tsv").is_file():
        myelin = read_myelin_stats(group_dir / "myelin_stats.tsv")
    sections = []
    if amyloid is not None and not amyloid.empty:
        sections.append(_amyloid_section(amyloid, participants, group_dir))
    if myelin is not None and not myelin.empty:
        sections.append(_myelin_section(myelin, group_dir))
    if not sections:
        raise ValueError(f"no group table in {group_dir}: nothing to report")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthquant: group</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figcaption{{color:#555;margin-bottom:1em}}</style>
</head><body><h1>synthquant: group summary</h1>
{"".join(sections)}
</body></html>
"""
    return atomic_write_text(page, group_dir / "group.html")
