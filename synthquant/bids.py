"""BIDS in and out: dataset discovery (pybids), input checks, sites, derivatives writing.

Discovery is the edge where bad input fails: every file a subject needs is opened and
checked here, before any graph is built, so a bad subject is reported in one line and left
out while the others run.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from synthquant import __version__
from synthquant.errors import InputError
from synthquant.image import atomic_output, atomic_write_text, load_image
from synthquant.pet import read_sidecar, select_frames, static_window

#: BIDS labels are alphanumeric (BIDS 1.9, "Entities": label = [a-zA-Z0-9]+).
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
#: Tracer labels taken as florbetapir.
FBP_LABELS = {"fbp", "av45", "florbetapir"}
PIPELINE_NAME = "synthquant"


def clean_label(label: str, *, what: str = "participant label") -> str:
    """Strip a ``sub-`` prefix and refuse anything that is not a BIDS label.

    Path characters (``/``, ``..``, ``~``) never reach the file system.
    """
    text = str(label)
    if text.startswith("sub-"):
        text = text[4:]
    if not _LABEL.match(text):
        raise InputError(None, f"{what} {label!r} is not a BIDS label (letters and digits only)")
    return text


def sidecar_of(image: str | Path) -> Path:
    """The JSON sidecar beside a NIfTI file (``x.nii.gz`` or ``x.nii`` -> ``x.json``)."""
    image = Path(image)
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    return image.with_name(stem + ".json")


def _inside(path: Path, root: Path, what: str = "the BIDS dataset") -> Path:
    """Refuse a file that resolves (through links) outside the dataset (or ``what`` root)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputError(path, f"resolves outside {what}; refusing to follow it")
    return path


