"""`matpac_jax.hear` with timestamp embeddings 40 ms apart (`frame_hop_ms=40`).

HEAR's tools call `load_model(path)` with nothing else, so the finer hop is
its own module: `hear-validator matpac_jax.hear_40ms --model PATH`.
"""
import functools

from matpac_jax.hear import get_scene_embeddings, get_timestamp_embeddings
from matpac_jax.hear import load_model as _load_model

load_model = functools.partial(_load_model, frame_hop_ms=40)
load_model.__doc__ = _load_model.__doc__

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
