"""Trajectory parity: our training loop against a PyTorch restatement of the
official update, over 50 optimiser steps of a tiny model.

  python benchmarks/trajectory.py --method=matpac --out=/tmp/traj_matpac_in.npz
  /tmp/tv/bin/python benchmarks/torch_reference.py trajectory /tmp/traj_matpac_in.npz \
      tests/fixtures/trajectory_matpac.npz

(`benchmarks/make_trajectory_fixtures.sh` does it for every method.) This file
(JAX, the project's environment) writes the inputs: the tiny config's
numbers, the clips (float16 log-mels, as shards hold them), the initial
weights our trainer draws, and per step the crops our loader cuts and the
masks our step draws. The PyTorch side (its own environment; torch is never a
dependency of the package or of CI) runs the official update on them and
adds per-step metrics and the final weights. `tests/test_trajectory.py` runs
`trainer.train` on TFRecord shards of the same clips and compares.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 50
BATCH = 8
CLIPS = 16
CLIP_FRAMES = 96   # crops of CROP_FRAMES at random offsets
CROP_FRAMES = 64   # 80 x 64 -> 5 x 4 ViT tokens; 64 x 128 -> 4 x 8 BEATs patches
CONFIG_FILES = {"matpac": "matpac_as2m.py", "m2d": "m2d_as2m.py", "beats_iter1": "beats_iter1_as2m.py"}
FRONTENDS = {"matpac": "matpac", "m2d": "m2d", "beats_iter1": "beats"}

_COMMON = {
    "seed": 0, "batch_size": BATCH, "total_steps": STEPS, "log_every": 1,
    "checkpoint_every": STEPS, "keep_checkpoints": 1, "async_checkpoints": False,
    "data.crop_frames": CROP_FRAMES, "data.short_clips": "pad", "data.workers": 0,
    "model.dtype": "float32", "opt.warmup_steps": 10, "opt.lr": 1e-3,
}
_VIT = {"model.dim": 32, "model.depth": 2, "model.num_heads": 2, "model.pred_dim": 24,
        "model.pred_depth": 1, "model.pred_heads": 2}
# Official numbers except sizes and schedule lengths, shortened so that the lr
# warm-up, momentum anneals and teacher temperature all move within 50 steps.
OVERRIDES = {
    "matpac": {**_COMMON, **_VIT, "model.head_out_dim": 64, "model.head_hidden_dim": 48,
               "model.head_bottleneck_dim": 16, "objective.teacher_temp_warmup_steps": 20,
               "objective.ema_start": 0.99, "objective.ema_end": 0.999,
               "objective.head_ema_start": 0.9, "objective.head_ema_end": 1.0},
    "m2d": {**_COMMON, **_VIT, "objective.ema_start": 0.99, "objective.ema_end": 0.999},
    "beats_iter1": {**_COMMON, "model.embed_dim": 32, "model.encoder_layers": 2,
                    "model.encoder_embed_dim": 32, "model.encoder_ffn_embed_dim": 64,
                    "model.encoder_attention_heads": 4, "model.conv_pos": 16,
                    "model.conv_pos_groups": 4, "model.num_buckets": 32, "model.max_distance": 64,
                    "objective.num_codes": 64, "objective.codebook_dim": 16,
                    "objective.predictor_layers": 1, "objective.predictor_heads": 4},
}


def config_for(method: str, data_path: str = "", **extra):
    """The tiny config of `method` ('matpac' | 'm2d' | 'beats_iter1'), locked."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / CONFIG_FILES[method])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.lock()
    for key, value in {**OVERRIDES[method], "data.path": data_path, **extra}.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def make_clips(method: str) -> np.ndarray:
    """(CLIPS, ...) float16 un-normalised features of procedural sounds, as shards store them."""
    from matpac_jax.data import frontends, toy_sounds

    frontend = FRONTENDS[method]
    samples = frontends.N_FFT + (CLIP_FRAMES - 1) * frontends.HOP
    out = []
    for i in range(CLIPS):
        label = toy_sounds.ALL_CLASSES[i % len(toy_sounds.ALL_CLASSES)]
        wave = toy_sounds.synthesize(label, np.random.default_rng([1234, i]), samples / 16000)
        feat = frontends.compute(frontend, wave[:samples])
        feat = feat[:, :CLIP_FRAMES] if feat.shape[0] == 80 else feat[:CLIP_FRAMES]
        out.append(feat.astype(np.float16))
    return np.stack(out)


