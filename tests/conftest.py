"""Shared test set-up: one intra-op thread per pytest-xdist worker (``scripts/test.sh`` runs two)."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers with torch's default of one thread per core oversubscribe a small machine: their BLAS threads
    # spin against each other, and a GAN training test took 3x as long as alone. Subprocesses (CLI tests, Ray
    # workers) inherit the variables.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
