"""X-ARES (github.com/jimbozhang/xares) encoder files for any checkpoint `matpac_jax.load` takes.

    python -m matpac_jax.xares --checkpoint=matpac_10_2048.pt --out=matpac_encoder.py
    python -m xares.run --max-jobs 8 matpac_encoder.py src/tasks/*.py   # in a clone of xares

X-ARES imports the file (its path, `/` read as `.`, as a module: write it
into the folder `xares.run` runs from), takes the one name in it ending in
`Encoder`, builds that class with no arguments and calls it on zero-padded
float32 [B, T] batches at `sampling_rate`; it wants [B, T', output_dim]
frames `hop_size_in_ms` apart. The command writes a file binding the
checkpoint rather than one module reading an environment variable because
X-ARES keys its caches (encoded data, probe scores) by the class name: each
checkpoint gets a class of its own (`--name`, default from the checkpoint's
name), so two checkpoints never share cached embeddings.

The class is `torch_encoder()`'s torch shell over `hear.HearModel` at 16 kHz:
the frames of `matpac_jax.hear` every `frame_hop_ms`, all of them (about
T / hop: the count X-ARES's frame tasks label), JAX doing the work, any
length from one sample. Long inputs (X-ARES asks for up to 10 minutes) are
chunked inside: the ViT encodes its checkpoint's time grid (6.08 s for
80x608 models) chunk by chunk as always; BEATs `BEATS_CHUNK_FRAMES` fbank
frames at a time instead of the whole clip. Importing this module keeps JAX
from preallocating the GPU X-ARES's torch uses (`matpac_jax.torch_shell`).
"""
from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Sequence

from absl import flags

from matpac_jax import torch_shell  # first: JAX's GPU memory settings
from matpac_jax import cli, errors, hear, inference, storage

SAMPLE_RATE = 16000  # the front ends' rate; X-ARES resamples each task to it
BEATS_CHUNK_FRAMES = 992  # the 62 patch rows BEATs sees of a 10 s pre-training clip


def load_core(checkpoint: str, frame_hop_ms: int = 160, batch_size: int = 16,
              freq_tokens: str | None = None):
    """The `hear.HearModel` an encoder file runs (numpy in and out)."""
    embedder = inference.load(checkpoint, batch_size=batch_size, freq_tokens=freq_tokens)
    if isinstance(embedder, inference.BEATsEmbedder):
        embedder.chunk_frames = BEATS_CHUNK_FRAMES
    return hear.HearModel(embedder, SAMPLE_RATE, frame_hop_ms)


@functools.cache
def torch_encoder() -> type:
    """Base class of the generated encoders (needs torch); subclasses set
    `checkpoint` and optionally `frame_hop_ms`, `batch_size`, `freq_tokens`."""
    import torch  # optional: X-ARES's own environment has it, the package does not need it

    class XaresShell(torch.nn.Module):
        """A torch.nn.Module without torch weights: `load_core`'s model does the work."""

        checkpoint = ""
        frame_hop_ms = 160
        batch_size = 16
        freq_tokens = None

        def __init__(self):
            super().__init__()
            self.core = load_core(self.checkpoint, self.frame_hop_ms, self.batch_size,
                                  self.freq_tokens)
            self.sampling_rate = SAMPLE_RATE
            self.output_dim = self.core.timestamp_embedding_size
            self.hop_size_in_ms = self.frame_hop_ms

        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            """float32 [B, T] (or [T]) at 16 kHz -> float32 [B, T', output_dim]."""
            wave = torch_shell.to_numpy(audio)
            frames, _ = self.core.frames(wave[None] if wave.ndim == 1 else wave)
            return torch_shell.like(frames, audio)

    return XaresShell


