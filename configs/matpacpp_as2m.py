"""MATPAC++, ViT-B/16, AudioSet-2M: MATPAC with Multiple Choice Learning over
the predictor's output (arXiv 2508.12709; docs/SPEC.md section 11).

The official training config, `training_matpac/config/matpac_plusplus.yaml`
of aurianworld/matpac, is `matpac.yaml` with `use_mcl: True` and the
`mcl_heads` block below; everything else is configs/matpac_as2m.py.

  python -m matpac_jax.main --config=configs/matpacpp_as2m.py --workdir=gs://BUCKET/matpacpp \
      --config.data.path=gs://BUCKET/as2m_matpac

Demo on a CPU with the demo corpus (docs/DEMO_DATA.md):

  python -m matpac_jax.main --config=configs/matpacpp_as2m.py:demo --workdir=/tmp/matpacpp_demo
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "matpac_as2m", os.path.join(os.path.dirname(os.path.abspath(__file__)), "matpac_as2m.py"))
matpac_as2m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matpac_as2m)


def get_config(arg: str | None = None):
    c = matpac_as2m.get_config(arg)  # 'demo' -> the MATPAC demo, same heads and schedule
    c.objective.update(dict(
        prediction="mcl",       # use_mcl: True
        mcl_heads=5,            # mcl_heads.n_head: 5 xavier Linear(pred_dim, dim) for decoder_pred
        mcl_temp_start=0.1,     # mcl_heads.temperature_start
        mcl_temp_decay=0.99997,  # mcl_heads.decay_rate: T = 0.1 * 0.99997**update (exponential)
        mcl_temp_end=1e-4,      # mcl_heads.temperature_end: at T <= 1e-4 (update ~230k) hard WTA
    ))
    if arg == "demo":
        # The official T reaches temperature_end at 78 % of the run (update
        # 230,258 of 294,816); the demo keeps that fraction of its 1000 steps.
        c.objective.mcl_temp_decay = (1e-4 / 0.1) ** (1 / (0.781 * c.total_steps))
    return c
