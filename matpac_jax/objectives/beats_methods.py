"""BEATs stages as methods of the one training loop (SPEC section 8).

- `beats_mam`: masked audio modelling of tokenizer labels. Iteration 1 uses
  the frozen random-projection tokenizer; iteration n >= 2 a trained
  tokenizer from `tokenizer_checkpoint` (an official Tokenizer .pt or a
  workdir of our `beats_tokenizer` stage).
- `beats_tokenizer`: tokenizer distillation. A frozen `teacher_checkpoint`
  (an official BEATs .pt or a workdir of our `beats_mam` stage) provides
  last-layer targets; the trained tokenizer + estimator learn to reconstruct
  them through the VQ codebook.

Frozen parts live outside `student`, so the loop never differentiates them.
Pretrained weights are copied in by `initialize` after the (cheap, random)
init, instead of being baked into the compiled init as constants.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from matpac_jax.models.beats import BEATsConfig, BEATsEncoder, BEATsTokenizer, RandomProjectionTokenizer
from matpac_jax.objectives import beats_mam, beats_tokenizer
from matpac_jax.objectives.methods import TRAINABLE, register

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_stage_model(path: str, want: str) -> nnx.Module:
    """`want` ('encoder' | 'tokenizer') from an official .pt file or one of our workdirs."""
    if os.path.isdir(path):
        from matpac_jax.training import trainer

        method, model, _ = trainer.restore_model(path)
        if want == "encoder" and method.kind == "beats":
            return model.student.encoder
        if want == "tokenizer" and isinstance(method, BeatsTokenizerMethod):
            return model.student.tokenizer
        raise ValueError(f"{path}: a {method.kind!r} workdir has no BEATs {want}")
    from matpac_jax.conversion.beats import load_beats

    model = load_beats(path)
    if want == "tokenizer" and not isinstance(model, BEATsTokenizer):
        raise ValueError(f"{path}: not a BEATs tokenizer checkpoint (no quantize.* keys)")
    if want == "encoder" and isinstance(model, BEATsTokenizer):
        raise ValueError(f"{path}: a tokenizer checkpoint, expected a BEATs SSL model")
    return model


class _BeatsBase:
    trainable = TRAINABLE
    ema_timing = None
    kind = "beats"
    frontend = "beats"
    norm_stats = None

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.cfg = BEATsConfig.from_dict(config.model.to_dict())
        self.dtype = _DTYPES[config.model.dtype]
        self.input_shape = (config.data.crop_frames, 128)

    def ema_update(self, model, step) -> None:
        pass

    def schedules(self, step: int) -> dict[str, float]:
        return {}

    def default_norm_stats(self):
        return None


class BeatsMamModel(nnx.Module):
    def __init__(self, student: nnx.Module, tokenizer: nnx.Module):
        self.student = student
        self.tokenizer = tokenizer


class BeatsStudent(nnx.Module):
    def __init__(self, encoder: BEATsEncoder, predictor: beats_mam.LabelPredictor):
        self.encoder = encoder
        self.predictor = predictor


class BeatsMamMethod(_BeatsBase):
    """Iteration n of BEATs SSL: predict the tokenizer's labels of masked patches."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        path = config.tokenizer_checkpoint
        self._pretrained = load_stage_model(path, "tokenizer") if path else None
        self.num_classes = (self._pretrained.quantize.num_codes if self._pretrained is not None
                            else config.objective.num_codes)

    def build(self, rngs: nnx.Rngs) -> BeatsMamModel:
        o = self.config.objective
        encoder = BEATsEncoder(self.cfg, dtype=self.dtype, rngs=rngs)
        predictor = beats_mam.LabelPredictor(
            self.cfg, self.num_classes, num_layers=o.predictor_layers,
            num_heads=o.predictor_heads, dtype=self.dtype, rngs=rngs)
        if self._pretrained is None:
            tokenizer = RandomProjectionTokenizer(o.num_codes, o.codebook_dim, self.cfg.input_patch_size,
                                                  seed=o.tokenizer_seed,
                                                  input_norm=o.tokenizer_input_norm)
        else:
            tokenizer = BEATsTokenizer(self._pretrained.cfg, dtype=self.dtype, rngs=rngs)
        return BeatsMamModel(BeatsStudent(encoder, predictor), tokenizer)

    def initialize(self, model: BeatsMamModel) -> None:
        if self._pretrained is not None:
            nnx.update(model.tokenizer, nnx.state(self._pretrained))

    def loss(self, model: BeatsMamModel, x: jax.Array, rng: jax.Array, step):
        labels = jax.lax.stop_gradient(model.tokenizer.extract_labels(x))
        loss, aux = beats_mam.mam_loss(model.student.encoder, model.student.predictor, x, labels,
                                       rng=rng, mask_ratio=self.config.objective.mask_ratio)
        usage = beats_tokenizer.codebook_usage(labels, self.num_classes)
        return loss, {"accuracy": aux["accuracy"], "label_perplexity": usage["perplexity"],
                      "label_used_codes": usage["used_codes"]}

    def encoder(self, model: BeatsMamModel) -> BEATsEncoder:
        return model.student.encoder


