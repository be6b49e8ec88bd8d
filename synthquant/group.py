"""Group level: gather every session's regional SUVR into ``group/amyloid_suvr.tsv``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from synthquant.errors import InputError
from synthquant.image import atomic_write_text

#: DESIGN "Outputs": the exact columns of the group SUVR table.
AMYLOID_COLUMNS = ["participant_id", "session_id", "site", "tracer", "method", "region", "suvr", "centiloid",
                   "n_voxels"]
_SUVR_TABLE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(_ses-(?P<ses>[A-Za-z0-9]+))?_trc-(?P<trc>[A-Za-z0-9]+)"
                         r"_space-[A-Za-z0-9]+_seg-AAL2_desc-(?P<method>[A-Za-z0-9]+)_suvr\.tsv$")


def collect_amyloid(output_dir: Path) -> pd.DataFrame:
    """Long table of every regional SUVR file in the derivatives tree."""
    frames = []
    for path in sorted(Path(output_dir).glob("sub-*/**/pet/*_seg-AAL2_*_suvr.tsv")):
        match = _SUVR_TABLE.match(path.name)
        if not match:
            continue
        sidecar = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        table.insert(0, "participant_id", f"sub-{match['sub']}")
        table.insert(1, "session_id", f"ses-{match['ses']}" if match["ses"] else "n/a")
        table.insert(2, "site", sidecar.get("Site", "n/a"))
        table.insert(3, "tracer", match["trc"])
        table.insert(4, "method", match["method"])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=AMYLOID_COLUMNS)
    return pd.concat(frames, ignore_index=True)[AMYLOID_COLUMNS]


def run_group(output_dir: Path, bids_dir: Path) -> dict[str, Path]:
    """Write ``group/amyloid_suvr.tsv`` and ``group/group.html``; refuse when no participant
    output exists yet."""
    from synthquant.bids import participants_table  # noqa: PLC0415
    from synthquant.quantify import format_table  # noqa: PLC0415
    from synthquant.reports.group import write_group_report  # noqa: PLC0415

    amyloid = collect_amyloid(output_dir)
    if amyloid.empty:
        raise InputError(output_dir, "no participant-level SUVR tables found; run the participant level first")
    amyloid["n_voxels"] = amyloid["n_voxels"].astype(int)
    group_dir = Path(output_dir) / "group"
    table = atomic_write_text(format_table(amyloid), group_dir / "amyloid_suvr.tsv")
    report = write_group_report(amyloid, participants_table(Path(bids_dir)), group_dir)
    return {"amyloid_suvr": table, "report": report}


def build_pet_templates_from_run(output_dir: Path, bids_dir: Path, *, n_levels: int = 4) -> dict[str, Path]:
    """Average this run's mr-normalised PETs into FBP PET templates (Choi & Lee 2018), written
    to ``group/pet_templates``: a normal-control template and ``n_levels`` multiatlas ones."""
    from synthquant.bids import dataset_provenance  # noqa: PLC0415
    from synthquant.pettemplates import build_pet_templates, training_set_from_derivatives  # noqa: PLC0415

    maps, composites, diagnoses = training_set_from_derivatives(output_dir, bids_dir, method="mr")
    name, synthetic = dataset_provenance(Path(bids_dir))
    built = build_pet_templates(maps, composites, diagnoses, Path(output_dir) / "group" / "pet_templates",
                                n_levels=n_levels, dataset=name, synthetic=synthetic)
    return {"pet_templates": built["manifest"]}
