"""BEATs tokenizer distillation: a VQ tokenizer learns to reconstruct a frozen SSL teacher.

  python -m matpac_jax.main --config=configs/beats_tokenizer_as2m.py --workdir=gs://BUCKET/beats_tok1 \
      --config.data.path=gs://BUCKET/as2m_beats --config.teacher_checkpoint=gs://BUCKET/beats_iter1

`teacher_checkpoint`: a workdir of a beats_mam run (iteration n) or an
official BEATs .pt. The tokenizer written here feeds iteration n + 1.
Demo: --config=configs/beats_tokenizer_as2m.py:demo --config.teacher_checkpoint=<demo iter1 workdir>.
"""
from matpac_jax.training import defaults


def get_config(arg: str | None = None):
    c = defaults.base(method="beats_tokenizer", frontend="beats")
    defaults.beats(c)
    c.batch_size = 140  # 1,400 s of audio per update
    c.opt.lr = 5e-5
    c.teacher_checkpoint = "gs://YOUR_BUCKET/beats_iter1"
    c.objective = dict(beta=1.0, codebook_decay=0.99, kmeans_iters=10, estimator_layers=3)
    if arg == "demo":
        defaults.beats_demo(c)
        c.opt.lr = 5e-4
        c.teacher_checkpoint = ""  # set to the demo iteration-1 workdir
        c.objective.estimator_layers = 1
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (use 'demo' or nothing)")
    return c
