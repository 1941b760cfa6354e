"""Pretrained parts handed to a new run, and copying them into a fresh model.

`init_from.resolve` fills a `Pretrained` from an official file or a workdir
(`Method.parts_for_init` says what a workdir of a method gives); each
method's `initialize` copies the parts it has a place for (`copy_parts`,
`copy_into`) and logs where every part came from (`report`). Below the
method modules and `init_from`, so neither imports the other.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx


@dataclasses.dataclass
class Pretrained:
    """What a file gives a new run: config fields and the parts' weights."""

    source: str
    family: str                       # 'vit' | 'beats' | 'beats_tokenizer'
    what: str                         # e.g. 'official M2D checkpoint', 'matpac workdir'
    fields: dict[str, Any]            # 'model.dim' -> value, ...
    parts: dict[str, Any]             # 'encoder', 'predictor', 'teacher', 'head', ...
    changed: list[str] = dataclasses.field(default_factory=list)  # 'key: old -> new'


def describe(encoder: nnx.Module, family: str) -> dict:
    """The constructor arguments of a loaded encoder (JSON-able)."""
    if family == "vit":
        s = encoder.stack
        return dict(in_freq=encoder.in_freq, max_frames=encoder.max_frames, patch=encoder.patch,
                    dim=encoder.dim, depth=s.depth, num_heads=s.num_heads,
                    mlp_ratio=float(s.mlp_ratio))
    cfg = dataclasses.asdict(encoder.cfg)
    cfg["finetuned_model"] = False  # our head replaces a released classifier
    return cfg


def same_shapes(a: nnx.Module, b: nnx.Module) -> bool:
    """Same module type and the same state structure and shapes."""
    if type(a) is not type(b):
        return False
    sa, sb = nnx.state(a), nnx.state(b)
    if jax.tree.structure(sa) != jax.tree.structure(sb):
        return False
    return all(np.shape(x) == np.shape(y) for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)))


def copy_into(dst: nnx.Module, src: nnx.Module) -> None:
    """`src`'s state into `dst` (same shapes: checked by the caller)."""
    nnx.update(dst, nnx.state(src))


def report(source: str, done: dict[str, str]) -> None:
    """Log where each part of the new run's weights came from."""
    logging.info("init_from %s: %s", source, "; ".join(f"{k}: {v}" for k, v in done.items()))


def copy_parts(pretrained: Pretrained, targets: dict[str, tuple[nnx.Module, str]]) -> None:
    """For each `label: (module, part)`, copy `pretrained.parts[part]` into
    `module` when the file has it with the same shapes (else the module keeps
    its fresh init); log which."""
    done = {}
    for label, (module, part) in targets.items():
        src = pretrained.parts.get(part)
        if src is not None and same_shapes(module, src):
            copy_into(module, src)
            done[label] = "from the file"
        else:
            done[label] = "not in the file (or another shape): fresh init"
    report(pretrained.source, done)