def session_key(subject: str, session: str | None) -> str:
    """``sub-01`` or ``sub-01_ses-1``: the key of discovery results and tables."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


@dataclass
class AmyloidInputs:
    """One PET session of the amyloid arm, checked and ready to process."""

    subject: str
    session: str | None
    site: str
    tracer: str
    pet: Path
    pet_sidecar: dict
    t1w: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return session_key(self.subject, self.session)


@dataclass
class Discovery:
    """What discovery found: runnable sessions, and the ones refused with their reasons."""

    amyloid: list[AmyloidInputs]
    refused: dict[str, str]   # "sub-X[_ses-Y]" -> one-line reason


def load_layout(bids_dir: Path):
    """A pybids layout of the raw dataset (derivatives ignored)."""
    from bids.layout import BIDSLayout  # noqa: PLC0415 - slow import

    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    except Exception as err:  # pybids raises many types on a malformed dataset
        raise InputError(bids_dir, f"pybids cannot index the dataset ({err})") from None


def participants_table(bids_dir: Path) -> pd.DataFrame:
    """participants.tsv, indexed by label without ``sub-``; empty if absent."""
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table:
        raise InputError(path, "has no participant_id column")
    table.index = table["participant_id"].str.removeprefix("sub-")
    duplicated = sorted(set(table.index[table.index.duplicated()]))
    if duplicated:
        raise InputError(path, f"participant_id listed more than once: {', '.join('sub-' + d for d in duplicated)}")
    return table


def site_of(subject: str, participants: pd.DataFrame, *sidecars: dict) -> str:
    """DESIGN "Site": participants.tsv ``site``, else the sidecar InstitutionName, else ``n/a``."""
    if "site" in participants and subject in participants.index:
        value = str(participants.loc[subject, "site"]).strip()
        if value and value != "n/a":
            return value
    for sidecar in sidecars:
        if sidecar.get("InstitutionName"):
            return str(sidecar["InstitutionName"])
    return "n/a"


#: participants.tsv ``diagnosis`` values that give the myelin arm's group when ``group`` is absent.
DIAGNOSIS_GROUP = {"HC": "control", "MS": "patient"}
#: The myelin arm's groups (DESIGN ``group/myelin_stats.tsv``), besides ``n/a``.
GROUPS = ("control", "patient")


def group_of(subject: str, participants: pd.DataFrame) -> str:
    """``control``, ``patient`` or ``n/a``: participants.tsv ``group``, else ``diagnosis`` (HC, MS)."""
    if subject not in participants.index:
        return "n/a"
    row = participants.loc[subject]
    group = str(row.get("group", "")).strip()
    if group.lower() in GROUPS:
        return group.lower()
    for value in (group, str(row.get("diagnosis", "")).strip()):
        if value.upper() in DIAGNOSIS_GROUP:
            return DIAGNOSIS_GROUP[value.upper()]
    return "n/a"


def select_subjects(bids_dir: Path, requested: tuple[str, ...]) -> list[str]:
    """The requested labels (all if none), each checked to be a label and a ``sub-`` folder."""
    bids_dir = Path(bids_dir)
    available = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir() and _LABEL.match(p.name[4:]))
    if not requested:
        return available
    labels = [clean_label(label) for label in requested]
    missing = [label for label in labels if label not in available]
    if missing:
        raise InputError(bids_dir, f"participant(s) not in the dataset: {', '.join('sub-' + m for m in missing)}")
    return labels


def tracer_of(pet: Path, sidecar: dict, entity: str | None) -> str:
    """Canonical tracer label: ``FBP`` for florbetapir, else the ``trc-`` label as given."""
    names = {str(entity or "").lower(), str(sidecar.get("TracerName", "")).lower()}
    if names & FBP_LABELS:
        return "FBP"
    if entity:
        return str(entity)
    raise InputError(pet, "no trc- entity and no TracerName: cannot tell the tracer")


def check_amyloid_session(inputs: AmyloidInputs, *, centiloid_equation: str | None) -> None:
    """Open and check every file of one session; raise InputError on the first problem."""
    if inputs.tracer != "FBP" and not centiloid_equation:
        raise InputError(inputs.pet, f"tracer '{inputs.tracer}' is not florbetapir (FBP); name its Centiloid "
                                     "equation with --centiloid-equation SLOPE,INTERCEPT to process it")
    pet = load_image(inputs.pet, ndim=(3, 4))
    sidecar_path = sidecar_of(inputs.pet)
    if pet.ndim == 4:
        if pet.shape[3] > 1 and not ("FrameTimesStart" in inputs.pet_sidecar and "FrameDuration" in inputs.pet_sidecar):
            raise InputError(sidecar_path, f"4D PET ({pet.shape[3]} frames) but the sidecar has no "
                                           "FrameTimesStart/FrameDuration: cannot pick the 50-70 min frames")
        starts = inputs.pet_sidecar.get("FrameTimesStart", [0])
        if pet.shape[3] != len(starts):
            raise InputError(sidecar_path, f"sidecar lists {len(starts)} frames, the image has {pet.shape[3]}")
        select_frames(starts, inputs.pet_sidecar.get("FrameDuration", [0]), static_window(inputs.tracer),
                      source=sidecar_path)
    else:
        inputs.notes.append("3D PET taken as already averaged over the static window")
    if inputs.t1w is not None:
        load_image(inputs.t1w, ndim=(3,))


def _sessions(layout, bids_dir: Path, participant_labels: tuple[str, ...]):
    """``(subject, session, key, query)`` for each session (or subject without sessions) requested.

    ``query`` selects that session's NIfTI files as pybids objects: ``layout.get(suffix=..., **query)``.
    """
    for subject in select_subjects(bids_dir, participant_labels):
        for session in layout.get_sessions(subject=subject) or [None]:
            query = {"subject": subject, "extension": [".nii.gz", ".nii"], "return_type": "object"}
            if session:
                query["session"] = session
            yield subject, session, session_key(subject, session), query


def discover(bids_dir: Path, participant_labels: tuple[str, ...] = (), *,
             centiloid_equation: str | None = None) -> Discovery:
    """Find and check every PET session of the requested participants."""
    bids_dir = Path(bids_dir)
    layout = load_layout(bids_dir)
    participants = participants_table(bids_dir)
    found, refused = [], {}
    for subject, session, key, query in _sessions(layout, bids_dir, participant_labels):
        pets = [f for f in layout.get(suffix="pet", datatype="pet", **query)
                if str(f.entities.get("tracer", "")).upper() != "PIB"]  # PIB serves the myelin arm
        if not pets:
            continue
        try:
            if len(pets) > 1:
                raise InputError(pets[0].path, f"{len(pets)} amyloid PET runs in one session; expected one")
            pet = _inside(Path(pets[0].path), bids_dir)
            sidecar_path = sidecar_of(pet)
            sidecar = read_sidecar(sidecar_path) if sidecar_path.exists() else layout.get_metadata(str(pet))
            t1ws = layout.get(suffix="T1w", datatype="anat", **query)
            t1w = _inside(Path(t1ws[0].path), bids_dir) if t1ws else None
            t1w_sidecar = layout.get_metadata(str(t1w)) if t1w else {}
            inputs = AmyloidInputs(
                subject=subject, session=session, site=site_of(subject, participants, sidecar, t1w_sidecar),
                tracer=tracer_of(pet, sidecar, pets[0].entities.get("tracer")), pet=pet,
                pet_sidecar=sidecar, t1w=t1w,
            )
            check_amyloid_session(inputs, centiloid_equation=centiloid_equation)
            found.append(inputs)
        except InputError as err:
            refused[key] = str(err)
    return Discovery(amyloid=found, refused=refused)


# --- myelin arm ----------------------------------------------------------------------------

#: The lesion masks' derivatives dataset inside BIDS_DIR (DESIGN "Inputs"), unless --lesion-dir.
LESION_SUBDIR = Path("derivatives") / "lesions"


@dataclass(frozen=True)
class MyelinInputs:
    """One session of the myelin arm, every file opened and checked.

    The MTR is either ``mtr`` (an ``MTRmap``, percent) or the ``mt_on``/``mt_off`` pair (used
    only where no MTRmap exists). ``pib`` is the dynamic [11C]PIB PET (true DVR, for training
    and validation); ``lesion`` the lesion mask on the T1w grid. Either may be absent.
    """

    subject: str
    session: str | None
    site: str
    group: str              # "control", "patient" or "n/a"
    t1w: Path
    mtr: Path | None
    mt_on: Path | None
    mt_off: Path | None
    dwi: Path
    bval: Path
    bvec: Path
    pib: Path | None = None
    pib_sidecar: Path | None = None
    lesion: Path | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mtr is None and (self.mt_on is None or self.mt_off is None):
            raise ValueError("MyelinInputs needs an MTR map or both images of the MT pair")
        if self.group not in (*GROUPS, "n/a"):
            raise ValueError(f"group must be one of {GROUPS} or 'n/a', got {self.group!r}")

    @property
    def key(self) -> str:
        return session_key(self.subject, self.session)


@dataclass
class MyelinDiscovery:
    """The myelin arm's runnable sessions, the refused (bad input) and the skipped (no such data)."""

    myelin: list[MyelinInputs] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)   # key -> one line naming the file and why
    skipped: dict[str, str] = field(default_factory=dict)   # key -> "myelin arm skipped: no DWI", ...


