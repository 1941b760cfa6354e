"""Device mesh and logical-axis sharding rules.

Parameters name their dimensions with logical axes ('embed', 'mlp', ...; see
docs/ARCHITECTURE.md). Here those names are mapped to the three mesh axes
(data, fsdp, tensor) by a rule table from config, so the same model code runs
data-parallel on one host, FSDP on a pod, or with tensor parallelism.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
_METADATA_KEYS = ("out_sharding", "sharding_names", "logical_axes")


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(shape, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_sizes(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """The axis sizes `make_mesh` gives `num_devices` devices; ValueError naming
    the problem when `shape` does not fit them."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(shape)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh {dict(shape)} does not fit {num_devices} devices "
                f"({num_devices} is not divisible by {known})"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
            f"devices but {num_devices} are available"
        )
    return dict(zip(MESH_AXES, sizes))


def logical_rules(fsdp: bool, tensor_parallel: bool) -> dict[str, Any]:
    """Logical axis -> mesh axis. FSDP shards the model width; TP the wide dims."""
    tp = "tensor" if tensor_parallel else None
    return {
        "embed": "fsdp" if fsdp else None,
        "mlp": tp,
        "qkv": tp,
        "heads": tp,
        "vocab": tp,
        "patch": None,
        "norm": None,
        "conv": None,
    }


def _logical_names(variable: nnx.Variable) -> tuple | None:
    meta = variable.get_metadata()
    for key in _METADATA_KEYS:
        names = meta.get(key)
        if names:
            return tuple(names)
    return None


def _spec_for(names: tuple | None, shape: tuple, rules: Mapping[str, Any], mesh: Mesh) -> P:
    if not names:
        return P()
    axes = []
    for name, dim in zip(names, shape):
        axis = rules.get(name) if name is not None else None
        # A dimension that does not divide evenly stays replicated.
        if axis is not None and dim % mesh.shape[axis]:
            axis = None
        axes.append(axis if axis not in axes else None)
    return P(*axes)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any]) -> nnx.State:
    """NamedSharding for every leaf of an (abstract) nnx.State."""

    def leaf(v):
        if isinstance(v, nnx.Variable):
            value = v.get_value()
            spec = _spec_for(_logical_names(v), tuple(getattr(value, "shape", ())), rules, mesh)
            return v.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh | Mapping[str, int]) -> int:
    """Devices the batch is split over: of a mesh, or of its axis sizes."""
    shape = mesh.shape if isinstance(mesh, Mesh) else mesh
    return int(np.prod([shape[a] for a in BATCH_AXES]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
