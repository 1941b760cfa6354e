"""GEMM rate of the ViT-B step's matmul shapes, alone: is a gap the kernel's?

  python benchmarks/matmul_rates.py                                  # XLA:CPU as configured
  XLA_FLAGS="--xla_cpu_use_onednn=true" python benchmarks/matmul_rates.py
  /tmp/torch_venv/bin/python benchmarks/matmul_rates.py --torch      # same shapes in torch

Each shape runs `tanh(a @ b)` (so the dot cannot be folded away), once to
warm up, then `--calls` times; it prints GFLOP/s from the mean. If the rates
agree across frameworks or flags but the training steps do not, the time is
lost around the dots (operand copies, layouts), not in the GEMM library.
The torch mode imports only torch and numpy, so it runs in the replica's venv.
"""
from __future__ import annotations

import argparse
import os
import time

# (M, K, N): token rows x width x MLP width, its transpose, and a weight gradient.
SHAPES = [(1600, 768, 3072), (1600, 3072, 768), (768, 1600, 3072)]


def _rate(fn, m: int, k: int, n: int, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 2 * m * k * n / ((time.perf_counter() - start) / calls) / 1e9


def jax_rates(calls: int) -> list[float]:
    import jax
    import jax.numpy as jnp

    out = []
    for m, k, n in SHAPES:
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        f = jax.jit(lambda a, b: jnp.tanh(a @ b))
        out.append(_rate(lambda: f(a, b).block_until_ready(), m, k, n, calls))
    return out


def torch_rates(calls: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    out = []
    for m, k, n in SHAPES:
        a, b = torch.ones(m, k), torch.ones(k, n)
        out.append(_rate(lambda: torch.tanh(a @ b), m, k, n, calls))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="time torch instead of XLA")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    rates = torch_rates(args.calls, args.threads) if args.torch else jax_rates(args.calls)
    label = f"torch ({args.threads} threads)" if args.torch else (
        "XLA_FLAGS=" + os.environ.get("XLA_FLAGS", ""))
    print(label, f"load average {os.getloadavg()[0]:.2f}")
    for (m, k, n), rate in zip(SHAPES, rates):
        print(f"  {m}x{k}x{n}: {rate:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