def lesion_root(bids_dir: Path, lesion_dir: Path | None = None) -> Path:
    """The lesion derivatives dataset: ``lesion_dir`` (which must exist), else BIDS_DIR/derivatives/lesions."""
    if lesion_dir is None:
        return Path(bids_dir) / LESION_SUBDIR
    lesion_dir = Path(lesion_dir)
    if not lesion_dir.is_dir():
        raise InputError(lesion_dir, "lesion directory (--lesion-dir) not found or not a directory")
    return lesion_dir


def lesion_path(root: Path, subject: str, session: str | None) -> Path:
    """``root/sub-<L>[/ses-<S>]/anat/sub-<L>[_ses-<S>]_label-lesion_mask.nii.gz`` (labels checked)."""
    subject = clean_label(subject)
    folder = Path(root) / f"sub-{subject}"
    if session:
        session = clean_label(session, what="session label")
        folder = folder / f"ses-{session}"
    return folder / "anat" / f"{session_key(subject, session)}_label-lesion_mask.nii.gz"


def _pick(files: list, what: str, notes: list[str]) -> Path:
    """The first of a session's files (sorted by name); more than one gets a note."""
    paths = sorted(Path(f.path) for f in files)
    if len(paths) > 1:
        notes.append(f"{len(paths)} {what} images in the session; using {paths[0].name}")
    return paths[0]


