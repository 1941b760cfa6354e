"""Fine-tuning recipe for small single-label tasks (ESC-50: 5-s clips, 50 classes).

  python -m matpac_jax.finetune --config=configs/finetune_esc50.py \
      --checkpoint=m2d_vit_base-80x608p16x16/checkpoint-300.pth --task=ESC50_DIR \
      --workdir=/tmp/ft_esc50 --out=esc50.json
  python -m matpac_jax.finetune --config=configs/finetune_esc50.py:beats \
      --checkpoint=BEATs_iter3.pt --task=ESC50_DIR --workdir=/tmp/ft_beats --out=beats.json

`m2d` (default; M2D/MATPAC ViT checkpoints): M2D's EVAR fine-tuning,
`util/ft-esc50.sh` + `config/m2d.yaml` + `finetune.py` of nttcslab/m2d and
nttcslab/eval-audio-repr: SGD momentum 0.9, lr 0.5, no weight decay, batch
128, 200 epochs (5 warm-up) of cosine to 1e-7, no mixup, one shared frequency
mask < 15 bins and time mask < 48 frames, 50 % structured patch mask,
frozen patch embedding, BatchNorm1d(affine=False) + Linear (trunc-normal
2e-5) on the mean of the patch features, 501-frame clips (496 after the
16-frame patches).
`beats` (BEATs checkpoints): the official release has no fine-tuning code and
its paper's Appendix A.1 could not be read here; these are ESPnet's BEATs
recipe (`egs2/esc50/cls1/conf/beats_cls.yaml`, "most values from Appendix
A.1 of the BEATs paper or tuned on fold 5"): AdamW lr 1e-4, betas (0.9,
0.98), wd 0.01, 300 warm-up of 6,000 steps, cosine to 5e-6, batch 128, layer-
wise gradient decay 0.2, label smoothing 0.1, roll, a time mask < 6 %, grad
clip 1.
This recipe (its `m2d` or `beats` variant by the checkpoint's family) is
`matpac_jax.finetune`'s default without --config; --config.x=y overrides
apply either way.
Mask widths are in frames of these 5-s crops: for shorter clips scale
`finetune.time_mask_width` with `data.crop_frames` (48 x crop / 496), or the
masks cover most of each crop (docs/RESULTS.md, section 5).
Crops longer than a ViT checkpoint's position table are cut to the table
(192 frames for an official 80x200 M2D model; 608 for 80x608), and clips are
scored in windows of that length; M2D's `dur_frames=501` interpolates the
table to 31 columns instead (timm's `resample_abs_pos_embed`, bicubic), which
is not implemented. The time mask keeps its width in frames when the crop is
cut, so it covers more of the shorter crop.
Not implemented (docs/RESULTS.md): M2D's random resized crop, BEATs' layer
drop 0.1 and head dropout 0.1. Protocol difference: EVAR reports the best
test score over epochs; we pick the checkpoint on valid and score test once.
"""
from matpac_jax.training import defaults

STEPS_PER_EPOCH = 1600 // 128  # ESC-50: 1,600 training clips per fold


def get_config(arg: str | None = None):
    c = defaults.finetune()
    arg = arg or "m2d"
    if arg == "m2d":
        c.batch_size = 128
        c.total_steps = 200 * STEPS_PER_EPOCH
        c.opt.update(dict(optimizer="sgd", momentum=0.9, lr=0.5, weight_decay=0.0,
                          warmup_steps=5 * STEPS_PER_EPOCH, end_lr=1e-7, clip_grad_norm=0.0))
        c.data.crop_frames = 496
        c.finetune.update(dict(pooling="patch_mean", head_norm="batchnorm", head_init_std=2e-5,
                               freeze_embed=True, patch_dropout=0.5,
                               patch_dropout_mode="structured", freq_mask_width=15,
                               time_mask_width=48, mask_shared=True))
    elif arg == "beats":
        c.batch_size = 128
        c.total_steps = 6000
        c.opt.update(dict(optimizer="adam", lr=1e-4, b1=0.9, b2=0.98, eps=1e-8,
                          weight_decay=0.01, warmup_steps=300, end_lr=5e-6, clip_grad_norm=1.0))
        c.data.crop_frames = 496  # 5 s of fbank frames (498), whole 16-frame patches
        c.model.layer_wise_gradient_decay_ratio = 0.2
        c.finetune.update(dict(pooling="patch_mean", head_norm="none", head_init_std=0.0,
                               label_smoothing=0.1, roll=True, time_mask_width=30))
    else:
        raise ValueError(f"configs/finetune_esc50.py:{arg}: use m2d or beats")
    c.checkpoint_every = 10 * STEPS_PER_EPOCH
    return c
