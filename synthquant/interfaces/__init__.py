"""Nipype interfaces: thin wrappers over synthquant's plain functions."""

from synthquant.interfaces.amyloid import (
    NormalizeToTemplate,
    QuantifySUVR,
    RigidCoregistration,
    StaticPET,
    ToTemplate,
)
from synthquant.interfaces.derivatives import DerivativesSink

__all__ = ["DerivativesSink", "NormalizeToTemplate", "QuantifySUVR", "RigidCoregistration", "StaticPET",
           "ToTemplate"]
