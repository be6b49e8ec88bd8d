"""Subject anatomy: template tissue maps under a random smooth deformation and a head pose.

Every native image is made by *pull-back*: for a native voxel centre ``x`` (scanner mm) we
compute the template point ``psi(x)`` and sample template-space maps there, so images never
need an inverted field. The map is

    psi(x) = z + d(z),   z = c + S^-1 R^T (x - c - t)

where ``(R, t)`` is the head pose in that scanner, ``S`` the brain-size scaling about the
brain centre ``c``, and ``d`` a smooth displacement field in template space: a random
low-frequency part plus atrophy. Atrophy is simulated by deformation (Karacali & Davatzikos,
IEEE TMI 2006): each component prescribes the field's divergence, i.e. the local volume
change, so the ventricles grow, cerebral grey matter and hippocampi shrink, and sulcal CSF
and white matter balance the books, leaving the skull in place. Only the ground truth needs
``psi^-1``, found by fixed-point iteration.

The template (nilearn's MNI152 2009a) is brain-extracted, so the head outside the brain is
synthesised as layers at set distances from the brain mask: a thin CSF rim, dark skull,
bright scalp fat and skin.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthquant.atlases import aal2_labels, aal2_table, brain_mask, template_grid, tissue_prior
from synthquant.phantom.sites import ImageGrid, rotation_matrix

#: Margin (mm) added around the template's field of view, room for the head layers.
PAD_MM = 24.0
#: Head layers outside the brain mask, inside out, with their thickness in mm.
HEAD_LAYERS: tuple[tuple[str, float], ...] = (
    ("extra_csf", 1.5), ("skull", 6.0), ("fat", 4.0), ("skin", 2.5))
#: Brain tissue classes from the template priors.
BRAIN_TISSUES = ("gm", "wm", "csf")
#: Points per chunk when sampling: bounds the float64 coordinate arrays (~100 MB).
CHUNK = 1_500_000


@dataclass(frozen=True, eq=False)
class TemplateAnatomy:
    """Template-space tissue fractions on a padded template grid.

    ``tissues`` holds the brain classes (``gm``, ``wm``, ``csf``; they sum to 1 inside the
    brain mask) and the head layers (``extra_csf``, ``skull``, ``fat``, ``skin``). ``labels``
    is AAL2 on the same grid; ``center`` the brain-mask centroid (mm).
    """

    resolution: float
    affine: np.ndarray = field(repr=False)
    tissues: dict[str, np.ndarray] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    brain: np.ndarray = field(repr=False)
    center: np.ndarray = field(repr=False)
    head_box: tuple[np.ndarray, np.ndarray] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _layer_fractions(distance: np.ndarray, resolution: float) -> dict[str, np.ndarray]:
    """Partial-volume fraction of each head layer from the distance to the brain mask.

    The mask surface lies half a voxel outside the last mask voxel centre; each layer's
    edges are linear ramps one voxel wide, so fractions sum to 1 across the shell.
    """
    def ramp(edge):
        return np.clip((distance - edge) / resolution + 0.5, 0.0, 1.0)

    edge = resolution / 2.0
    layers = {}
    inner = ramp(edge)
    for name, thickness in HEAD_LAYERS:
        edge += thickness
        outer = ramp(edge)
        layers[name] = (inner - outer).astype(np.float32)
        inner = outer
    return layers


@functools.lru_cache(maxsize=2)
def template_anatomy(resolution: float) -> TemplateAnatomy:
    """Tissue maps, head layers and AAL2 labels on the padded template grid (cached)."""
    grid = template_grid(resolution)
    pad = int(np.ceil(PAD_MM / resolution))
    affine = grid.affine.copy()
    affine[:3, 3] -= pad * resolution

    def padded(array):
        return np.pad(array, pad)

    brain = padded(_load(brain_mask(resolution)) > 0)
    tissues = {t: padded(np.clip(_load(tissue_prior(t, resolution)), 0, 1)) for t in BRAIN_TISSUES}
    # Inside the mask the classes sum to 1 (CSF is defined as the remainder); outside, zero.
    for t in BRAIN_TISSUES:
        tissues[t] *= brain
    distance = ndimage.distance_transform_edt(~brain, sampling=resolution).astype(np.float32)
    tissues.update(_layer_fractions(distance, resolution))
    labels = padded(np.asarray(nib.load(str(aal2_labels(grid))).dataobj).astype(np.int16))

    ijk = np.argwhere(brain)
    center = (affine[:3, :3] @ ijk.mean(axis=0) + affine[:3, 3])
    head = np.argwhere(distance <= sum(t for _, t in HEAD_LAYERS) + resolution)
    corners = np.array([head.min(axis=0), head.max(axis=0)], float)
    box = corners @ affine[:3, :3].T + affine[:3, 3]
    for array in (*tissues.values(), labels, brain):
        array.flags.writeable = False
    return TemplateAnatomy(resolution, affine, tissues, labels, brain, center,
                           (box.min(axis=0), box.max(axis=0)))


# ---------------------------------------------------------------------------------------
# Pose and deformation


@dataclass(frozen=True)
class Pose:
    """A rigid head position in one scanner: rotation (deg, about world x, y, z) about the
    brain centre, then translation (mm)."""

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.rotation_deg)

    def as_dict(self) -> dict:
        return {"rotation_deg": [round(float(v), 6) for v in self.rotation_deg],
                "translation_mm": [round(float(v), 6) for v in self.translation_mm]}


@dataclass(frozen=True, eq=False)
class Deformation:
    """Brain-size scaling and displacement field of one subject, shared by all sessions.

    ``displacement_field`` is ``d`` of the module docstring: shape (3, X, Y, Z), mm, on the grid given by
    ``field_affine`` in template space. ``params`` records how it was drawn.
    """

    center: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    displacement_field: np.ndarray = field(repr=False)
    field_affine: np.ndarray = field(repr=False)
    params: dict = field(default_factory=dict)


def grid_points(shape, affine, start: int = 0, stop: int | None = None) -> np.ndarray:
    """World coordinates (3, N) of voxel centres of slabs ``start:stop`` along axis 0."""
    stop = shape[0] if stop is None else stop
    ijk = np.mgrid[start:stop, 0:shape[1], 0:shape[2]].reshape(3, -1).astype(np.float64)
    return affine[:3, :3] @ ijk + affine[:3, 3:4]


def sample(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int = 1) -> np.ndarray:
    """Values of ``volume`` (voxel-to-world ``affine``) at world ``points`` (3, N); 0 outside."""
    inverse = np.linalg.inv(affine)
    ijk = inverse[:3, :3] @ points + inverse[:3, 3:4]
    return ndimage.map_coordinates(volume, ijk, order=order, mode="constant", cval=0.0,
                                   prefilter=False)


def displacement(deformation: Deformation, points: np.ndarray) -> np.ndarray:
    """``d`` at template points (3, N), trilinear."""
    if not deformation.displacement_field.any():
        return np.zeros_like(points)
    inverse = np.linalg.inv(deformation.field_affine)
    ijk = inverse[:3, :3] @ points + inverse[:3, 3:4]
    return np.stack([ndimage.map_coordinates(component, ijk, order=1, mode="constant", cval=0.0,
                                             prefilter=False)
                     for component in deformation.displacement_field])


def native_to_template(points: np.ndarray, pose: Pose, deformation: Deformation) -> np.ndarray:
    """``psi``: native world points (3, N) of a scanner -> template points."""
    c = deformation.center[:, None]
    t = np.asarray(pose.translation_mm, float)[:, None]
    z = c + (pose.rotation.T @ (points - c - t)) / deformation.scale[:, None]
    return z + displacement(deformation, z)


def template_to_native(points: np.ndarray, pose: Pose, deformation: Deformation,
                       iterations: int = 50, tolerance_mm: float = 0.01) -> tuple[np.ndarray, float]:
    """``psi^-1`` at template points (3, N), and the largest residual ``|psi(x) - y|`` (mm).

    Solves ``z + d(z) = y`` by the fixed-point iteration ``z <- y - d(z)``, which converges
    because the field is a contraction (its gradient stays well below 1; see
    :func:`random_deformation`), then undoes scaling and pose.
    """
    z = points.copy()
    active = np.arange(points.shape[1])
    residual = 0.0
    for _ in range(iterations):
        if not active.size:
            break
        # Only points still moving are iterated: most converge in a few steps.
        update = points[:, active] - displacement(deformation, z[:, active])
        step = np.abs(update - z[:, active]).max(axis=0)
        z[:, active] = update
        residual = float(step.max())
        active = active[step >= tolerance_mm]
    c = deformation.center[:, None]
    t = np.asarray(pose.translation_mm, float)[:, None]
    native = c + t + pose.rotation @ ((z - c) * deformation.scale[:, None])
    return native, residual


def pull_back(volume: np.ndarray, volume_affine: np.ndarray, grid: ImageGrid, pose: Pose,
              deformation: Deformation) -> np.ndarray:
    """A template-space map seen in a native grid: ``volume(psi(x))`` at each voxel ``x``.

    Trilinear sampling of a partial-volume map is linear, so pulling back a mixture of
    tissue fractions equals mixing the pulled-back fractions: callers mix first, once.
    """
    out = np.empty(grid.shape, np.float32)
    slabs = max(1, CHUNK // (grid.shape[1] * grid.shape[2]))
    for start in range(0, grid.shape[0], slabs):
        stop = min(start + slabs, grid.shape[0])
        points = native_to_template(grid_points(grid.shape, grid.affine, start, stop), pose, deformation)
        out[start:stop] = sample(volume, volume_affine, points).reshape(stop - start, *grid.shape[1:])
    return out


def push_to_template(native: np.ndarray, native_affine: np.ndarray, grid_shape, grid_affine,
                     pose: Pose, deformation: Deformation,
                     where: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """A native image seen on a template grid through the true inverse: ``native(psi^-1(y))``.

    Only voxels in ``where`` (default: all) are computed, the rest are 0. Returns the image
    and the largest fixed-point residual (mm).
    """
    grid_shape = tuple(grid_shape)
    where = np.ones(grid_shape, bool) if where is None else where
    ijk = np.argwhere(where).T.astype(np.float64)
    points = grid_affine[:3, :3] @ ijk + grid_affine[:3, 3:4]
    native_points, residual = template_to_native(points, pose, deformation)
    out = np.zeros(grid_shape, np.float32)
    out[where] = sample(native, native_affine, native_points)
    return out, residual


# ---------------------------------------------------------------------------------------
# Random subjects


@dataclass(frozen=True)
class AtrophySpec:
    """Relative volume loss prescribed to each atrophy component (0: none).

    ``ventricles`` is the fractional shrinkage of template ventricular volume under ``psi``
    (so the native ventricles grow by ~1 / (1 - ventricles)); ``cortex`` the fractional loss
    of cerebral grey matter, ``hippocampus`` that of the hippocampi. Each loss is balanced
    elsewhere (white matter, sulcal CSF), so the intracranial volume and skull do not change.
    """

    ventricles: float = 0.0
    cortex: float = 0.0
    hippocampus: float = 0.0


#: Spacing (mm) of the random field's control points: low-frequency shape variation.
CONTROL_SPACING_MM = 30.0
#: RMS (mm) of the random field's control values.
RANDOM_FIELD_RMS_MM = 1.0
#: Smoothing (mm, sigma) of the atrophy sources: enough to keep the Jacobian continuous.
SOURCE_SMOOTHING_MM = 1.0


def _divergence_field(source: np.ndarray, resolution: float) -> np.ndarray:
    """The curl-free field ``d = grad(phi)`` with ``div d = source`` (3, X, Y, Z).

    Solves Poisson's equation spectrally on the (periodic) padded grid, after smoothing the
    source by 2 mm and removing its mean. To first order ``det(I + grad d) = 1 + source``:
    the source prescribes the local volume change, after Karacali & Davatzikos (2006).
    """
    source = ndimage.gaussian_filter(source.astype(np.float64), SOURCE_SMOOTHING_MM / resolution)
    source -= source.mean()
    spectrum = np.fft.rfftn(source)
    shape = source.shape
    k = [2 * np.pi * np.fft.fftfreq(n, resolution) for n in shape[:2]]
    k.append(2 * np.pi * np.fft.rfftfreq(shape[2], resolution))
    kx, ky, kz = np.meshgrid(*k, indexing="ij", sparse=True)
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    k2[0, 0, 0] = 1.0
    potential = -spectrum / k2
    potential[0, 0, 0] = 0.0
    return np.stack([np.fft.irfftn(1j * kj * potential, s=shape, axes=(0, 1, 2)) for kj in (kx, ky, kz)]
                    ).astype(np.float32)


@functools.lru_cache(maxsize=2)
def atrophy_basis(resolution: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Unit atrophy fields and the structures they act on, on the padded template grid.

    Returns ``(fields, structures)``. Each field has divergence -1 (ventricles) or +1
    (cerebral grey matter, hippocampi) on its structure, balanced by the opposite change
    elsewhere so its total is zero:

    - ``ventricles`` (deep CSF components over 1 mL) grow in the subject, white matter pays;
    - ``cortex``: cerebral grey matter shrinks and the sulcal CSF widens;
    - ``hippocampus``: the hippocampi shrink, the ventricles and sulci take the space.
    """
    anatomy = template_anatomy(resolution)
    brain = anatomy.brain
    gm, wm, csf = (anatomy.tissues[t].astype(np.float64) for t in BRAIN_TISSUES)
    depth = ndimage.distance_transform_edt(brain, sampling=resolution)
    deep_csf, n = ndimage.label((csf >= 0.5) & (depth > 15.0))
    sizes = ndimage.sum(np.ones_like(csf), deep_csf, range(1, n + 1)) * resolution ** 3
    ventricles = np.isin(deep_csf, 1 + np.flatnonzero(sizes > 1000.0))
    near_ventricles = ndimage.binary_dilation(ventricles, iterations=max(1, int(6 / resolution)))
    sulcal_csf = csf * ~near_ventricles
    names = aal2_table().set_index("name")["index"]
    cerebellum = np.isin(anatomy.labels,
                         [i for n, i in names.items() if n.startswith(("Cerebelum_", "Vermis_"))])
    cerebellum = ndimage.binary_dilation(cerebellum, iterations=max(1, int(4 / resolution)))
    cerebral_gm = gm * ~cerebellum
    hippocampi = np.isin(anatomy.labels, [names["Hippocampus_L"], names["Hippocampus_R"]])

    def balanced(loss, gain):
        return loss - gain * (loss.sum() / gain.sum())

    fields = {
        "ventricles": _divergence_field(-balanced(ventricles.astype(float), wm), resolution),
        "cortex": _divergence_field(balanced(cerebral_gm, sulcal_csf), resolution),
        "hippocampus": _divergence_field(
            balanced(hippocampi.astype(float), ventricles + sulcal_csf), resolution),
    }
    structures = {"ventricles": ventricles, "cerebral_gm": cerebral_gm > 0.5, "hippocampi": hippocampi}
    for array in (*fields.values(), *structures.values()):
        array.flags.writeable = False
    return fields, structures


