"""MR image formation for phantom subjects: tissue contrast, receive bias and Rician noise.

The T1w is the subject's tissue fractions mixed with the site's contrast (in template space,
once per site: mixing commutes with trilinear sampling), pulled back into the site's native
grid, multiplied by a smooth receive-bias field and made a magnitude image with noise in
both quadrature channels (Rician; Gudbjartsson & Patz, MRM 1995).
"""

from __future__ import annotations

import numpy as np

from synthquant.phantom.anatomy import Deformation, Pose, TemplateAnatomy, pull_back
from synthquant.phantom.sites import ImageGrid, T1wProtocol


BRAIN_CLASSES = ("gm", "wm", "csf")


def template_t1w_on(anatomy: TemplateAnatomy) -> np.ndarray:
    """The MNI152 T1 template on the anatomy's padded grid."""
    import nibabel as nib  # noqa: PLC0415

    from synthquant.atlases import template_t1w  # noqa: PLC0415

    t1 = np.asarray(nib.load(str(template_t1w(anatomy.resolution))).dataobj, dtype=np.float32)
    pad = (np.array(anatomy.shape) - np.array(t1.shape)) // 2
    return np.pad(t1, [(int(p), int(p)) for p in pad])


def contrast_map(anatomy: TemplateAnatomy, contrast: dict[str, float]) -> np.ndarray:
    """Noise-free signal in template space.

    Inside the brain, the MNI152 T1 template's own intensities, remapped monotonically so its
    CSF, GM and WM take the site's contrast: a subject's T1w resembles the template's average
    anatomy, deep grey matter included. (A mixture of the tissue priors would not: the priors
    give the caudate and putamen mixed GM/WM fractions, hence a contrast the template T1 lacks,
    and SyN then bends the deep grey matter to match it.) The head layers outside the brain
    are their fractions times their signal.
    """
    unknown = set(contrast) - set(anatomy.tissues)
    if unknown:
        raise ValueError(f"contrast names tissues the anatomy lacks: {sorted(unknown)}")
    signal = np.zeros(anatomy.shape, np.float32)
    for tissue, value in contrast.items():
        if tissue not in BRAIN_CLASSES:
            signal += np.float32(value) * anatomy.tissues[tissue]
    brain = sum(anatomy.tissues[t] for t in BRAIN_CLASSES)
    t1 = template_t1w_on(anatomy)
    anchors = [float(np.median(t1[anatomy.tissues[t] > 0.9])) for t in ("csf", "gm", "wm")]
    if not anchors[0] < anchors[1] < anchors[2]:
        raise ValueError(f"template T1 intensities not ordered CSF < GM < WM: {anchors}")
    site = [contrast["csf"], contrast["gm"], contrast["wm"]]
    remapped = np.interp(t1, [0.0, *anchors, 2 * anchors[2]], [0.0, *site, 2 * site[2]]).astype(np.float32)
    return signal + brain * remapped


def bias_field(rng: np.random.Generator, shape, amplitude: float, order: int = 2) -> np.ndarray:
    """A smooth multiplicative field ``1 + f`` with ``max|f| = amplitude``.

    ``f`` is a random sum of separable cosines up to ``order`` half-periods across the field
    of view: receive-coil inhomogeneity varies over tens of centimetres.
    """
    weights = rng.standard_normal((order + 1,) * 3)
    weights[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.arange(order + 1)[:, None] * np.linspace(0, 1, n)[None, :])
             for n in shape]
    field = np.einsum("abc,ai,bj,ck->ijk", weights, *bases, optimize=True)
    peak = np.abs(field).max()
    return (1.0 + amplitude * field / peak).astype(np.float32) if peak else np.ones(shape, np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of per-channel ``sigma``."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def simulate_t1w(rng: np.random.Generator, signal: np.ndarray, anatomy: TemplateAnatomy,
                 grid: ImageGrid, pose: Pose, deformation: Deformation,
                 protocol: T1wProtocol) -> tuple[np.ndarray, np.ndarray]:
    """One subject's T1w on ``grid``: (the image as int16 scanner units, its noise-free signal).

    The noise-free signal is the same image before Rician noise and digitisation (the anatomy,
    contrast, receive bias and gain): what a perfect pseudo-T1w could at best reproduce, and the
    reference of the SSIM ceiling in ``benchmarks/synthmr_validation.py``. The generator is
    consumed identically whether or not the caller keeps it.

    Parameters
    ----------
    signal
        :func:`contrast_map` of the site's contrast (WM = 1).
    """
    clean = pull_back(signal, anatomy.affine, grid, pose, deformation)
    clean *= bias_field(rng, grid.shape, protocol.bias) * np.float32(protocol.gain)
    t1w = rician(rng, clean, protocol.noise * protocol.gain)
    return np.clip(np.rint(t1w), 0, np.iinfo(np.int16).max).astype(np.int16), clean
