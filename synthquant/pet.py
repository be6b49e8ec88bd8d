"""Static PET from a dynamic acquisition: frame selection, realignment and averaging.

Florbetapir SUVR uses the 50-70 min window, acquired as four 5-minute frames
(Choi & Lee 2018, "averaged images of all the 4 registered frames"; Clark et al. 2011).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from synthquant.errors import InputError
from synthquant.image import atomic_write_text, load_image, save_image

#: Static window for florbetapir SUVR (seconds after injection).
FBP_WINDOW_S = (50 * 60.0, 70 * 60.0)


def static_window(tracer: str) -> tuple[float, float]:
    """The frames that make the static image: 50-70 min for FBP, all frames otherwise."""
    return FBP_WINDOW_S if tracer == "FBP" else (0.0, float("inf"))


def select_frames(frame_start: list[float], frame_duration: list[float], window=FBP_WINDOW_S,
                  *, source: str | Path | None = None) -> list[int]:
    """Indices of the frames whose midpoints lie inside ``window`` (seconds)."""
    start = np.asarray(frame_start, float)
    duration = np.asarray(frame_duration, float)
    if start.shape != duration.shape:
        raise InputError(source, f"FrameTimesStart ({start.size}) and FrameDuration ({duration.size}) differ in length")
    middle = start + duration / 2
    chosen = [int(i) for i in np.flatnonzero((middle >= window[0]) & (middle <= window[1]))]
    if not chosen:
        raise InputError(source, f"no frame has its midpoint within {window[0] / 60:g}-{window[1] / 60:g} min "
                                 f"(frame midpoints: {', '.join(f'{m / 60:.1f}' for m in middle)} min)")
    return chosen


def frame_displacement(transform_file: str | Path, radius_mm: float = 50.0) -> float:
    """Mean displacement (mm) of a 50 mm sphere under a rigid ITK transform (Power 2012-style FD)."""
    import ants  # noqa: PLC0415

    tx = ants.read_transform(str(transform_file))
    params = np.asarray(tx.parameters, float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    center = np.asarray(tx.fixed_parameters, float)[:3]
    directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    points = center + radius_mm * directions
    moved = (points - center) @ matrix.T + center + translation
    return float(np.linalg.norm(moved - points, axis=1).mean())


def make_static_pet(pet_file: str | Path, sidecar: dict, out_dir: str | Path, *, tracer: str = "FBP") -> dict:
    """Realign the frames of the static window and average them (duration-weighted).

    A 3D PET is taken as already averaged: it is copied, and the returned record says so.
    Returns ``{"static_pet", "motion_tsv", "n_frames", "frames_used", "note"}``.
    """
    from synthquant.registration import rigid_register  # noqa: PLC0415 - imports antspyx

    out_dir = Path(out_dir)
    img = load_image(pet_file, ndim=(3, 4))
    data = np.asarray(img.dataobj, dtype=np.float32)
    static_file = out_dir / "static_pet.nii.gz"
    motion_file = out_dir / "motion.tsv"
    if data.ndim == 3:
        save_image(data, img.affine, static_file)
        atomic_write_text("frame\tdisplacement_mm\n", motion_file)
        return {"static_pet": str(static_file), "motion_tsv": str(motion_file), "n_frames": 1,
                "frames_used": [0], "note": "3D PET taken as already averaged over the static window"}

    window = static_window(tracer)
    frames = select_frames(sidecar["FrameTimesStart"], sidecar["FrameDuration"], window, source=pet_file)
    weights = np.asarray(sidecar["FrameDuration"], float)[frames]
    # Reference: the duration-weighted mean of the selected frames; motion is small, so one
    # pass onto this mean suffices (as SPM's realign with register-to-mean off).
    reference = np.tensordot(data[..., frames], weights / weights.sum(), axes=([3], [0]))
    reference_file = save_image(reference, img.affine, out_dir / "reference.nii")
    realigned, rows = [], []
    for index in frames:
        frame_file = save_image(data[..., index], img.affine, out_dir / f"frame-{index:02d}.nii")
        warped_file = out_dir / f"frame-{index:02d}_realigned.nii"
        # The metric on a 3 mm grid: PET resolution is 5-8 mm FWHM.
        transform = rigid_register(reference_file, frame_file, out_dir, prefix=f"frame-{index:02d}_",
                                   fixed_resolution=3.0, warped_out=warped_file)
        realigned.append(load_image(warped_file, require_nonzero=False).get_fdata(dtype=np.float32))
        rows.append({"frame": index, "displacement_mm": round(frame_displacement(transform), 3)})
    static = np.tensordot(np.stack(realigned, axis=-1), weights / weights.sum(), axes=([3], [0]))
    save_image(static, img.affine, static_file)
    atomic_write_text(pd.DataFrame(rows).to_csv(sep="\t", index=False), motion_file)
    span = f"{window[0] / 60:g}-{window[1] / 60:g} min" if np.isfinite(window[1]) else "the whole acquisition"
    return {"static_pet": str(static_file), "motion_tsv": str(motion_file), "n_frames": int(data.shape[3]),
            "frames_used": frames, "note": f"{len(frames)} frames in {span} realigned (rigid) and averaged"}


def read_sidecar(path: str | Path) -> dict:
    """A JSON sidecar, or one clear error line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "JSON sidecar not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"JSON sidecar is not valid JSON ({err})") from None
