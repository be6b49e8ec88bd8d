"""Synthetic BIDS cohorts with ground truth, for tests, the demo and benchmarks.

- :mod:`~synthquant.phantom.anatomy`: template tissue maps under random deformation,
  atrophy and head pose (shared by every cohort).
- :mod:`~synthquant.phantom.sites`: acquisition sites and size presets.
- :mod:`~synthquant.phantom.mri` and :mod:`~synthquant.phantom.pet`: image formation.
- :mod:`~synthquant.phantom.bids_writer`: BIDS names, sidecars, all-or-nothing output.
- :mod:`~synthquant.phantom.amyloid`: the florbetapir NC/MCI/AD cohort.
- :mod:`~synthquant.phantom.kinetics`: plasma input and one-tissue compartment TACs.
- :mod:`~synthquant.phantom.myelin`: the HC/MS cohort with MTR, DWI, lesions and dynamic PIB PET.
"""

from synthquant.phantom.amyloid import make_amyloid_cohort
from synthquant.phantom.myelin import make_myelin_cohort
from synthquant.phantom.sites import PRESETS, SITES

__all__ = ["PRESETS", "SITES", "make_amyloid_cohort", "make_myelin_cohort"]