def write_shards(clips: np.ndarray, directory: str, frontend: str) -> str:
    """One TFRecord shard + manifest of `clips`, as `data.prepare` writes them."""
    from matpac_jax.data import tfrecord

    os.makedirs(directory, exist_ok=True)
    name = "clips-00000-of-00001.tfrecord"
    with tfrecord.TFRecordWriter(os.path.join(directory, name)) as w:
        for i, c in enumerate(clips):
            w.write(tfrecord.encode_example(c, f"clip{i:02d}"))
    manifest = {"frontend": frontend, "shards": [{"file": name, "num_examples": len(clips)}]}
    with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return directory


def _locate(crop: np.ndarray, clips: np.ndarray, norm: tuple[float, float], time_axis: int):
    """(clip index, start frame) of a normalised crop."""
    mean, std = norm
    raw = crop * np.float32(std) + np.float32(mean)
    best = None
    for i, c in enumerate(clips.astype(np.float32)):
        for s in range(c.shape[time_axis] - CROP_FRAMES + 1):
            window = c[:, s:s + CROP_FRAMES] if time_axis else c[s:s + CROP_FRAMES]
            err = float(np.abs(window - raw).max())
            if best is None or err < best[0]:
                best = (err, i, s)
    if best[0] > 1e-2:
        raise RuntimeError(f"a loader crop matches no clip window (error {best[0]})")
    return best[1], best[2]


def make_inputs(method: str, workdir: str) -> dict[str, np.ndarray]:
    """Everything the PyTorch side needs (see module docstring)."""
    import jax
    from flax import nnx

    from matpac_jax import methods
    from matpac_jax.data import frontends
    from matpac_jax.objectives import beats_mam, masked_latent
    from matpac_jax.training import trainer
    from matpac_jax.training import step as step_lib

    clips = make_clips(method)
    frontend = FRONTENDS[method]
    path = write_shards(clips, os.path.join(workdir, "shards"), frontend)
    config = config_for(method, path)
    method_obj = methods.get(config)
    run = step_lib.build(config, method_obj, jax.devices()[:1])
    flat = nnx.to_flat_state(run.state["model"])
    out = {f"init/{'/'.join(map(str, k))}": np.asarray(v.get_value()) for k, v in flat}
    out["clips"] = clips
    out["config"] = np.asarray(json.dumps(config.to_dict()))
    data = trainer.make_data(config, method_obj, path)
    time_axis = 1 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 0
    norm = frontends.NORM[frontend]
    crops, masks, checksums = [], [], []
    key = jax.random.key(config.seed)
    for step in range(STEPS):
        x = next(data)["x"]
        checksums.append(float(np.sum(x, dtype=np.float64)))
        crops.append([_locate(c, clips, norm, time_axis) for c in x])
        rng = jax.random.fold_in(key, step)  # as trainer.train derives each step's key
        if method == "beats_iter1":
            n = (CROP_FRAMES // 16) * 8
            m = beats_mam.random_mask(rng, BATCH, n, config.objective.mask_ratio)
            masks.append(np.concatenate([np.asarray(m.keep), np.asarray(m.masked)], axis=1))
        else:
            tokens = (80 // 16) * (CROP_FRAMES // 16)
            ids, _, _ = masked_latent.random_masking(rng, BATCH, tokens,
                                                     config.objective.mask_ratio)
            masks.append(np.asarray(ids))
    out["crops"] = np.asarray(crops, np.int32)              # (steps, batch, [clip, start])
    out["masks"] = np.asarray(masks, np.int32)              # ids_shuffle | [keep, masked]
    out["batch_checksums"] = np.asarray(checksums)
    return out


def main(argv=None) -> int:
    from absl import flags

    from matpac_jax import cli

    fv = flags.FlagValues()
    flags.DEFINE_enum("method", None, sorted(CONFIG_FILES), "method", flag_values=fv,
                      required=True)
    flags.DEFINE_string("out", None, "inputs .npz", flag_values=fv, required=True)
    flags.DEFINE_string("workdir", "/tmp/trajectory_inputs", "scratch folder", flag_values=fv)
    cli.parse(fv, argv, "python benchmarks/trajectory.py", __doc__)
    args = fv
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = make_inputs(args.method, os.path.join(args.workdir, args.method))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: {len(out)} arrays", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
