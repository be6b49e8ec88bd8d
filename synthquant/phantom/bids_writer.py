"""Writing a raw BIDS dataset: names, sidecars, tables, and an all-or-nothing output folder.

Every phantom cohort is built in a hidden sibling folder and renamed into place at the end,
so an interrupted run never leaves a half-written dataset (STYLE, "House habits").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from synthquant import __version__
from synthquant.errors import InputError
from synthquant.image import atomic_write_text, save_image

BIDS_VERSION = "1.10.0"
GENERATOR = "synthquant.phantom"


def subject_labels(n_subjects: int) -> list[str]:
    """``01``, ``02``, ... zero-padded to a common width (BIDS labels are alphanumeric)."""
    width = max(2, len(str(n_subjects)))
    return [f"{i + 1:0{width}d}" for i in range(n_subjects)]


def bids_path(root: Path, label: str, datatype: str, suffix: str, extension: str,
              entities: tuple[tuple[str, str], ...] = ()) -> Path:
    """``root/sub-L/datatype/sub-L[_key-value...]_suffix.extension``."""
    stem = "_".join([f"sub-{label}", *(f"{k}-{v}" for k, v in entities), suffix])
    return Path(root) / f"sub-{label}" / datatype / f"{stem}{extension}"


def _plain(value):
    """numpy scalars and arrays as JSON-native values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(data: dict, path: Path) -> Path:
    """A JSON file, indented, with a final newline."""
    return atomic_write_text(json.dumps(data, indent=2, default=_plain) + "\n", path)


def write_tsv(table: pd.DataFrame, path: Path, float_format: str = "%.6f") -> Path:
    """A BIDS TSV: tab-separated, missing values as ``n/a``."""
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format=float_format,
                        lineterminator="\n")
    return atomic_write_text(text, path)


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype, *, scaled: bool = False) -> Path:
    """NIfTI with spatial units mm and time units s (PET frames are seconds apart).

    ``scaled``: float data stored as scaled ``dtype`` integers (see :func:`save_image`).
    """
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "sec")
    if scaled:
        return save_image(data, affine, path, header=header, stored_dtype=dtype)
    return save_image(data, affine, path, dtype=dtype, header=header)


def write_dataset_description(root: Path, name: str, *, seed: int, preset: str) -> Path:
    """The raw dataset's ``dataset_description.json``."""
    return write_json({
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["synthquant developers"],
        "HowToAcknowledge": "Synthetic data made by synthquant.phantom; no human subjects.",
        "GeneratedBy": [{
            "Name": GENERATOR,
            "Version": __version__,
            "Description": f"phantom cohort, preset {preset}, seed {seed}",
        }],
    }, root / "dataset_description.json")


def write_participants(root: Path, participants: pd.DataFrame, columns: dict[str, dict]) -> None:
    """``participants.tsv`` and the ``participants.json`` that describes its columns."""
    write_tsv(participants, root / "participants.tsv", float_format="%g")
    write_json({c: columns[c] for c in participants.columns if c in columns},
               root / "participants.json")


def _is_phantom(folder: Path) -> bool:
    try:
        description = json.loads((folder / "dataset_description.json").read_text())
        return any(g.get("Name") == GENERATOR for g in description.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def staged_dataset(out_dir: str | Path, overwrite: bool = False):
    """Yield a hidden staging folder that becomes ``out_dir`` only when the block succeeds.

    An existing non-empty ``out_dir`` is refused, unless ``overwrite`` is set and it holds
    a phantom dataset made earlier (never another folder).
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(out_dir, "exists and is not a folder")
        if any(out_dir.iterdir()) and not (overwrite and _is_phantom(out_dir)):
            reason = "is not a phantom dataset; refusing to overwrite" if overwrite else \
                "exists and is not empty (use overwrite to replace a phantom dataset)"
            raise InputError(out_dir, reason)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_derivative_description(root: Path, name: str, *, seed: int, preset: str, description: str,
                                 raw: str = "../..") -> Path:
    """``dataset_description.json`` of a derivatives dataset made with a phantom cohort, nested
    in the raw dataset (``raw``: its path, named ``raw`` in BIDS URIs such as ``bids:raw:sub-01/...``)."""
    return write_json({
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": GENERATOR,
            "Version": __version__,
            "Description": f"{description}; phantom cohort, preset {preset}, seed {seed}",
        }],
        "SourceDatasets": [{"URL": raw}],
        "DatasetLinks": {"raw": raw},
    }, Path(root) / "dataset_description.json")


def balanced_roster(n_subjects: int, sites, seed: int, *, stream: int, diagnoses, age_range: dict, groups: dict,
                    draw_sex) -> "pd.DataFrame":
    """participants.tsv rows: sites and diagnoses balanced, demographics drawn from ``seed``.

    Subject ``i`` goes to site ``i mod n_sites``; diagnoses rotate with a per-site offset, so
    every site gets every diagnosis as soon as it has ``len(diagnoses)`` subjects. The rows are
    then shuffled so that labels do not encode the design. ``stream`` separates the random
    streams of different cohorts; ``draw_sex(rng)`` returns "F" or "M".
    """
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    rng = np.random.default_rng([seed, stream])
    n_sites = len(sites)
    design = [(sites[i % n_sites].name, diagnoses[(i // n_sites + i % n_sites) % len(diagnoses)])
              for i in range(n_subjects)]
    order = rng.permutation(n_subjects)
    rows = []
    for label, i in zip(subject_labels(n_subjects), order):
        site, diagnosis = design[i]
        low, high = age_range[diagnosis]
        rows.append({"participant_id": f"sub-{label}", "site": site, "diagnosis": diagnosis,
                     "group": groups[diagnosis], "age": int(rng.integers(low, high + 1)), "sex": draw_sex(rng)})
    return pd.DataFrame(rows)
