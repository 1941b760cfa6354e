"""XLA flags the project sets by default, before JAX starts a backend.

Each is appended to XLA_FLAGS only when the user's XLA_FLAGS does not name
it already, so any of them can be overridden from the environment.
"""
from __future__ import annotations

import os

DEFAULTS = {
    # NVIDIA GPUs: GEMMs through cuBLAS, not Triton. XLA 0.10.2's Triton GEMM
    # autotuner fails to compile the ViT-B step for H100 ("Couldn't find
    # output tile sizes that satisfy hlo: bf16[14848,768] dot" at the qkv
    # projection, models/vit.py); cuBLAS takes every shape, and MaxText's GPU
    # recipes run with the same setting. Ignored by the CPU and TPU compilers.
    "--xla_gpu_enable_triton_gemm": "false",
}


def apply_defaults() -> str:
    """Add the DEFAULTS the environment does not set to XLA_FLAGS; returns it.
    Call before the first compilation (flags are read when a backend starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    return os.environ.get("XLA_FLAGS", "")
