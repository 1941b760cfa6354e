"""Linear-probe evaluation (EVAR protocol, docs/SPEC.md section 7) of a checkpoint on task folders.

  python -m matpac_jax.evaluate --checkpoint=CKPT --task=DIR [--task=DIR ...] --out=OUT.json

CKPT is anything `matpac_jax.load` accepts (official M2D/MATPAC/BEATs file,
training workdir, one step's checkpoint folder WORKDIR/checkpoints/STEP),
`random-init` with `--config=FILE[:ARG]` (the untrained encoder of that
config: the baseline a pre-trained one must beat), or `logmel-baseline`
(mean and std over time of the 80-bin MATPAC log-mel). A task DIR holds
`meta.csv` (`file,label,split`). Clip embeddings are cached under
--cache_dir, so re-runs only train the probes. By default `--lr` is the grid
3e-5,1e-4,3e-4,1e-3: one probe per value, the best on the validation split
kept per seed (a deviation from EVAR's fixed 3e-5, which on small tasks may
not converge in 200 epochs and then scores chance; see docs/RESULTS.md).
`--lr=3e-5` is EVAR's protocol exactly. A task whose chosen probe does not
beat chance (the majority class's share of valid or of test; mAP tasks are
not checked) gets a warning on stderr and `"beat_chance": false`. OUT.json:
{"tasks": {NAME: {"metric", "mean", "std", "per_seed", "beat_chance", ...}}}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Callable

import numpy as np
from absl import flags
from ml_collections import config_flags

from matpac_jax import cli

RANDOM_INIT, LOGMEL = "random-init", "logmel-baseline"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "matpac_jax", "embeddings")
# EVAR's 3e-5 alone can leave small tasks at chance after 200 epochs (docs/RESULTS.md).
LR_GRID = ["3e-5", "1e-4", "3e-4", "1e-3"]


def random_init_embedder(config, seed: int | None = None, batch_size: int = 16,
                         freq_tokens: str | None = None):
    """Embedder over the freshly initialised encoder of `config`'s method."""
    from flax import nnx

    from matpac_jax import methods
    from matpac_jax.inference import embedder_for

    method = methods.get(config)
    model = method.build(nnx.Rngs(config.seed if seed is None else seed))
    return embedder_for(method, model, batch_size=batch_size, freq_tokens=freq_tokens)


def logmel_stats(files: list[str]) -> np.ndarray:
    """(N, 160): mean and std over time of each file's 80-bin MATPAC log-mel."""
    from matpac_jax.data import audio, frontends

    out = []
    for f in files:
        mel = frontends.compute("matpac", audio.load_audio(f, frontends.SR))  # (80, T)
        out.append(np.concatenate([mel.mean(axis=1), mel.std(axis=1)]))
    return np.stack(out).astype(np.float32)


def make_embed(checkpoint: str, config, seed: int | None, batch_size: int,
               freq_tokens: str | None = None) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """(files -> (N, D) embeddings, an id of the checkpoint for the cache key).
    `config`: the ConfigDict of `random-init`. The model is only loaded when
    embeddings are not cached."""
    if checkpoint == LOGMEL:
        return logmel_stats, LOGMEL + ":matpac-80"
    if checkpoint == RANDOM_INIT:
        if config is None:
            raise SystemExit("error: --checkpoint=random-init needs --config=FILE[:ARG]")
        cfg = config
        digest = hashlib.sha1(cfg.to_json().encode()).hexdigest()[:12]
        ckpt_id = f"{RANDOM_INIT}:{cfg.method}:{digest}:seed={cfg.seed if seed is None else seed}"
        loader = lambda: random_init_embedder(cfg, seed, batch_size, freq_tokens)
    else:
        path = os.path.abspath(checkpoint)
        if os.path.isdir(path):
            from matpac_jax.training import checkpoint as ckpt

            try:
                found = ckpt.find_checkpoint(path)
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            ckpt_id = f"workdir:{found}"
        elif os.path.isfile(path):
            st = os.stat(path)
            ckpt_id = f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
        else:
            raise SystemExit(f"error: --checkpoint={checkpoint}: no such file or directory")

        def loader():
            from matpac_jax.inference import load

            return load(path, batch_size=batch_size, freq_tokens=freq_tokens)

    if freq_tokens:
        ckpt_id += f":freq_tokens={freq_tokens}"
    holder = {}

    def embed(files: list[str]) -> np.ndarray:
        if "m" not in holder:
            holder["m"] = loader()
        m = holder["m"]
        return np.concatenate([m.clip_embeddings(files[i:i + 64])
                               for i in range(0, len(files), 64)])

    return embed, ckpt_id


