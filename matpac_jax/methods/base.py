"""The method interface: everything the one training loop knows about a method.

A method (MATPAC, M2D, a BEATs stage) builds the whole training model and
computes the loss of one batch; the loop (training/trainer.py) owns the rest:
mesh, sharding, optimiser, checkpoints, data. The loop differentiates only
the `nnx.Param`s under the model's `student` attribute (`TRAINABLE`), so EMA
teachers, frozen tokenizers, centers and codebooks never reach the optimiser.

One step of the loop, inside one jitted function:

  (loss, metrics), grads = value_and_grad(method.loss)(model, batch, rng, step)
  method.before_update(model, step)   # pre-update weights (MATPAC's EMA)
  optimiser applies grads
  method.after_update(model, step)    # post-update weights (M2D's EMA)

`step` is the number of updates done before this one (0 for the first), a
traced int32. Adding a method: docs/ARCHITECTURE.md, "Adding a method".

Everything the rest of the code knows of a method is here, as class
attributes and hooks, so that nothing outside a method's module names it:
the loop (`supports_grad_accum`, `lr_scale`, the update hooks), `plan`
(`for_planning`), `init_from` (`init_family`, `parts_for_init`), `export`
(`export_format`) and inference (`embedding`, `encoder`). A method module
lists its names in a `METHODS` dict; `methods/__init__.py` joins them.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from matpac_jax import errors, storage
from matpac_jax.data import frontends


TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("student"))


class _Normalised:
    @property
    def stats(self) -> tuple[float, float]:
        """(mean, std) the features are normalised with: `norm_stats`, or the
        front end's standard."""
        return tuple(self.norm_stats or frontends.NORM[self.frontend])


@dataclasses.dataclass(frozen=True)
class InputSpec(_Normalised):
    """What one training example is: front-end features of a crop (`batch['x']`)
    and, for supervised methods, its labels (`batch['y']`, multi-hot over `classes`)."""

    frontend: str                               # a front end of data/frontends.py
    shape: tuple[int, int]                      # (80, frames) or (frames, 128)
    norm_stats: tuple[float, float] | None = None  # None: the front end's standard
    classes: tuple[str, ...] = ()               # () : unlabelled (self-supervised)
    balanced: bool = False                      # sample clips by inverse label frequency


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec(_Normalised):
    """How `matpac_jax.load` turns `Method.encoder(model)` into embeddings."""

    family: str                                 # 'vit' | 'beats': inference.EMBEDDERS
    frontend: str
    norm_stats: tuple[float, float] | None = None


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise errors.ConfigError `config.<key>=<value>: must be <allowed>` unless `ok`."""
    if not ok:
        raise errors.ConfigError(f"config.{key}={value!r}: must be {allowed}")


class Method(abc.ABC):
    """Base class of every method; the defaults are the no-op hooks.

    Subclasses set `input` and `embedding` in `__init__` from the config and
    implement `build`, `loss` and `encoder`.
    """

    config: ml_collections.ConfigDict
    input: InputSpec
    embedding: EmbeddingSpec
    trainable = TRAINABLE
    # config.grad_accum_steps > 1 runs a batch as microbatches whose gradients,
    # metrics and `Buffer`s are averaged; a method whose state updates do not
    # average (a k-means on the whole batch) sets this False and says why.
    supports_grad_accum: bool = True
    grad_accum_note: str = ""
    # Per-parameter lr multiplier from the parameter's path in the model
    # (layer-wise lr decay); None: one lr for all.
    lr_scale: Callable[[tuple[str, ...]], float] | None = None
    # `config.init_from`'s parts (methods/init_from.py), copied in by `initialize`.
    pretrained: Any = None
    # The checkpoint family `config.init_from` takes ('vit', 'beats',
    # 'beats_tokenizer'; methods/pretrained.py); None: the method takes none.
    init_family: str | None = None
    # The official file format `python -m matpac_jax.export` writes a workdir
    # of this method in (a key of conversion/export.WRITERS); None: not exported.
    export_format: str | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    architecture: dict | None = None) -> "Method":
        """The method for `config`, its pretrained parts (if any) loaded.

        `architecture` (what `architecture()` returned when a checkpoint was
        saved) is given when restoring: the pretrained parts' weights are in
        the checkpoint, so only their shapes are needed, not their files.
        """
        return cls(config)

    @classmethod
    def for_planning(cls, config: ml_collections.ConfigDict,
                     load_encoder: Callable[[str], tuple[dict, Any]] | None = None
                     ) -> "Method":
        """The method as `python -m matpac_jax.plan` compiles it: like
        `from_config`, but a pretrained part whose file is not on this machine
        (a gs:// path, a placeholder) takes its shapes from the config.
        `load_encoder(path) -> (architecture, encoder)` reads any checkpoint's
        encoder (inference.encoder_with_architecture), for methods that take one."""
        return cls.from_config(config)

    def parts_for_init(self, model: nnx.Module) -> tuple[str, dict[str, Any]]:
        """(family, parts) a workdir of this method gives `config.init_from`:
        the encoder, and the other parts a method of that family can take
        (methods/init_from.py). The default: just the encoder, of its
        embedding family."""
        return self.embedding.family, {"encoder": self.encoder(model)}

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise errors.ConfigError (`require`) for a value of the method's own keys
        (`config.objective`, model shapes) that is out of range; called before
        anything is compiled. The loop's keys are checked by step.validate."""

    def architecture(self) -> dict:
        """JSON-able shapes of the pretrained parts, saved with checkpoints."""
        return {}

    @abc.abstractmethod
    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        """The whole model, randomly initialised (called under `nnx.eval_shape` too)."""

    def initialize(self, model: nnx.Module) -> None:
        """Copy pretrained parts into a freshly built model (before training)."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, scalar metrics) of a global batch (`batch['x']`, and
        `batch['y']` when `input.classes` is set); may update `Buffer`s."""

    def before_update(self, model: nnx.Module, step: jax.Array) -> None:
        """After the gradients, before the optimiser changes the student."""

    def after_update(self, model: nnx.Module, step: jax.Array) -> None:
        """After the optimiser step."""

    def schedules(self, step: int) -> dict[str, float]:
        """Host-side values of the method's schedules at `step`, for logging."""
        return {}

    @abc.abstractmethod
    def encoder(self, model: nnx.Module) -> nnx.Module:
        """The part of `model` that embeddings come from."""


def on_this_machine(path: str) -> bool:
    """A pretrained file `for_planning` reads: a local one (a plan fetches no
    gs:// file; the config's shapes stand in)."""
    return bool(path) and not storage.is_remote(path) and storage.exists(path)
