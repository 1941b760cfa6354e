"""Write PyTorch `.pt` files without PyTorch, in the format `torch.save` writes.

The file is a zip (stored, not compressed) of `<stem>/data.pkl`, a protocol-2
pickle whose tensors are `torch._utils._rebuild_tensor_v2` calls on storages
named by persistent ids, plus one raw little-endian `<stem>/data/<key>` per
tensor, `byteorder`, `version` and `.data/serialization_id`; each record's
bytes start on a 64-byte boundary as torch aligns them (for `mmap=True`).

The pickle is emitted opcode by opcode from plain values only (dict,
OrderedDict, list, tuple, str, int, float, bool, None, numpy arrays), so the
file loads with `torch.load(path, weights_only=True)` and with our own reader
(conversion/torch_pickle.py). Anything else is a TypeError naming its path in
the object: no classes are pickled.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import struct
import zipfile
from typing import Any

import numpy as np

from matpac_jax import storage

_STORAGES = {
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_ALIGN = 64


def _storage_name(dtype: np.dtype) -> str:
    if dtype.name == "bfloat16":
        return "BFloat16Storage"
    if dtype not in _STORAGES:
        raise TypeError(f"no torch storage for numpy dtype {dtype}")
    return _STORAGES[dtype]


class _Emitter:
    """Protocol-2 pickle opcodes for the values a checkpoint holds."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.storages: list[np.ndarray] = []

    def _global(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2 ** 31) <= v < 2 ** 31:
            self.out += b"J" + struct.pack("<i", v)
        else:  # LONG1: little-endian two's complement
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def _str(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def _tuple(self, items, where: str) -> None:
        self.out += b"("
        for i, x in enumerate(items):
            self.value(x, f"{where}[{i}]")
        self.out += b"t"

    def _ordered_dict(self) -> None:
        self._global("collections", "OrderedDict")
        self.out += b")R"

    def _tensor(self, a: np.ndarray) -> None:
        a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        key = str(len(self.storages))
        self.storages.append(a)
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # args tuple, then the persistent id tuple
        self._str("storage")
        self._global("torch", _storage_name(a.dtype))
        self._str(key)
        self._str("cpu")
        self._int(a.size)
        self.out += b"tQ"
        self._int(0)  # storage offset
        strides = [int(s // a.itemsize) for s in a.strides] if a.size else [1] * a.ndim
        self._tuple([int(d) for d in a.shape], "size")
        self._tuple(strides, "stride")
        self.out += b"\x89"  # requires_grad=False
        self._ordered_dict()  # backward hooks
        self.out += b"tR"

    def value(self, v: Any, where: str = "obj") -> None:
        if isinstance(v, (np.ndarray, np.generic)) or type(v).__module__.startswith("jax"):
            self._tensor(np.asarray(v))
        elif v is None:
            self.out += b"N"
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            self._int(v)
        elif isinstance(v, float):
            self.out += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            self._str(v)
        elif isinstance(v, (dict, collections.OrderedDict)):
            if isinstance(v, collections.OrderedDict):
                self._ordered_dict()
            else:
                self.out += b"}"
            if v:
                self.out += b"("
                for k, x in v.items():
                    if not isinstance(k, (str, int)):
                        raise TypeError(f"{where}: dict key {k!r} is not a str or int")
                    self.value(k, where)
                    self.value(x, f"{where}[{k!r}]")
                self.out += b"u"
        elif isinstance(v, list):
            self.out += b"]"
            if v:
                self.out += b"("
                for i, x in enumerate(v):
                    self.value(x, f"{where}[{i}]")
                self.out += b"e"
        elif isinstance(v, tuple):
            self._tuple(v, where)
        else:
            raise TypeError(f"{where}: cannot write a {type(v).__name__} to a weights-only "
                            ".pt file (plain values and arrays only)")


def _aligned(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Store `data` so that it starts on a 64-byte boundary in the file
    (padding in the local header's extra field, id 'FB', as torch does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = zf.fp.tell() + 30 + len(name.encode())
    pad = (-(start + 4)) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save(obj: Any, path: str | os.PathLike) -> str:
    """Write `obj` (plain containers of arrays) as a torch zip checkpoint; returns the path."""
    path = os.fspath(path)
    emitter = _Emitter()
    emitter.value(obj)
    emitter.out += b"."
    pickle_bytes = bytes(emitter.out)
    stem = os.path.basename(path).split(".")[0] or "archive"
    digest = hashlib.sha1(pickle_bytes)
    for a in emitter.storages:
        digest.update(a.tobytes())
    serialization_id = str(int(digest.hexdigest(), 16))[:40].rjust(40, "0")
    path = storage.check(path, "--out")
    # A seekable file for zipfile (the alignment padding needs positions):
    # the local file itself, or memory for an object uploaded whole.
    buf = io.BytesIO() if storage.is_remote(path) else None
    with storage.atomic_write(path, "wb") as out:  # never half-written under the final name
        with zipfile.ZipFile(buf or out, "w", zipfile.ZIP_STORED) as zf:
            _aligned(zf, f"{stem}/data.pkl", pickle_bytes)
            _aligned(zf, f"{stem}/byteorder", b"little")
            for key, a in enumerate(emitter.storages):
                _aligned(zf, f"{stem}/data/{key}", a.astype(a.dtype.newbyteorder("<")).tobytes())
            _aligned(zf, f"{stem}/version", b"3\n")
            _aligned(zf, f"{stem}/.data/serialization_id", serialization_id.encode())
        if buf is not None:
            out.write(buf.getvalue())
    return path
