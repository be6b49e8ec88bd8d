"""Shared fixtures. Heavy fixtures (phantom cohorts, pipeline runs) are session-scoped so the
suite builds each once; everything runs on the coarse "test" phantom preset."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ET", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
