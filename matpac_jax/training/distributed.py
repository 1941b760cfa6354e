"""Multi-host start-up: `jax.distributed.initialize` only where it is needed.

TPU pods and SLURM are detected by JAX itself; plain GPU hosts pass the
coordinator explicitly (flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), see launch/gpu/.
"""
from __future__ import annotations

import os

import jax
from absl import logging


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the cluster when one is configured; a no-op on a single host."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    if coordinator and num_processes and num_processes > 1:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif _multi_host_tpu() or _env_int("SLURM_NTASKS") not in (None, 1):
        jax.distributed.initialize()  # auto-detected: TPU metadata or SLURM env
    else:
        return
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _multi_host_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1
