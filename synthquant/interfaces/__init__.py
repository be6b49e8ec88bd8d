"""Nipype interfaces: thin wrappers over synthquant's plain functions."""

from synthquant.interfaces.amyloid import (
    AmyloidReport,
    NormalizeToTemplate,
    QuantifySUVR,
    RigidCoregistration,
    StaticPET,
    ToTemplate,
)
from synthquant.interfaces.derivatives import DerivativesSink
from synthquant.interfaces.petonly import (
    PETSegmentation,
    PETTemplateRegistration,
    SegmentationRegistration,
    SelectPETTemplate,
)
from synthquant.interfaces.synthesis import SynthesizeDVR, SynthesizeMR

__all__ = ["AmyloidReport", "DerivativesSink", "NormalizeToTemplate", "PETSegmentation", "PETTemplateRegistration",
           "QuantifySUVR", "RigidCoregistration", "SegmentationRegistration", "SelectPETTemplate", "StaticPET",
           "SynthesizeDVR", "SynthesizeMR", "ToTemplate"]
