"""synthquant: quantify brain PET when a modality is missing, by synthesising it."""

__version__ = "0.1.0"
