"""Fine-tuning recipe for AudioSet-2M (527 classes, multi-label, mAP, balanced sampling).

  python -m matpac_jax.data.prepare --input=gs://BUCKET/as2m_wavs --frontend=m2d \
      --labels=gs://BUCKET/balanced_train_segments.csv,gs://BUCKET/unbalanced_train_segments.csv \
      --classes=gs://BUCKET/class_labels_indices.csv --output=gs://BUCKET/as2m_ft/train --workers=32
  python -m matpac_jax.data.prepare --input=gs://BUCKET/eval_wavs --frontend=m2d \
      --labels=gs://BUCKET/eval_segments.csv --classes=gs://BUCKET/class_labels_indices.csv \
      --output=gs://BUCKET/as2m_ft/test
  python -m matpac_jax.finetune --config=configs/finetune_as2m.py \
      --checkpoint=m2d_vit_base-80x608p16x16/checkpoint-300.pth --task=gs://BUCKET/as2m_ft \
      --workdir=gs://BUCKET/ft_as2m --out=gs://BUCKET/ft_as2m/as2m.json

(Parquet or WebDataset AudioSet carries its labels: `--input` as in
docs/LAUNCH.md, no `--labels`.) No `valid/`: the command holds out
min(10 %, 5,000 clips) of train by clip id (`data.shards.held_out`, seed 0)
to pick the checkpoint; scores are over the 527 official classes in order.

`m2d` (default): M2D's EVAR fine-tuning, `util/ft-as2m.sh` (nttcslab/m2d):
LARS lr 2.0 with momentum 0.9 and no weight decay (timm's LARS applies no
trust ratio when weight decay is 0: plain SGD momentum), batch 64, 70 epochs
of 200k balanced draws (15 warm-up) of cosine to 1e-7, mixup alpha 0.5,
shared frequency mask < 30 bins and time mask < 192 frames, 50 % structured
patch mask, no random resized crop, BatchNorm1d + Linear on the patch mean,
BCE; clips drawn by label weights (EVAR: 1000 / (count + 0.01) summed per clip,
to the power 1/1.5, without replacement; ours: inverse frequency, with
replacement, `data.loader.balanced_weights`).
`beats`: ESPnet's BEATs AS-2M recipe (`egs2/as2m/cls1/conf/beats_cls.yaml`;
the BEATs release has no fine-tuning code): AdamW lr 1e-4, betas (0.9,
0.98), wd 0.01, 5k warm-up of 50k steps, cosine to 5e-6, about 1000 clips
per update, layer-wise gradient decay 0.6 (also in the fine-tuned BEATs
checkpoints' cfg), mixup probability 0.8 (alpha 1: not in the files read),
roll, time mask < 6 %, balanced sampling, grad clip 1.
Deviations as in configs/finetune_as20k.py (608-frame crops for M2D ViT-B, cut
to a shorter position table where the checkpoint has one).
"""
from matpac_jax.training import defaults

STEPS_PER_EPOCH = 200_000 // 64  # EVAR's balanced epoch: 200k draws


def get_config(arg: str | None = None):
    c = defaults.finetune()
    arg = arg or "m2d"
    c.finetune.multilabel = True
    c.finetune.balanced = True
    c.data.workers = 8
    if arg == "m2d":
        c.batch_size = 64
        c.total_steps = 70 * STEPS_PER_EPOCH
        c.opt.update(dict(optimizer="sgd", momentum=0.9, lr=2.0, weight_decay=0.0,
                          warmup_steps=15 * STEPS_PER_EPOCH, end_lr=1e-7, clip_grad_norm=0.0))
        c.data.crop_frames = 608
        c.finetune.update(dict(pooling="patch_mean", head_norm="batchnorm", head_init_std=2e-5,
                               patch_dropout=0.5, patch_dropout_mode="structured",
                               mixup_alpha=0.5, mixup_prob=1.0, freq_mask_width=30,
                               time_mask_width=192, mask_shared=True))
    elif arg == "beats":
        c.batch_size = 1024
        c.total_steps = 50_000
        c.opt.update(dict(optimizer="adam", lr=1e-4, b1=0.9, b2=0.98, eps=1e-8,
                          weight_decay=0.01, warmup_steps=5000, end_lr=5e-6, clip_grad_norm=1.0))
        c.data.crop_frames = 992
        c.model.layer_wise_gradient_decay_ratio = 0.6
        c.finetune.update(dict(pooling="patch_mean", head_norm="none", head_init_std=0.0,
                               mixup_alpha=1.0, mixup_prob=0.8, roll=True, time_mask_width=60))
    else:
        raise ValueError(f"configs/finetune_as2m.py:{arg}: use m2d or beats")
    c.checkpoint_every = 5000
    return c
