"""Import official M2D / MATPAC weights without torch (docs/SPEC.md section 9).

Handles M2D training checkpoints (`{'model': sd, ...}`: encoder, predictor
`decoder_*`, teacher `target_*`), M2D encoder-only state dicts, EVAR fine-tune
files (keys under `module.ar.runtime.backbone.`; other keys such as the task
head are ignored and listed in `config['ignored_keys']`) and MATPAC flat dicts
(`student_encoder.` prefix). Geometry is read from tensor shapes and from the
fixed sin-cos table itself (which must equal ours: it is not loaded), never
from file names. Every missing, unexpected or mis-shaped key is reported in one
`conversion.layout.CheckpointMismatchError`; nothing is loaded partially.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from matpac_jax import errors
from matpac_jax.conversion import torch_pickle
from matpac_jax.conversion.layout import (
    CheckpointMismatchError, Entry, check_and_assign, layer_norm_entries, linear_entries)
from matpac_jax.data.frontends import NORM
from matpac_jax.models.heads import DinoHead
from matpac_jax.models.masked_latent import Student, Teacher
from matpac_jax.models.vit import Predictor, TransformerStack, ViTEncoder, sincos_pos_table

M2D_DEFAULT_NORM = NORM["m2d"]  # 2022 weights carry no norm_stats
MATPAC_NORM = NORM["matpac"]


@dataclasses.dataclass
class ImportedModel:
    kind: str                      # 'm2d' | 'matpac'
    encoder: ViTEncoder
    student: Student | None        # full M2D training checkpoints only
    teacher: Teacher | None
    norm_stats: tuple[float, float]
    frontend: str                  # 'm2d' (centered mel) | 'matpac' (uncentered)
    config: dict[str, Any]


def stack_layout(s: TransformerStack, blocks: str, norm: str) -> dict[str, Entry]:
    out = {}
    for i, b in enumerate(s.blocks):
        p = f"{blocks}{i}."
        out |= layer_norm_entries(p + "norm1", b.norm1) | layer_norm_entries(p + "norm2", b.norm2)
        out |= linear_entries(p + "attn.qkv", b.attn.qkv) | linear_entries(p + "attn.proj", b.attn.proj)
        out |= linear_entries(p + "mlp.fc1", b.mlp.fc1) | linear_entries(p + "mlp.fc2", b.mlp.fc2)
    return out | layer_norm_entries(norm.rstrip("."), s.norm)


def encoder_layout(e: ViTEncoder, blocks: str, norm: str) -> dict[str, Entry]:
    p, d = e.patch, e.dim
    return {
        "cls_token": Entry(e.cls_token, (1, 1, d), lambda w: w),
        "patch_embed.proj.weight": Entry(e.patch_embed.kernel, (d, 1, p, p),
                                         lambda w: w.reshape(d, p * p).T),
        "patch_embed.proj.bias": Entry(e.patch_embed.bias, (d,), lambda w: w),
    } | stack_layout(e.stack, blocks, norm)


def head_layout(h: DinoHead, prefix: str) -> dict[str, Entry]:
    b, k = h.last_v[...].shape
    return (linear_entries(prefix + "mlp.0", h.fc1) | linear_entries(prefix + "mlp.2", h.fc2)
            | linear_entries(prefix + "mlp.4", h.fc3)
            | {prefix + "last_layer.weight_v": Entry(h.last_v, (k, b), lambda w: w.T),
               prefix + "last_layer.weight_g": Entry(h.last_g, (k, 1), lambda w: w[:, 0])})


def predictor_layout(p: Predictor) -> dict[str, Entry]:
    """M2D's decoder keys: `mask_token`, `decoder_embed`, `decoder_blocks.*`,
    `decoder_norm`, `decoder_pred` (its sin-cos `decoder_pos_embed` is fixed)."""
    d = p.mask_token.shape[-1]
    return ({"mask_token": Entry(p.mask_token, (1, 1, d), lambda w: w)}
            | linear_entries("decoder_embed", p.embed) | linear_entries("decoder_pred", p.pred)
            | stack_layout(p.stack, "decoder_blocks.", "decoder_norm."))


def _depth(sd: dict, blocks: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(re.escape(blocks) + r"(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def _grid_from_table(table: np.ndarray, patch: int, default_freq: int = 80):
    """(grid_f, grid_t, problem) from a (1 + N, D) sin-cos table."""
    n, d = table.shape[0] - 1, table.shape[1]
    for gf in range(1, n + 1):
        if n % gf == 0 and np.allclose(sincos_pos_table(gf, n // gf, d), table, atol=1e-5):
            return gf, n // gf, None
    gf = default_freq // patch
    return gf, max(n // gf, 1), ("pos_embed", "the fixed 2-D sin-cos table", "other values")


def _source(path_or_obj, name: str | None) -> tuple[str, Any]:
    if isinstance(path_or_obj, (str, os.PathLike)):
        return os.fspath(path_or_obj), torch_pickle.load(path_or_obj)
    return name or "<state dict>", path_or_obj


def load_heads(sd: dict, prefix: str = "", *, dtype=jnp.float32) -> DinoHead:
    """A DinoHead from torch `Cls_Head` keys (`{prefix}mlp.0.weight`, ...,
    `{prefix}last_layer.weight_g/weight_v`); other keys under prefix are errors."""
    sub = {k: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        hidden, in_dim = np.shape(sub[prefix + "mlp.0.weight"])
        bottleneck = np.shape(sub[prefix + "mlp.4.weight"])[0]
        out_dim = np.shape(sub[prefix + "last_layer.weight_v"])[0]
    except KeyError as e:
        raise CheckpointMismatchError(missing=[e.args[0]], context=prefix or "<head>") from None
    head = DinoHead(int(in_dim), int(out_dim), int(hidden), int(bottleneck), dtype=dtype, rngs=nnx.Rngs(0))
    check_and_assign(prefix or "<head>", sub, head_layout(head, prefix))
    return head


def load_official(path_or_obj, *, num_heads: int | None = None, pred_heads: int | None = None,
                  dtype=jnp.float32, name: str | None = None) -> ImportedModel:
    """Load an official M2D or MATPAC checkpoint (path or already-loaded dict).

    Heads are not in the shapes: `num_heads` defaults to dim // 64 (ViT
    convention), `pred_heads` to pred_dim // 32 (M2D: 512 -> 16). `name`
    labels errors when a loaded dict is passed.
    """
    source, obj = _source(path_or_obj, name)
    if not isinstance(obj, dict):
        raise errors.CheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    if "cfg" in obj and "model" in obj:
        raise errors.CheckpointError(f"{source}: a BEATs checkpoint; use matpac_jax.conversion.beats.load_beats")
    sd = obj["model"] if isinstance(obj.get("model"), dict) else obj

    cls_keys = [k for k in sd if k == "cls_token" or k.endswith(".cls_token")]
    if len(cls_keys) != 1:
        raise CheckpointMismatchError(missing=["cls_token"] if not cls_keys else [],
                                      unexpected=cls_keys[1:], context=source)
    root = cls_keys[0][: -len("cls_token")]
    ignored = sorted(k for k in sd if not k.startswith(root))  # EVAR task head, front end, ...
    sd = {k[len(root):]: v for k, v in sd.items() if k.startswith(root)}

    kind = "matpac" if any(k.startswith("student_encoder.") for k in sd) else "m2d"
    enc_pre = "student_encoder." if kind == "matpac" else ""
    blocks, norm = enc_pre + "blocks.", enc_pre + "norm."

    dim = int(np.shape(sd["cls_token"])[-1])
    pw = sd.get("patch_embed.proj.weight")
    patch = int(np.shape(pw)[-1]) if pw is not None else 16
    fc1 = sd.get(blocks + "0.mlp.fc1.weight")
    mlp_ratio = np.shape(fc1)[0] / dim if fc1 is not None else 4.0
    problems = []
    if "pos_embed" in sd:
        gf, gt, bad = _grid_from_table(np.asarray(sd["pos_embed"], np.float32)[0], patch)
        problems += [bad] if bad else []
    else:
        raise CheckpointMismatchError(missing=["pos_embed (gives the input geometry)"], context=source)
    heads = num_heads or max(dim // 64, 1)
    config = dict(in_freq=gf * patch, max_frames=gt * patch, patch=patch, dim=dim,
                  depth=_depth(sd, blocks), num_heads=heads, mlp_ratio=mlp_ratio)
    rngs = nnx.Rngs(0)
    encoder = ViTEncoder(**config, dtype=dtype, rngs=rngs)
    entries = encoder_layout(encoder, blocks, norm)
    extra_ok = {"pos_embed"}

    student = teacher = None
    if "norm_stats" in sd:  # M2D since 2023; our MATPAC exports with non-standard stats
        extra_ok.add("norm_stats")
    if kind == "m2d" and "decoder_embed.weight" in sd:
        pred_dim = int(np.shape(sd["decoder_embed.weight"])[0])
        config |= dict(pred_dim=pred_dim, pred_depth=_depth(sd, "decoder_blocks."),
                       pred_heads=pred_heads or max(pred_dim // 32, 1))
        predictor = Predictor(grid_f=gf, grid_t=gt, dim=dim, pred_dim=pred_dim,
                              depth=config["pred_depth"], num_heads=config["pred_heads"],
                              mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs)
        entries |= predictor_layout(predictor)
        extra_ok.add("decoder_pos_embed")
        if "decoder_pos_embed" in sd:
            dpe = np.asarray(sd["decoder_pos_embed"], np.float32)[0]
            if dpe.shape != (1 + gf * gt, pred_dim) or not np.allclose(
                    dpe, sincos_pos_table(gf, gt, pred_dim), atol=1e-5):
                problems.append(("decoder_pos_embed", "the fixed 2-D sin-cos table", "other values"))
        teacher_stack = TransformerStack(dim, config["depth"], heads, mlp_ratio, dtype=dtype, rngs=rngs)
        entries |= stack_layout(teacher_stack, "target_blocks.", "target_norm.")
        student, teacher = Student(encoder, predictor), Teacher(teacher_stack)

    check_and_assign(source, sd, entries, ignored=extra_ok, problems=problems)
    ns = sd.get("norm_stats")
    if ns is not None:
        norm_stats = (float(ns[0]), float(ns[1]))
    else:
        norm_stats = M2D_DEFAULT_NORM if kind == "m2d" else MATPAC_NORM
    config |= dict(key_prefix=root, ignored_keys=ignored)
    return ImportedModel(kind=kind, encoder=encoder, student=student, teacher=teacher,
                         norm_stats=norm_stats, frontend=kind, config=config)
