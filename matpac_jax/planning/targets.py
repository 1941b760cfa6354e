"""Hardware a step can be compiled for without having it: TPU slices and GPU hosts.

A target name is what users rent: Cloud TPU accelerator types (`v4-16`,
`v5p-64`: TensorCores, two per chip; `v5e-16`, `v6e-64`: chips) or GPUs as
`h100x8` (one host of 8) and `h100x8x4` (4 hosts of 8). `devices(target)`
gives compile-only devices from XLA's own compilers (libtpu for TPUs, the
CUDA plugin for GPUs), so `jax.jit(...).lower(...).compile()` produces the
program a real machine would run, with its memory layout.

Per-chip figures are the vendors' published ones (sources in `Chip.source`):
dense bf16 FLOP/s, HBM capacity and bandwidth, and the interconnect
bandwidth a ring collective gets per chip (one direction).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax
from jax.experimental import topologies

from matpac_jax.planning.hlo_stats import ring_bytes

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    platform: str          # 'tpu' | 'gpu'
    peak_flops: float      # dense bf16 FLOP/s per chip
    hbm_bytes: float       # per chip
    hbm_bandwidth: float   # bytes/s per chip
    link_bandwidth: float  # bytes/s per chip for ring collectives inside a slice / host
    dcn_bandwidth: float   # bytes/s per GPU between hosts (TPU: one slice, unused)
    source: str


CHIPS = {
    # Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/<v>):
    # ICI per chip one way = the page's bidirectional ICI / 2, or for v4 the
    # pod's all-reduce bandwidth / 4096 chips.
    "v4": Chip("TPU v4", "tpu", 275e12, 32 * GiB, 1200e9, 1.1e15 / 4096, 0.0,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, "
               "all-reduce 1.1 PB/s per 4096-chip pod"),
    "v5e": Chip("TPU v5 lite", "tpu", 197e12, 16 * GiB, 819e9, 400e9 / 2, 0.0,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, "
                "ICI 400 GB/s bidirectional per chip"),
    "v5p": Chip("TPU v5", "tpu", 459e12, 95 * GiB, 2765e9, 1200e9 / 2, 0.0,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, "
                "ICI 1200 GB/s bidirectional per chip"),
    "v6e": Chip("TPU v6 lite", "tpu", 918e12, 32 * GiB, 1638e9, 800e9 / 2, 0.0,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, "
                "ICI 800 GB/s bidirectional per chip"),
    # NVIDIA datasheets (SXM parts); capacity as the driver reports it.
    # NVLink per GPU one way = half the bidirectional figure; between hosts one
    # 400 Gb/s (A100: 200 Gb/s) InfiniBand NIC per GPU.
    "a100": Chip("NVIDIA A100-SXM4-80GB", "gpu", 312e12, 80 * GiB, 2039e9, 600e9 / 2, 25e9,
                 "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 80 GB HBM2e at 2039 GB/s, "
                 "NVLink 600 GB/s"),
    "h100": Chip("NVIDIA H100 80GB HBM3", "gpu", 989e12, 84_942_979_072, 3352e9, 900e9 / 2,
                 50e9, "NVIDIA H100 SXM datasheet: 989 TFLOP/s bf16 dense, 80 GB HBM3 at "
                 "3.35 TB/s, NVLink 900 GB/s"),
    "h200": Chip("NVIDIA H200", "gpu", 989e12, 150_754_820_096, 4800e9, 900e9 / 2, 50e9,
                 "NVIDIA H200 SXM datasheet: 989 TFLOP/s bf16 dense, 141 GB HBM3e at 4.8 TB/s, "
                 "NVLink 900 GB/s"),
}
# What XLA's GPU compiler needs to know of a GPU it cannot query: compute
# capability, SMs, shared memory per SM / per block (opt-in), L2, boost clock
# (NVIDIA's architecture whitepapers and CUDA occupancy tables).
GPU_FACTS = {
    "a100": dict(cc=(8, 0), sms=108, smem_sm=167_936, smem_block=166_912, l2=41_943_040,
                 clock=1.41),
    "h100": dict(cc=(9, 0), sms=132, smem_sm=233_472, smem_block=232_448, l2=52_428_800,
                 clock=1.98),
    "h200": dict(cc=(9, 0), sms=132, smem_sm=233_472, smem_block=232_448, l2=52_428_800,
                 clock=1.98),
}
CUDNN_VERSION = (9, 8, 0)  # the oldest cuDNN jax[cuda12] 0.10 runs with
# JAX preallocates this fraction of GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
JAX_GPU_MEM_FRACTION = 0.75


def gpu_target_config(key: str) -> str:
    """XLA's GpuTargetConfigProto (text) for GPU `key`, from CHIPS and GPU_FACTS."""
    chip, f = CHIPS[key], GPU_FACTS[key]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {f['smem_sm']}
  shared_memory_per_block_optin: {f['smem_block']}
  threads_per_core_limit: 2048
  core_count: {f['sms']}
  fpus_per_core: {64 if f['cc'][0] == 8 else 128}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bandwidth)}
  l2_cache_size: {f['l2']}
  clock_rate_ghz: {f['clock']}
  device_memory_size: {int(chip.hbm_bytes)}
  cuda_compute_capability {{ major: {f['cc'][0]} minor: {f['cc'][1]} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {CUDNN_VERSION[0]} minor: {CUDNN_VERSION[1]} patch: {CUDNN_VERSION[2]} }}
