"""Fields every training config has; each file in configs/ starts from these.

ml_collections locks the keys, so `--config.typo=1` fails before anything is
built; `validate` in trainer.py checks the values that depend on devices.
"""
from __future__ import annotations

import ml_collections

AS2M_CLIPS = 2_012_615  # AudioSet-2M clips >= 608 frames (MATPAC's count)


def base(method: str, frontend: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.total_steps = 294_816  # 300 epochs of AS-2M at batch 2048
    c.batch_size = 2048  # global
    c.grad_accum_steps = 1  # >1: the batch in that many sequential microbatches (less memory)
    c.log_every = 100
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.nonfinite = "stop"  # or "skip": drop the update, keep going
    c.peak_flops = 0.0  # per device; 0 = look up the device kind
    # Start from a checkpoint (official file or workdir; methods/init_from.py):
    # its architecture replaces the model fields, its weights the random init.
    c.init_from = ""
    c.init_teacher = "file"  # or "student": the teacher copies the file's student

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.fsdp = False  # shard parameters/optimizer over the fsdp axis

    c.profile = ml_collections.ConfigDict({"start_step": 10, "num_steps": 0})

    c.data = ml_collections.ConfigDict()
    c.data.path = "gs://YOUR_BUCKET/as2m_shards"  # a folder of TFRecord shards, or "demo"
    c.data.demo_clips = 2000  # clips of the rendered demo corpus when path == "demo"
    c.data.frontend = frontend
    c.data.crop_frames = 608
    c.data.workers = 0  # grain worker processes per host
    c.data.short_clips = "pad"
    c.data.corrupt_records = "stop"  # or "skip": drop a corrupt record, log and count it
    c.data.norm_stats = ()  # () = the front end's standard (mean, std)
    c.data.holdout = 0.0  # fraction of clips (by id hash, data.shards.held_out) training never sees

    c.opt = ml_collections.ConfigDict()
    c.opt.adam = "adamw"  # or "fairseq": eps before the bias correction (training/optim.py)
    c.opt.lr = 3e-4
    c.opt.warmup_steps = 19_654
    c.opt.b1 = 0.9
    c.opt.b2 = 0.95
    c.opt.eps = 1e-8
    c.opt.weight_decay = 0.05
    c.opt.decay_exclude_1d = True
    c.opt.clip_grad_norm = 3.0
    return c


def vit_b(c: ml_collections.ConfigDict, dtype: str = "bfloat16") -> None:
    """ViT-B/16 encoder, 8x512 predictor, K=2048 heads (docs/SPEC.md sections 2-4)."""
    c.model = ml_collections.ConfigDict(dict(
        in_freq=80, patch=16, dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
        pred_dim=512, pred_depth=8, pred_heads=16,
        head_out_dim=2048, head_hidden_dim=2048, head_bottleneck_dim=256,
        dtype=dtype, remat="none",  # or "full" / "dots": less activation memory
        attention="xla",  # or "cudnn": cuDNN flash attention (NVIDIA GPU, bf16/fp16),
        # "pallas": TPU kernels whose scores stay in VMEM (models/attention_kernel.py)
        activation_dtype="float32",  # or "bfloat16": residual stream and layer outputs
        cpu_workarounds="auto",  # XLA:CPU-only code paths: "auto" (on for CPU) | "on" | "off"
    ))


def demo(c: ml_collections.ConfigDict) -> None:
    """Same method, small model, the demo corpus (docs/DEMO_DATA.md), minutes on a CPU."""
    c.model.update(dict(dim=192, depth=4, num_heads=3, pred_dim=128, pred_depth=2,
                        pred_heads=4, head_out_dim=256, head_hidden_dim=256,
                        head_bottleneck_dim=64, dtype="float32"))
    c.data.path = "demo"
    # 3-s crops: twice the samples per CPU second of 6-s ones.
    c.data.crop_frames = 304
    c.batch_size = 16
    c.total_steps = 1000
    c.opt.warmup_steps = 50
    c.log_every = 20
    c.checkpoint_every = 250


def beats(c: ml_collections.ConfigDict, dtype: str = "bfloat16") -> None:
    """BEATs backbone as released (cfg of BEATs_iter3), 10-s crops, 1024 codes.

    The official release has no training code: the optimiser settings below
    (Adam b=(0.9, 0.98), wd 0.01, 32k warm-up) are ours; steps, batch and
    peak lr are the paper's (docs/SPEC.md section 8).
    """
    c.data.frontend = "beats"
    c.data.crop_frames = 992  # 10 s of fbank frames (998), whole 16-frame patches
    c.batch_size = 560  # 5,600 s of audio per update
    c.total_steps = 400_000
    c.opt.update(dict(lr=5e-4, warmup_steps=32_000, b1=0.9, b2=0.98, eps=1e-6,
                      weight_decay=0.01, decay_exclude_1d=True, clip_grad_norm=0.0))
    c.model = ml_collections.ConfigDict(dict(
        input_patch_size=16, embed_dim=512, encoder_layers=12, encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072, encoder_attention_heads=12, deep_norm=True,
        layer_norm_first=False, relative_position_embedding=True, gru_rel_pos=True,
        num_buckets=320, max_distance=800, conv_pos=128, conv_pos_groups=16,
        layer_wise_gradient_decay_ratio=0.6, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
        conv_bias=False, activation_fn="gelu", quant_n=1024, quant_dim=256, dtype=dtype,
        remat="none", attention="xla",  # or "cudnn" (GPU) / "pallas" (TPU), as vit_b
        activation_dtype="float32",  # or "bfloat16", as vit_b
        cpu_workarounds="auto",
    ))
    c.tokenizer_checkpoint = ""
    c.teacher_checkpoint = ""


def beats_demo(c: ml_collections.ConfigDict) -> None:
    """Small BEATs for the CPU demo on the demo corpus (same data settings as
    the MATPAC/M2D demo: 3-s crops)."""
    c.model.update(dict(embed_dim=64, encoder_layers=4, encoder_embed_dim=192,
                        encoder_ffn_embed_dim=384, encoder_attention_heads=4,
                        quant_n=256, quant_dim=32, dtype="float32"))
    c.data.path = "demo"
    c.data.crop_frames = 304
    c.batch_size = 16
    c.total_steps = 400
    c.opt.warmup_steps = 50
    c.log_every = 20
    c.checkpoint_every = 100


def finetune() -> ml_collections.ConfigDict:
    """Fine-tuning fields (methods/finetune.py); the recipes in configs/finetune_*.py
    set them. The encoder's architecture and front end come from the checkpoint."""
    c = base(method="finetune", frontend="matpac")  # data.frontend: set from the checkpoint
    c.total_steps = 2500
    c.batch_size = 128
    c.log_every = 50
    c.checkpoint_every = 250  # also where the valid split is scored
    c.keep_checkpoints = 2
    c.data.path = ""  # set by the finetune command (shards of the task's train split)
    c.data.crop_frames = 496
    c.opt.optimizer = "adam"  # or "sgd" (heavy-ball momentum `opt.momentum`)
    c.opt.momentum = 0.9
    c.opt.end_lr = 0.0
    c.model = ml_collections.ConfigDict(dict(dtype="float32", remat="none", attention="xla",
                                             activation_dtype="float32",
                                             cpu_workarounds="auto"))
    c.finetune = ml_collections.ConfigDict(dict(
        checkpoint="",          # anything matpac_jax.load accepts (set by the command)
        classes=("",),          # the task's class names (set by the command)
        multilabel=False,       # BCE + mAP, else CE + accuracy (set from the task)
        pooling="patch_mean",   # or "frame_concat" (ViT): models/classifier.py
        head_norm="none",       # or "batchnorm" (affine-free BatchNorm1d before the Linear)
        head_init_std=2e-5,     # truncated normal; 0: torch's Linear default
        layer_decay=1.0,        # lr x decay ** (depth + 1 - layer)
        freeze_embed=False,     # lr 0 for the patch embedding
        patch_dropout=0.0,      # fraction of patch tokens dropped while training
        patch_dropout_mode="random",  # or "structured" (M2D: whole rows and columns)
        mixup_alpha=0.0, mixup_prob=1.0,
        freq_mask_width=0, freq_masks=1, time_mask_width=0, time_masks=1,
        mask_shared=False,      # one set of bands per batch (torchaudio iid_masks=False)
        roll=False,             # random circular shift in time
        label_smoothing=0.0,
        balanced=False,         # sample clips by inverse label frequency (AudioSet)
        seeds=(0,),             # one fine-tuning run per seed: mean and std in OUT.json
        eval_batch=32,          # crops per scoring call on valid / test
    ))
    return c
