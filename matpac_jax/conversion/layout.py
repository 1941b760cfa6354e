"""What the checkpoint importers share: the torch -> Flax layout entries of
Linear and LayerNorm layers, one key check that lists every problem, and its
error.

An importer describes a model as `{torch key: Entry}`; `check_and_assign`
compares that with the state dict and either raises one
`CheckpointMismatchError` or copies every tensor in (nothing is loaded
partially).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from matpac_jax import errors


def _shape(x):
    return x if isinstance(x, str) else tuple(x)


class CheckpointMismatchError(errors.CheckpointError):
    """A checkpoint's keys do not match the model: lists every problem at once.

    Official loaders use `strict=False` and silently skip keys; we refuse to
    load instead, and name all missing, unexpected and mis-shaped keys in one
    message so a user fixes a conversion in one round.
    """

    def __init__(
        self,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple, tuple]] = (),
        context: str = "",
    ):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        # (key, expected, found): shapes, or a short description for other checks.
        self.mismatched = sorted(((k, _shape(a), _shape(b)) for k, a, b in mismatched),
                                 key=lambda m: m[0])
        self.context = context
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"checkpoint does not match the model{': ' + self.context if self.context else ''}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  mismatched ({len(self.mismatched)}): key: expected vs checkpoint")
            lines += [f"    {k}: {a} vs {b}" for k, a, b in self.mismatched]
        return "\n".join(lines)


class Entry(NamedTuple):
    """Where a torch tensor goes: the Flax variable, the torch shape, and the
    conversion of the torch array to the variable's layout (and back, for
    exports: `to_torch`; None when `convert` only moves elements)."""

    variable: nnx.Variable
    torch_shape: tuple
    convert: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray] | None = None

    def torch_value(self) -> np.ndarray:
        """The variable's value in the torch layout (float32 for floats)."""
        value = np.asarray(self.variable.get_value())
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32)
        if self.to_torch is not None:
            return np.asarray(self.to_torch(value)).reshape(self.torch_shape)
        # `convert` is a transpose / reshape: push element positions through it
        # and scatter the values back to where they came from.
        positions = np.asarray(self.convert(np.arange(int(np.prod(self.torch_shape)))
                                            .reshape(self.torch_shape)))
        if positions.shape != value.shape:
            raise ValueError(f"layout maps {self.torch_shape} to {positions.shape}, "
                             f"the variable is {value.shape}")
        out = np.empty(positions.size, value.dtype)
        out[positions.ravel()] = value.ravel()
        return out.reshape(self.torch_shape)


def _same(a: np.ndarray) -> np.ndarray:
    return a


def linear_entries(key: str, layer: nnx.Linear) -> dict[str, Entry]:
    """`{key}.weight` (out, in) -> kernel (in, out); `{key}.bias`."""
    din, dout = layer.kernel.shape
    out = {f"{key}.weight": Entry(layer.kernel, (dout, din), lambda a: a.T)}
    if layer.bias is not None:
        out[f"{key}.bias"] = Entry(layer.bias, (dout,), _same)
    return out


def layer_norm_entries(key: str, ln: nnx.LayerNorm) -> dict[str, Entry]:
    """`{key}.weight` -> scale, `{key}.bias` -> bias."""
    shape = tuple(ln.scale.shape)
    return {f"{key}.weight": Entry(ln.scale, shape, _same),
            f"{key}.bias": Entry(ln.bias, shape, _same)}


def torch_state_dict(entries: Mapping[str, Entry]) -> dict[str, np.ndarray]:
    """`{torch key: array}` of the variables in `entries` (the inverse of
    `check_and_assign`: what an export writes)."""
    return {k: e.torch_value() for k, e in entries.items()}


def check_and_assign(source: str, state_dict: Mapping[str, np.ndarray],
                     entries: Mapping[str, Entry], *, ignored: Sequence[str] = (),
                     problems: Sequence[tuple[str, object, object]] = ()) -> None:
    """Raise one CheckpointMismatchError naming every missing, unexpected (not
    in `ignored`) and mis-shaped key plus `problems`; else copy every tensor in."""
    ignored = set(ignored)
    missing = [k for k in entries if k not in state_dict]
    unexpected = [k for k in state_dict if k not in entries and k not in ignored]
    mismatched = [(k, e.torch_shape, np.shape(state_dict[k])) for k, e in entries.items()
                  if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(e.torch_shape)]
    if missing or unexpected or mismatched or problems:
        raise CheckpointMismatchError(missing, unexpected, [*mismatched, *problems], source)
    for k, e in entries.items():
        value = e.convert(np.asarray(state_dict[k]))
        e.variable.set_value(jnp.asarray(value, dtype=e.variable.dtype))
