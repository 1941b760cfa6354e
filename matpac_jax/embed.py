"""Clip embeddings of audio files: `python -m matpac_jax.embed --checkpoint CKPT --out OUT.npz AUDIO...`.

Writes `clip` (N, D) float32 in input order and `files` (N,) as given.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matpac_jax.embed", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="official M2D/MATPAC/BEATs .pt/.pth file or a training workdir")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=int, default=16, help="chunks per encoder call")
    p.add_argument("--freq_tokens", choices=("concat", "mean"), default=None,
                   help="frequency patches per time step: concatenated or averaged "
                        "(default: the method's, SPEC section 6)")
    p.add_argument("audio", nargs="+", help="audio files (any format soundfile/audioread reads)")
    args = p.parse_args(argv)

    from matpac_jax.inference import load  # after parsing: --help stays fast

    embedder = load(args.checkpoint, batch_size=args.batch_size, freq_tokens=args.freq_tokens)
    clip = embedder.clip_embeddings(args.audio)
    np.savez(args.out, clip=clip.astype(np.float32), files=np.asarray(args.audio))
    print(f"wrote {args.out}: clip {clip.shape} from {len(args.audio)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
