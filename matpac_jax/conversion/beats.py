"""Import official BEATs / Tokenizers checkpoints (`{'cfg', 'model'}`) without torch.

Every key is checked: anything missing, unexpected or mis-shaped is reported
in one `CheckpointMismatchError`. Tolerated on purpose:
- `label_dict` next to `cfg`/`model` (fine-tuned releases; not model state);
- `predictor.*` only when `cfg['finetuned_model']` is true (then it is loaded);
- tokenizer training buffers `quantize.embedding.cluster_size` and
  `quantize.embedding.embed_avg`, which the official forward never reads.
Layouts: Linear weights are transposed; the patch conv (E, 1, p, p) becomes
a (p*p, E) Linear kernel; pos-conv `weight_v` (D, D/G, K) -> (K, D/G, D) and
`weight_g` (1, 1, K) -> (K,) stay separate; `grep_a` (1, H, 1, 1) -> (H,).
The relative bias table is shared: torch stores a copy under every layer;
the copies must equal layer 0's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from matpac_jax import errors
from matpac_jax.conversion import torch_pickle
from matpac_jax.conversion.layout import (
    Entry, check_and_assign, layer_norm_entries, linear_entries)
from matpac_jax.models.beats import BEATsEncoder
from matpac_jax.models.beats_layers import BEATsConfig
from matpac_jax.models.codebook import BEATsTokenizer

_IGNORED_TOKENIZER_KEYS = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg")


def _same(a):
    return a


def torch_layout(model: BEATsEncoder) -> dict[str, Entry]:
    """Official state-dict key -> (variable, torch shape, converter) for `model`."""
    cfg = model.cfg
    p, e = cfg.input_patch_size, cfg.embed_dim
    out: dict[str, Entry] = {}
    pe = model.patch_embedding
    out["patch_embedding.weight"] = Entry(pe.kernel, (e, 1, p, p), lambda a: a.reshape(e, p * p).T)
    if pe.bias is not None:
        out["patch_embedding.bias"] = Entry(pe.bias, (e,), _same)
    out |= layer_norm_entries("layer_norm", model.layer_norm)
    if model.post_extract_proj is not None:
        out |= linear_entries("post_extract_proj", model.post_extract_proj)
    enc = model.encoder
    k, g_in, d = enc.pos_conv.weight_v.shape
    out["encoder.pos_conv.0.weight_v"] = Entry(enc.pos_conv.weight_v, (d, g_in, k),
                                               lambda a: a.transpose(2, 1, 0))
    out["encoder.pos_conv.0.weight_g"] = Entry(enc.pos_conv.weight_g, (1, 1, k),
                                               lambda a: a.reshape(k))
    out["encoder.pos_conv.0.bias"] = Entry(enc.pos_conv.bias, (d,), _same)
    out |= layer_norm_entries("encoder.layer_norm", enc.layer_norm)
    h = cfg.encoder_attention_heads
    for i, layer in enumerate(enc.layers):
        pre = f"encoder.layers.{i}"
        att = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out |= linear_entries(f"{pre}.self_attn.{name}", getattr(att, name))
        if cfg.relative_position_embedding:
            table = enc.layers[0].self_attn.relative_attention_bias
            out[f"{pre}.self_attn.relative_attention_bias.weight"] = Entry(
                table, tuple(table.shape), _same)
        if cfg.gru_rel_pos:
            out |= linear_entries(f"{pre}.self_attn.grep_linear", att.grep_linear)
            out[f"{pre}.self_attn.grep_a"] = Entry(att.grep_a, (1, h, 1, 1), lambda a: a.reshape(h))
        out |= layer_norm_entries(f"{pre}.self_attn_layer_norm", layer.self_attn_layer_norm)
        out |= linear_entries(f"{pre}.fc1", layer.fc1)
        out |= linear_entries(f"{pre}.fc2", layer.fc2)
        out |= layer_norm_entries(f"{pre}.final_layer_norm", layer.final_layer_norm)
    if model.predictor is not None:
        out |= linear_entries("predictor", model.predictor)
    if isinstance(model, BEATsTokenizer):
        out |= linear_entries("quantize_layer.0", model.quantize_layer.linear1)
        out |= linear_entries("quantize_layer.2", model.quantize_layer.linear2)
        vq = model.quantize
        out["quantize.embedding.weight"] = Entry(vq.embedding, (vq.num_codes, vq.dim), _same)
        out["quantize.cluster_size"] = Entry(vq.cluster_size, (vq.num_codes,), _same)
        out["quantize.embedding.initted"] = Entry(vq.initted, (1,), lambda a: a.reshape(()) != 0,
                                              lambda v: np.float32(v).reshape(1))
    return out


def _as_checkpoint(obj_or_path: Any, path: str | os.PathLike | None) -> tuple[dict, str]:
    if isinstance(obj_or_path, (str, os.PathLike)):
        path = obj_or_path
        obj_or_path = torch_pickle.load(obj_or_path)
    where = os.fspath(path) if path is not None else "<checkpoint object>"
    if not isinstance(obj_or_path, Mapping) or "cfg" not in obj_or_path or "model" not in obj_or_path:
        keys = sorted(obj_or_path) if isinstance(obj_or_path, Mapping) else type(obj_or_path).__name__
        raise errors.CheckpointError(f"{where}: not an official BEATs checkpoint {{'cfg', 'model'}} (got {keys})")
    return obj_or_path, where


def load_beats(obj_or_path: Any, path: str | os.PathLike | None = None, *,
               dtype=jnp.float32) -> BEATsEncoder | BEATsTokenizer:
    """An official BEATs (or Tokenizers) checkpoint -> model in eval mode.

    `obj_or_path` is a `.pt` path or the already-loaded dict (then `path`
    only names it in errors). A tokenizer is returned when the state dict
    has `quantize.*` / `quantize_layer.*` keys.
    """
    ckpt, where = _as_checkpoint(obj_or_path, path)
    sd = {k: np.asarray(v) for k, v in ckpt["model"].items()}
    cfg = BEATsConfig.from_dict(ckpt["cfg"])
    is_tokenizer = any(k.startswith(("quantize.", "quantize_layer.")) for k in sd)
    cls = BEATsTokenizer if is_tokenizer else BEATsEncoder
    # Shapes only: every parameter comes from the checkpoint, so skip random init.
    model = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    layout = torch_layout(model)

    ignored = _IGNORED_TOKENIZER_KEYS if is_tokenizer else ()
    problems = []
    if cfg.relative_position_embedding:
        t0 = sd.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
        for i in range(1, cfg.encoder_layers):
            key = f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"
            if (t0 is not None and key in sd and sd[key].shape == t0.shape
                    and not np.array_equal(sd[key], t0)):
                problems.append((key, "== layer 0 (shared table)", "different values"))
    check_and_assign(f"{where} as {cls.__name__}", sd, layout, ignored=ignored,
                     problems=problems)
    _fill_unloaded(model, cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)) if _unloaded(model) else None)
    model.eval()
    return model


def _unloaded(model: nnx.Module) -> list[tuple]:
    return [path for path, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Variable) and isinstance(v.get_value(), jax.ShapeDtypeStruct)]


def _fill_unloaded(model: nnx.Module, fresh: nnx.Module | None) -> None:
    """Non-checkpoint state (dropout RNG streams only) from a concretely built model."""
    if fresh is None:
        return
    values = dict(nnx.iter_graph(fresh))
    for path, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Variable) and isinstance(v.get_value(), jax.ShapeDtypeStruct):
            v.set_value(values[path].get_value())
