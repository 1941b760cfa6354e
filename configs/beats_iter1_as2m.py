"""BEATs iteration 1: masked audio modelling of a frozen random-projection tokenizer.

  python -m matpac_jax.data.prepare --frontend=beats --output=gs://BUCKET/as2m_beats \
      --input=gs://BUCKET/AudioSet/data/bal_train,gs://BUCKET/AudioSet/data/unbal_train
  python -m matpac_jax.main --config=configs/beats_iter1_as2m.py --workdir=gs://BUCKET/beats_iter1 \
      --config.data.path=gs://BUCKET/as2m_beats

`--input` is AudioSet in any form it is distributed in (Hugging Face parquet
as here, WebDataset tars, audio folders; docs/LAUNCH.md has the recipe per
form).

Then configs/beats_tokenizer_as2m.py distils the next tokenizer from this run.
Demo (CPU, the demo corpus rendered on first use, docs/DEMO_DATA.md): --config=configs/beats_iter1_as2m.py:demo
"""
from matpac_jax.training import defaults


def get_config(arg: str | None = None):
    c = defaults.base(method="beats_mam", frontend="beats")
    defaults.beats(c)
    # tokenizer_input_norm='patch': standardise patches before the random
    # projection (not in the paper; see RandomProjectionTokenizer).
    c.objective = dict(mask_ratio=0.75, num_codes=1024, codebook_dim=256, tokenizer_seed=0,
                       tokenizer_input_norm="none", predictor_layers=3, predictor_heads=12)
    if arg == "demo":
        defaults.beats_demo(c)
        c.objective.update(dict(num_codes=256, codebook_dim=32, predictor_layers=1,
                                predictor_heads=4))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (use 'demo' or nothing)")
    return c