def _random_field(rng: np.random.Generator, shape, resolution: float,
                  rms_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random displacement field and its control values (3, nx, ny, nz), mm.

    The control points span the field's grid evenly; the field is their cubic-spline
    interpolant, so the control values alone define it.
    """
    n_control = [int(np.ceil(s * resolution / CONTROL_SPACING_MM)) + 1 for s in shape]
    control = rng.standard_normal((3, *n_control)) * rms_mm
    coords = np.meshgrid(*[np.linspace(0, n - 1, s) for n, s in zip(n_control, shape)], indexing="ij")
    field = np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in control])
    return field.astype(np.float32), control


def jacobian_determinant(field: np.ndarray, resolution: float) -> np.ndarray:
    """Jacobian determinant of ``x -> x + field(x)`` at every grid point."""
    j = [[g + (i == k) for k, g in enumerate(np.gradient(component, resolution))]
         for i, component in enumerate(field)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def random_deformation(rng: np.random.Generator, anatomy: TemplateAnatomy, *,
                       atrophy: AtrophySpec, size_scale: float = 1.0,
                       deformation_scale: float = 1.0) -> Deformation:
    """Draw one subject's scaling and displacement field.

    Parameters
    ----------
    rng
        The subject's generator; always consumed identically, whatever the scales.
    anatomy
        The template anatomy; the field lives on its padded grid at >= 2 mm spacing.
    atrophy
        Relative volume loss of each atrophy component.
    size_scale
        Mean linear brain size relative to the template (1.0: template size).
    deformation_scale
        Multiplies every departure from the template (random field, atrophy, scaling);
        0 gives the identity.
    """
    resolution = max(anatomy.resolution, 2.0)
    basis_anatomy = template_anatomy(resolution)
    fields, structures = atrophy_basis(resolution)
    random_part, control = _random_field(rng, basis_anatomy.shape, resolution, RANDOM_FIELD_RMS_MM)
    axis_jitter = rng.normal(0.0, 0.02, 3)
    scale = 1.0 + deformation_scale * (size_scale * (1.0 + axis_jitter) - 1.0)
    field = (random_part
             + atrophy.ventricles * fields["ventricles"]
             + atrophy.cortex * fields["cortex"]
             + atrophy.hippocampus * fields["hippocampus"]) * deformation_scale
    det = jacobian_determinant(field, resolution)
    if det.min() <= 0.1:
        raise RuntimeError(f"phantom deformation nearly folds (Jacobian {det.min():.3f}); lower the atrophy")
    # Native volume of a template structure is its volume over psi's Jacobian (before the
    # global size scaling): the true atrophy, for checking volumetry.
    volume_ratio = {name: float((1.0 / det[mask]).mean()) for name, mask in structures.items()}
    params = {
        "definition": "psi(x) = z + d(z), z = c + S^-1 R^T (x - c - t), with (R, t) a session's "
                      "pose, S = diag(size_scale), c = center_mm; d = cubic-spline interpolant of "
                      "random_field_control_mm (control points spread evenly over field_grid) plus "
                      "the atrophy fields (synthquant.phantom.anatomy.atrophy_basis) times atrophy",
        "size_scale": [round(float(s), 6) for s in scale],
        "center_mm": [round(float(c), 4) for c in anatomy.center],
        "atrophy": {k: round(v * deformation_scale, 6) for k, v in vars(atrophy).items()},
        "native_volume_ratio": {k: round(v, 4) for k, v in volume_ratio.items()},
        "max_displacement_mm": round(float(np.sqrt((field ** 2).sum(axis=0)).max()), 4),
        "jacobian_range": [round(float(det.min()), 4), round(float(det.max()), 4)],
        "deformation_scale": deformation_scale,
        "random_field_rms_mm": RANDOM_FIELD_RMS_MM * deformation_scale,
        "field_grid": {"shape": list(basis_anatomy.shape),
                       "affine": np.round(basis_anatomy.affine, 6).tolist()},
        "random_field_control_mm": np.round(control * deformation_scale, 4).tolist(),
    }
    return Deformation(anatomy.center, scale, field, basis_anatomy.affine, params)


def random_pose(rng: np.random.Generator, *, max_rotation_deg, max_translation_mm,
                deformation_scale: float = 1.0) -> Pose:
    """A head pose drawn uniformly within the limits (per world axis)."""
    rotation = rng.uniform(-1, 1, 3) * np.asarray(max_rotation_deg, float) * deformation_scale
    translation = rng.uniform(-1, 1, 3) * np.asarray(max_translation_mm, float) * deformation_scale
    return Pose(tuple(float(v) for v in rotation), tuple(float(v) for v in translation))


def head_center(pose: Pose, deformation: Deformation) -> np.ndarray:
    """Where the brain centre sits in the scanner (world mm)."""
    return deformation.center + np.asarray(pose.translation_mm, float)


def fov_coverage(points: np.ndarray, pose: Pose, deformation: Deformation, grid: ImageGrid) -> float:
    """Fraction of template ``points`` (3, N) whose native position lies in ``grid``'s field of view."""
    native, _ = template_to_native(points, pose, deformation)
    inverse = np.linalg.inv(grid.affine)
    ijk = inverse[:3, :3] @ native + inverse[:3, 3:4]
    inside = np.all((ijk > -0.5) & (ijk < np.array(grid.shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


def native_bounding_box(anatomy: TemplateAnatomy, pose: Pose, deformation: Deformation,
                        margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box of the head in a scanner, grown by ``margin_mm``."""
    lo, hi = anatomy.head_box
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    c = deformation.center[:, None]
    t = np.asarray(pose.translation_mm, float)[:, None]
    native = c + t + pose.rotation @ ((corners - c) * deformation.scale[:, None])
    slack = margin_mm + float(np.abs(deformation.displacement_field).max())
    return native.min(axis=1) - slack, native.max(axis=1) + slack


@functools.lru_cache(maxsize=2)
def grey_matter_labels(anatomy: TemplateAnatomy, reach_mm: float = 6.0) -> np.ndarray:
    """AAL2 labels carried into nearby unlabelled grey matter (within ``reach_mm``).

    AAL2 stops short of the GM prior's partial-volume rim; without this, rim voxels would
    lose their region's tracer uptake. Voxels further than ``reach_mm`` keep label 0.
    """
    unlabelled = anatomy.labels == 0
    distance, nearest = ndimage.distance_transform_edt(unlabelled, sampling=anatomy.resolution,
                                                       return_indices=True)
    filled = anatomy.labels[tuple(nearest)]
    filled = np.where((distance <= reach_mm) & (anatomy.tissues["gm"] > 0), filled, anatomy.labels)
    filled.flags.writeable = False
    return filled
