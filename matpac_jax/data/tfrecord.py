"""TFRecord I/O without TensorFlow: masked CRC32C, atomic writer, pread reader.

A TFRecord file is a sequence of records:
  uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
CRC32C (Castagnoli) has no hardware path in numpy. When numba is importable (it
is: librosa depends on it) a JIT slicing-by-8 loop does ~2 GB/s (~80 us for a
160 KB record). Without numba (or with MATPAC_NO_NUMBA=1) it is computed on many
chunks of the record in lockstep (slicing-by-4 tables) and the chunk CRCs are
combined with GF(2) "append L zero bytes" matrices in a log-depth tree (~1 ms
for 160 KB).
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Iterator

import numpy as np

_POLY = 0x82F63B78  # CRC32C, reflected.
_MASK_DELTA = 0xA282EAD8
_WORDS_PER_CHUNK = 16  # 64-byte chunks processed in lockstep.
_CHUNK = 4 * _WORDS_PER_CHUNK


class CorruptRecordError(IOError):
    """A record whose framing or checksum is wrong; names the file and offset."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path, self.offset, self.reason = path, offset, reason
        super().__init__(f"corrupt TFRecord {path} at byte offset {offset}: {reason}")


def _make_tables() -> np.ndarray:
    t0 = np.zeros(256, np.uint64)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t0[i] = c
    tables = [t0.astype(np.uint32)]
    for _ in range(3):
        prev = tables[-1]
        tables.append((prev >> np.uint32(8)) ^ t0.astype(np.uint32)[prev & np.uint32(0xFF)])
    return np.stack(tables)


_TABLES = _make_tables()
_T0_LIST = [int(v) for v in _TABLES[0]]