device_description_str: "{chip.name}"
"""


EXAMPLES = ("v4-16", "v4-64", "v5e-16", "v5e-256", "v5p-16", "v5p-64", "v6e-8", "v6e-64",
            "a100x8", "h100x8", "h200x8", "h100x8x4")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    chip: Chip
    chips: int
    hosts: int
    topology: str          # TPU: AxB[xC]; GPU: slices x hosts x GPUs per host

    @property
    def per_host(self) -> int:
        return self.chips // self.hosts

    def memory_budget(self) -> float:
        """Bytes one step may use per device: HBM, less JAX's GPU preallocation share."""
        if self.chip.platform == "gpu":
            fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION",
                                            JAX_GPU_MEM_FRACTION))
            return self.chip.hbm_bytes * fraction
        return self.chip.hbm_bytes


def roofline(target: Target, flops: float, hbm_bytes: float | None,
             resident_bytes: float | None, collectives: dict) -> dict:
    """Lower bounds of one device's step time: `flops` at the chip's peak,
    `hbm_bytes` at its HBM bandwidth (`resident_bytes`: the part in HBM,
    hlo_bytes.traffic), and each collective's ring traffic at the link (GPU
    rings across hosts: the InfiniBand NIC per GPU). Adds 'ring_bytes' and
    'seconds' to each entry of `collectives`."""
    chip = target.chip
    comm_s = 0.0
    for kind, c in collectives.items():
        bw = chip.link_bandwidth
        if chip.platform == "gpu" and target.hosts > 1 and c["group"] > target.per_host:
            bw = chip.dcn_bandwidth
        c["ring_bytes"] = ring_bytes(kind, c["bytes"], c["group"])
        c["seconds"] = c["ring_bytes"] / bw
        comm_s += c["seconds"]
    per_second = lambda b: b / chip.hbm_bandwidth if b else None
    compute_s = flops / chip.peak_flops
    # the step bound and the MFU it allows, also with the HBM-resident bytes only
    resident = max(compute_s, per_second(resident_bytes) or 0.0, comm_s)
    return {"compute_s": compute_s, "hbm_s": per_second(hbm_bytes),
            "hbm_resident_s": per_second(resident_bytes), "collectives_s": comm_s,
            "resident_step_s": resident, "resident_mfu": compute_s / resident if resident else None,
            "peak_flops_per_chip": chip.peak_flops, "hbm_bandwidth": chip.hbm_bandwidth,
            "link_bandwidth": chip.link_bandwidth, "source": chip.source}


class UnknownTarget(ValueError):
    pass


def _tpu_3d(chips: int) -> str:
    """Cloud TPU's default v4 / v5p slice shape for a chip count (AxBxC, A <= B <= C)."""
    if chips == 4:
        return "2x2x1"
    dims = [1, 1, 1]
    n, i = chips, 2
    while n > 1:
        if n % 2:
            raise UnknownTarget(f"{chips} chips is not a v4/v5p slice size (powers of 2 >= 4)")
        dims[i] *= 2
        n //= 2
        i = (i - 1) % 3
    return "x".join(map(str, sorted(dims)))


