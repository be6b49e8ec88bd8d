"""synthquant: quantify brain PET when a modality is missing, by synthesising it."""

__version__ = "0.1.0"

import os as _os

# Nipype asks a web service for its latest version at import; nothing is fetched at run time.
_os.environ.setdefault("NO_ET", "1")
