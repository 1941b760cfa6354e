"""BEATs stages as methods of the one training loop (docs/SPEC.md section 8).

- `beats_mam`: masked audio modelling of tokenizer labels. Iteration 1 uses
  the frozen random-projection tokenizer; iteration n >= 2 a trained
  tokenizer from `tokenizer_checkpoint` (an official Tokenizer .pt or a
  workdir of our `beats_tokenizer` stage).
- `beats_tokenizer`: tokenizer distillation. A frozen `teacher_checkpoint`
  (an official BEATs .pt or a workdir of our `beats_mam` stage) provides
  last-layer targets; the trained tokenizer + estimator learn to reconstruct
  them through the VQ codebook.

Frozen parts live outside `student`, so the loop never differentiates them.
`from_config` loads the pretrained parts; `initialize` copies them into the
built model (after the cheap random init, instead of baking them into the
compiled init as constants).
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx

from matpac_jax import errors, restore, storage
from matpac_jax.conversion.beats import load_beats
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method, on_this_machine, require
from matpac_jax.methods.pretrained import copy_parts
from matpac_jax.models.beats import BEATsEncoder, Estimator, LabelPredictor
from matpac_jax.models.beats_layers import BEATsConfig
from matpac_jax.models.codebook import BEATsTokenizer, RandomProjectionTokenizer, codebook_usage
from matpac_jax.models.layers import dtype
from matpac_jax.objectives import beats_mam, beats_tokenizer


def load_pretrained(path: str, want: str) -> nnx.Module:
    """`want` ('encoder' | 'tokenizer') from an official .pt file or a workdir
    of a BEATs stage (beats_mam: its encoder; beats_tokenizer: its tokenizer)."""
    if storage.isdir(path):  # local or gs://
        method, model = restore.first_intact(path, _stage)
        if isinstance(method, {"encoder": BeatsMamMethod, "tokenizer": BeatsTokenizerMethod}[want]):
            return method.encoder(model)
        raise errors.CheckpointError(f"{path}: a {method.config.method!r} workdir has no BEATs {want}")
    model = load_beats(path)
    if want == "tokenizer" and not isinstance(model, BEATsTokenizer):
        raise errors.CheckpointError(f"{path}: not a BEATs tokenizer checkpoint (no quantize.* keys)")
    if want == "encoder" and isinstance(model, BEATsTokenizer):
        raise errors.CheckpointError(f"{path}: a tokenizer checkpoint, expected a BEATs SSL model")
    return model


def _stage(folder) -> tuple["_BeatsMethod", nnx.Module]:
    """(method, model) of one checkpoint of a BEATs stage's workdir."""
    config = restore.load_config(folder)
    if config.method not in METHODS:
        raise errors.ConfigError(f"{folder}: a {config.method!r} workdir, not a BEATs stage's "
                                 f"({sorted(METHODS)})")
    method = METHODS[config.method].from_config(config, restore.load_architecture(folder))
    return method, restore.restore_model(folder, method)


class _BeatsMethod(Method):
    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.cfg = BEATsConfig.from_dict(config.model.to_dict())
        self.dtype = dtype(config.model.dtype)
        self.input = InputSpec("beats", (config.data.crop_frames, 128))
        self.embedding = EmbeddingSpec("beats", "beats")

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        m, crop = config.model, config.data.crop_frames
        p = m.input_patch_size
        require(p >= 1 and 128 % p == 0, "model.input_patch_size", p,
                "a divisor of the 128 fbank bins")
        require(crop >= p and crop % p == 0, "data.crop_frames", crop,
                f"a whole number (>= 1) of model.input_patch_size={p} frames")
        require(m.encoder_embed_dim % m.encoder_attention_heads == 0, "model.encoder_embed_dim",
                m.encoder_embed_dim,
                f"divisible by model.encoder_attention_heads={m.encoder_attention_heads}")
        for key in ("dropout", "attention_dropout", "activation_dropout", "dropout_input",
                    "encoder_layerdrop"):
            require(0 <= m[key] < 1, f"model.{key}", m[key], "in [0, 1)")


class BeatsMamModel(nnx.Module):
    def __init__(self, student: nnx.Module, tokenizer: nnx.Module):
        self.student = student
        self.tokenizer = tokenizer


class BeatsStudent(nnx.Module):
    def __init__(self, encoder: BEATsEncoder, predictor: LabelPredictor):
        self.encoder = encoder
        self.predictor = predictor


