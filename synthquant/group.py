"""Group level: gather every session's tables into ``group/amyloid_suvr.tsv`` and
``group/myelin_stats.tsv``, and build the healthy-control WM DVR norm of the myelin arm."""

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


def collect_myelin(output_dir: Path) -> pd.DataFrame:
    """Every session's myelin ROI rows (``*_trc-PIB_myelinstats.tsv``), in table order."""
    from synthquant.myelin import MYELIN_COLUMNS  # noqa: PLC0415

    frames = [pd.read_csv(path, sep="\t", na_values="n/a", dtype={"session_id": str})
              for path in sorted(Path(output_dir).glob("sub-*/**/pet/*_trc-PIB_myelinstats.tsv"))]
    if not frames:
        return pd.DataFrame(columns=MYELIN_COLUMNS)
    table = pd.concat(frames, ignore_index=True)[MYELIN_COLUMNS]
    table["n_voxels"] = table["n_voxels"].astype(int)
    return table


def _session_files(output_dir: Path, participant_id: str, session_id: str) -> tuple[Path, str]:
    folder = Path(output_dir) / participant_id
    prefix = participant_id
    if isinstance(session_id, str) and session_id not in ("", "n/a") and session_id == session_id:
        folder, prefix = folder / session_id, f"{participant_id}_{session_id}"
    return folder, prefix


def build_hc_norms(output_dir: Path, myelin: pd.DataFrame) -> dict[str, Path]:
    """The healthy-control WM DVR norm in template space, per DVR source, from this run.

    Bodini 2016 (Wei §3.5): the voxel-wise mean and SD of the controls' WM DVR
    (:func:`synthquant.myelin.build_hc_wm_norm`). ``pib`` uses the controls' true DVR from
    their dynamic PIB PET, ``synth`` their predicted DVR (where no PIB exists, it is the only
    one); each is written with the controls it came from, into ``group/hc_wm_norm``. A source
    with fewer than :data:`synthquant.myelin.MIN_HC_SUBJECTS` controls gets no norm.
    """
    from synthquant.atlases import TEMPLATE_SPACE  # noqa: PLC0415
    from synthquant.myelin import MIN_HC_SUBJECTS, build_hc_wm_norm, save_hc_wm_norm  # noqa: PLC0415

    controls = myelin[(myelin["group"] == "control") & (myelin["roi"] == "wm")]
    written = {}
    for source in ("pib", "synth"):
        dvr_maps, wm_maps, subjects = [], [], []
        for row in controls[controls["source"] == source].itertuples():
            folder, prefix = _session_files(output_dir, row.participant_id, row.session_id)
            dvr = folder / "pet" / f"{prefix}_trc-PIB_space-{TEMPLATE_SPACE}_desc-{source}_dvr.nii.gz"
            wm = folder / "anat" / f"{prefix}_space-{TEMPLATE_SPACE}_label-WM_probseg.nii.gz"
            if dvr.is_file() and wm.is_file():
                dvr_maps.append(dvr)
                wm_maps.append(wm)
                subjects.append(prefix)
        if len(subjects) < MIN_HC_SUBJECTS:
            continue
        norm = build_hc_wm_norm(dvr_maps, wm_maps)
        import nibabel as nib  # noqa: PLC0415

        written[f"hc_wm_norm_{source}"] = save_hc_wm_norm(
            norm, Path(output_dir) / "group" / "hc_wm_norm", affine=nib.load(str(dvr_maps[0])).affine, source=source,
            subjects=subjects)
    return written


def run_group(output_dir: Path, bids_dir: Path) -> dict[str, Path]:
    """Write the group tables, the HC WM norm(s) and ``group/group.html``; refuse when no
    participant output exists yet."""
    from synthquant.bids import participants_table  # noqa: PLC0415
    from synthquant.myelin import write_myelin_table  # noqa: PLC0415
    from synthquant.quantify import format_table  # noqa: PLC0415
    from synthquant.reports.group import write_group_report  # noqa: PLC0415

    amyloid = collect_amyloid(output_dir)
    myelin = collect_myelin(output_dir)
    if amyloid.empty and myelin.empty:
        raise InputError(output_dir, "no participant-level tables found; run the participant level first")
    group_dir = Path(output_dir) / "group"
    written = {}
    if not amyloid.empty:
        amyloid["n_voxels"] = amyloid["n_voxels"].astype(int)
        written["amyloid_suvr"] = atomic_write_text(format_table(amyloid), group_dir / "amyloid_suvr.tsv")
    if not myelin.empty:
        written["myelin_stats"] = write_myelin_table(myelin, group_dir)
        written.update(build_hc_norms(output_dir, myelin))
    # One page for whichever arms this output holds (an empty table: no section).
    written["report"] = write_group_report(group_dir, participants=participants_table(Path(bids_dir)),
                                          amyloid=amyloid, myelin=myelin)
    return written


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
