"""Embedding throughput: clips/s for 10-second clips at ViT-B size (random init).

`python benchmarks/bench_embed.py [--clips=8] [--batch_size=8] [--dtype=float32]`
Times `Embedder.clip_embeddings` end to end (front end + batched encoder)
after one warm-up call that compiles the shapes.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from matpac_jax import cli
from matpac_jax.inference import ViTEmbedder
from matpac_jax.models.vit import ViTEncoder

FLAGS = flags.FlagValues()
flags.DEFINE_integer("clips", 8, "clips per call", flag_values=FLAGS)
flags.DEFINE_float("seconds", 10.0, "clip length", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "chunks per encoder call", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 2, "timed calls", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype",
                  flag_values=FLAGS)


def main(argv=None) -> None:
    cli.parse(FLAGS, argv, "python benchmarks/bench_embed.py", __doc__)
    args = FLAGS
    enc = ViTEncoder(dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0))  # ViT-B, 80 x 608
    e = ViTEmbedder(enc, "matpac", "matpac", None, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32)
             for _ in range(args.clips)]
    t0 = time.perf_counter()
    e.clip_embeddings(waves)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        e.features(waves[0])
    fe = (time.perf_counter() - t0) / args.repeats
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        out = e.clip_embeddings(waves)
    dt = (time.perf_counter() - t0) / args.repeats
    print(f"device={jax.devices()[0].device_kind} x{jax.device_count()} dtype={args.dtype} "
          f"clips={args.clips} x {args.seconds:g}s batch={args.batch_size} out={out.shape}")
    print(f"first call (compile + run) {warm:.1f}s; front end {fe * 1e3:.1f} ms/clip")
    print(f"{args.clips / dt:.2f} clips/s ({dt / args.clips * 1e3:.0f} ms/clip)")


if __name__ == "__main__":
    main()