def _mt_pair(files: list, notes: list[str]) -> tuple[Path, Path]:
    """The MT-on and MT-off images (``mt-on``/``mt-off`` entities of the ``MTR`` suffix)."""
    by_state = {state: [f for f in files if str(f.entities.get("mt", "")).lower() == state] for state in ("on", "off")}
    for state, other in (("on", "off"), ("off", "on")):
        if by_state[state] and not by_state[other]:
            present = Path(min(f.path for f in by_state[state]))
            partner = present.name.replace(f"mt-{state}", f"mt-{other}")
            raise InputError(present, f"MT-{state} image without its MT-{other} partner ({partner} not found): "
                                      "the MTR needs both, or an MTRmap")
    if not by_state["on"]:
        raise InputError(min(f.path for f in files),
                         "MTR image without an mt-on/mt-off entity: cannot tell the MT pair apart")
    return _pick(by_state["on"], "MT-on", notes), _pick(by_state["off"], "MT-off", notes)


def _check_dynamic_pet(pet: Path, sidecar_path: Path) -> None:
    """A 4D PET whose sidecar's frame timing (checked as Logan reads it) matches its frames."""
    from synthquant.kinetics import frame_times_min  # noqa: PLC0415

    n_frames = load_image(pet, ndim=(4,)).shape[3]
    sidecar = read_sidecar(sidecar_path)
    missing = [key for key in ("FrameTimesStart", "FrameDuration") if key not in sidecar]
    if missing:
        raise InputError(sidecar_path, f"sidecar lacks {' and '.join(missing)}: the dynamic PIB PET needs "
                                       "its frame timing (Logan DVR)")
    starts, _ = frame_times_min(sidecar["FrameTimesStart"], sidecar["FrameDuration"], source=sidecar_path)
    if starts.size != n_frames:
        raise InputError(sidecar_path, f"sidecar lists {starts.size} frames, the image has {n_frames}")


def check_myelin_session(layout, bids_dir: Path, lesions: Path, participants: pd.DataFrame,
                         subject: str, session: str | None, files: dict[str, list]) -> MyelinInputs:
    """Open and check every file of one myelin session; raise InputError on the first problem.

    ``files`` holds the session's pybids files by kind: ``T1w``, ``MTRmap``, ``MTR`` (the MT
    pair), ``dwi`` and ``pib``.
    """
    from synthquant.diffusion import read_gradients  # noqa: PLC0415
    from synthquant.myelin import check_same_subject_grid  # noqa: PLC0415 - heavy imports

    notes: list[str] = []
    t1w = _inside(_pick(files["T1w"], "T1w", notes), bids_dir)
    mtr = mt_on = mt_off = None
    if files["MTRmap"]:
        mtr = _inside(_pick(files["MTRmap"], "MTRmap", notes), bids_dir)
        if files["MTR"]:
            notes.append("MTRmap used; the MT-on/MT-off images are ignored")
    else:
        mt_on, mt_off = (_inside(path, bids_dir) for path in _mt_pair(files["MTR"], notes))
    dwi = _inside(_pick(files["dwi"], "DWI", notes), bids_dir)
    stem = sidecar_of(dwi).with_suffix("")
    bval, bvec = (_inside(stem.with_name(stem.name + ext), bids_dir) for ext in (".bval", ".bvec"))

    # Every image is read once here: a corrupt header or payload is refused in one line.
    load_image(t1w)
    if mtr is not None:
        load_image(mtr)
    else:
        on, off = load_image(mt_on), load_image(mt_off)
        if on.shape != off.shape or not np.allclose(on.affine, off.affine, atol=1e-3):
            raise InputError(mt_on, f"MT-on and MT-off images are on different grids ({mt_off.name}); "
                                    "register them first")
    n_volumes = load_image(dwi, ndim=(4,)).shape[3]
    read_gradients(bval, bvec, n_volumes)   # missing file, wrong count, too few directions, ...

    lesion = lesion_path(lesions, subject, session)
    if not lesion.exists() and lesion.with_name(lesion.name.removesuffix(".gz")).exists():
        lesion = lesion.with_name(lesion.name.removesuffix(".gz"))
    group = group_of(subject, participants)
    if lesion.exists():
        _inside(lesion, lesions, "the lesion directory")
        load_image(lesion, require_nonzero=False)   # an empty mask is a patient without visible lesions
    else:
        if group == "patient":
            notes.append(f"patient without a lesion mask ({lesion} not found): no lesion ROI")
        lesion = None

    others = [t1w] + ([mt_on] if mt_on else []) + ([lesion] if lesion else [])
    check_same_subject_grid(mtr or mt_off, dwi, *others)

    pib = pib_sidecar = None
    if files["pib"]:
        pib = _inside(_pick(files["pib"], "PIB PET", notes), bids_dir)
        pib_sidecar = _inside(sidecar_of(pib), bids_dir)
        _check_dynamic_pet(pib, pib_sidecar)

    sidecars = [layout.get_metadata(str(path)) for path in (t1w, mtr or mt_off, dwi)]
    return MyelinInputs(
        subject=subject, session=session, site=site_of(subject, participants, *sidecars), group=group,
        t1w=t1w, mtr=mtr, mt_on=mt_on, mt_off=mt_off, dwi=dwi, bval=bval, bvec=bvec,
        pib=pib, pib_sidecar=pib_sidecar, lesion=lesion, notes=tuple(notes),
    )