class BeatsTokenizerModel(nnx.Module):
    def __init__(self, student: nnx.Module, teacher: BEATsEncoder):
        self.student = student
        self.teacher = teacher


class TokenizerStudent(nnx.Module):
    def __init__(self, tokenizer: BEATsTokenizer, estimator: beats_tokenizer.Estimator):
        self.tokenizer = tokenizer
        self.estimator = estimator


class BeatsTokenizerMethod(_BeatsBase):
    """Tokenizer distillation from the previous iteration's SSL model."""

    # Why config.grad_accum_steps > 1 is refused (trainer.build).
    no_grad_accum = ("the codebook's k-means init and EMA update act on the whole batch; "
                     "use model.remat or more devices")

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        if not config.teacher_checkpoint:
            raise ValueError("config.teacher_checkpoint is required: an official BEATs .pt "
                             "or a workdir of a beats_mam run")
        self._teacher = load_stage_model(config.teacher_checkpoint, "encoder")
        self.teacher_cfg = self._teacher.cfg

    def build(self, rngs: nnx.Rngs) -> BeatsTokenizerModel:
        o = self.config.objective
        tokenizer = BEATsTokenizer(self.cfg, dtype=self.dtype, rngs=rngs)
        tokenizer.quantize.decay, tokenizer.quantize.beta = o.codebook_decay, o.beta
        tokenizer.quantize.kmeans_iters = o.kmeans_iters
        estimator = beats_tokenizer.Estimator(self.cfg, self.teacher_cfg.encoder_embed_dim,
                                              num_layers=o.estimator_layers, dtype=self.dtype,
                                              rngs=rngs)
        teacher = BEATsEncoder(self.teacher_cfg, dtype=self.dtype, rngs=rngs)
        return BeatsTokenizerModel(TokenizerStudent(tokenizer, estimator), teacher)

    def initialize(self, model: BeatsTokenizerModel) -> None:
        nnx.update(model.teacher, nnx.state(self._teacher))

    def loss(self, model: BeatsTokenizerModel, x: jax.Array, rng: jax.Array, step):
        teacher = jax.lax.stop_gradient(model.teacher.extract_features(x))
        # k-means runs on the first global batch only (a lax.cond on `initted`).
        loss, aux = beats_tokenizer.tokenizer_loss(
            model.student.tokenizer, model.student.estimator, x, teacher,
            update_codebook=True, init_key=rng)
        return loss, {k: aux[k] for k in ("reconstruction", "commitment", "perplexity",
                                          "used_codes", "dead_codes", "ema_dead_codes")}

    def encoder(self, model: BeatsTokenizerModel) -> BEATsTokenizer:
        return model.student.tokenizer


register("beats_mam", BeatsMamMethod)
register("beats_tokenizer", BeatsTokenizerMethod)
