"""TFRecord I/O without TensorFlow: masked CRC32C, atomic writer, pread reader.

A TFRecord file is a sequence of records:
  uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
CRC32C (Castagnoli) comes from google-crc32c (the C library, with its own
pure-Python fallback where no wheel fits).
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import google_crc32c
import numpy as np
# At import, not on first use: importing tensorflow_datasets swaps
# `builtins.__import__` process-wide for moments (etils' lazy_imports). Done
# first in a grain read thread, it handed imports running meanwhile in other
# threads a placeholder: "'LazyModule' object is not callable" in orbax's
# restore under load.
from tensorflow_datasets.proto import tf_example_pb2

from matpac_jax import errors, storage

_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(errors.DataError, IOError):
    """A record whose framing or checksum is wrong; names the file and offset."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path, self.offset, self.reason = path, offset, reason
        super().__init__(f"corrupt TFRecord {path} at byte offset {offset}: {reason}")


def crc32c(data: bytes) -> int:
    """Plain CRC32C (init and final xor 0xFFFFFFFF) of bytes-like data."""
    return google_crc32c.value(bytes(data) if not isinstance(data, bytes) else data)


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
    """Writes a shard that never looks done half-written (`storage.atomic_write`:
    `path + '.tmp'` renamed on close locally; on gs:// the object appears on close)."""

    def __init__(self, path: str | os.PathLike):
        self.path = storage.check(path, "shard")
        self._writing = storage.atomic_write(self.path, "wb")
        self._f = self._writing.__enter__()
        self._end = 0
        self.offsets: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.offsets.append((self._end, len(data)))
        record = frame_record(data)
        self._f.write(record)
        self._end += len(record)

    def close(self) -> None:
        if self._writing is not None:
            self._writing.__exit__(None, None, None)
            self._writing = None

    def abort(self) -> None:
        """Drops the partial file (on error)."""
        if self._writing is not None:
            self._writing.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._writing = None

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
    """Yields every record of a file (local or gs://) in order, checking both CRCs."""
    path = storage.check(path, "TFRecord file")
    with storage.open_file(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            length = _check_header(path, offset, header)
            yield _check_payload(path, offset, length, f.read(length + 4), verify)
            offset += 16 + length


def build_index(path: str | os.PathLike, resync: bool = False,
                hint: np.ndarray | None = None) -> np.ndarray:
    """(num_records, 2) int64 array of (offset, length) from the headers only.

    A bad header (or a record past the end of the file) raises, naming the
    offset; with `resync` it becomes a row spanning the damage up to the next
    intact record instead (reading that row fails, naming its offset), so the
    records after it stay readable. `hint`: record offsets known before the
    damage (the shard's `.index.npy`), tried before scanning byte by byte."""
    name = storage.check(path, "shard")
    # Headers are scattered through the file: a gs:// shard is read whole once.
    with storage.local_file(name) as local, open(local, "rb") as f:
        return _index(f.fileno(), os.path.getsize(local), name, resync, hint)


def _index(fd: int, size: int, path: str, resync: bool, hint: np.ndarray | None) -> np.ndarray:
    rows = []
    offset = 0
    while offset < size:
        try:
            length = _check_header(path, offset, os.pread(fd, 12, offset))
            if offset + 16 + length > size:
                raise CorruptRecordError(
                    path,
                    offset,
                    f"truncated record (needs {16 + length} bytes, file has {size - offset})",
                )
        except CorruptRecordError:
            if not resync:
                raise
            end = _next_intact(fd, offset, size, hint)
            rows.append((offset, end - offset - 16))  # 16 + length spans the damage
            offset = end
            continue
        rows.append((offset, length))
        offset += 16 + length
    return np.asarray(rows, np.int64).reshape(-1, 2)


def _intact_at(fd: int, offset: int, size: int) -> bool:
    """Whether a whole record starts at `offset`: length CRC, fits, data CRC."""
    try:
        length = _check_header("", offset, os.pread(fd, 12, offset))
        if offset + 16 + length > size:
            return False
        _check_payload("", offset, length, os.pread(fd, length + 4, offset + 12), True)
    except CorruptRecordError:
        return False
    return True


def _next_intact(fd: int, damaged: int, size: int, hint: np.ndarray | None) -> int:
    """Offset of the first intact record after `damaged`, else `size`: the
    hinted next offset if intact, else a scan of the bytes after it."""
    if hint is not None:
        later = hint[hint > damaged]
        if len(later) and _intact_at(fd, int(later[0]), size):
            return int(later[0])
    pos = damaged + 1
    while pos + 16 <= size:
        chunk = np.frombuffer(os.pread(fd, _SCAN + 11, pos), np.uint8)
        n = len(chunk) - 11
        high = chunk[4:4 + n] | chunk[5:5 + n] | chunk[6:6 + n] | chunk[7:7 + n]
        for i in np.flatnonzero(high == 0):  # a length below 4 GiB: upper 4 bytes zero
            if _intact_at(fd, pos + int(i), size):
                return pos + int(i)
        pos += n
    return size


_SCAN = 1 << 20  # bytes per read when scanning for the next record


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
    return parse_framed(os.pread(fd, 16 + length, offset), name, offset, length, verify,
                        lambda: os.fstat(fd).st_size)


def parse_framed(buf: bytes, name: str, offset: int, length: int, verify: bool,
                 file_size=None) -> bytes:
    """The payload of one framed record read from `offset` (header, data, CRC),
    checked against the index's `length`; `file_size()` (if given) tells a
    truncated file from a stale index."""
    actual = _check_header(name, offset, buf[:12])
    if actual != length:
        left = file_size() - offset if file_size else len(buf)
        raise CorruptRecordError(name, offset, f"truncated record (needs {16 + actual} bytes, "
                                 f"file has {left})" if 16 + actual > left else
                                 "length differs from the index (stale index?)")
    return _check_payload(name, offset, length, buf[12:], verify)


def encode_example(
    logmel: np.ndarray, id: str, label: str | None = None
) -> bytes:  # pylint: disable=redefined-builtin
    """tf.train.Example with `logmel` (float16 LE row-major bytes), `shape`, `id`, `label`."""
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
