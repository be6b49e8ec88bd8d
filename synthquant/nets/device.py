"""Device choice: the one home for it (nnU-Net style: decide once, set CPU threads)."""

from __future__ import annotations

import logging

from synthquant.errors import InputError

LOGGER = logging.getLogger("synthquant")


def choose_device(requested: str = "auto", *, omp_nthreads: int = 1):
    """``torch.device`` for ``requested`` (auto, cpu, cuda).

    ``cuda`` without a visible GPU is an input error (one line); ``auto`` falls back to the CPU
    and says so. On the CPU, torch uses ``omp_nthreads`` threads.
    """
    import torch  # noqa: PLC0415 - heavy import

    if requested not in ("auto", "cpu", "cuda"):
        raise InputError(None, f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False)")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "auto":
        LOGGER.info("--device auto: no CUDA GPU visible; synthesis runs on the CPU (%d threads)", omp_nthreads)
    torch.set_num_threads(max(1, int(omp_nthreads)))
    return torch.device("cpu")
