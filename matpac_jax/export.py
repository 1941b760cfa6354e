"""Export a training workdir as the checkpoint file the official PyTorch code loads.

    python -m matpac_jax.export --checkpoint=WORKDIR --out=FILE.pt [--step=N]

M2D runs become `{'model', 'epoch', 'args'}` (a note names the folder M2D's
runtime needs), MATPAC / MATPAC++ runs the flat `student_encoder.` file,
BEATs iterations and tokenizers `{'cfg', 'model'}`. No torch is needed to
write them; PyTorch reads them with `torch.load(FILE, weights_only=True)`,
and `matpac_jax.load(FILE)` gives the workdir's embeddings back.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from matpac_jax import cli

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
    from matpac_jax.conversion.export import export

    done = export(FLAGS.checkpoint, FLAGS.out, FLAGS.step)
    step = f"step {done.step}" if done.step is not None else "checkpoint"
    print(f"{FLAGS.checkpoint} ({step}) -> {done.path} [{done.format} format]")
    for note in done.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