def warn_chance(name: str, seeds: list[int], r: dict) -> None:
    """One stderr line: the seeds and splits where the probe scored at chance."""
    from matpac_jax.evaluation.linear_probe import CHANCE_MARGIN

    c = r["chance"]
    below = [f"{split} {v:.3f} (seed {s}, chance {ch:.3f})" for s, valid, test, cv in
             zip(seeds, r["valid"], r["per_seed"], c["valid"])
             for split, v, ch in (("valid", valid, cv), ("test", test, c["test"]))
             if v <= ch + CHANCE_MARGIN]
    print(f"warning: {name}: the probe did not beat chance: {', '.join(below)}; try other "
          "--lr values or check the task", file=sys.stderr)


def format_table(results: dict) -> str:
    lines = [f"{'task':<24} {'metric':<9} {'mean':>7} {'std':>7}  per seed"]
    for name, r in results.items():
        seeds = " ".join(f"{s:.4f}" for s in r["per_seed"])
        lines.append(f"{name:<24} {r['metric']:<9} {r['mean']:>7.4f} {r['std']:>7.4f}  {seeds}")
    return "\n".join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, f"checkpoint file, training workdir, {RANDOM_INIT!r} "
                    f"or {LOGMEL!r}", flag_values=FLAGS, required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config FILE[:ARG] for --checkpoint=random-init (--config.x=y overrides)",
    flag_values=FLAGS, lock_config=True)
flags.DEFINE_multi_string("task", None, "task folder with meta.csv (repeatable)",
                          flag_values=FLAGS, required=True)
flags.DEFINE_string("out", None, "output JSON", flag_values=FLAGS, required=True)
flags.DEFINE_string("cache_dir", DEFAULT_CACHE, "embedding cache ('' disables)",
                    flag_values=FLAGS)
flags.DEFINE_list("seeds", ["0", "1", "2"], "probe seeds", flag_values=FLAGS)
flags.DEFINE_list("lr", LR_GRID, "probe learning rates: one probe per value, the best on "
                  "valid kept per seed (EVAR's fixed lr: --lr=3e-5)", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 200, "max probe epochs (EVAR: 200)", flag_values=FLAGS)
flags.DEFINE_integer("init_seed", None, "random-init seed (default: config.seed)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "chunks per encoder call", flag_values=FLAGS)
flags.DEFINE_enum("freq_tokens", None, ["concat", "mean"], "frequency patches of a time "
                  "step: concatenated or averaged (default: the method's, docs/SPEC.md "
                  "section 6)", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.evaluate", __doc__)
    if FLAGS.freq_tokens and FLAGS.checkpoint == LOGMEL:
        print("error: --freq_tokens does not apply to logmel-baseline", file=sys.stderr)
        return 2
    lr_values = cli.floats(FLAGS, "lr")
    seeds = [int(v) for v in cli.floats(FLAGS, "seeds")]
    cli.output_folder(FLAGS.out)

    from matpac_jax.evaluation import linear_probe as lp

    cfg = lp.ProbeConfig(lr=lr_values[0], epochs=FLAGS.epochs)
    lrs = lr_values if len(lr_values) > 1 else ()
    from matpac_jax.data.audio import check_files

    tasks = [lp.load_task(directory) for directory in FLAGS.task]
    for directory, task in zip(FLAGS.task, tasks):  # every row, before any embedding
        check_files(task.files, os.path.join(directory, "meta.csv"))
    embed, ckpt_id = make_embed(FLAGS.checkpoint, _CONFIG.value, FLAGS.init_seed,
                                FLAGS.batch_size, FLAGS.freq_tokens)
    results = {}
    for task in tasks:
        t0 = time.perf_counter()
        emb, cached = lp.cached_embeddings(embed, ckpt_id, task, FLAGS.cache_dir)
        t1 = time.perf_counter()
        results[task.name] = r = lp.probe_task(emb, task, seeds, cfg, lrs)
        print(f"{task.name}: {len(task.files)} clips, embeddings {emb.shape} "
              f"{'from cache' if cached else 'computed'} in {t1 - t0:.1f}s, "
              f"probe {time.perf_counter() - t1:.1f}s", file=sys.stderr)
        if r["beat_chance"] is False:
            warn_chance(task.name, seeds, r)
    config_file = FLAGS["config"].config_filename if _CONFIG.value is not None else None
    out = {"checkpoint": FLAGS.checkpoint, "config": config_file,
           "freq_tokens": FLAGS.freq_tokens,
           "probe": {**dataclasses.asdict(cfg), "lr": lr_values}, "tasks": results}
    with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
