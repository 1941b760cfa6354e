"""Pre-training that starts from a checkpoint: `--config.init_from=PATH`.

PATH is anything `matpac_jax.load` accepts (an official M2D / MATPAC / BEATs
file, or a workdir of ours). `resolve` runs before anything is built:

1. Family check. MATPAC, MATPAC++ and M2D take ViT files (M2D, MATPAC, our
   m2d / matpac / finetune workdirs); `beats_mam` takes BEATs SSL models;
   `beats_tokenizer` takes tokenizers. Anything else is refused.
2. The architecture comes from the file, as in fine-tuning: the config's
   encoder fields (and predictor / head fields where the file has those
   parts, and the front end and normalisation the weights were trained with)
   are replaced by the file's, each change logged. A shape the method cannot
   take (say, 128 mel bins for an 80-bin front end) is refused, listing every
   problem at once.
3. Weights. The student encoder always comes from the file. The teacher,
   predictor, heads, center (ViT) and label predictor / estimator (BEATs)
   come from the file where it has them with matching shapes; otherwise they
   keep the fresh init the official code gives them (the teacher drawn
   independently of the student: docs/SPEC.md section 2), unless
   `config.init_teacher='student'`, which copies the file's student encoder
   (and head) into the teacher. Optimiser state and step start from zero.
4. Resuming. When the workdir already has a checkpoint nothing is imported:
   the replaced fields are taken from the saved config and the weights from
   the checkpoint (so the file may be gone).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import ml_collections
from absl import logging

from matpac_jax import errors, methods, restore, storage
from matpac_jax.conversion import torch_pickle
from matpac_jax.conversion.beats import load_beats
from matpac_jax.conversion.official import load_official
from matpac_jax.data import frontends
from matpac_jax.methods.pretrained import Pretrained, describe
from matpac_jax.models.beats_layers import BEATsConfig
from matpac_jax.models.codebook import BEATsTokenizer

INIT_TEACHER = ("file", "student")
VIT_ENCODER = ("in_freq", "patch", "dim", "depth", "num_heads", "mlp_ratio")
VIT_PREDICTOR = ("pred_dim", "pred_depth", "pred_heads")
VIT_HEAD = ("head_out_dim", "head_hidden_dim", "head_bottleneck_dim")
# BEATs cfg fields that are training settings, not architecture: kept from the config.
BEATS_TRAINING = ("layer_wise_gradient_decay_ratio", "dropout", "attention_dropout",
                  "activation_dropout", "dropout_input", "encoder_layerdrop", "finetuned_model",
                  "predictor_dropout", "predictor_class")


def _vit_fields(enc, frontend: str, norm_stats) -> dict[str, Any]:
    arch = describe(enc, "vit")  # max_frames is the crop's (data.crop_frames)
    return ({f"model.{k}": v for k, v in arch.items() if k != "max_frames"}
            | {"data.frontend": frontend, "data.norm_stats": tuple(map(float, norm_stats))})


def _predictor_fields(p) -> dict[str, Any]:
    return {"model.pred_dim": p.pred_dim, "model.pred_depth": p.stack.depth,
            "model.pred_heads": p.stack.num_heads}


def _head_fields(h) -> dict[str, Any]:
    return {"model.head_out_dim": int(h.last_g.shape[0]),
            "model.head_hidden_dim": h.fc1.out_features,
            "model.head_bottleneck_dim": h.fc3.out_features}


def _beats_fields(cfg, config_model) -> dict[str, Any]:
    return {f"model.{k}": v for k, v in dataclasses.asdict(cfg).items()
            if k in config_model and k not in BEATS_TRAINING}


def read(path: str, config_model: ml_collections.ConfigDict) -> Pretrained:
    """The parts and fields of `path` (official file or our workdir)."""
    path = os.fspath(path)
    if storage.isdir(path):  # local or gs://
        return _read_workdir(path, config_model)
    obj = torch_pickle.load(path)
    if isinstance(obj, dict) and "cfg" in obj and "model" in obj:
        model = load_beats(obj, path)
        if isinstance(model, BEATsTokenizer):
            return Pretrained(path, "beats_tokenizer", "official BEATs tokenizer",
                              _beats_fields(model.cfg, config_model), {"tokenizer": model})
        model.predictor = None  # a fine-tuned release's classifier is not pre-training state
        return Pretrained(path, "beats", "official BEATs checkpoint",
                          _beats_fields(model.cfg, config_model), {"encoder": model})
    m = load_official(obj, name=path)
    fields = _vit_fields(m.encoder, m.frontend, m.norm_stats)
    parts: dict[str, Any] = {"encoder": m.encoder}
    if m.student is not None:
        fields |= _predictor_fields(m.student.predictor)
        parts |= {"predictor": m.student.predictor, "teacher": m.teacher.stack}
    what = {"m2d": "official M2D checkpoint", "matpac": "official MATPAC encoder"}[m.kind]
    return Pretrained(path, "vit", what + ("" if m.student is not None else " (encoder only)"),
                      fields, parts)


def _read_workdir(path: str, config_model) -> Pretrained:
    """What a workdir gives: its method's `parts_for_init`, and the config
    fields those parts fix."""
    method, model, config = methods.load_workdir(path)
    family, parts = method.parts_for_init(model)
    enc, spec = method.encoder(model), method.embedding
    if family == "vit":
        fields = _vit_fields(enc, spec.frontend, spec.stats)
        if "predictor" in parts:
            fields |= _predictor_fields(parts["predictor"])
        if "head" in parts:
            fields |= _head_fields(parts["head"])
    else:
        fields = _beats_fields(enc.cfg, config_model)
    return Pretrained(path, family, f"{config.method} workdir", fields, parts)


def _get(config, key):
    node = config
    for k in key.split("."):
        node = node[k]
    return node


def _set(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for k in parents:
        node = node[k]
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (tuple, list)) else value


def _problems(config, family: str) -> list[str]:
    """What the effective config cannot run (all at once)."""
    m, crop, out = config.model, config.data.crop_frames, []
    if family == "vit":
        bins = frontends.NUM_BINS.get(config.data.frontend)
        if bins is not None and m.in_freq != bins:
            out.append(f"the file's encoder takes {m.in_freq} mel bins; the "
                       f"{config.data.frontend!r} front end gives {bins}")
        if crop % m.patch or crop < m.patch:
            out.append(f"data.crop_frames={crop} is not a whole number of the file's "
                       f"{m.patch}-frame patches")
    else:
        p = m.input_patch_size
        if 128 % p:
            out.append(f"the file's patch size {p} does not divide the 128 fbank bins")
        if crop % p or crop < p:
            out.append(f"data.crop_frames={crop} is not a whole number of the file's "
                       f"{p}-frame patches")
    return out


def _saved_config(workdir: str) -> dict | None:
    try:
        steps = restore.finished_steps(workdir)
    except Exception:  # no workdir yet
        return None
    for step in steps:
        try:
            return restore.load_config(restore.checkpoint_dir(workdir) / str(step)).to_dict()
        except Exception:  # damaged: the trainer moves it aside
            continue
    return None


def resolve(config: ml_collections.ConfigDict, workdir: str | None = None
            ) -> tuple[ml_collections.ConfigDict, Pretrained | None]:
    """(the config the run uses, the file's parts or None).

    Without `config.init_from`: (config, None). With it and a workdir that
    has checkpoints: the file is not read; replaced fields come from the
    saved config. Otherwise the file is read, checked and its fields applied.
    Raises errors.ConfigError for a file the method cannot take."""
    path = config.init_from
    if not path:
        return config, None
    takes = methods.get_class(config).init_family
    if takes is None:
        raise errors.ConfigError(
            f"config.init_from={path!r}: method {config.method!r} does not take it "
            "(fine-tuning reads its encoder from finetune.checkpoint)")
    mode = config.init_teacher
    if mode not in INIT_TEACHER:
        raise errors.ConfigError(f"config.init_teacher={mode!r}: must be one of {INIT_TEACHER}")
    effective = copy.deepcopy(config)
    saved = _saved_config(workdir) if workdir else None
    if saved is not None:
        for key in _replaceable(config):
            try:
                _set(effective, key, _get(ml_collections.ConfigDict(saved), key))
            except (KeyError, AttributeError):
                pass
        logging.info("init_from: %s has checkpoints; resuming from them, %s is not read",
                     workdir, path)
        return effective, None
    if not storage.exists(path):
        raise errors.ConfigError(f"config.init_from={path!r}: no such file or folder")
    pretrained = read(path, config.model)
    if pretrained.family != takes:
        raise errors.ConfigError(
            f"config.init_from={path!r} ({pretrained.what}, {pretrained.family} family): "
            f"method {config.method!r} takes a {takes} checkpoint")
    changed = []
    for key, value in pretrained.fields.items():
        old = _get(effective, key)
        if _differs(old, value):
            _set(effective, key, value)
            changed.append(f"{key}: {old!r} -> {value!r}")
    problems = _problems(effective, pretrained.family)
    if problems:
        raise errors.ConfigError(f"config.init_from={path!r} ({pretrained.what}) does not fit "
                                 f"method {config.method!r}:\n  " + "\n  ".join(problems))
    logging.info("init_from %s (%s); fields from the file: %s", path, pretrained.what,
                 "; ".join(changed) or "none changed")
    pretrained.changed = changed
    return effective, pretrained


def _replaceable(config) -> list[str]:
    if methods.get_class(config).init_family == "vit":
        return ([f"model.{k}" for k in VIT_ENCODER + VIT_PREDICTOR + VIT_HEAD]
                + ["data.frontend", "data.norm_stats"])
    return [f"model.{f.name}" for f in dataclasses.fields(BEATsConfig)
            if f.name in config.model and f.name not in BEATS_TRAINING]


def _differs(old, new) -> bool:
    if isinstance(old, (tuple, list)) or isinstance(new, (tuple, list)):
        return tuple(old) != tuple(new)
    return old != new
