"""The one exception type for bad input.

Bad input fails at the edge (BIDS discovery, file loading) with one line that names the
file and the reason; the command line prints ``str(error)`` and no traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file or argument that the pipeline cannot use.

    ``str(InputError(path, reason))`` is the single line shown to the user.
    """

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)