def _tpu_2d(chips: int) -> str:
    if chips & (chips - 1) or chips > 256:
        raise UnknownTarget(f"{chips} chips is not a v5e/v6e slice size (1, 4, 8, ..., 256)")
    a = 2 ** (int(math.log2(chips)) // 2)
    return f"{a}x{chips // a}"


def parse(name: str) -> Target:
    """`v5p-64` -> 32 chips of TPU v5p; `h100x8x4` -> 4 hosts of 8 H100s."""
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
    if m:
        gen, n = ("v5e" if m[1] == "v5litepod" else m[1]), int(m[2])
        if gen in ("v4", "v5p"):  # named by TensorCores, two per chip (megacore)
            if n % 2 or n < 8:
                raise UnknownTarget(f"{name}: {gen} slices are named by TensorCores, an even "
                                    "number >= 8 (v4-8 is 4 chips)")
            chips = n // 2
            topology = _tpu_3d(chips)
            per_host = 4
        else:
            chips = n
            topology = _tpu_2d(chips)
            per_host = chips if chips <= 8 else 4  # one 8-chip VM, else 4-chip VMs
        return Target(name, CHIPS[gen], chips, max(1, chips // per_host), topology)
    m = re.fullmatch(r"(a100|h100|h200)x(\d+)(?:x(\d+))?", name)
    if m:
        per_host, hosts = int(m[2]), int(m[3] or 1)
        if not 1 <= per_host <= 8:
            raise UnknownTarget(f"{name}: 1 to 8 GPUs per host")
        return Target(name, CHIPS[m[1]], per_host * hosts, hosts, f"1x{hosts}x{per_host}")
    raise UnknownTarget(
        f"unknown target {name!r}; known forms: v4-N and v5p-N (N TensorCores, 2 per chip), "
        f"v5e-N and v6e-N (N chips), a100xG, h100xG, h200xG (G GPUs on one host) and "
        f"h100xGxH (H hosts); e.g. {', '.join(EXAMPLES)}")


def name_of(device_kind: str, count: int, hosts: int = 1) -> str | None:
    """The target name of `count` devices of `device_kind` (jax's name for
    them) on `hosts` hosts, as `parse` reads it; None for other kinds. TPU v4
    and v5p devices are chips of two TensorCores, which name their slices."""
    kind = device_kind.lower()
    for key, gen in (("v6 lite", "v6e"), ("v6e", "v6e"), ("v5 lite", "v5e"), ("v5e", "v5e"),
                     ("v5", "v5p"), ("v4", "v4")):
        if "tpu" in kind and key in kind:
            return f"{gen}-{2 * count if gen in ('v4', 'v5p') else count}"
    for gpu in ("h200", "h100", "a100"):
        if gpu in kind:
            return f"{gpu}x{count // hosts}" + (f"x{hosts}" if hosts > 1 else "")
    return None


def devices(target: Target) -> list:
    """Compile-only devices of `target` (no hardware needed).

    TPU: libtpu (`pip install 'jax[tpu]'`); GPU: the CUDA plugin
    (`pip install 'jax[cuda12]'`) with a target description of the GPU
    (`gpu_target_config`).
    Raises `MissingRuntime` with the pip command when the package is absent."""
    if target.chip.platform == "tpu":
        _need("libtpu", "pip install 'jax[tpu]=={jax}'")
        gen = {"TPU v4": "v4", "TPU v5": "v5", "TPU v5 lite": "v5e",
               "TPU v6 lite": "v6e"}[target.chip.name]
        dims = [int(d) for d in target.topology.split("x")]
        host = tuple(min(2, d) for d in dims[:2]) + (1,)  # 2x2 chips per host
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{gen}:{target.topology}",
            # v4 / v5p: one JAX device per chip (its two TensorCores as one)
            chip_config_name="megacore" if len(dims) == 3 else "default",
            chips_per_host_bounds=host, num_slices=1)
        return list(desc.devices)
    _need("jax_cuda12_plugin", "pip install 'jax[cuda12]=={jax}'")
    key = next(k for k, c in CHIPS.items() if c is target.chip)
    desc = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(key),
                                        topology=target.topology)
    return list(desc.devices)


class MissingRuntime(RuntimeError):
    pass


def _need(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingRuntime(f"compiling for this target needs the {module} package: "
                             + pip.format(jax=jax.__version__))