def discover_myelin(bids_dir: Path, participant_labels: tuple[str, ...] = (), *,
                    lesion_dir: Path | None = None) -> MyelinDiscovery:
    """Find and check every myelin session (T1w, MTR map or MT pair, DWI; PIB PET and lesion mask
    where present) of the requested participants.

    A session without the arm's modalities is skipped with its reason; one with a bad file is
    refused with one line naming the file. Lesion masks come from ``lesion_dir``, by default
    ``BIDS_DIR/derivatives/lesions``.
    """
    bids_dir = Path(bids_dir)
    layout = load_layout(bids_dir)
    participants = participants_table(bids_dir)
    lesions = lesion_root(bids_dir, lesion_dir)
    found = MyelinDiscovery()
    for subject, session, key, query in _sessions(layout, bids_dir, participant_labels):
        files = {
            "T1w": layout.get(suffix="T1w", datatype="anat", **query),
            "MTRmap": layout.get(suffix="MTRmap", datatype="anat", **query),
            "MTR": layout.get(suffix="MTR", datatype="anat", **query),
            "dwi": layout.get(suffix="dwi", datatype="dwi", **query),
            "pib": [f for f in layout.get(suffix="pet", datatype="pet", **query)
                    if str(f.entities.get("tracer", "")).upper() == "PIB"],
        }
        missing = [name for name, present in (("MTR (MTRmap or MT-on/MT-off pair)", files["MTRmap"] or files["MTR"]),
                                              ("DWI", files["dwi"]), ("T1w", files["T1w"])) if not present]
        if missing:
            found.skipped[key] = "myelin arm skipped: no " + ", no ".join(missing)
            continue
        try:
            found.myelin.append(check_myelin_session(layout, bids_dir, lesions, participants, subject, session, files))
        except InputError as err:
            found.refused[key] = str(err)
    return found


def bids_validator_executable() -> Path | None:
    """``bids-validator-deno`` on PATH or beside this Python (a venv used without activation)."""
    import sys  # noqa: PLC0415

    found = shutil.which("bids-validator-deno") or str(Path(sys.executable).with_name("bids-validator-deno"))
    return Path(found) if Path(found).exists() else None


def bids_validator_issues(bids_dir: Path, *, limit: int = 5) -> list[str]:
    """Errors of the BIDS validator (``bids-validator-deno``, offline), one line each.

    They are reported, not fatal: every file a subject needs is checked again by
    :func:`discover`, which leaves out only the subjects whose files are unusable.
    """
    import subprocess  # noqa: PLC0415

    exe = bids_validator_executable()
    if exe is None:
        return ["BIDS validator not installed (pip install bids-validator-deno); validation skipped"]
    try:
        proc = subprocess.run([exe, str(bids_dir), "--format", "json", "--ignoreWarnings"],
                              capture_output=True, text=True, timeout=600)
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, OSError) as err:
        return [f"BIDS validator could not run ({type(err).__name__}); validation skipped"]
    errors = [i for i in issues if i.get("severity") == "error"]
    lines = [f"BIDS validator: {i.get('location', '')}: {i['code']}"
             + (f" ({i['subCode']})" if i.get("subCode") else "") for i in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"BIDS validator: ... and {len(errors) - limit} more error(s)")
    return lines


