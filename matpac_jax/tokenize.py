"""Label audio files with a BEATs tokenizer checkpoint.

    python -m matpac_jax.tokenize --checkpoint=Tokenizer.pt --out=labels.npz a.wav b.flac

Writes `labels` (all files' patch labels concatenated, int32, time-major
within each file), `lengths` (labels per file, int64) and `files`. Each file
is labelled whole (16 kHz mono, Kaldi fbank, normalised); files shorter than
16 frames (~0.17 s) get zero labels.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from matpac_jax import cli, storage
from matpac_jax.data.audio import check_files, load_audio
from matpac_jax.data.frontends import beats_fbank, normalize
from matpac_jax.methods.beats import load_pretrained
from matpac_jax.models.codebook import BEATsTokenizer


@nnx.jit
def _labels(tokenizer: BEATsTokenizer, fbank: jnp.ndarray) -> jnp.ndarray:
    return tokenizer.extract_labels(fbank)


def tokenize_files(tokenizer: BEATsTokenizer, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (concatenated int32 labels, per-file lengths)."""
    patch = tokenizer.cfg.input_patch_size
    out = []
    for path in paths:
        fbank = normalize(beats_fbank(load_audio(path, sr=16000)), "beats")
        if fbank.shape[0] < patch:
            out.append(np.zeros((0,), np.int32))
            continue
        out.append(np.asarray(_labels(tokenizer, jnp.asarray(fbank[None])))[0])
    lengths = np.array([len(x) for x in out], np.int64)
    labels = np.concatenate(out) if out else np.zeros((0,), np.int32)
    return labels.astype(np.int32), lengths


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "official BEATs Tokenizer .pt, or a beats_tokenizer "
                    "workdir", flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "output .npz", flag_values=FLAGS, required=True)


def main(argv: Sequence[str] | None = None) -> int:
    audio = cli.parse(FLAGS, argv, "python -m matpac_jax.tokenize", __doc__,
                      positional="AUDIO files")
    if not audio:
        print("error: no audio files given", file=sys.stderr)
        return 2
    cli.output_folder(FLAGS.out)
    check_files(audio, "tokenize")  # before the model loads
    try:
        model = load_pretrained(FLAGS.checkpoint, "tokenizer")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels, lengths = tokenize_files(model, audio)
    storage.write_npz(FLAGS.out, labels=labels, lengths=lengths, files=np.array(audio))
    print(f"{len(audio)} files, {labels.size} labels -> {FLAGS.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
