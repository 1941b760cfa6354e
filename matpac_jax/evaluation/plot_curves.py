"""Training curves of one or more workdirs from their TensorBoard event files.

  python -m matpac_jax.evaluation.plot_curves --workdir=/tmp/matpac_demo \
      [--workdir=m2d=/tmp/m2d_demo ...] --out=docs/loss_curves.png

One panel per logged scalar (losses, grad norm, MATPAC's center entropy and
teacher perplexity: the collapse indicators); schedules and timings are left
out. Needs matplotlib (`pip install matpac_jax[plot]`).
"""
from __future__ import annotations

import io
import math
import os
import sys

from absl import flags

from matpac_jax import cli, storage
from matpac_jax.training import metrics

SKIP = {"lr", "ema_momentum", "head_ema_momentum", "teacher_temp", "step_time_s",
        "samples_per_s", "mfu"}
FIRST = ("loss", "loss_pred", "loss_cls", "center_entropy", "teacher_perplexity", "grad_norm")


def load_runs(workdirs: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run name: {tag: [(step, value)]}} for `NAME=PATH` or `PATH` entries."""
    runs = {}
    for spec in workdirs:
        name, _, path = spec.rpartition("=")
        name = name or os.path.basename(os.path.normpath(path.rstrip("/")))
        logdir = storage.join(path, "tensorboard")
        if not storage.isdir(logdir):
            raise SystemExit(f"{path}: no tensorboard/ folder (not a training workdir?)")
        runs[name] = metrics.read_scalars(logdir)
    return runs


def plot(runs: dict, out: str) -> list[str]:
    """Writes the figure to `out`; returns the tags plotted."""
    import matplotlib  # optional: the `plot` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = {t for r in runs.values() for t in r if t not in SKIP}
    tags = [t for t in FIRST if t in tags] + sorted(tags - set(FIRST))
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    color = {name: f"C{i}" for i, name in enumerate(runs)}  # one colour per run in every panel
    for ax, tag in zip(axes.flat, tags):
        for name, scalars in runs.items():
            if tag in scalars:
                points = sorted(dict(scalars[tag]).items())  # last value per step wins
                ax.plot([s for s, _ in points], [v for _, v in points], color=color[name])
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c) for c in color.values()]
    fig.legend(handles, list(color), loc="lower center", ncol=min(4, len(color)), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(out)[1][1:] or "png", dpi=110)
    plt.close(fig)
    storage.write_bytes(out, image.getvalue())
    return tags


FLAGS = flags.FlagValues()
flags.DEFINE_multi_string("workdir", None, "PATH or NAME=PATH (repeat for several runs)",
                          flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "output image (.png)", flag_values=FLAGS, required=True)


def main(argv: list[str] | None = None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.evaluation.plot_curves", __doc__)
    tags = plot(load_runs(FLAGS.workdir), cli.output_folder(FLAGS.out))
    print(f"wrote {FLAGS.out}: {', '.join(tags)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
