"""Plan a run on hardware this machine does not have: compile the real training
step for a TPU slice or GPU hosts, and report what it needs and how fast it can go.

  python -m matpac_jax.plan --config=configs/matpac_as2m.py --target=v5p-64
  python -m matpac_jax.plan --config=configs/m2d_as2m.py --target=v5e-64 --fit
  python -m matpac_jax.plan --config=configs/beats_iter1_as2m.py --target=h100x8 --json=plan.json

TARGET: a Cloud TPU accelerator type (v4-16, v5p-64: TensorCores, 2 per chip;
v5e-16, v6e-64: chips) or GPUs (h100x8: one host of 8, h100x8x4: 4 hosts;
a100, h200 likewise). The step is built by training/step.py exactly as
training builds it, on compile-only devices (XLA's TPU compiler from libtpu,
`pip install 'jax[tpu]'`; its GPU compiler from `pip install 'jax[cuda12]'`),
and compiled without running. Printed (and with --json, written):

- the mesh, and where parameters, optimizer state and the batch live;
- per-device memory (arguments, temporaries, peak) against the device's HBM
  (GPUs: the 75 % JAX preallocates, or XLA_PYTHON_CLIENT_MEM_FRACTION);
- FLOPs per step and per sample: matmuls, convolutions and attention of the
  program as written (hlo_stats.matmul_flops), and XLA's own count after
  partitioning and rematerialisation where the backend gives one (TPU);
- the collectives of the compiled program with their bytes per device;
- the roofline bound of the step: the largest of compute at the chip's peak
  bf16 FLOP/s, HBM traffic at its bandwidth (TPU: XLA's bytes accessed) and
  ring collectives at its interconnect bandwidth (figures and sources:
  planning/targets.py), and the samples/s it allows.

--fit keeps the config's global batch (a hyper-parameter of the method) and
searches `model.remat`, `grad_accum_steps` (the per-device microbatch) and
FSDP for the fastest plan whose peak leaves --headroom of HBM free, compiling
candidates in order of expected speed, and prints the command that runs it.
"""
from __future__ import annotations

import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from matpac_jax import cli, errors, storage
from matpac_jax.methods import init_from
from matpac_jax.planning import analysis, targets
from matpac_jax.training import xla_flags

# Compile-only TPUs need libtpu without a TPU (several processes may load it;
# no metadata server) and nothing here runs a device: set before JAX starts.
COMPILE_ONLY_ENV = {"JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
                    "TPU_SKIP_MDS_QUERY": "1", "TPU_STDERR_LOG_LEVEL": "3",
                    "TPU_MIN_LOG_LEVEL": "3"}


FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "training config FILE[:ARG] "
                                          "(--config.x=y overrides)", flag_values=FLAGS,
                                          lock_config=True)
flags.DEFINE_string("target", None, "v4-16, v5e-256, v5p-64, v6e-64, h100x8, h200x8, a100x8, "
                    "h100x8x4 (hosts x GPUs), ...", flag_values=FLAGS)
flags.DEFINE_bool("fit", False, "search remat, grad_accum_steps and FSDP for the fastest plan "
                  "that fits", flag_values=FLAGS)
flags.DEFINE_float("headroom", 0.1, "fraction of the usable device memory a plan must leave "
                   "free", flag_values=FLAGS)
flags.DEFINE_string("json", None, "also write the plan here", flag_values=FLAGS)
flags.DEFINE_string("hlo", None, "also write the compiled step's HLO text here", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    for name, value in COMPILE_ONLY_ENV.items():  # before JAX's first backend starts
        os.environ.setdefault(name, value)
    # JAX read JAX_PLATFORMS when it was imported (above, through the planning
    # modules); the others are read when its backend starts.
    jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    xla_flags.apply_defaults()
    cli.parse(FLAGS, argv, "python -m matpac_jax.plan", __doc__)
    if _CONFIG.value is None or not FLAGS.target:
        raise errors.ConfigError("--config and --target are required "
                                 "(python -m matpac_jax.plan --help)")
    try:
        target = targets.parse(FLAGS.target)
    except targets.UnknownTarget as e:
        raise errors.ConfigError(str(e)) from None
    if FLAGS.json:
        cli.output_folder(FLAGS.json)
    try:
        devices = targets.devices(target)
    except targets.MissingRuntime as e:
        raise errors.ConfigError(str(e)) from None

    config, pretrained = init_from.resolve(_CONFIG.value)  # the file's architecture
    if pretrained is not None:
        print(f"init_from {pretrained.source} ({pretrained.what}): "
              + ("; ".join(pretrained.changed) or "no field changed"), flush=True)
    config_arg = FLAGS["config"].config_filename + (
        f":{FLAGS['config'].config_arg}" if getattr(FLAGS["config"], "config_arg", None) else "")
    overrides = [a for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--config.")]
    headroom = FLAGS.headroom
    if FLAGS.fit:
        print(f"searching plans for {target.name} ({len(devices)} devices) at global batch "
              f"{config.batch_size}:", flush=True)
        best, tried = analysis.fit(config, target, devices, headroom,
                          report=lambda s: print(s, flush=True))
        if best is None:
            p = tried[-1] if tried else analysis.analyse(config, target, devices, headroom)
            p["command"] = None
            print(analysis.format_plan(p))
            print(f"no plan fits {target.name} at global batch {config.batch_size}: the "
                  "smallest peak was " + (f"{min(t['peak_bytes_per_device'] for t in tried) / analysis.GiB:.2f} GiB"
                                          if tried else "unknown")
                  + "; use more devices (a larger slice) or a smaller --config.batch_size.")
            _write(p)
            return 1
        p = best
    else:
        p = analysis.analyse(config, target, devices, headroom, FLAGS.hlo and cli.output_folder(FLAGS.hlo))
    p["command"] = analysis.command(config_arg, p, overrides)
    print(analysis.format_plan(p))
    if p["fits"]:
        print("run it with:\n  " + p["command"])
    else:
        print(f"does not fit: over by {-p['margin_bytes'] / analysis.GiB:.2f} GiB per device. "
              f"`--fit` searches remat, grad_accum_steps and FSDP for a plan that does; "
              f"or use a larger slice.")
    _write(p)
    return 0 if p["fits"] else 1


def _write(p: dict) -> None:
    if FLAGS.json:
        storage.write_json(FLAGS.json, p)


if __name__ == "__main__":
    sys.exit(cli.run(main))
