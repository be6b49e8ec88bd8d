"""Synthetic BIDS cohorts with ground truth, for tests, the demo and benchmarks.

- :mod:`~synthquant.phantom.anatomy`: template tissue maps under random deformation,
  atrophy and head pose (shared by every cohort).
- :mod:`~synthquant.phantom.sites`: acquisition sites and size presets.
- :mod:`~synthquant.phantom.mri` and :mod:`~synthquant.phantom.pet`: image formation.
- :mod:`~synthquant.phantom.bids_writer`: BIDS names, sidecars, all-or-nothing output.
- :mod:`~synthquant.phantom.amyloid`: the florbetapir NC/MCI/AD cohort.
"""

from synthquant.phantom.amyloid import make_amyloid_cohort
from synthquant.phantom.sites import PRESETS, SITES

__all__ = ["make_amyloid_cohort", "PRESETS", "SITES"]
