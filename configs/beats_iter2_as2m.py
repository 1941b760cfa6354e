"""BEATs iteration n >= 2: masked audio modelling of a trained tokenizer's labels.

  python -m matpac_jax.main --config=configs/beats_iter2_as2m.py --workdir=gs://BUCKET/beats_iter2 \
      --config.data.path=gs://BUCKET/as2m_beats --config.tokenizer_checkpoint=gs://BUCKET/beats_tok1

`tokenizer_checkpoint`: a workdir of configs/beats_tokenizer_as2m.py, or an
official Tokenizer .pt. Demo: --config=configs/beats_iter2_as2m.py:demo with
--config.tokenizer_checkpoint=<demo tokenizer workdir>.
"""
from matpac_jax.training import defaults


def get_config(arg: str | None = None):
    c = defaults.base(method="beats_mam", frontend="beats")
    defaults.beats(c)
    c.tokenizer_checkpoint = "gs://YOUR_BUCKET/beats_tokenizer_iter1"
    c.objective = dict(mask_ratio=0.75, num_codes=1024, codebook_dim=256, tokenizer_seed=0,
                       tokenizer_input_norm="none",
                       predictor_layers=3, predictor_heads=12)
    if arg == "demo":
        defaults.beats_demo(c)
        c.tokenizer_checkpoint = ""  # set to the demo tokenizer run's workdir
        c.objective.update(dict(predictor_layers=1, predictor_heads=4))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (use 'demo' or nothing)")
    return c
