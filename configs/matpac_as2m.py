"""MATPAC, ViT-B/16, AudioSet-2M, official hyper-parameters (docs/SPEC.md sections 2-5).

  python -m matpac_jax.data.prepare --frontend=matpac --output=gs://BUCKET/as2m_matpac \
      --input=gs://BUCKET/AudioSet/data/bal_train,gs://BUCKET/AudioSet/data/unbal_train
  python -m matpac_jax.main --config=configs/matpac_as2m.py --workdir=gs://BUCKET/matpac \
      --config.data.path=gs://BUCKET/as2m_matpac

(AudioSet in any form it is distributed in: docs/LAUNCH.md.)

Demo on a CPU with the demo corpus (rendered on first use, docs/DEMO_DATA.md):

  python -m matpac_jax.main --config=configs/matpac_as2m.py:demo --workdir=/tmp/matpac_demo
"""
from matpac_jax.training import defaults


def get_config(arg: str | None = None):
    c = defaults.base(method="matpac", frontend="matpac")
    defaults.vit_b(c)
    c.data.short_clips = "drop"  # MATPAC keeps only clips >= 608 frames
    c.opt.lr = 3e-4  # absolute, not batch-scaled
    c.opt.eps = 1e-6
    c.opt.adam = "fairseq"  # fairseq's Adam: eps added to sqrt(nu) before bias correction
    c.opt.decay_exclude_1d = False  # decoupled decay on every parameter
    c.objective = dict(
        mask_ratio=0.7, alpha=0.5, standardize_target=False,
        student_temp=0.1, teacher_temp_start=0.04, teacher_temp_end=0.07,
        teacher_temp_warmup_steps=9_827, center_momentum=0.9,
        ema_start=0.99995, ema_end=0.99999, head_ema_start=0.998, head_ema_end=1.0,
        ema_timing="before",  # on pre-update weights, after the loss; skipped at update 0
        ema_end_at_last_step=False,  # fairseq anneal: ema_end reached at update total_steps
    )
    if arg == "demo":
        defaults.demo(c)
        c.data.short_clips = "pad"
        c.objective.teacher_temp_warmup_steps = 100
        c.objective.ema_start, c.objective.ema_end = 0.99, 0.999
        c.objective.head_ema_start = 0.99
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (use 'demo' or nothing)")
    return c
