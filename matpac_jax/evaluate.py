"""Linear-probe evaluation of a checkpoint on the papers' datasets, with EVAR's protocol.

  python -m matpac_jax.evaluate --checkpoint=CKPT --task=SPEC [--task=SPEC ...] --out=OUT.json
  python -m matpac_jax.evaluate --checkpoint=CKPT --suite=evar|matpac --data_root=DIR --out=OUT.json

CKPT is anything `matpac_jax.load` accepts (official M2D/MATPAC/BEATs file,
training workdir, one step's checkpoint folder WORKDIR/checkpoints/STEP),
`random-init` with `--config=FILE[:ARG]` (the untrained encoder of that
config: the baseline a pre-trained one must beat), or `logmel-baseline`
(mean and std over time of the 80-bin MATPAC log-mel).

SPEC, one per task:
  NAME:PATH              a dataset as released, PATH its unpacked folder; NAME one of
                         esc50 us8k spcv2 vc1 cremad gtzan nsynth surge fsd50k openmic
                         mtt as20k (evaluation/datasets.py names the files each reads)
  evar:META.csv@AUDIO_DIR  any metadata file of EVAR's form (file_name, label, split|fold)
  DIR                    a folder with meta.csv (file,label,split; `;` between labels)
--suite runs a paper's set from DIR (evaluation/suites.py: folder names),
lists the absent tasks and skips them, and writes OUT.md beside OUT.json: our
scores next to the published ones, with their sources.

Named and EVAR-form tasks run EVAR's protocol (evaluation/protocol.py):
per-task clip duration (random crop for train/valid, from the start for test,
zero-padded), folds cross-validated, lr 3e-5, seeds 42,43,44. A meta.csv
folder keeps this project's: whole clips, the lr picked on valid from
3e-5,1e-4,3e-4,1e-3, seeds 0,1,2 (EVAR's 3e-5 alone can leave small tasks at
chance; docs/RESULTS.md). `--lr` / `--seeds` override both; several --lr
values always mean "picked on valid", and the output says so. Each task is
embedded in one pass (evaluation/embeddings.py), cached under --cache_dir;
folds and seeds reuse it. A single-label task whose probe does not beat chance
(the majority class's share of valid or of test) gets a warning on stderr and
`"beat_chance": false`. OUT.json: {"tasks": {NAME: {"metric", "mean", "std",
"per_seed", "protocol", "folds": [{"test_fold", "score", "n_train", "n_valid",
"n_test", ...}], "beat_chance", ...}}} (evaluation/runner.py).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from matpac_jax import cli, errors, inference, methods, restore, storage
from matpac_jax.data import audio, frontends
from matpac_jax.evaluation import datasets, embeddings, protocol, runner, suites

RANDOM_INIT, LOGMEL = "random-init", "logmel-baseline"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "matpac_jax", "embeddings")


def random_init_embedder(config, seed: int | None = None, batch_size: int = 16,
                         freq_tokens: str | None = None):
    """Embedder over the freshly initialised encoder of `config`'s method."""
    method = methods.get(config)
    model = method.build(nnx.Rngs(config.seed if seed is None else seed))
    return inference.embedder_for(method, model, batch_size=batch_size,
                                  freq_tokens=freq_tokens)


def logmel_stats(waves: Sequence[np.ndarray | str]) -> np.ndarray:
    """(N, 160): mean and std over time of each clip's 80-bin MATPAC log-mel
    (16 kHz waveforms, or files)."""
    out = []
    for w in waves:
        w = audio.load_audio(w, frontends.SR) if isinstance(w, (str, os.PathLike)) else w
        mel = frontends.compute("matpac", w)  # (80, T)
        out.append(np.concatenate([mel.mean(axis=1), mel.std(axis=1)]))
    return np.stack(out).astype(np.float32)


