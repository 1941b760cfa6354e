"""grain loader: crops, determinism, exact resume (also via orbax), sharding, corruption."""

import os
import re
import subprocess
import sys

import grain
import numpy as np
import pytest

from matpac_jax.data import demo
from matpac_jax.data import loader
from matpac_jax.data import shards as shard_files
from matpac_jax.data import tfrecord

MEAN, STD = -7.056, 4.193
LENGTHS = [60 + 7 * i for i in range(23)]  # 60..214 frames; crop 100 -> 6 short clips.


def _logmel(i, t):
    """Record i: row 0 holds i, rows 1.. the frame number (exact in float16)."""
    x = np.broadcast_to(np.arange(t, dtype=np.float32), (80, t)).copy()
    x[0] = i
    return x


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    for s in range(3):
        with tfrecord.TFRecordWriter(d / f"data-{s:05d}-of-00003.tfrecord") as w:
            for i in range(s, len(LENGTHS), 3):
                w.write(
                    tfrecord.encode_example(_logmel(i, LENGTHS[i]), f"clip{i:03d}", f"c{i % 4}")
                )
    return d


def _loader(path, **kw):
    args = dict(
        frontend="matpac",
        crop_frames=100,
        batch_size=4,
        seed=0,
        shard_index=0,
        shard_count=1,
        with_ids=True,
    )
    return loader.make_loader(str(path), **{**args, **kw})


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
        assert list(x["id"]) == list(y["id"])


def test_crops_are_normalised_windows_and_short_clips_padded(shards):
    batches = list(_loader(shards, num_epochs=1, batch_size=1, shuffle=False, drop_remainder=False))
    assert len(batches) == len(LENGTHS)
    for b in batches:
        x, i = b["x"][0], int(b["id"][0][4:])
        assert x.shape == (80, 100) and x.dtype == np.float32
        raw = x * STD + MEAN
        t = LENGTHS[i]
        if t >= 100:
            start = int(round(raw[1, 0]))
            np.testing.assert_allclose(raw, _logmel(i, t)[:, start : start + 100], atol=1e-3 * t)
        else:  # Zero-padded in the log domain, then normalised.
            np.testing.assert_allclose(raw[:, :t], _logmel(i, t), atol=1e-3 * t)
            np.testing.assert_allclose(x[:, t:], (0.0 - MEAN) / STD, rtol=1e-6)
    kept = list(
        _loader(shards, num_epochs=1, batch_size=1, short_clips="drop", drop_remainder=False)
    )
    assert sorted(int(b["id"][0][4:]) for b in kept) == [
        i for i, t in enumerate(LENGTHS) if t >= 100
    ]


def test_same_seed_same_batches_and_epochs_reshuffle(shards):
    _same(_take(_loader(shards, seed=3), 8), _take(_loader(shards, seed=3), 8))
    other = _take(_loader(shards, seed=4), 2)
    assert [list(b["id"]) for b in other] != [
        list(b["id"]) for b in _take(_loader(shards, seed=3), 2)
    ]
    ids = [
        i
        for b in _loader(shards, num_epochs=2, batch_size=1, drop_remainder=False)
        for i in b["id"]
    ]
    n = len(LENGTHS)
    assert sorted(ids[:n]) == sorted(ids[n:]) == sorted(f"clip{i:03d}" for i in range(n))
    assert ids[:n] != ids[n:]


def test_exact_resume_from_state(shards):
    reference = _take(_loader(shards, seed=1), 12)  # > 2 epochs of 23 clips with batch 4.
    it = _loader(shards, seed=1)
    _take(it, 7)
    state = it.get_state()
    resumed = _loader(shards, seed=1)
    resumed.set_state(state)
    _same(_take(resumed, 5), reference[7:])


def test_exact_resume_through_orbax(shards, tmp_path):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    reference = _take(_loader(shards, seed=2), 6)
    it = _loader(shards, seed=2)
    _take(it, 4)
    ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    ckpt.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
    fresh = _loader(shards, seed=2)
    restored = ckpt.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(fresh))
    _same(_take(restored, 2), reference[4:])


