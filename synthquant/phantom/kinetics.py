"""PET tracer kinetics for phantom cohorts: a plasma input and one-tissue compartments.

Units: time in minutes, rate constants per minute, concentrations in kBq/mL (decay-corrected
to injection). Arrays broadcast, so a whole image of voxels is computed at once.

**Plasma input.** Feng's model 2 (Feng, Huang & Wang, Int J Biomed Comput 1993):

    Cp(t) = (A1 u - A2 - A3) exp(l1 u) + A2 exp(l2 u) + A3 exp(l3 u),   u = t - delay >= 0

with ``l1 < l2 < l3 < 0``: a bolus peak, a fast and a slow clearance phase (metabolite-corrected
parent tracer, so no metabolite term).

**Tissue.** One tissue compartment per voxel, ``dC/dt = K1 Cp - k2 C``, so
``C = K1 exp(-k2 t) * Cp`` and the total distribution volume is ``VT = K1 / k2`` (no vascular
fraction). The convolution is analytic, term by term: for ``exp(l u)`` it is
``exp(-k2 T) T exprel(a T)`` and for ``u exp(l u)`` it is ``exp(-k2 T) T^2 g(a T)``, with
``a = l + k2``, ``T = t - delay``, ``exprel(x) = (e^x - 1)/x`` and ``g(x) = (e^x(x - 1) + 1)/x^2``;
both stay finite when ``k2 = -l``. A frame's mean needs no quadrature: integrating the
compartment equation gives ``int C dt = (K1 int Cp dt - [C]) / k2`` between the frame's edges.

**Why Logan recovers the DVR here.** For a 1TC voxel ``int_0^t C = VT int_0^t Cp - C(t)/k2``, and
for a 1TC reference ``int_0^t Cp = (int_0^t Cr + Cr(t)/k2r) / VTr``. Hence

    int_0^t C / C(t) = DVR (int_0^t Cr + Cr(t)/k2r) / C(t) - 1/k2,   DVR = VT / VTr,

exactly, at every t: the reference-tissue Logan plot (Logan et al., J Cereb Blood Flow Metab
1996) is a line of slope DVR. Dropping the ``Cr/k2r`` term, as is usual, only shifts the
intercept once ``Cr/C`` is constant, i.e. after the transients ``exp(-k2 t)`` have died: with the
rate constants of :mod:`synthquant.phantom.myelin` (``k2`` ~0.1 /min in WM, >= 0.06 /min at the
extremes) and ``t* = 35-40 min``, the slope is within 0.2 % of the DVR. A voxel mixing several
1TC tissues (partial volume, the scanner's point-spread function) has ``VT`` the volume-weighted
mean of its parts, and the same late-time argument gives slope ``VT_mix / VTr``: the DVR of a
blurred image is the blurred VT over VTr (tests/test_phantom_myelin.py checks both, voxel by voxel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class FengInput:
    """Parameters of Feng's model-2 plasma input (module docstring).

    ``a1`` in kBq/mL/min, ``a2`` and ``a3`` in kBq/mL, ``l1 < l2 < l3 < 0`` per minute, ``delay``
    in minutes (bolus arrival).
    """

    a1: float
    a2: float
    a3: float
    l1: float
    l2: float
    l3: float
    delay: float = 0.0

    def __post_init__(self):
        if not self.l1 < self.l2 < self.l3 < 0:
            raise ValueError(f"Feng input needs l1 < l2 < l3 < 0, got {self.l1}, {self.l2}, {self.l3}")

    def terms(self) -> tuple[tuple[float, float, float], ...]:
        """``(ramp, constant, rate)`` of each term ``(ramp u + constant) exp(rate u)``."""
        return ((self.a1, -self.a2 - self.a3, self.l1), (0.0, self.a2, self.l2), (0.0, self.a3, self.l3))

    def __call__(self, t) -> np.ndarray:
        """``Cp(t)``."""
        u = np.asarray(t, float) - self.delay
        value = sum((ramp * u + constant) * np.exp(rate * np.maximum(u, 0.0))
                    for ramp, constant, rate in self.terms())
        return np.where(u >= 0.0, value, 0.0)

    def integral(self, t) -> np.ndarray:
        """``int_0^t Cp``: the convolution with ``k2 = 0``."""
        return convolved_input(self, t, 0.0)

    def scaled(self, factor: float) -> FengInput:
        """The same shape with every amplitude times ``factor`` (dose over body weight)."""
        return FengInput(self.a1 * factor, self.a2 * factor, self.a3 * factor,
                         self.l1, self.l2, self.l3, self.delay)

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}


def _exprel(x):
    """``(e^x - 1) / x``, 1 at 0."""
    return special.exprel(x)


def _exprel2(x):
    """``(e^x (x - 1) + 1) / x^2 = int_0^1 v e^(x v) dv``, 1/2 at 0 (series near 0)."""
    x = np.asarray(x, float)
    small = np.abs(x) < 1e-3
    safe = np.where(small, 1.0, x)
    direct = (np.exp(safe) - special.exprel(safe)) / safe
    series = 0.5 + x / 3.0 + x * x / 8.0 + x ** 3 / 30.0
    return np.where(small, series, direct)


def convolved_input(plasma: FengInput, t, k2) -> np.ndarray:
    """``int_0^t exp(-k2 (t - s)) Cp(s) ds`` (kBq min/mL), broadcast over ``t`` and ``k2``."""
    k2 = np.asarray(k2, float)
    big_t = np.maximum(np.asarray(t, float) - plasma.delay, 0.0)
    decay = np.exp(-k2 * big_t)
    total = 0.0
    for ramp, constant, rate in plasma.terms():
        x = (rate + k2) * big_t
        part = constant * big_t * _exprel(x)
        if ramp:
            part = part + ramp * big_t * big_t * _exprel2(x)
        total = total + part
    return decay * total


def one_tissue_concentration(plasma: FengInput, t, k1, k2) -> np.ndarray:
    """``C(t) = K1 exp(-k2 t) * Cp``: the 1TC tissue concentration at time ``t`` (min)."""
    return np.asarray(k1, float) * convolved_input(plasma, t, k2)


def one_tissue_frame_mean(plasma: FengInput, start: float, duration: float, k1, k2) -> np.ndarray:
    """Mean 1TC concentration over one frame ``[start, start + duration]`` (minutes).

    Exact: ``int C = (K1 [int Cp] - [C]) / k2`` over the frame (integrated 1TC equation).
    ``k2`` must be positive (no irreversible compartment).
    """
    k1 = np.asarray(k1, float)
    k2 = np.asarray(k2, float)
    if np.any(k2 <= 0):
        raise ValueError("one_tissue_frame_mean needs k2 > 0 everywhere")
    end = start + duration
    d_input = plasma.integral(end) - plasma.integral(start)
    d_tissue = one_tissue_concentration(plasma, end, k1, k2) - one_tissue_concentration(plasma, start, k1, k2)
    return (k1 * d_input - d_tissue) / (k2 * duration)


def one_tissue_tacs(plasma: FengInput, starts, durations, k1, k2) -> np.ndarray:
    """Frame-mean TACs, shape ``(*broadcast(k1, k2).shape, n_frames)``."""
    return np.stack([one_tissue_frame_mean(plasma, float(s), float(d), k1, k2)
                     for s, d in zip(starts, durations)], axis=-1)


def plasma_frame_means(plasma: FengInput, starts, durations) -> np.ndarray:
    """Mean plasma concentration over each frame."""
    return np.array([(plasma.integral(s + d) - plasma.integral(s)) / d for s, d in zip(starts, durations)])


def decay_correction_factors(starts_s, durations_s, half_life_s: float) -> np.ndarray:
    """Per-frame factors that correct a frame's mean activity to injection time (t = 0).

    The factor is ``exp(lambda t_s) lambda D / (1 - exp(-lambda D))``: the mean decay over the frame
    (BIDS PET ``DecayCorrectionFactor``), with ``lambda = ln 2 / half-life``.
    """
    rate = np.log(2.0) / half_life_s
    start, duration = np.asarray(starts_s, float), np.asarray(durations_s, float)
    return np.exp(rate * start) * rate * duration / -np.expm1(-rate * duration)
