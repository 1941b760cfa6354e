"""Further pre-training of an official M2D checkpoint on your own shards (M2D-X style).

  python -m matpac_jax.data.prepare --input=YOUR_AUDIO_DIR --output=/data/my_m2d_shards --frontend=m2d
  python -m matpac_jax.main --config=configs/m2d_x_further.py --workdir=/ckpt/m2d_x \
      --config.init_from=m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth \
      --config.data.path=/data/my_m2d_shards

The encoder, predictor and EMA teacher start from the file and its
architecture, front end and norm stats replace the config's (logged); the
optimiser, schedules and step start from zero (M2D's `--resume` with
`--force_start_epoch 0`). Settings follow M2D's application guide for about
10k clips: effective batch 128, 600 epochs, blr 3e-4 (lr = blr x batch / 256),
the M2D EMA; set `total_steps` to 600 x clips / 128 for your data. Not
included: M2D-X's offline-teacher loss and background-noise mixing (this is
its `--loss_off 0` form). Re-running the command resumes from the workdir
and does not read the file again. Export the result for PyTorch users with
`python -m matpac_jax.export --checkpoint=/ckpt/m2d_x --out=exports/checkpoint.pth`.

Demo (CPU, demo corpus, starting from the repo's small M2D test file):
  python -m matpac_jax.main --config=configs/m2d_x_further.py:demo --workdir=/tmp/m2d_x_demo
"""
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("m2d_as2m", os.path.join(_HERE, "m2d_as2m.py"))
m2d_as2m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m2d_as2m)


def get_config(arg: str | None = None):
    c = m2d_as2m.get_config(arg)  # 'demo' -> the M2D demo's data, batch and schedule
    if arg == "demo":  # the small official-format M2D file of the parity tests
        c.init_from = os.path.normpath(os.path.join(_HERE, "..", "tests", "fixtures",
                                                    "m2d_checkpoint-300.pth"))
        return c
    c.init_from = "/path/to/m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth"
    c.batch_size = 128
    c.opt.lr = 3e-4 * c.batch_size / 256
    c.total_steps = 600 * 10_000 // 128  # 600 epochs of 10k clips
    c.opt.warmup_steps = 20 * 10_000 // 128  # M2D's 20 warm-up epochs
    c.checkpoint_every = 1000
    return c