def default_name(checkpoint: str, frame_hop_ms: int) -> str:
    """A class name from the checkpoint's: `matpac_10_2048.pt` ->
    `Matpac_10_2048Encoder`, a step `RUN/checkpoints/300` -> `RUN_step300Encoder`."""
    path = checkpoint.rstrip("/")
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.isdigit():  # WORKDIR/checkpoints/STEP
        stem = f"{os.path.basename(os.path.dirname(os.path.dirname(path)))}_step{stem}"
    name = re.sub(r"\W+", "_", stem).strip("_") or "Checkpoint"
    if not name[0].isalpha():
        name = "Ckpt_" + name
    hop = "" if frame_hop_ms == 160 else f"_hop{frame_hop_ms}"
    return name[0].upper() + name[1:] + hop + "Encoder"


def encoder_source(checkpoint: str, name: str, frame_hop_ms: int, batch_size: int,
                   freq_tokens: str | None, about: str, out: str) -> str:
    """The text of an encoder file: one class, ending in `Encoder`, bound to `checkpoint`."""
    return (f'"""X-ARES encoder: {about}.\n\n'
            f"Written by `python -m matpac_jax.xares`; in a clone of xares holding this file:\n"
            f"    python -m xares.run --max-jobs 8 {os.path.basename(out)} src/tasks/*.py\n"
            f'"""\n'
            f"from matpac_jax.xares import torch_encoder\n\n\n"
            f"class {name}(torch_encoder()):\n"
            f"    checkpoint = {checkpoint!r}\n"
            f"    frame_hop_ms = {frame_hop_ms!r}\n"
            f"    batch_size = {batch_size!r}\n"
            f"    freq_tokens = {freq_tokens!r}\n")


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "official M2D/MATPAC/BEATs .pt/.pth file or a "
                    "training workdir", flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "the encoder file to write, NAME.py with NAME a Python "
                    "identifier (X-ARES imports it as a module)", flag_values=FLAGS, required=True)
flags.DEFINE_string("name", None, "the class name, ending in 'Encoder'; X-ARES keys its "
                    "caches by it (default: from the checkpoint's name)", flag_values=FLAGS)
flags.DEFINE_integer("frame_hop_ms", 160, "frame spacing: 10, 20, 40, 80 or 160 (the patch; "
                     "finer hops run the encoder 160 / hop times, matpac_jax.hear)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "chunks per encoder call", flag_values=FLAGS)
flags.DEFINE_enum("freq_tokens", None, ["concat", "mean"], "frequency patches per time step: "
                  "concatenated or averaged (default: the method's, docs/SPEC.md section 6)",
                  flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.xares", __doc__)
    out = FLAGS.out
    stem, ext = os.path.splitext(os.path.basename(out))
    if ext != ".py" or not stem.isidentifier():
        raise errors.OutputError(f"{out}: X-ARES imports the encoder file as a module: "
                                 f"name it NAME.py with NAME a Python identifier")
    if FLAGS.frame_hop_ms not in hear.FRAME_HOPS_MS:
        raise errors.ConfigError(f"--frame_hop_ms={FLAGS.frame_hop_ms}: one of "
                                 f"{hear.FRAME_HOPS_MS}")
    name = FLAGS.name or default_name(FLAGS.checkpoint, FLAGS.frame_hop_ms)
    if not (name.isidentifier() and name.endswith("Encoder")):
        raise errors.ConfigError(f"--name={name}: X-ARES takes the class whose name ends in "
                                 f"'Encoder': a Python identifier ending so")
    checkpoint = storage.absolute(FLAGS.checkpoint)
    if not storage.exists(checkpoint):
        raise errors.CheckpointError(f"{storage.display(checkpoint)}: no such checkpoint "
                                     f"file or workdir")
    cli.output_folder(out)
    core = load_core(checkpoint, FLAGS.frame_hop_ms, FLAGS.batch_size, FLAGS.freq_tokens)
    about = (f"{storage.display(checkpoint)} ({core.embedder.method}), "
             f"{core.timestamp_embedding_size}-d frames every {FLAGS.frame_hop_ms} ms at 16 kHz")
    storage.write_text(out, encoder_source(checkpoint, name, FLAGS.frame_hop_ms,
                                           FLAGS.batch_size, FLAGS.freq_tokens, about, out))
    print(f"wrote {out}: class {name}, {about}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