class BeatsMamMethod(_BeatsMethod):
    """Iteration n of BEATs SSL: predict the tokenizer's labels of masked patches."""

    def __init__(self, config: ml_collections.ConfigDict,
                 tokenizer: BEATsTokenizer | None = None,
                 tokenizer_cfg: BEATsConfig | None = None):
        super().__init__(config)
        self.pretrained_tokenizer = tokenizer
        self.tokenizer_cfg = tokenizer.cfg if tokenizer is not None else tokenizer_cfg
        self.num_classes = (self.tokenizer_cfg.quant_n if self.tokenizer_cfg is not None
                            else config.objective.num_codes)

    init_family = "beats"
    export_format = "beats"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    architecture: dict | None = None) -> "BeatsMamMethod":
        if architecture is not None:
            cfg = architecture.get("tokenizer")
            return cls(config, tokenizer_cfg=BEATsConfig.from_dict(cfg) if cfg else None)
        path = config.tokenizer_checkpoint
        return cls(config, load_pretrained(path, "tokenizer") if path else None)

    @classmethod
    def for_planning(cls, config: ml_collections.ConfigDict,
                     load_encoder=None) -> "BeatsMamMethod":
        if config.tokenizer_checkpoint and not on_this_machine(config.tokenizer_checkpoint):
            return cls.from_config(config, {"tokenizer": _config_cfg(config)})
        return cls.from_config(config)

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        o, p = config.objective, config.model.input_patch_size
        patches = (128 // p) * (config.data.crop_frames // p)
        masked = int(patches * o.mask_ratio)  # beats_mam.random_mask's count
        require(0 < o.mask_ratio < 1 and 0 < masked < patches, "objective.mask_ratio",
                o.mask_ratio, f"in (0, 1), leaving at least one of the {patches} patches "
                "visible and one masked")
        for key in ("num_codes", "codebook_dim", "predictor_layers", "predictor_heads"):
            require(o[key] >= 1, f"objective.{key}", o[key], ">= 1")

    def architecture(self) -> dict:
        if self.tokenizer_cfg is None:
            return {}
        return {"tokenizer": dataclasses.asdict(self.tokenizer_cfg)}

    def build(self, rngs: nnx.Rngs) -> BeatsMamModel:
        o = self.config.objective
        encoder = BEATsEncoder(self.cfg, dtype=self.dtype, rngs=rngs)
        predictor = LabelPredictor(self.cfg, self.num_classes, num_layers=o.predictor_layers,
                                   num_heads=o.predictor_heads, dtype=self.dtype, rngs=rngs)
        if self.tokenizer_cfg is None:
            tokenizer = RandomProjectionTokenizer(
                o.num_codes, o.codebook_dim, self.cfg.input_patch_size, seed=o.tokenizer_seed,
                input_norm=o.tokenizer_input_norm)
        else:
            tokenizer = BEATsTokenizer(self.tokenizer_cfg, dtype=self.dtype, rngs=rngs)
        return BeatsMamModel(BeatsStudent(encoder, predictor), tokenizer)

    def initialize(self, model: BeatsMamModel) -> None:
        if self.pretrained_tokenizer is not None:
            nnx.update(model.tokenizer, nnx.state(self.pretrained_tokenizer))
        if self.pretrained is not None:  # config.init_from (methods/init_from.py)
            copy_parts(self.pretrained, {
                "encoder": (model.student.encoder, "encoder"),
                "label predictor": (model.student.predictor, "label_predictor")})

    def loss(self, model: BeatsMamModel, batch: dict, rng: jax.Array, step):
        x = batch["x"]
        labels = jax.lax.stop_gradient(model.tokenizer.extract_labels(x))
        loss, aux = beats_mam.mam_loss(model.student.encoder, model.student.predictor, x, labels,
                                       rng=rng, mask_ratio=self.config.objective.mask_ratio)
        usage = codebook_usage(labels, self.num_classes)
        return loss, {"accuracy": aux["accuracy"], "label_perplexity": usage["perplexity"],
                      "label_used_codes": usage["used_codes"]}

    def encoder(self, model: BeatsMamModel) -> BEATsEncoder:
        return model.student.encoder

    def parts_for_init(self, model: BeatsMamModel) -> tuple[str, dict]:
        return self.init_family, {"encoder": model.student.encoder,
                         "label_predictor": model.student.predictor}


class BeatsTokenizerModel(nnx.Module):
    def __init__(self, student: nnx.Module, teacher: BEATsEncoder):
        self.student = student
        self.teacher = teacher


class TokenizerStudent(nnx.Module):
    def __init__(self, tokenizer: BEATsTokenizer, estimator: Estimator):
        self.tokenizer = tokenizer
        self.estimator = estimator


class BeatsTokenizerMethod(_BeatsMethod):
    """Tokenizer distillation from the previous iteration's SSL model."""

    supports_grad_accum = False
    grad_accum_note = ("the codebook's k-means init and EMA update act on the whole batch; "
                       "use model.remat or more devices")
    init_family = "beats_tokenizer"
    export_format = "beats_tokenizer"

    def __init__(self, config: ml_collections.ConfigDict, teacher: BEATsEncoder | None = None,
                 teacher_cfg: BEATsConfig | None = None):
        super().__init__(config)
        self.pretrained_teacher = teacher
        self.teacher_cfg = teacher.cfg if teacher is not None else teacher_cfg

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    architecture: dict | None = None) -> "BeatsTokenizerMethod":
        if architecture is not None and "teacher" in architecture:
            return cls(config, teacher_cfg=BEATsConfig.from_dict(architecture["teacher"]))
        if not config.teacher_checkpoint:
            raise errors.ConfigError("config.teacher_checkpoint is required: an official BEATs .pt "
                             "or a workdir of a beats_mam run")
        return cls(config, load_pretrained(config.teacher_checkpoint, "encoder"))

    @classmethod
    def for_planning(cls, config: ml_collections.ConfigDict,
                     load_encoder=None) -> "BeatsTokenizerMethod":
        if not on_this_machine(config.teacher_checkpoint):
            return cls.from_config(config, {"teacher": _config_cfg(config)})
        return cls.from_config(config)

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        o = config.objective
        require(0 <= o.codebook_decay <= 1, "objective.codebook_decay", o.codebook_decay,
                "in [0, 1]")
        require(o.beta >= 0, "objective.beta", o.beta, ">= 0")
        require(o.kmeans_iters >= 0, "objective.kmeans_iters", o.kmeans_iters, ">= 0")
        require(o.estimator_layers >= 1, "objective.estimator_layers", o.estimator_layers,
                ">= 1")

    def architecture(self) -> dict:
        return {"teacher": dataclasses.asdict(self.teacher_cfg)}

    def build(self, rngs: nnx.Rngs) -> BeatsTokenizerModel:
        o = self.config.objective
        tokenizer = BEATsTokenizer(self.cfg, dtype=self.dtype, rngs=rngs)
        tokenizer.quantize.decay, tokenizer.quantize.beta = o.codebook_decay, o.beta
        tokenizer.quantize.kmeans_iters = o.kmeans_iters
        estimator = Estimator(self.cfg, self.teacher_cfg.encoder_embed_dim,
                              num_layers=o.estimator_layers, dtype=self.dtype, rngs=rngs)
        teacher = BEATsEncoder(self.teacher_cfg, dtype=self.dtype, rngs=rngs)
        return BeatsTokenizerModel(TokenizerStudent(tokenizer, estimator), teacher)

    def initialize(self, model: BeatsTokenizerModel) -> None:
        if self.pretrained_teacher is not None:
            nnx.update(model.teacher, nnx.state(self.pretrained_teacher))
        if self.pretrained is not None:  # config.init_from (methods/init_from.py)
            copy_parts(self.pretrained, {  # the tokenizer with its codebook
                "tokenizer": (model.student.tokenizer, "tokenizer"),
                "estimator": (model.student.estimator, "estimator")})

    def loss(self, model: BeatsTokenizerModel, batch: dict, rng: jax.Array, step):
        x = batch["x"]
        teacher = jax.lax.stop_gradient(model.teacher.extract_features(x))
        # k-means runs on the first global batch only (a lax.cond on `initted`).
        loss, aux = beats_tokenizer.tokenizer_loss(
            model.student.tokenizer, model.student.estimator, x, teacher,
            update_codebook=True, init_key=rng)
        return loss, {k: aux[k] for k in ("reconstruction", "commitment", "perplexity",
                                          "used_codes", "dead_codes", "ema_dead_codes")}

    def encoder(self, model: BeatsTokenizerModel) -> BEATsTokenizer:
        return model.student.tokenizer

    def parts_for_init(self, model: BeatsTokenizerModel) -> tuple[str, dict]:
        return self.init_family, {"tokenizer": model.student.tokenizer,
                                  "estimator": model.student.estimator}


def _config_cfg(config: ml_collections.ConfigDict) -> dict:
    """The config's BEATs architecture, standing in for a pretrained part's
    (`for_planning`: the planned slice need not hold the file)."""
    return dataclasses.asdict(BEATsConfig.from_dict(config.model.to_dict()))


METHODS = {"beats_mam": BeatsMamMethod, "beats_tokenizer": BeatsTokenizerMethod}
