"""Read PyTorch `.pt`/`.pth` files without PyTorch.

A modern torch checkpoint is a zip holding `<name>/data.pkl` (a pickle whose
tensors refer to storages by key) and `<name>/data/<key>` (raw little-endian
storage bytes). We unpickle with an allow-list of the classes such files need
(tensor rebuilds, storages, OrderedDict, argparse.Namespace, a few builtins)
and never run arbitrary code: any other global raises `UnsafeCheckpointError`.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from matpac_jax import errors, storage

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# torch >= 2 may pickle `torch.<dtype>` objects with UntypedStorage.
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": "bfloat16", "int64": np.int64, "int32": np.int32,
    "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class UnsafeCheckpointError(errors.CheckpointError, pickle.UnpicklingError):
    """The pickle asks for a class outside the allow-list."""


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _TorchDtype:
    def __init__(self, name: str):
        self.dtype = _TORCH_DTYPES[name]


def _np_dtype(dtype):
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2: view `storage` with size/stride."""
    size, stride = tuple(size), tuple(stride)
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * itemsize for s in stride]
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._zf, self._prefix, self._path = zf, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name)
        if module == "torch.storage" and name == "UntypedStorage":
            return _StorageType(np.uint8)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "argparse" and name == "Namespace":
            return argparse.Namespace
        if module == "builtins" and name in ("set", "frozenset", "slice", "complex"):
            return getattr(__import__("builtins"), name)
        if module == "numpy.core.multiarray" and name == "scalar" or (
            module == "numpy._core.multiarray" and name == "scalar"
        ):
            return _numpy_scalar
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to unpickle {module}.{name} (not a class a "
            "checkpoint needs; arbitrary code is never run)"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent id {kind!r}")
        dtype = _np_dtype(storage_type.dtype)
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}data/{key}")
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            if arr.size != numel:
                raise pickle.UnpicklingError(
                    f"{self._path}: storage {key} holds {arr.size} items, pickle says {numel}"
                )
            self._storages[key] = arr.astype(dtype, copy=False)
        return self._storages[key]


def _numpy_scalar(dtype, data):
    return np.frombuffer(data, dtype=dtype)[0]


def load(path: str | os.PathLike) -> Any:
    """Load a torch zip checkpoint; tensors come back as numpy arrays."""
    path = storage.check(path, "checkpoint")
    if not storage.isfile(path):
        raise errors.CheckpointError(f"checkpoint not found: {path}")
    source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path
    if not zipfile.is_zipfile(source):
        raise errors.CheckpointError(
            f"{path}: not a zip-format torch checkpoint (legacy pre-1.6 torch.save "
            "files are not supported; re-save with a recent torch)"
        )
    with zipfile.ZipFile(source) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise errors.CheckpointError(f"{path}: expected one data.pkl in the zip, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise errors.CheckpointError(f"{path}: big-endian checkpoints are not supported")
        with zf.open(pkl[0]) as f:
            return _Unpickler(f, zf, prefix, path).load()
