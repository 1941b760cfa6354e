"""Clip embeddings of audio files: `python -m matpac_jax.embed --checkpoint=CKPT --out=OUT.npz AUDIO...`.

Writes `clip` (N, D) float32 in input order and `files` (N,) as given.
CKPT: an official M2D/MATPAC/BEATs .pt/.pth file or a training workdir.
"""
from __future__ import annotations

import sys

import numpy as np
from absl import flags

from matpac_jax import cli, storage
from matpac_jax.data.audio import check_files
from matpac_jax.inference import load

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "official M2D/MATPAC/BEATs .pt/.pth file or a "
                    "training workdir", flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "output .npz", flag_values=FLAGS, required=True)
flags.DEFINE_integer("batch_size", 16, "chunks per encoder call", flag_values=FLAGS)
flags.DEFINE_enum("freq_tokens", None, ["concat", "mean"], "frequency patches per time step: "
                  "concatenated or averaged (default: the method's, docs/SPEC.md section 6)",
                  flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    audio = cli.parse(FLAGS, argv, "python -m matpac_jax.embed", __doc__,
                      positional="AUDIO files")
    if not audio:
        print("error: no audio files given (python -m matpac_jax.embed --help)", file=sys.stderr)
        return 2
    cli.output_folder(FLAGS.out)
    check_files(audio, "embed")  # before the model loads

    embedder = load(FLAGS.checkpoint, batch_size=FLAGS.batch_size, freq_tokens=FLAGS.freq_tokens)
    clip = embedder.clip_embeddings(audio)
    storage.write_npz(FLAGS.out, clip=clip.astype(np.float32), files=np.asarray(audio))
    print(f"wrote {FLAGS.out}: clip {clip.shape} from {len(audio)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
