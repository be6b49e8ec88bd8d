"""NIfTI input/output and resampling: the one home for both.

Every reader of user images goes through :func:`load_image`, so that a corrupt gzip, a
truncated file, NaNs or an empty image fail with one line naming the file. Every writer of
derivatives goes through :func:`save_image`, which writes to a temporary name and renames,
so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthquant.errors import InputError


def load_image(
    path: str | Path,
    *,
    ndim: tuple[int, ...] = (3,),
    require_finite: bool = True,
    require_nonzero: bool = True,
) -> nib.Nifti1Image:
    """Load a NIfTI file and check it is usable; the data are read once and cached.

    Parameters
    ----------
    path
        The image file.
    ndim
        Accepted numbers of dimensions (a trailing singleton 4th axis is squeezed).
    require_finite, require_nonzero
        Refuse images holding NaN/inf, or holding only zeros.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # forces the whole read: truncation shows here
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError) as err:
        raise InputError(path, f"corrupt or truncated image ({type(err).__name__}: {err})") from None
    except (nib.filebasedimages.ImageFileError, ValueError) as err:
        raise InputError(path, f"not a readable NIfTI image ({err})") from None
    if data.ndim == 4 and data.shape[3] == 1 and 3 in ndim:
        data = data[..., 0]
    if data.ndim not in ndim:
        want = " or ".join(f"{n}D" for n in ndim)
        raise InputError(path, f"expected a {want} image, got shape {data.shape}")
    if min(data.shape[:3]) < 2:
        raise InputError(path, f"degenerate image shape {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    if require_finite and not np.isfinite(data).all():
        raise InputError(path, f"image holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
    if require_nonzero and not np.any(data):
        raise InputError(path, "image is all zeros")
    affine = img.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(path, "image has an invalid (singular or non-finite) affine")
    out = nib.Nifti1Image(data, affine, img.header)
    out.set_data_dtype(np.float32)
    return out


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_image(data: np.ndarray, affine: np.ndarray, path: str | Path, *, dtype=np.float32,
               header: nib.Nifti1Header | None = None, stored_dtype=None) -> Path:
    """Write ``data`` as NIfTI atomically (temporary name, then rename).

    ``stored_dtype`` (e.g. int16) stores the ``dtype`` values as that type on disk, scaled by
    ``scl_slope``/``scl_inter`` where ``dtype`` is a float (nibabel picks them), as scanners
    export dynamic PET: half the size of float32, and readers get the floats back.
    """
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine, header)
    img.set_data_dtype(dtype if stored_dtype is None else stored_dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically (temporary name, then rename)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a 3D array from one voxel grid onto another, both given by affines.

    ``order=0`` is nearest-neighbour (labels and masks), 1 trilinear, 3 cubic. A voxel covers
    half a voxel either side of its centre (ITK's and ANTs' convention), so a target point up
    to half a source voxel beyond the outermost centres takes the edge value; points further
    out get ``cval``. (scipy's ``constant`` mode alone would give ``cval`` already past the
    outermost centres, dropping the outer half voxel of every face on upsampling.)
    """
    # Target voxel -> world -> source voxel, composed into one affine map.
    vox_map = np.linalg.inv(affine) @ target_affine
    source = np.asarray(data, dtype=np.float32 if order else data.dtype)
    # One voxel of edge values around the source, so the interpolation reaches its faces; the
    # source indices shift by one.
    transform = dict(matrix=vox_map[:3, :3], offset=vox_map[:3, 3] + 1.0,
                     output_shape=tuple(int(s) for s in target_shape), mode="constant")
    resampled = ndimage.affine_transform(np.pad(source, 1, mode="edge"), order=order, cval=cval,
                                         prefilter=order > 1, **transform)
    # The field of view: nearest-neighbour on ones framed by zeros is 1 exactly within half a
    # voxel of the source's outermost centres.
    inside = ndimage.affine_transform(np.pad(np.ones(source.shape, np.uint8), 1), order=0, cval=0,
                                      **transform)
    resampled[inside == 0] = cval
    return resampled


def grid_affine(origin: np.ndarray | tuple, voxel_size: float, axes_sign=(1, 1, 1)) -> np.ndarray:
    """An axis-aligned affine with isotropic voxels starting at world ``origin``."""
    affine = np.diag([voxel_size * s for s in axes_sign] + [1.0])
    affine[:3, 3] = origin
    return affine


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) of an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
