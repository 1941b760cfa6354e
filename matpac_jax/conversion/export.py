"""A trained model as the object the official PyTorch code loads, per format.

The inverse of the importers (conversion/official.py, conversion/beats.py):
the same key layouts, read backwards (`layout.Entry.torch_value`), to be
written by conversion/torch_save.py (no torch needed;
`torch.load(weights_only=True)` reads them). A method names its format
(`Method.export_format`); `python -m matpac_jax.export` reads the workdir.
Per format (docs/SPEC.md section 9):

- m2d: `{'model': sd, 'epoch', 'args'}` as M2D's training saves it: encoder,
  `decoder_*` predictor, `target_*` EMA teacher, `norm_stats` and the fixed
  sin-cos tables. `epoch` holds our step count; `args` is a dict (the
  official file pickles an argparse.Namespace, which weights-only loading
  refuses and no M2D loader reads). M2D's runtime parses the geometry from
  the parent folder's name (`m2d_vit_base-80x608p16x16`): a note names it
  when the output's folder does not.
- matpac (and MATPAC++): the flat `student_encoder.` encoder file MATPAC
  releases. `norm_stats` is added only when the run's differ from MATPAC's
  constants (the official loader ignores the key; ours reads it).
- beats (BEATs iterations): `{'cfg', 'model'}` of the encoder (no label predictor: released
  SSL checkpoints have none and BEATs loads strictly).
- beats_tokenizer: `{'cfg', 'model'}` of the tokenizer, with the two EMA
  buffers the official quantizer registers but never updates, as zeros.

Fine-tuning workdirs are not exported (no official layout for our head).
Each writer is `(method, model, config, step, out) -> (object, notes)`:
`notes` tell a PyTorch user of the file what its loader needs.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np

from matpac_jax import errors, storage
from matpac_jax.conversion.beats import torch_layout
from matpac_jax.conversion.layout import torch_state_dict
from matpac_jax.conversion.official import (MATPAC_NORM, encoder_layout, predictor_layout,
                                            stack_layout)
from matpac_jax.models.vit import sincos_pos_table

# Key groups in the order M2D's checkpoints list them.
_M2D_ORDER = ("norm_stats", "cls_token", "pos_embed", "mask_token", "decoder_pos_embed",
              "patch_embed.", "blocks.", "norm.", "decoder_embed.", "decoder_blocks.",
              "decoder_norm.", "decoder_pred.", "target_blocks.", "target_norm.")
_TOKENIZER_ONLY = ("quant_n", "quant_dim")
_ENCODER_ONLY = ("finetuned_model", "predictor_dropout", "predictor_class")


def _ordered(sd: dict, order: tuple[str, ...]) -> collections.OrderedDict:
    def rank(key):
        for i, p in enumerate(order):
            if key == p or (p.endswith(".") and key.startswith(p)):
                return i
        return len(order)
    return collections.OrderedDict(sorted(sd.items(), key=lambda kv: rank(kv[0])))


def _vit_is_base(enc) -> bool:
    s = enc.stack
    return (enc.dim, s.depth, s.num_heads, enc.patch, enc.in_freq) == (768, 12, 12, 16, 80)


def m2d_folder_name(enc) -> str:
    """The folder name M2D's runtime parses the input and patch size from."""
    return f"m2d_vit_base-{enc.in_freq}x{enc.max_frames}p{enc.patch}x{enc.patch}"


def _m2d_folder_matches(name: str, enc) -> bool:
    """Does M2D's `parse_sizes_by_name` read `enc`'s geometry from `name`?"""
    m = re.fullmatch(r"[^-]+-(\d+)x(\d+)p(\d+)x(\d+)(p.*)?(-.*)?", name)
    return bool(m) and tuple(map(int, m.groups()[:4])) == (
        enc.in_freq, enc.max_frames, enc.patch, enc.patch)


