"""Train MATPAC, M2D or a BEATs stage: `python -m matpac_jax.main --config=... --workdir=...`.

Configs are Python files in configs/ (the run command is in each docstring);
any field can be overridden with `--config.field=value`. Re-running the same
command with the same workdir resumes from the latest checkpoint.
"""
from __future__ import annotations

import functools
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from matpac_jax import cli, methods, storage
from matpac_jax.data import demo
from matpac_jax.methods import init_from
from matpac_jax.training import distributed, trainer, xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs (local or cloud path).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host GPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host GPU).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    cli.check_positional(flags.FLAGS, sys.argv[1:], argv[1:], "python -m matpac_jax.main")
    cli.quiet_third_party_logs()
    xla_flags.apply_defaults()  # before the first backend starts (importing starts none)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    storage.check(_WORKDIR.value, "--workdir")  # a scheme we cannot write: one line, now
    # --config.init_from: the file's architecture replaces the model fields
    # (not read again when the workdir already has checkpoints).
    config, pretrained = init_from.resolve(_CONFIG.value, _WORKDIR.value)
    if config.data.path == "demo":  # the demo corpus, rendered and prepared once
        config.data.path = demo.shards_for_run(_WORKDIR.value, config.data.frontend,
                                               config.data.demo_clips)
    logging.info("config:\n%s", config)
    method = methods.get(config, pretrained)  # the method and its pretrained parts
    final = trainer.train(config, _WORKDIR.value, method)
    logging.info("done: %s", final)


if __name__ == "__main__":
    app.run(functools.partial(cli.run, main),
            flags_parser=cli.app_flags_parser("python -m matpac_jax.main"))
