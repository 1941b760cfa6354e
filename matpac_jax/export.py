"""Export a training workdir as the checkpoint file the official PyTorch code loads.

    python -m matpac_jax.export --checkpoint=WORKDIR --out=FILE.pt [--step=N]

M2D runs become `{'model', 'epoch', 'args'}` (a note names the folder M2D's
runtime needs), MATPAC / MATPAC++ runs the flat `student_encoder.` file,
BEATs iterations and tokenizers `{'cfg', 'model'}`. No torch is needed to
write them; PyTorch reads them with `torch.load(FILE, weights_only=True)`,
and `matpac_jax.load(FILE)` gives the workdir's embeddings back.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

from absl import flags

from matpac_jax import cli, errors, methods, restore, storage
from matpac_jax.conversion import torch_save
from matpac_jax.conversion.export import official_checkpoint


@dataclasses.dataclass
class Exported:
    path: str
    format: str                 # 'm2d' | 'matpac' | 'beats' | 'beats_tokenizer'
    step: int | None
    notes: list[str]            # what a PyTorch user of the file must know


def export(checkpoint: str | os.PathLike, out: str | os.PathLike,
           step: int | None = None) -> Exported:
    """Write the workdir `checkpoint` (newest intact step, or `step`) to
    exactly `out` (local or gs://) in its method's official format."""
    checkpoint = storage.check(checkpoint, "--checkpoint")
    out = storage.check(out, "--out")
    if not storage.exists(checkpoint):
        raise errors.CheckpointError(f"{checkpoint}: no such training workdir")
    if not storage.isdir(checkpoint):
        raise errors.CheckpointError(f"{checkpoint}: not a training workdir (official files "
                                     "are already in the official format)")

    def load(folder):
        return (int(folder.name) if folder.name.isdigit() else None,
                *methods.load_checkpoint(folder))

    found_step, method, model, config = restore.first_intact(checkpoint, load, step)
    obj, notes = official_checkpoint(method, model, config, found_step, out)
    torch_save.save(obj, out)
    return Exported(out, method.export_format, found_step, notes)

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "a training workdir (MATPAC, MATPAC++, M2D, BEATs "
                    "iteration or tokenizer) or one step's checkpoint folder",
                    flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "the .pt / .pth file to write", flag_values=FLAGS,
                    required=True)
flags.DEFINE_integer("step", None, "export this step (default: the newest intact one)",
                     flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.export", __doc__)
    done = export(FLAGS.checkpoint, FLAGS.out, FLAGS.step)
    step = f"step {done.step}" if done.step is not None else "checkpoint"
    print(f"{FLAGS.checkpoint} ({step}) -> {done.path} [{done.format} format]")
    for note in done.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
