"""M2D, ViT-B/16, AudioSet-2M, official hyper-parameters (docs/SPEC.md sections 2-5).

  python -m matpac_jax.data.prepare --frontend=m2d --output=gs://BUCKET/as2m_m2d \
      --input=gs://BUCKET/AudioSet/data/bal_train,gs://BUCKET/AudioSet/data/unbal_train
  python -m matpac_jax.main --config=configs/m2d_as2m.py --workdir=gs://BUCKET/m2d \
      --config.data.path=gs://BUCKET/as2m_m2d

(AudioSet in any form it is distributed in: docs/LAUNCH.md.)

Demo on a CPU with the demo corpus (rendered on first use, docs/DEMO_DATA.md):

  python -m matpac_jax.main --config=configs/m2d_as2m.py:demo --workdir=/tmp/m2d_demo
"""
from matpac_jax.training import defaults


def get_config(arg: str | None = None):
    c = defaults.base(method="m2d", frontend="m2d")
    defaults.vit_b(c)
    c.opt.lr = 3e-4 * c.batch_size / 256  # M2D scales lr with batch: 2.4e-3
    c.opt.eps = 1e-8
    c.opt.decay_exclude_1d = True  # no decay on biases / 1-D parameters
    c.objective = dict(
        mask_ratio=0.7, alpha=1.0, standardize_target=True,
        student_temp=0.1, teacher_temp_start=0.04, teacher_temp_end=0.07,
        teacher_temp_warmup_steps=9_827, center_momentum=0.9,
        ema_start=0.99995, ema_end=0.99999, head_ema_start=0.998, head_ema_end=1.0,
        ema_timing="after",  # after the optimiser step
        ema_end_at_last_step=True,  # ema_decay_sched: step / (total_steps - 1)
    )
    if arg == "demo":
        defaults.demo(c)
        # Not batch-scaled: at batch 16 that gives 7.5e-5, with which the loss
        # plateaus early and the encoder loses to a random one (docs/RESULTS.md).
        c.opt.lr = 3e-4
        c.objective.ema_start, c.objective.ema_end = 0.99, 0.999
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (use 'demo' or nothing)")
    return c