def m2d_checkpoint(method, model, config, step: int | None, out: str) -> tuple[dict, list[str]]:
    if method.use_mcl or method.use_head:
        raise errors.CheckpointError("an M2D run with MATPAC heads or an MCL predictor has no "
                                     "official M2D layout")
    s, enc = model.student, model.student.encoder
    sd = torch_state_dict(encoder_layout(enc, "blocks.", "norm.")
                          | predictor_layout(s.predictor)
                          | stack_layout(model.teacher.stack, "target_blocks.", "target_norm."))
    gf, gt = enc.grid_f, enc.grid_t
    sd["norm_stats"] = np.asarray(method.embedding.stats, np.float32)
    sd["pos_embed"] = sincos_pos_table(gf, gt, enc.dim)[None].astype(np.float32)
    sd["decoder_pos_embed"] = sincos_pos_table(gf, gt, s.predictor.pred_dim)[None].astype(np.float32)
    m, o = config.model, config.objective
    args = dict(model="m2d_vit_base" if _vit_is_base(enc) else "m2d_vit",
                input_size=f"{enc.in_freq}x{enc.max_frames}", patch_size=f"{enc.patch}x{enc.patch}",
                embed_dim=enc.dim, depth=enc.stack.depth, num_heads=enc.stack.num_heads,
                decoder_embed_dim=m.pred_dim, decoder_depth=m.pred_depth,
                decoder_num_heads=m.pred_heads, mask_ratio=float(o.mask_ratio),
                norm_stats=list(method.embedding.stats), batch_size=config.batch_size,
                lr=float(config.opt.lr), seed=config.seed, ema_decay_init=float(o.ema_start),
                ema_decay=float(o.ema_end), step=step, total_steps=config.total_steps,
                exported_by="matpac_jax", matpac_jax_config=config.to_json())
    notes = []
    if not _m2d_folder_matches(os.path.basename(storage.parent(out).rstrip("/")), enc):
        notes.append(f"M2D's runtime reads the geometry from the folder name: put the file in "
                     f"a folder named {m2d_folder_name(enc)}/ for it")
    if not _vit_is_base(enc):
        notes.append("M2D's portable runtime always builds a ViT-B/16 on 80 mel bins; this "
                     f"{enc.dim}-d, {enc.stack.depth}-layer encoder loads with matpac_jax.load "
                     "and M2D's training code (its --model/--input_size flags), not there")
    if method.embedding.frontend != "m2d":
        notes.append(f"trained on the {method.embedding.frontend!r} front end; M2D's runtime "
                     "computes its own (nnAudio, centred frames)")
    return {"model": _ordered(sd, _M2D_ORDER), "epoch": int(step or 0), "args": args}, notes


def matpac_checkpoint(method, model, config, step: int | None, out: str
                      ) -> tuple[dict, list[str]]:
    enc = model.student.encoder
    sd = torch_state_dict(encoder_layout(enc, "student_encoder.blocks.", "student_encoder.norm."))
    sd["pos_embed"] = sincos_pos_table(enc.grid_f, enc.grid_t, enc.dim)[None].astype(np.float32)
    notes = []
    stats = method.embedding.stats
    if not np.allclose(stats, MATPAC_NORM):
        sd["norm_stats"] = np.asarray(stats, np.float32)
        notes.append(f"normalisation {stats} differs from MATPAC's {MATPAC_NORM}: written as "
                     "`norm_stats`, which matpac_jax.load reads and MATPAC's get_matpac ignores "
                     "(set its lms_mean / lms_std)")
    if not _vit_is_base(enc) or enc.max_frames != 608:
        notes.append("MATPAC's get_matpac builds a ViT-B/16 for 80 x 608 inputs; this encoder "
                     f"({enc.dim}-d, {enc.stack.depth} layers, {enc.in_freq} x {enc.max_frames}) "
                     "loads with matpac_jax.load, not there")
    if method.embedding.frontend != "matpac":
        notes.append(f"trained on the {method.embedding.frontend!r} front end; MATPAC's "
                     "inference computes its own (uncentred frames)")
    if method.use_mcl:
        notes.append("MATPAC++: the encoder only, as MATPAC releases it")
    if "as" in out:
        notes.append(f"MATPAC's get_matpac treats any path containing 'as' ({out}) as an "
                     "AudioSet fine-tuned 992-frame model: rename it for that loader")
    order = ("cls_token", "pos_embed", "patch_embed.", "student_encoder.blocks.",
             "student_encoder.norm.", "norm_stats")
    return dict(_ordered(sd, order)), notes  # a plain dict, as MATPAC's file is


def _beats_cfg(cfg, tokenizer: bool) -> dict:
    drop = _ENCODER_ONLY[1:] if tokenizer else _TOKENIZER_ONLY
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}
    out["finetuned_model"] = False
    return out


def beats_checkpoint(method, model, config, step: int | None, out: str
                     ) -> tuple[dict, list[str]]:
    enc = method.encoder(model)
    return {"cfg": _beats_cfg(enc.cfg, tokenizer=False),
            "model": collections.OrderedDict(torch_state_dict(torch_layout(enc)))}, []


def tokenizer_checkpoint(method, model, config, step: int | None, out: str
                         ) -> tuple[dict, list[str]]:
    tok = method.encoder(model)
    sd = torch_state_dict(torch_layout(tok))
    n, d = tok.quantize.num_codes, tok.quantize.dim
    sd["quantize.embedding.cluster_size"] = np.zeros((n,), np.float32)
    sd["quantize.embedding.embed_avg"] = np.zeros((n, d), np.float32)
    return {"cfg": _beats_cfg(tok.cfg, tokenizer=True),
            "model": collections.OrderedDict(sd)}, []


WRITERS = {"m2d": m2d_checkpoint, "matpac": matpac_checkpoint, "beats": beats_checkpoint,
           "beats_tokenizer": tokenizer_checkpoint}


def official_checkpoint(method, model, config, step: int | None = None, out: str = ""
                        ) -> tuple[dict, list[str]]:
    """(the object the official code of `method.export_format` loads, notes)."""
    if method.export_format not in WRITERS:
        raise errors.CheckpointError(
            f"config.method={config.method!r}: no official layout to export to; a fine-tuned "
            "encoder is used with matpac_jax.load")
    return WRITERS[method.export_format](method, model, config, step, out)
