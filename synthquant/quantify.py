"""Regional SUVR and Centiloid: the one home for ROI means.

Everything here works on arrays already on the working template grid
(:func:`synthquant.atlases.working_grid`), with masks from
:func:`synthquant.atlases.region_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthquant.atlases import aal2_table, region_masks
from synthquant.atlases.regions import REFERENCE_REGION, SUMMARY_REGIONS
from synthquant.errors import InputError


@dataclass(frozen=True)
class CentiloidEquation:
    """A linear SUVR -> Centiloid map, CL = slope * SUVR + intercept, with its source."""

    tracer: str
    slope: float
    intercept: float
    reference: str
    source: str

    def __call__(self, suvr: float) -> float:
        return self.slope * suvr + self.intercept


#: Florbetapir with the standard GAAIN pipeline (ctx VOI over whole-cerebellum VOI):
#: Navitsky et al., Alzheimer's Dement 2018;14:1565-71, "Standardization of amyloid
#: quantitation with florbetapir standardized uptake value ratios to the Centiloid scale",
#: CL = 175.4 * SUVR - 182.3. We use the GAAIN VOIs themselves, so this is the matching
#: equation; the same paper's 183.07 * SUVR - 177.26 belongs to Avid's own regions.
FBP_CENTILOID = CentiloidEquation(
    tracer="FBP", slope=175.4, intercept=-182.3, reference="GAAIN WhlCbl",
    source="Navitsky et al. 2018, Alzheimers Dement 14:1565 (standard GAAIN method)",
)
#: [11C]PiB, by the definition of the scale: Klunk et al., Alzheimers Dement 2015;11:1-15.
PIB_CENTILOID = CentiloidEquation(
    tracer="PIB", slope=100 / 1.067, intercept=-100 * 1.009 / 1.067, reference="GAAIN WhlCbl",
    source="Klunk et al. 2015, Alzheimers Dement 11:1 (Centiloid definition)",
)
CENTILOID_EQUATIONS = {eq.tracer: eq for eq in (FBP_CENTILOID, PIB_CENTILOID)}


def parse_centiloid_equation(text: str, tracer: str) -> CentiloidEquation:
    """A user-named equation ``SLOPE,INTERCEPT`` (for tracers we hold no equation for)."""
    try:
        slope, intercept = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(None, f"--centiloid-equation must be 'SLOPE,INTERCEPT', got {text!r}") from None
    return CentiloidEquation(tracer, slope, intercept, "GAAIN WhlCbl", "named by the user (--centiloid-equation)")


def roi_mean(image: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Mean of ``image`` over ``mask`` (finite voxels only) and the voxel count."""
    values = image[mask]
    values = values[np.isfinite(values)]
    return (float(values.mean()) if values.size else float("nan")), int(values.size)


def reference_value(pet: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> float:
    """Mean uptake in the reference region (GM-masked cerebellum)."""
    masks = masks or region_masks()
    value, n = roi_mean(pet, masks[REFERENCE_REGION])
    if not n or not np.isfinite(value) or value <= 0:
        raise InputError(None, "reference region (cerebellar GM) has no positive uptake in template space")
    return value


def suvr_map(pet: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """The PET divided by its cerebellar-GM mean; returns the map and the reference mean."""
    ref = reference_value(pet, masks)
    return (pet / ref).astype(np.float32), ref


def regional_suvr(
    suvr: np.ndarray,
    masks: dict[str, np.ndarray] | None = None,
    equation: CentiloidEquation | None = FBP_CENTILOID,
) -> pd.DataFrame:
    """Regional SUVR table from an SUVR map on the working grid.

    Rows: ``composite``, the four composite sub-regions, then every AAL2 label (∩ GM).
    Columns: ``region``, ``suvr``, ``centiloid`` (composite row only; NaN elsewhere),
    ``n_voxels``. Composite values are voxel-weighted means over the union of its regions
    (Choi & Lee 2018: "mean SUVR in the GM-masked region consisting of ...").

    Centiloid uses the GAAIN cortical VOI over the GAAIN whole-cerebellum VOI
    (Klunk 2015), computed from the same map, whatever its own reference.
    """
    masks = masks or region_masks()
    rows = []
    for region in (*SUMMARY_REGIONS, *aal2_table()["name"]):
        value, n = roi_mean(suvr, masks[region])
        rows.append({"region": region, "suvr": value, "centiloid": np.nan, "n_voxels": n})
    table = pd.DataFrame(rows)
    if equation is not None:
        table.loc[table["region"] == "composite", "centiloid"] = equation(centiloid_suvr(suvr, masks))
    return table


def centiloid_suvr(image: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> float:
    """SUVR of the GAAIN cortical VOI referenced to the GAAIN whole-cerebellum VOI."""
    masks = masks or region_masks()
    ctx, _ = roi_mean(image, masks["centiloid_ctx"])
    whole_cerebellum, _ = roi_mean(image, masks["centiloid_WhlCbl"])
    return ctx / whole_cerebellum


def centiloid_equation_for(tracer: str, user_equation: str | None = None) -> CentiloidEquation:
    """The user's equation where named, else the built-in one for the tracer."""
    if user_equation:
        return parse_centiloid_equation(user_equation, tracer)
    if tracer in CENTILOID_EQUATIONS:
        return CENTILOID_EQUATIONS[tracer]
    raise InputError(None, f"no Centiloid equation for tracer '{tracer}'; name one with --centiloid-equation")


def quantify_static_pet(pet_template: str | Path, out_dir: str | Path, *, tracer: str = "FBP",
                        centiloid_equation: str | None = None) -> dict:
    """SUVR map and regional table from a static PET already on the working grid.

    Returns ``{"suvr_map", "suvr_table", "metadata"}`` (paths and sidecar fields).
    """
    from synthquant.image import atomic_write_text, load_image, save_image  # noqa: PLC0415

    out_dir = Path(out_dir)
    img = load_image(pet_template, require_nonzero=True)
    pet = img.get_fdata(dtype=np.float32)
    masks = region_masks()
    suvr, reference = suvr_map(pet, masks)
    equation = centiloid_equation_for(tracer, centiloid_equation)
    table = regional_suvr(suvr, masks, equation)
    suvr_file = save_image(suvr, img.affine, out_dir / "suvr.nii.gz")
    table_file = atomic_write_text(format_table(table), out_dir / "suvr.tsv")
    metadata = {
        "ReferenceRegion": "cerebellar grey matter: AAL2 cerebellum (hemispheres and vermis) "
                           "∩ MNI152 2009a GM prior ≥ 0.5",
        "ReferenceMeanUptake": round(reference, 6),
        "CentiloidEquation": f"CL = {equation.slope:g} * SUVR_ctx/WhlCbl {equation.intercept:+g}",
        "CentiloidEquationSource": equation.source,
        "CentiloidVOIs": "GAAIN ctx and WhlCbl (amypet 1.6.0 data files)",
        "Centiloid": round(float(table.loc[table.region == "composite", "centiloid"].iloc[0]), 3),
        "CompositeSUVR": round(float(table.loc[table.region == "composite", "suvr"].iloc[0]), 5),
    }
    return {"suvr_map": str(suvr_file), "suvr_table": str(table_file), "metadata": metadata}


def format_table(table: pd.DataFrame) -> str:
    """TSV text with ``n/a`` for missing values (BIDS) and 4 decimals, so reruns give identical
    files (multi-threaded ANTs differs by ~1e-3 mm between runs; see synthquant.registration)."""
    return table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.4f")
