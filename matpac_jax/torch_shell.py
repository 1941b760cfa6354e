"""JAX embedders behind torch interfaces (HEAR's `matpac_jax.hear`, X-ARES's
`matpac_jax.xares`): tensors in and out, and JAX sharing the GPU with torch.

Importing this module sets `XLA_PYTHON_CLIENT_PREALLOCATE=false` unless the
environment already sets it (a user's choice wins): a torch harness (HEAR's,
X-ARES's) keeps its own models and data on the GPU, and JAX's default, 75 %
of the device preallocated when its backend starts, would take memory torch
needs; without preallocation JAX allocates what the encoder uses. It only
acts if it runs before JAX's backend starts (the first JAX computation or
`jax.devices()`), so the torch-facing modules import it before anything else.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device) or array-like -> numpy."""
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def like(x: np.ndarray, ref):
    """`x` as a tensor on `ref`'s device if `ref` is a torch tensor, else `x`."""
    if not is_torch(ref):
        return x
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(ref.device)
