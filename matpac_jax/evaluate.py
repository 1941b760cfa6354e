"""Linear-probe evaluation (EVAR protocol, SPEC section 7) of a checkpoint on task folders.

  python -m matpac_jax.evaluate --checkpoint CKPT --task DIR [--task DIR ...] --out OUT.json

CKPT is anything `matpac_jax.load` accepts (official M2D/MATPAC/BEATs file,
training workdir), `random-init` with `--config FILE[:ARG]` (the untrained
encoder of that config: the baseline a pre-trained one must beat), or
`logmel-baseline` (mean and std over time of the 80-bin MATPAC log-mel).
A task DIR holds `meta.csv` (`file,label,split`). Clip embeddings are cached
under --cache_dir, so re-runs only train the probes. `--lr` with several
values trains one probe per value and keeps the best on the validation split
(a deviation from EVAR's fixed 3e-5, for tasks too small for 3e-5 to
converge in 200 epochs; see docs/RESULTS.md). OUT.json:
{"tasks": {NAME: {"metric", "mean", "std", "per_seed", ...}}}.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
from typing import Callable

import numpy as np

RANDOM_INIT, LOGMEL = "random-init", "logmel-baseline"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "matpac_jax", "embeddings")


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> ConfigDict, as `--config` of main.py."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("probe_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


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


def make_embed(checkpoint: str, config: str | None, seed: int | None, batch_size: int,
               freq_tokens: str | None = None) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """(files -> (N, D) embeddings, an id of the checkpoint for the cache key).
    The model is only loaded when embeddings are not cached."""
    if checkpoint == LOGMEL:
        return logmel_stats, LOGMEL + ":matpac-80"
    if checkpoint == RANDOM_INIT:
        if not config:
            raise SystemExit("--checkpoint random-init needs --config FILE[:ARG]")
        cfg = load_config(config)
        digest = hashlib.sha1(cfg.to_json().encode()).hexdigest()[:12]
        ckpt_id = f"{RANDOM_INIT}:{config}:{digest}:seed={cfg.seed if seed is None else seed}"
        loader = lambda: random_init_embedder(cfg, seed, batch_size, freq_tokens)
    else:
        path = os.path.abspath(checkpoint)
        if os.path.isdir(path):
            from matpac_jax.training import checkpoint as ckpt

            found = ckpt.latest_checkpoint(path)
            if found is None:
                raise SystemExit(f"no checkpoint found in {path}")
            ckpt_id = f"workdir:{path}:step={found[0]}"
        elif os.path.isfile(path):
            st = os.stat(path)
            ckpt_id = f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
        else:
            raise SystemExit(f"--checkpoint {checkpoint}: no such file or directory")

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


def format_table(results: dict) -> str:
    lines = [f"{'task':<24} {'metric':<9} {'mean':>7} {'std':>7}  per seed"]
    for name, r in results.items():
        seeds = " ".join(f"{s:.4f}" for s in r["per_seed"])
        lines.append(f"{name:<24} {r['metric']:<9} {r['mean']:>7.4f} {r['std']:>7.4f}  {seeds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matpac_jax.evaluate",
                                description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help=f"checkpoint file, training workdir, {RANDOM_INIT!r} or {LOGMEL!r}")
    p.add_argument("--config", help="config FILE[:ARG] for --checkpoint random-init")
    p.add_argument("--task", action="append", required=True, help="task folder with meta.csv")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="embedding cache ('' disables)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, nargs="+", default=[3e-5],
                   help="probe learning rate (EVAR: 3e-5); several: pick per seed on valid")
    p.add_argument("--epochs", type=int, default=200, help="max probe epochs (EVAR: 200)")
    p.add_argument("--init_seed", type=int, default=None, help="random-init seed (config.seed)")
    p.add_argument("--batch_size", type=int, default=16, help="chunks per encoder call")
    p.add_argument("--freq_tokens", choices=("concat", "mean"), default=None,
                   help="frequency patches of a time step: concatenated or averaged "
                        "(default: the method's, SPEC section 6)")
    args = p.parse_args(argv)
    if args.freq_tokens and args.checkpoint == LOGMEL:
        p.error("--freq_tokens does not apply to logmel-baseline")

    from matpac_jax.evaluation import linear_probe as lp

    cfg = lp.ProbeConfig(lr=args.lr[0], epochs=args.epochs)
    lrs = args.lr if len(args.lr) > 1 else ()
    embed, ckpt_id = make_embed(args.checkpoint, args.config, args.init_seed, args.batch_size,
                                args.freq_tokens)
    results = {}
    for directory in args.task:
        task = lp.load_task(directory)
        t0 = time.perf_counter()
        emb, cached = lp.cached_embeddings(embed, ckpt_id, task, args.cache_dir)
        t1 = time.perf_counter()
        results[task.name] = lp.probe_task(emb, task, args.seeds, cfg, lrs)
        print(f"{task.name}: {len(task.files)} clips, embeddings {emb.shape} "
              f"{'from cache' if cached else 'computed'} in {t1 - t0:.1f}s, "
              f"probe {time.perf_counter() - t1:.1f}s", file=sys.stderr)
    out = {"checkpoint": args.checkpoint, "config": args.config, "freq_tokens": args.freq_tokens,
           "probe": {**dataclasses.asdict(cfg), "lr": args.lr}, "tasks": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
