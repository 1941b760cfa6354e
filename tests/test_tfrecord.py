"""TFRecord framing, CRC32C vectors, round trips and corruption errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from matpac_jax.data import tfrecord as tfr

# b"hello tfrecord" framed by hand from the TFRecord spec (uint64 length,
# masked CRC32C of the length, data, masked CRC32C of the data).
KNOWN_RECORD = bytes.fromhex("0e00000000000000c5e5693f68656c6c6f2074667265636f72649f5b7622")


def _crc_bytewise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
    assert tfr.crc32c(b"123456789") == 0xE3069283
    assert tfr.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert tfr.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfr.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfr.crc32c(b"") == 0


@pytest.mark.parametrize("n", [0, 3, 4, 255, 256, 257, 1000, 4099, 20011])
def test_crc32c_matches_bytewise_definition(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert tfr.crc32c(data) == _crc_bytewise(data)
    assert tfr.crc32c(memoryview(data)) == tfr.crc32c(bytearray(data)) == _crc_bytewise(data)


def test_masked_crc_definition():
    crc = tfr.crc32c(b"abc")
    assert (
        tfr.masked_crc32c(b"abc")
        == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    )


def test_known_good_record(tmp_path):
    assert tfr.frame_record(b"hello tfrecord") == KNOWN_RECORD
    path = tmp_path / "known.tfrecord"
    path.write_bytes(KNOWN_RECORD * 2)
    assert list(tfr.read_records(path)) == [b"hello tfrecord"] * 2
    np.testing.assert_array_equal(tfr.build_index(path), [[0, 14], [30, 14]])
    assert tfr.read_record_at(str(path), 30, 14) == b"hello tfrecord"


def _write_examples(path, n, t0=600):
    rng = np.random.default_rng(0)
    mels = [rng.normal(-5, 3, (80, t0 + 7 * i)).astype(np.float32) for i in range(n)]
    with tfr.TFRecordWriter(path) as w:
        assert os.path.exists(str(path) + ".tmp") and not os.path.exists(path)
        for i, m in enumerate(mels):
            w.write(tfr.encode_example(m, f"clip{i}", None if i % 2 else f"lab{i}"))
    return mels


def test_example_round_trip(tmp_path):
    path = tmp_path / "a.tfrecord"
    mels = _write_examples(path, 4)
    assert not os.path.exists(str(path) + ".tmp")
    records = list(tfr.read_records(path))
    index = tfr.build_index(path)
    assert len(records) == len(index) == 4
    with open(path, "rb") as f:
        for i, (m, rec, (off, length)) in enumerate(zip(mels, records, index)):
            assert tfr.read_record_at(f.fileno(), int(off), int(length)) == rec
            ex = tfr.decode_example(rec)
            assert ex["shape"] == m.shape and ex["logmel"].dtype == np.float16
            np.testing.assert_array_equal(ex["logmel"], m.astype(np.float16))
            assert ex["id"] == f"clip{i}"
            assert ex.get("label") == (None if i % 2 else f"lab{i}")


def test_first_decode_imports_nothing():
    """tensorflow_datasets comes in with the module: its import swaps
    `builtins.__import__` process-wide for moments (etils' lazy_imports); done
    first in a grain read thread, it broke imports in orbax's restore under load."""
    code = ("import sys, numpy as np; from matpac_jax.data import tfrecord as t; "
            "m = set(sys.modules); t.decode_example(t.encode_example(np.zeros((2, 3)), 'a')); "
            "print(sorted(set(sys.modules) - m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_writer_abort_leaves_nothing(tmp_path):
    path = tmp_path / "b.tfrecord"
    with pytest.raises(RuntimeError):
        with tfr.TFRecordWriter(path) as w:
            w.write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_corruption_names_file_and_offset(tmp_path):
    path = tmp_path / "c.tfrecord"
    _write_examples(path, 3)
    index = tfr.build_index(path)
    data = bytearray(path.read_bytes())
    off1 = int(index[1, 0])
    data[off1 + 12 + 100] ^= 0x40  # Flip a payload byte of record 1.
    path.write_bytes(bytes(data))
    with pytest.raises(tfr.CorruptRecordError, match=f"{path}.*offset {off1}.*data checksum"):
        list(tfr.read_records(path))
    with pytest.raises(tfr.CorruptRecordError, match=f"offset {off1}"):
        tfr.read_record_at(str(path), off1, int(index[1, 1]))
    # Truncated in the middle of the last record.
    off2 = int(index[2, 0])
    path.write_bytes(bytes(data[: off2 + 50]))
    with pytest.raises(tfr.CorruptRecordError, match=f"{path}.*offset {off2}.*truncated"):
        tfr.build_index(path)
    with pytest.raises(tfr.CorruptRecordError, match=f"offset {off2}.*truncated"):
        list(tfr.read_records(path, verify=False))
    # Resynchronised (corrupt_records='skip'): the damage is one row that fails when read.
    assert tfr.build_index(path, resync=True).tolist() == [*index[:2].tolist(), [off2, 34]]
    with pytest.raises(tfr.CorruptRecordError, match=f"offset {off2}.*truncated record "
                                                     r"\(needs \d+ bytes, file has 50\)"):
        tfr.read_record_at(str(path), off2, 34)
    # Bad length checksum.
    data[4] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(tfr.CorruptRecordError, match="offset 0.*length checksum"):
        tfr.build_index(path)
    # Record 1 (bad payload) is not an intact record to resume at: the span takes it too.
    assert tfr.build_index(path, resync=True).tolist() == [[0, off2 - 16], index[2].tolist()]