def _crc_small(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Byte-at-a-time register update (for short inputs); returns the register."""
    for b in data:
        crc = _T0_LIST[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(cols: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Applies the GF(2) matrix with columns `cols` (32,) to uint32 vectors `v`."""
    bits = (v[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return np.bitwise_xor.reduce(bits * cols[None, :], axis=1)


@functools.lru_cache(maxsize=None)
def _zeros_tables(level: int) -> np.ndarray:
    """_zeros_operator(level) as 4 byte-indexed tables (fast to apply)."""
    cols = _zeros_operator(level)
    byte = np.arange(256, dtype=np.uint32)
    return np.stack([_apply(cols, byte << np.uint32(8 * k)) for k in range(4)])


def _apply_tables(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    return t[0][v & 0xFF] ^ t[1][(v >> 8) & 0xFF] ^ t[2][(v >> 16) & 0xFF] ^ t[3][v >> 24]


@functools.lru_cache(maxsize=None)
def _zeros_operator(level: int) -> np.ndarray:
    """Columns of the operator "feed _CHUNK * 2**level zero bytes" (register, init 0)."""
    if level < 0:  # One zero byte.
        basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
        return _TABLES[0][basis & np.uint32(0xFF)] ^ (basis >> np.uint32(8))
    if level == 0:
        m = np.uint32(1) << np.arange(32, dtype=np.uint32)
        for _ in range(_CHUNK):
            m = _apply(_zeros_operator(-1), m)
        return m
    prev = _zeros_operator(level - 1)
    return _apply(prev, prev)


@functools.lru_cache(maxsize=None)
def _numba_crc():
    """The numba CRC32C kernel, or None (numba missing, or MATPAC_NO_NUMBA=1)."""
    if os.environ.get("MATPAC_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        import numba
    except ImportError:
        return None
    tables = np.zeros((8, 256), np.uint32)
    tables[0] = _TABLES[0]
    for k in range(1, 8):
        tables[k] = (tables[k - 1] >> np.uint32(8)) ^ _TABLES[0][tables[k - 1] & np.uint32(0xFF)]

    def kernel(buf, t):  # Slicing-by-8 over little-endian word pairs.
        crc = np.uint32(0xFFFFFFFF)
        n = buf.size
        m = n // 8
        w = buf[: m * 8].view(np.uint32)
        for j in range(m):
            a = crc ^ w[2 * j]
            b = w[2 * j + 1]
            crc = (
                t[7, a & 0xFF]
                ^ t[6, (a >> 8) & 0xFF]
                ^ t[5, (a >> 16) & 0xFF]
                ^ t[4, a >> 24]
                ^ t[3, b & 0xFF]
                ^ t[2, (b >> 8) & 0xFF]
                ^ t[1, (b >> 16) & 0xFF]
                ^ t[0, b >> 24]
            )
        for i in range(m * 8, n):
            crc = t[0, (crc ^ buf[i]) & 0xFF] ^ (crc >> 8)
        return crc ^ np.uint32(0xFFFFFFFF)

    try:
        jitted = numba.njit(nogil=True, cache=True)(kernel)
    except Exception:  # no writable cache location
        jitted = numba.njit(nogil=True)(kernel)
    if np.little_endian:
        return lambda data: int(jitted(np.frombuffer(data, np.uint8), tables))
    return None


def crc32c(data: bytes) -> int:
    """Plain CRC32C (init and final xor 0xFFFFFFFF) of bytes-like data."""
    if len(data) >= 4 * _CHUNK:
        fast = _numba_crc()
        if fast is not None:
            return fast(data)
    return crc32c_numpy(data)


def crc32c_numpy(data: bytes) -> int:
    """crc32c without numba (numpy lockstep chunks + GF(2) combine)."""
    n = len(data)
    if n < 4 * _CHUNK:
        return _crc_small(bytes(data)) ^ 0xFFFFFFFF
    num_chunks = -(-n // _CHUNK)
    buf = np.zeros(num_chunks * _CHUNK, np.uint8)
    # Leading zeros leave an init-0 register at 0; init 0xFFFFFFFF is the same as
    # complementing the first 4 message bytes with init 0.
    start = buf.size - n
    buf[start:] = np.frombuffer(data, np.uint8)
    buf[start : start + 4] ^= 0xFF
    words = buf.view("<u4").reshape(num_chunks, _WORDS_PER_CHUNK).T.astype(np.uint32)
    crc = np.zeros(num_chunks, np.uint32)
    for w in words:
        crc = _apply_tables(_TABLES[::-1], crc ^ w)
    level = 0
    while crc.size > 1:
        if crc.size % 2:  # A leading zero chunk has CRC 0 and changes nothing.
            crc = np.concatenate([np.zeros(1, np.uint32), crc])
        crc = _apply_tables(_zeros_tables(level), crc[0::2]) ^ crc[1::2]
        level += 1
    return int(crc[0]) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the payload, the payload's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


class TFRecordWriter:
    """Writes `path + '.tmp'` and renames it on close: a partial shard never looks done."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tmp = self.path + ".tmp"
        self._f = open(self._tmp, "wb")
        self.offsets: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.offsets.append((self._f.tell(), len(data)))
        self._f.write(frame_record(data))

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drops the partial file (on error)."""
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_header(path: str, offset: int, header: bytes) -> int:
    if len(header) < 12:
        raise CorruptRecordError(path, offset, f"truncated header ({len(header)} of 12 bytes)")
    (length,) = struct.unpack("<Q", header[:8])
    (crc,) = struct.unpack("<I", header[8:12])
    if masked_crc32c(header[:8]) != crc:
        raise CorruptRecordError(path, offset, "length checksum mismatch")
    return length


def _check_payload(path: str, offset: int, length: int, body: bytes, verify: bool) -> bytes:
    if len(body) < length + 4:
        raise CorruptRecordError(
            path,
            offset,
            f"truncated record (expected {length + 4} bytes after header, got {len(body)})",
        )
    data = body[:length]
    if verify:
        (crc,) = struct.unpack("<I", body[length : length + 4])
        if masked_crc32c(data) != crc:
            raise CorruptRecordError(path, offset, "data checksum mismatch")
    return data


def read_records(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """Yields every record of a file in order, checking both CRCs."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            length = _check_header(path, offset, header)
            yield _check_payload(path, offset, length, f.read(length + 4), verify)
            offset += 16 + length


def build_index(path: str | os.PathLike) -> np.ndarray:
    """(num_records, 2) int64 array of (offset, length) from the headers only."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    rows = []
    with open(path, "rb") as f:
        fd = f.fileno()
        offset = 0
        while offset < size:
            length = _check_header(path, offset, os.pread(fd, 12, offset))
            if offset + 16 + length > size:
                raise CorruptRecordError(
                    path,
                    offset,
                    f"truncated record (needs {16 + length} bytes, file has {size - offset})",
                )
            rows.append((offset, length))
            offset += 16 + length
    return np.asarray(rows, np.int64).reshape(-1, 2)


def read_record_at(
    fd_or_path: int | str | os.PathLike,
    offset: int,
    length: int,
    verify: bool = True,
    name: str | None = None,
) -> bytes:
    """Reads one record with os.pread (no shared file position: thread-safe)."""
    if isinstance(fd_or_path, int):
        return _pread_record(fd_or_path, offset, length, verify, name or f"fd {fd_or_path}")
    with open(fd_or_path, "rb") as f:
        return _pread_record(f.fileno(), offset, length, verify, name or os.fspath(fd_or_path))


def _pread_record(fd: int, offset: int, length: int, verify: bool, name: str) -> bytes:
    buf = os.pread(fd, 16 + length, offset)
    if _check_header(name, offset, buf[:12]) != length:
        raise CorruptRecordError(name, offset, "length differs from the index (stale index?)")
    return _check_payload(name, offset, length, buf[12:], verify)


def encode_example(
    logmel: np.ndarray, id: str, label: str | None = None
) -> bytes:  # pylint: disable=redefined-builtin
    """tf.train.Example with `logmel` (float16 LE row-major bytes), `shape`, `id`, `label`."""
    from tensorflow_datasets.proto import tf_example_pb2

    ex = tf_example_pb2.Example()
    feat = ex.features.feature
    feat["logmel"].bytes_list.value.append(np.ascontiguousarray(logmel, dtype="<f2").tobytes())
    feat["shape"].int64_list.value.extend(int(s) for s in logmel.shape)
    feat["id"].bytes_list.value.append(id.encode("utf-8"))
    if label is not None:
        feat["label"].bytes_list.value.append(label.encode("utf-8"))
    return ex.SerializeToString()


def decode_example(data: bytes) -> dict:
    """Inverse of encode_example: {'logmel': float16 array, 'shape', 'id', 'label'?}."""
    from tensorflow_datasets.proto import tf_example_pb2

    ex = tf_example_pb2.Example.FromString(data)
    feat = ex.features.feature
    for key in ("logmel", "shape", "id"):
        if key not in feat:
            raise KeyError(f"tf.train.Example lacks feature {key!r}")
    shape = tuple(feat["shape"].int64_list.value)
    out = {
        "logmel": np.frombuffer(feat["logmel"].bytes_list.value[0], "<f2").reshape(shape),
        "shape": shape,
        "id": feat["id"].bytes_list.value[0].decode("utf-8"),
    }
    if "label" in feat:
        out["label"] = feat["label"].bytes_list.value[0].decode("utf-8")
    return out