def make_embed(checkpoint: str, config, seed: int | None, batch_size: int,
               freq_tokens: str | None = None
               ) -> tuple[Callable[[list[np.ndarray]], np.ndarray], str]:
    """(16 kHz waveforms -> (N, D) embeddings, an id of the checkpoint for the cache key).
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
        path = storage.absolute(checkpoint)
        if storage.isdir(path):

            try:
                found = restore.find_checkpoint(path)
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            ckpt_id = f"workdir:{found}"
        elif storage.isfile(path):
            ckpt_id = f"file:{path}:{storage.version(path)}"
        else:
            raise SystemExit(f"error: --checkpoint={checkpoint}: no such file or directory")

        def loader():
            return inference.load(path, batch_size=batch_size, freq_tokens=freq_tokens)

    if freq_tokens:
        ckpt_id += f":freq_tokens={freq_tokens}"
    holder = {}

    def embed(waves: list[np.ndarray]) -> np.ndarray:
        if "m" not in holder:
            holder["m"] = loader()
        return holder["m"].clip_embeddings(waves)

    return embed, ckpt_id


def format_table(results: dict) -> str:
    lines = [f"{'task':<24} {'metric':<9} {'mean':>7} {'std':>7}  per seed"]
    for name, r in results.items():
        seeds = " ".join(f"{s:.4f}" for s in r["per_seed"])
        folds = [f for f in r.get("folds", ()) if f["test_fold"] is not None]
        folds = f"  ({len(folds)} folds)" if folds else ""
        lines.append(f"{name:<24} {r['metric']:<9} {r['mean']:>7.4f} {r['std']:>7.4f}  "
                     f"{seeds}{folds}")
    return "\n".join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, f"checkpoint file, training workdir, {RANDOM_INIT!r} "
                    f"or {LOGMEL!r}", flag_values=FLAGS, required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config FILE[:ARG] for --checkpoint=random-init (--config.x=y overrides)",
    flag_values=FLAGS, lock_config=True)
flags.DEFINE_multi_string("task", [], "NAME:PATH, evar:META.csv@AUDIO_DIR or a meta.csv "
                          "folder (repeatable)", flag_values=FLAGS)
flags.DEFINE_enum("suite", None, ["evar", "matpac"], "a paper's task set, from --data_root",
                  flag_values=FLAGS)
flags.DEFINE_string("data_root", None, "folder holding the suite's release folders",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "output JSON (and OUT.md, the table)", flag_values=FLAGS,
                    required=True)
flags.DEFINE_string("cache_dir", DEFAULT_CACHE, "embedding cache ('' disables)",
                    flag_values=FLAGS)
flags.DEFINE_list("seeds", None, "probe seeds (default: EVAR's 42,43,44; 0,1,2 for meta.csv "
                  "folders)", flag_values=FLAGS)
flags.DEFINE_list("lr", None, "probe learning rates; several: the best on valid kept per "
                  "seed (default: EVAR's 3e-5; 3e-5,1e-4,3e-4,1e-3 for meta.csv folders)",
                  flag_values=FLAGS)
flags.DEFINE_integer("epochs", 200, "max probe epochs (EVAR: 200)", flag_values=FLAGS)
flags.DEFINE_integer("init_seed", None, "random-init seed (default: config.seed)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "chunks per encoder call", flag_values=FLAGS)
flags.DEFINE_integer("threads", 8, "audio decoding threads", flag_values=FLAGS)
flags.DEFINE_enum("freq_tokens", None, ["concat", "mean"], "frequency patches of a time "
                  "step: concatenated or averaged (default: the method's, docs/SPEC.md "
                  "section 6)", flag_values=FLAGS)


def table_path(out: str) -> str:
    return (out[:-5] if out.endswith(".json") else out) + ".md"


def main(argv: list[str] | None = None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.evaluate", __doc__)
    if FLAGS.freq_tokens and FLAGS.checkpoint == LOGMEL:
        print("error: --freq_tokens does not apply to logmel-baseline", file=sys.stderr)
        return 2
    if not FLAGS.task and not FLAGS.suite:
        print("error: give --task=SPEC (repeatable) or --suite=evar|matpac --data_root=DIR",
              file=sys.stderr)
        return 2
    if bool(FLAGS.suite) != bool(FLAGS.data_root):
        print("error: --suite and --data_root go together", file=sys.stderr)
        return 2
    lrs = tuple(cli.floats(FLAGS, "lr")) if FLAGS.lr else None
    seeds = tuple(int(v) for v in cli.floats(FLAGS, "seeds")) if FLAGS.seeds else None
    cli.output_folder(FLAGS.out)
    specs, absent = list(FLAGS.task), []
    if FLAGS.suite:
        found, absent = suites.resolve(FLAGS.suite, FLAGS.data_root)
        specs += found
        for line in absent:
            print(f"skipped: {line}", file=sys.stderr)
        if not specs:
            raise errors.TaskFileError(f"--suite={FLAGS.suite}: none of its tasks is under "
                                       f"{storage.display(FLAGS.data_root)}")
    todo = [datasets.parse(spec) for spec in specs]  # every metadata file, before any embedding
    if dup := sorted({t.name for t in todo if [u.name for u in todo].count(t.name) > 1}):
        raise errors.TaskFileError(f"--task: two tasks named {dup} (their results would "
                                   "overwrite each other)")
    plans = [protocol.for_task(t, lrs, seeds, FLAGS.epochs) for t in todo]
    for task, plan in zip(todo, plans):  # every row, before any embedding
        audio.check_files(task.files, storage.display(task.source))
        print(f"{task.name}: {len(task.files)} clips; {plan.summary(task)}", file=sys.stderr)
    embed, ckpt_id = make_embed(FLAGS.checkpoint, _CONFIG.value, FLAGS.init_seed,
                                FLAGS.batch_size, FLAGS.freq_tokens)
    results = {}
    for task, plan in zip(todo, plans):
        t0 = time.perf_counter()
        emb, cached = embeddings.cached_embed_task(embed, ckpt_id, task, plan, FLAGS.cache_dir,
                                                   FLAGS.threads)
        t1 = time.perf_counter()
        results[task.name] = r = runner.run(emb, task, plan)
        print(f"{task.name}: {len(task.files)} clips, {emb.emb.shape[0]} crops embedded "
              f"({emb.emb.shape[1]}-d) {'from cache' if cached else 'computed'} in "
              f"{t1 - t0:.1f}s, probes {time.perf_counter() - t1:.1f}s", file=sys.stderr)
        if r["beat_chance"] is False:
            runner.warn_chance(task.name, r)
    config_file = FLAGS["config"].config_filename if _CONFIG.value is not None else None
    storage.write_json(FLAGS.out, {"checkpoint": FLAGS.checkpoint, "config": config_file,
                                   "freq_tokens": FLAGS.freq_tokens, "suite": FLAGS.suite,
                                   "skipped": absent, "tasks": results}, indent=2)
    storage.write_text(table_path(FLAGS.out), suites.table(results, FLAGS.suite, absent))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
