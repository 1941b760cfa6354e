"""Fine-tuning recipe for AudioSet-20K (balanced train, 527 classes, multi-label, mAP).

  python -m matpac_jax.data.prepare --input=gs://BUCKET/AudioSet/data/bal_train --frontend=m2d \
      --classes=gs://BUCKET/class_labels_indices.csv --output=gs://BUCKET/as20k_ft/train
  python -m matpac_jax.data.prepare --input=gs://BUCKET/AudioSet/data/eval --frontend=m2d \
      --classes=gs://BUCKET/class_labels_indices.csv --output=gs://BUCKET/as20k_ft/test
  python -m matpac_jax.finetune --config=configs/finetune_as20k.py \
      --checkpoint=m2d_vit_base-80x608p16x16/checkpoint-300.pth --task=gs://BUCKET/as20k_ft \
      --workdir=gs://BUCKET/ft_as20k --out=gs://BUCKET/ft_as20k/as20k.json

The parquet rows carry their labels; an audio folder takes
`--labels=balanced_train_segments.csv` (test: `eval_segments.csv`).
AudioSet has no valid split: without `valid/` the command holds out
min(10 %, 5,000 clips) of train by clip id (`data.shards.held_out`, seed 0)
to pick the checkpoint. Scores are over the 527 classes of
`class_labels_indices.csv`, in its order.

`m2d` (default): M2D's EVAR fine-tuning, `util/ft-as20k.sh` + `config/m2d.yaml`
(nttcslab/m2d, nttcslab/eval-audio-repr): SGD momentum 0.9, lr 0.5, no weight
decay, batch 64, 200 epochs (5 warm-up) of cosine to 1e-7, mixup alpha 0.3,
one shared frequency mask < 30 bins and time mask < 192 frames, 50 %
structured patch mask, BatchNorm1d + Linear on the patch mean, BCE.
`beats`: ESPnet's BEATs AS-20K recipe (`egs2/as20k/cls1/conf/beats_cls.yaml`;
the BEATs release has no fine-tuning code): AdamW lr 3e-5, betas (0.9,
0.98), wd 0.01, 8k warm-up of 80k steps, cosine to 5e-6, batch 80, layer-
wise gradient decay 0.3, mixup on (its probability and alpha are not in the
files read: 0.8 as ESPnet's AS-2M recipe, alpha 1), roll, time mask < 6 %.
Deviations (docs/RESULTS.md): M2D trains on 1001-frame crops with its
position table interpolated to 62 columns; we crop to the checkpoint's own
table (608 frames for M2D ViT-B; `data.crop_frames` longer than the table,
e.g. on a 192-frame 80x200 model, is cut to it by the finetune command) and
score clips in crops of that length.
Random resized crop and BEATs' layer drop are not implemented.
"""
from matpac_jax.training import defaults

CLIPS = 20_000  # about, depending on the download
STEPS_PER_EPOCH = CLIPS // 64


def get_config(arg: str | None = None):
    c = defaults.finetune()
    arg = arg or "m2d"
    c.finetune.multilabel = True
    if arg == "m2d":
        c.batch_size = 64
        c.total_steps = 200 * STEPS_PER_EPOCH
        c.opt.update(dict(optimizer="sgd", momentum=0.9, lr=0.5, weight_decay=0.0,
                          warmup_steps=5 * STEPS_PER_EPOCH, end_lr=1e-7, clip_grad_norm=0.0))
        c.data.crop_frames = 608
        c.finetune.update(dict(pooling="patch_mean", head_norm="batchnorm", head_init_std=2e-5,
                               patch_dropout=0.5, patch_dropout_mode="structured",
                               mixup_alpha=0.3, mixup_prob=1.0, freq_mask_width=30,
                               time_mask_width=192, mask_shared=True))
    elif arg == "beats":
        c.batch_size = 80
        c.total_steps = 80_000
        c.opt.update(dict(optimizer="adam", lr=3e-5, b1=0.9, b2=0.98, eps=1e-8,
                          weight_decay=0.01, warmup_steps=8000, end_lr=5e-6, clip_grad_norm=1.0))
        c.data.crop_frames = 992
        c.model.layer_wise_gradient_decay_ratio = 0.3
        c.finetune.update(dict(pooling="patch_mean", head_norm="none", head_init_std=0.0,
                               mixup_alpha=1.0, mixup_prob=0.8, roll=True, time_mask_width=60))
    else:
        raise ValueError(f"configs/finetune_as20k.py:{arg}: use m2d or beats")
    c.checkpoint_every = 5 * STEPS_PER_EPOCH
    return c
