"""The methods the training loop runs, by `config.method`, and reading a
workdir back as (method, model).

Adding a method: write its module here (a `base.Method` subclass and a
`METHODS` dict of its names), a config in configs/, and add the module to
the join below (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import os

import ml_collections
from flax import nnx

from matpac_jax import errors, restore
from matpac_jax.methods import beats, finetune, masked_latent
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method
from matpac_jax.methods.pretrained import Pretrained

METHODS: dict[str, type[Method]] = {**masked_latent.METHODS, **beats.METHODS, **finetune.METHODS}

__all__ = ["METHODS", "EmbeddingSpec", "InputSpec", "Method", "get", "get_class",
           "load_checkpoint", "load_workdir"]


def get_class(config: ml_collections.ConfigDict, where: str = "") -> type[Method]:
    """The class `config.method` names; errors.ConfigError listing the known ones."""
    if config.method not in METHODS:
        raise errors.ConfigError(f"{where}{': ' if where else ''}config.method="
                                 f"{config.method!r}; known: {sorted(METHODS)}")
    return METHODS[config.method]


def get(config: ml_collections.ConfigDict, pretrained: Pretrained | None = None) -> Method:
    """The method `config.method` names, with its pretrained parts loaded;
    `pretrained` (from `init_from.resolve`) is copied in when the run starts."""
    method = get_class(config).from_config(config)
    method.pretrained = pretrained
    return method


def load_checkpoint(ckpt_path) -> tuple[Method, nnx.Module, ml_collections.ConfigDict]:
    """(method, model, config) of one step's checkpoint folder; only the model
    is read (no optimiser state), onto one device, without initialising
    weights first."""
    config = restore.load_config(ckpt_path)
    method = get_class(config, str(ckpt_path)).from_config(
        config, restore.load_architecture(ckpt_path))
    return method, restore.restore_model(ckpt_path, method), config


def load_workdir(path: str | os.PathLike, step: int | None = None
                 ) -> tuple[Method, nnx.Module, ml_collections.ConfigDict]:
    """`load_checkpoint` of a training workdir (latest or given step) or of one
    step's checkpoint folder, for inference. A damaged newest step is skipped
    for the next older one (`restore.first_intact`)."""
    return restore.first_intact(os.fspath(path), load_checkpoint, step)