# --- derivatives ---------------------------------------------------------------------------

#: Entity order of BIDS file names (BIDS 1.9 Appendix "Entity table"), the subset we write.
_ENTITY_ORDER = ("sub", "ses", "trc", "space", "seg", "res", "label", "desc")


def bids_name(entities: dict[str, str | None], suffix: str, extension: str) -> str:
    """``sub-01_trc-FBP_space-X_desc-mr_suvr.nii.gz`` from entities in BIDS order."""
    unknown = set(entities) - set(_ENTITY_ORDER)
    if unknown:
        raise ValueError(f"entities not supported: {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in _ENTITY_ORDER if entities.get(key)]
    return "_".join(parts + [suffix]) + extension


def derivative_path(output_dir: Path, entities: dict, datatype: str, suffix: str, extension: str) -> Path:
    folder = Path(output_dir) / f"sub-{entities['sub']}"
    if entities.get("ses"):
        folder = folder / f"ses-{entities['ses']}"
    return folder / datatype / bids_name(entities, suffix, extension)


def write_derivative(source: Path, output_dir: Path, entities: dict, datatype: str, suffix: str,
                     sidecar: dict | None = None, extension_check: str | None = None) -> Path:
    """Copy ``source`` into the derivatives tree under its BIDS name, with a JSON sidecar.

    Both are written to temporary names and renamed, so a killed run leaves no half file.
    """
    source = Path(source)
    extension = ".nii.gz" if source.name.endswith(".nii.gz") else source.suffix
    if extension_check and extension != extension_check:
        raise ValueError(f"{source} is not a {extension_check} file")
    target = derivative_path(output_dir, entities, datatype, suffix, extension)
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)
    if sidecar is not None:
        atomic_write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n",
                          target.with_name(target.name[: -len(extension)] + ".json"))
    return target


def write_report_file(source: Path, output_dir: Path, relative: str) -> Path:
    """Copy a report file (HTML, figure) to ``output_dir/relative``, atomically."""
    target = Path(output_dir) / relative
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise ValueError(f"report path {relative!r} leaves the output directory")
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, for every sidecar."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    versions = {"synthquant": __version__}
    for package in ("antspyx", "nipype", "nibabel", "nilearn", "numpy", "scipy", "torch", "pybids"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def write_dataset_description(output_dir: Path, bids_dir: Path | None = None) -> Path:
    """The derivatives dataset_description.json (BIDS 1.9 "Derived dataset")."""
    import os  # noqa: PLC0415

    generated = {"Name": PIPELINE_NAME, "Version": __version__}
    if os.environ.get("SYNTHQUANT_CONTAINER"):
        generated["Container"] = {"Type": "docker", "Tag": os.environ["SYNTHQUANT_CONTAINER"]}
    description = {
        "Name": "synthquant derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    if bids_dir is not None:
        description["SourceDatasets"] = [{"URL": Path(bids_dir).resolve().as_uri()}]
    return atomic_write_text(json.dumps(description, indent=2) + "\n", Path(output_dir) / "dataset_description.json")


def dataset_provenance(bids_dir: Path) -> tuple[str, bool]:
    """The dataset's name, and whether synthquant.phantom generated it (its GeneratedBy).

    Models and PET templates built from a phantom say so in their card or manifest.
    """
    from synthquant.phantom.bids_writer import GENERATOR  # noqa: PLC0415

    try:
        description = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return Path(bids_dir).name, False
    generated = description.get("GeneratedBy") or []
    phantom = any(isinstance(g, dict) and g.get("Name") == GENERATOR for g in generated)
    return str(description.get("Name") or Path(bids_dir).name), phantom