@pytest.mark.parametrize("count", [2, 3])
def test_process_sharding_covers_each_record_once(shards, count):
    ids = []
    for index in range(count):
        ids += [
            i
            for b in _loader(
                shards,
                num_epochs=1,
                batch_size=1,
                drop_remainder=False,
                shard_index=index,
                shard_count=count,
            )
            for i in b["id"]
        ]
    assert sorted(ids) == sorted(f"clip{i:03d}" for i in range(len(LENGTHS)))


_WORKER_SCRIPT = """
import sys
import numpy as np
from matpac_jax.data import loader

def batches(workers):
    it = loader.make_loader(sys.argv[1], frontend="matpac", crop_frames=100, batch_size=4,
                            seed=5, shard_index=0, shard_count=1, with_ids=True,
                            worker_count=workers)
    got = [next(it) for _ in range(3)]
    getattr(it, "close", lambda: None)()
    return got

if __name__ == "__main__":  # grain's workers start this file again
    for a, b in zip(batches(1), batches(0)):
        np.testing.assert_array_equal(a["x"], b["x"])
        assert list(a["id"]) == list(b["id"])
    print("same")
"""


@pytest.mark.slow
def test_grain_worker_process_gives_same_batches(shards, tmp_path):
    """In a process that never parsed absl's global flags, as every command but
    `main` (finetune, tokenize, the benchmarks): grain's workers need them."""
    script = tmp_path / "workers.py"
    script.write_text(_WORKER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(shards)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["same"], done.stderr[-2000:]


def test_corrupt_shard_names_file_and_offset(shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    path = bad / "data-00000-of-00001.tfrecord"
    path.write_bytes((shards / "data-00000-of-00003.tfrecord").read_bytes())
    index = tfrecord.build_index(path)
    data = bytearray(path.read_bytes())
    off = int(index[2, 0])
    data[off + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(tfrecord.CorruptRecordError, match=f"{path}.*offset {off}"):
        list(_loader(bad, num_epochs=1, shuffle=False, batch_size=1))
    path.write_bytes(bytes(data[: off + 20]))  # Truncated: index cache is stale and rebuilt.
    with pytest.raises(tfrecord.CorruptRecordError, match=f"{path}.*offset {off}.*truncated"):
        _loader(bad)


def test_corrupt_records_skip_drops_logs_counts_and_resumes(shards, tmp_path, caplog):
    """corrupt_records='skip': a flipped byte costs that record only; its slot
    takes the next intact one, it is logged once with file and offset, and the
    count is in the iterator state (so it survives resume)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    path = bad / "data-00000-of-00001.tfrecord"
    path.write_bytes((shards / "data-00000-of-00003.tfrecord").read_bytes())
    off = int(tfrecord.build_index(path)[2, 0])
    data = bytearray(path.read_bytes())
    data[off + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    n = len(tfrecord.build_index(path))  # 8 records, record 2 corrupt
    it = _loader(bad, shuffle=False, batch_size=2, corrupt_records="skip")
    with caplog.at_level("WARNING"):
        epoch = _take(it, n // 2)
    ids = [str(i) for b in epoch for i in b["id"]]
    assert ids == ["clip000", "clip003", "clip009", "clip009", "clip012", "clip015",
                   "clip018", "clip021"]  # clip006 (record 2) -> its neighbour
    assert all(b.keys() == {"x", "id"} for b in epoch)
    assert loader.data_metrics(it) == {"data/corrupt_records": 1.0}
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"skipped (config.data.corrupt_records='skip'): corrupt TFRecord {path} at byte "
        f"offset {off}: data checksum mismatch"]
    state = it.get_state()
    assert state["corrupt_records"] == 1
    _take(it, 2)  # the next epoch meets it again: counted again, not logged again
    assert loader.data_metrics(it) == {"data/corrupt_records": 2.0}
    resumed = _loader(bad, shuffle=False, batch_size=2, corrupt_records="skip")
    resumed.set_state(state)
    assert loader.data_metrics(resumed) == {"data/corrupt_records": 1.0}
    _take(resumed, 2)
    assert loader.data_metrics(resumed) == {"data/corrupt_records": 2.0}
    # A state written by 'stop' (or before the count existed) restores under 'skip'.
    stop = _loader(shards, shuffle=False, batch_size=2)
    _take(stop, 3)
    assert loader.data_metrics(stop) == {}
    skip = _loader(shards, shuffle=False, batch_size=2, corrupt_records="skip")
    skip.set_state(stop.get_state()["pipeline"])
    _same(_take(skip, 2), _take(stop, 2))


@pytest.mark.parametrize("sidecar", [True, False], ids=["with_index_npy", "without"])
def test_damaged_record_header_names_offset_or_is_skipped(shards, tmp_path, caplog, sidecar):
    """A flipped byte in a record's length header; the shard's mtime moves, so
    its index is rebuilt from the headers. 'stop' names file and offset; 'skip'
    makes the damage one index row (the next record found through the
    `.index.npy` prepare wrote, or without it by scanning for the next intact
    record) that is skipped, logged and counted like a bad payload."""
    bad = tmp_path / "bad"
    bad.mkdir()
    path = bad / "data-00000-of-00001.tfrecord"
    path.write_bytes((shards / "data-00000-of-00003.tfrecord").read_bytes())
    index = tfrecord.build_index(path)
    cache = f"{path}.index.npy"
    if sidecar:
        np.save(cache, index)  # as prepare writes it
    off = int(index[2, 0])
    data = bytearray(path.read_bytes())
    data[off + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    if sidecar:  # the shard changed after its index (mtimes can tie within a tick)
        os.utime(path, ns=(os.stat(cache).st_mtime_ns + 10**9,) * 2)
    error = f"corrupt TFRecord {path} at byte offset {off}: length checksum mismatch"
    with pytest.raises(tfrecord.CorruptRecordError, match=f"^{re.escape(error)}$"):
        _loader(bad, corrupt_records="stop")
    it = _loader(bad, shuffle=False, batch_size=1, num_epochs=1, drop_remainder=False,
                 corrupt_records="skip")
    with caplog.at_level("WARNING"):
        ids = [str(b["id"][0]) for b in it]
    assert ids == ["clip000", "clip003", "clip009", "clip009", "clip012", "clip015",
                   "clip018", "clip021"]  # clip006's slot takes its neighbour
    assert loader.data_metrics(it) == {"data/corrupt_records": 1.0}
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"skipped (config.data.corrupt_records='skip'): {error}"]
    np.testing.assert_array_equal(np.load(cache), index)  # one row spans the damage exactly
    with pytest.raises(tfrecord.CorruptRecordError, match=f"^{re.escape(error)}"):  # when read
        list(_loader(bad, shuffle=False, batch_size=1, num_epochs=1))


def test_find_shards_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no \\*.tfrecord shards under {tmp_path}"):
        shard_files.find_shards(tmp_path)


def test_demo_shards_end_to_end(tmp_path):
    shard_dir = demo.ensure_demo_shards(str(tmp_path), "beats", num_clips=8, seed=0)
    mtime = os.path.getmtime(os.path.join(shard_dir, "manifest.json"))
    assert demo.ensure_demo_shards(str(tmp_path), "beats", num_clips=8, seed=0) == shard_dir
    assert os.path.getmtime(os.path.join(shard_dir, "manifest.json")) == mtime
    batch = next(
        loader.make_loader(
            shard_dir,
            frontend="beats",
            crop_frames=608,
            batch_size=4,
            seed=0,
            shard_index=0,
            shard_count=1,
            short_clips="drop",
        )
    )
    assert batch["x"].shape == (4, 608, 128) and np.isfinite(batch["x"]).all()
    assert abs(float(batch["x"].mean())) < 3  # Normalised scale.
    with pytest.raises(ValueError, match="prepared with frontend 'beats'"):
        loader.make_loader(
            shard_dir,
            frontend="m2d",
            crop_frames=608,
            batch_size=4,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    labels = {l.split(",")[1] for l in open(tmp_path / "meta.csv").read().split()[1:]}
    assert labels == set(demo.KINDS)  # music, speech, mixture, drums, noise


def test_verify_crc_once_checks_each_record_on_first_read_only(shards, tmp_path):
    paths = shard_files.find_shards(shards)
    n = len(LENGTHS)
    counts = {}
    for mode in ("once", True, False):
        source = shard_files.ShardSource(paths, verify_crc=mode)
        for _ in range(2):
            for i in range(n):
                source[i]
        counts[mode] = source.crc_checks
    assert counts == {"once": n, True: 2 * n, False: 0}
    # Through the loader (default verify_crc="once"): 3 epochs.
    it = _loader(shards, num_epochs=3, batch_size=1, drop_remainder=False)
    assert len(list(it)) == 3 * n
    with pytest.raises(ValueError, match="verify_crc"):
        shard_files.ShardSource(paths, verify_crc="sometimes")
    # A flipped payload byte is caught on the first read of that record with 'once'.
    bad = tmp_path / "data-00000-of-00001.tfrecord"
    data = bytearray((shards / "data-00000-of-00003.tfrecord").read_bytes())
    index = tfrecord.build_index(str(shards / "data-00000-of-00003.tfrecord"))
    off = int(index[1, 0])
    data[off + 12 + int(index[1, 1]) // 2] ^= 0x01  # Inside the logmel bytes.
    bad.write_bytes(bytes(data))
    source = shard_files.ShardSource([str(bad)], verify_crc="once")
    source[0]
    with pytest.raises(tfrecord.CorruptRecordError, match=f"offset {off}.*data checksum"):
        source[1]
    with pytest.raises(tfrecord.CorruptRecordError, match=f"offset {off}"):
        source[1]  # Still not marked verified.
    assert not source._verified[1] and source._verified[0]
    assert len(shard_files.ShardSource([str(bad)], verify_crc=False)[1]["logmel"])  # Unchecked.


@pytest.mark.parametrize("batch_size", [3, 4])
def test_drop_mode_batches_are_full_and_resume_exactly(shards, batch_size):
    kept = {f"clip{i:03d}" for i, t in enumerate(LENGTHS) if t >= 100}
    reference = _take(_loader(shards, seed=6, short_clips="drop", batch_size=batch_size), 14)
    assert all(b["x"].shape == (batch_size, 80, 100) for b in reference)
    ids = [i for b in reference for i in b["id"]]
    assert set(ids) == kept and sorted(ids[: len(kept)]) == sorted(kept)
    for cut in (1, 5, 9):
        it = _loader(shards, seed=6, short_clips="drop", batch_size=batch_size)
        _take(it, cut)
        resumed = _loader(shards, seed=6, short_clips="drop", batch_size=batch_size)
        resumed.set_state(it.get_state())
        _same(_take(resumed, 14 - cut), reference[cut:])
    last = list(
        _loader(
            shards, num_epochs=1, short_clips="drop", batch_size=batch_size, drop_remainder=False
        )
    )
    assert sum(len(b["id"]) for b in last) == len(kept)


def test_widening_kernel_matches_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((80, 700)) * 4 - 7).astype(np.float16)
    x[0, :8] = [0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504, np.inf, -np.inf]
    for frontend, arr in (
        ("matpac", x),
        ("beats", np.ascontiguousarray(x[:, :128].T.repeat(6, 0))),
    ):
        crop = loader.CropNormalize(frontend, 608, "pad", (MEAN, STD), False)
        fast = crop.random_map({"logmel": arr, "id": "a"}, np.random.default_rng(1))["x"]
        short = crop.random_map(
            {"logmel": arr[:, :300] if crop.time_axis else arr[:300], "id": "a"},
            np.random.default_rng(1),
        )["x"]
        with monkeypatch.context() as m:
            m.setattr(loader, "_numba_widen", lambda: None)
            slow = crop.random_map({"logmel": arr, "id": "a"}, np.random.default_rng(1))["x"]
            short_slow = crop.random_map(
                {"logmel": arr[:, :300] if crop.time_axis else arr[:300], "id": "a"},
                np.random.default_rng(1),
            )["x"]
        np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(short, short_slow, rtol=1e-6, atol=1e-6)
