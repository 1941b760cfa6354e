"""The methods the training loop runs, by `config.method`.

Adding a method: write its module here (a `base.Method` subclass), a config
in configs/, and one line in `METHODS` (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import os

import ml_collections
from flax import nnx

from matpac_jax.methods import beats, finetune, init_from, masked_latent
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method

METHODS: dict[str, type[Method]] = {
    "matpac": masked_latent.MaskedLatentMethod,
    "m2d": masked_latent.MaskedLatentMethod,
    "beats_mam": beats.BeatsMamMethod,
    "beats_tokenizer": beats.BeatsTokenizerMethod,
    "finetune": finetune.FinetuneMethod,
}

__all__ = ["METHODS", "EmbeddingSpec", "InputSpec", "Method", "get", "load_checkpoint", "load_workdir"]


def get(config: ml_collections.ConfigDict, pretrained: init_from.Pretrained | None = None
        ) -> Method:
    """The method `config.method` names, with its pretrained parts loaded;
    `pretrained` (from `init_from.resolve`) is copied in when the run starts."""
    if config.method not in METHODS:
        from matpac_jax import errors

        raise errors.ConfigError(f"config.method={config.method!r}; known: {sorted(METHODS)}")
    method = METHODS[config.method].from_config(config)
    method.pretrained = pretrained
    return method


def load_checkpoint(ckpt_path) -> tuple[Method, nnx.Module, ml_collections.ConfigDict]:
    """(method, model, config) of one step's checkpoint folder; only the model
    is read (no optimiser state), onto one device, without initialising
    weights first."""
    from matpac_jax import errors
    from matpac_jax.training import checkpoint as ckpt

    config = ckpt.load_config(ckpt_path)
    if config.method not in METHODS:
        raise errors.ConfigError(
            f"{ckpt_path}: config.method={config.method!r}; known: {sorted(METHODS)}")
    method = METHODS[config.method].from_config(config, ckpt.load_architecture(ckpt_path))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: method.build(nnx.Rngs(0))))
    state = ckpt.restore_model_state(ckpt_path, abstract)
    return method, nnx.merge(graphdef, state), config


def load_workdir(path: str | os.PathLike, step: int | None = None
                 ) -> tuple[Method, nnx.Module, ml_collections.ConfigDict]:
    """`load_checkpoint` of a training workdir (latest or given step) or of one
    step's checkpoint folder, for inference. A damaged newest step is skipped
    for the next older one (`checkpoint.first_intact`)."""
    from matpac_jax.training import checkpoint as ckpt

    return ckpt.first_intact(os.fspath(path), load_checkpoint, step)
