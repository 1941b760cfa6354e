"""Shard writer on real files: bad inputs, resume, worker split, CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from matpac_jax.data import audio
from matpac_jax.data import frontends
from matpac_jax.data import prepare
from matpac_jax.data import tfrecord

SR = 16000


def _tone(seconds, f=440.0):
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.fixture()
def audio_dir(tmp_path, datasets_dir):
    """4 real FLACs, 4 synthetic good clips (incl. silent, 44.1 kHz stereo) and 5 bad files."""
    d = tmp_path / "in"
    (d / "real").mkdir(parents=True)
    for src in (
        sorted((datasets_dir / "instruments_tim" / "audio").glob("*.flac"))[:2]
        + sorted((datasets_dir / "keywords_digits" / "audio").glob("*.flac"))[:2]
    ):
        shutil.copy(src, d / "real" / src.name)
    sf.write(d / "tone.wav", _tone(1.5), SR)
    sf.write(d / "tone.flac", _tone(1.0, 880), SR)
    sf.write(d / "silent.wav", np.zeros(SR, np.float32), SR)
    stereo = np.stack([_tone(1.2 * 44100 / SR), _tone(1.2 * 44100 / SR, 660)], 1)
    sf.write(d / "stereo44k.flac", stereo, 44100)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio\n" * 20)
    good = (d / "tone.flac").read_bytes()
    (d / "truncated.flac").write_bytes(good[: len(good) // 3])
    nan = _tone(1.0)
    nan[100:200] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "short.wav", _tone(0.01), SR)  # 160 samples < one 400-sample window.
    return d


BAD = {"empty.wav", "text.wav", "truncated.flac", "nan.wav", "short.wav"}


def _read_all(out):
    recs = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for r in tfrecord.read_records(shard):
            ex = tfrecord.decode_example(r)
            recs[ex["id"]] = ex
    return recs


def test_load_audio_resamples_and_mixes(audio_dir):
    wave = audio.load_audio(audio_dir / "stereo44k.flac")
    assert wave.dtype == np.float32 and wave.ndim == 1 and abs(wave.size - 1.2 * SR) <= 2
    with pytest.raises(audio.AudioDecodeError, match="nan.wav.*NaN"):
        audio.load_audio(audio_dir / "nan.wav")
    with pytest.raises(audio.AudioDecodeError, match="empty.wav"):
        audio.load_audio(audio_dir / "empty.wav")


def test_prepare_folder_with_bad_inputs(audio_dir, tmp_path, caplog):
    out = tmp_path / "out"
    m = prepare.prepare(str(audio_dir), str(out), "matpac", num_shards=2)
    assert {os.path.basename(s["file"]) for s in m["skipped"]} == BAD
    assert all(s["reason"] for s in m["skipped"])
    assert sum("skipped" in r.message for r in caplog.records) == len(BAD)
    recs = _read_all(out)
    assert set(recs) == {"real/" + p.name for p in (audio_dir / "real").iterdir()} | {
        "tone.wav",
        "tone.flac",
        "silent.wav",
        "stereo44k.flac",
    }
    assert m["num_examples"] == len(recs) == 8 and len(m["shards"]) == 2
    assert m["num_frames"] == sum(r["shape"][1] for r in recs.values())
    # Stored values are the front end's log-mel in float16.
    ref = frontends.matpac_logmel(audio.load_audio(audio_dir / "tone.wav"))
    np.testing.assert_array_equal(recs["tone.wav"]["logmel"], ref.astype(np.float16))
    assert recs["silent.wav"]["logmel"].max() == np.float16(np.log(np.float32(frontends.LOG_EPS)))
    assert json.loads((out / "manifest.json").read_text())["frontend"] == "matpac"


@pytest.mark.slow
def test_prepare_csv_labels_and_cli(datasets_dir, tmp_path):
    src = datasets_dir / "keywords_digits"
    rows = (src / "meta.csv").read_text().splitlines()
    csv_path = tmp_path / "meta.csv"
    (tmp_path / "audio").mkdir()
    for row in rows[1:7]:
        shutil.copy(src / row.split(",")[0], tmp_path / "audio")
    csv_path.write_text("\n".join(rows[:7]) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "matpac_jax.data.prepare",
            "--input",
            str(csv_path),
            "--output",
            str(out),
            "--frontend",
            "beats",
            "--name",
            "kw",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    recs = _read_all(out)
    assert len(recs) == 6 and (out / "kw-00000-of-00001.tfrecord").exists()
    first = rows[1].split(",")
    assert recs[first[0]]["label"] == first[1]
    assert recs[first[0]]["shape"] == (98, 128)  # BEATs layout (T, 128).
    for args, msg in [
        (["--input", str(tmp_path / "nope"), "--frontend", "m2d"], "no such folder"),
        (["--input", str(csv_path), "--frontend", "mfcc"], "--frontend"),
    ]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "matpac_jax.data.prepare",
                "--output",
                str(tmp_path / "o2"),
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode != 0 and msg in proc.stderr
    with pytest.raises(ValueError, match="unknown frontend"):
        prepare.prepare(str(csv_path), str(tmp_path / "o3"), "mfcc")


def test_resume_keeps_finished_shards(audio_dir, tmp_path):
    out = tmp_path / "out"
    m1 = prepare.prepare(str(audio_dir), str(out), "m2d", num_shards=3)
    shards = sorted(out.glob("*.tfrecord"))
    mtimes = {s: s.stat().st_mtime_ns for s in shards}
    # Simulate a crash mid-shard: shard 1 lost, a half-written .tmp left behind.
    os.remove(shards[1])
    os.remove(str(shards[1]) + ".json")
    (out / (shards[1].name + ".tmp")).write_bytes(b"partial")
    m2 = prepare.prepare(str(audio_dir), str(out), "m2d", num_shards=3)
    assert shards[0].stat().st_mtime_ns == mtimes[shards[0]]
    assert shards[2].stat().st_mtime_ns == mtimes[shards[2]]
    assert shards[1].exists() and not (out / (shards[1].name + ".tmp")).exists()
    assert m2["num_examples"] == m1["num_examples"] and len(m2["skipped"]) == len(m1["skipped"])
    assert len(list(tfrecord.read_records(shards[1]))) == m1["shards"][1]["num_examples"]
    with pytest.raises(ValueError, match="holds shards of another front end"):
        prepare.prepare(str(audio_dir), str(out), "matpac", num_shards=3)


def test_worker_split_is_disjoint_and_complete(audio_dir, tmp_path):
    out = tmp_path / "out"
    m0 = prepare.prepare(
        str(audio_dir), str(out), "matpac", num_shards=4, worker_index=0, num_workers=2
    )
    m1 = prepare.prepare(
        str(audio_dir), str(out), "matpac", num_shards=4, worker_index=1, num_workers=2, workers=2
    )
    f0, f1 = {s["file"] for s in m0["shards"]}, {s["file"] for s in m1["shards"]}
    assert len(f0) == len(f1) == 2 and not f0 & f1
    assert (out / "manifest-data-0-of-2.json").exists() and (out / "manifest-data-1-of-2.json").exists()
    ids0 = {tfrecord.decode_example(r)["id"] for f in f0 for r in tfrecord.read_records(out / f)}
    ids1 = {tfrecord.decode_example(r)["id"] for f in f1 for r in tfrecord.read_records(out / f)}
    assert not ids0 & ids1 and len(ids0 | ids1) == 8
    merged = prepare.merge_manifests(str(out))
    assert merged["num_examples"] == 8 and len(merged["shards"]) == 4
    assert {os.path.basename(s["file"]) for s in merged["skipped"]} == BAD
