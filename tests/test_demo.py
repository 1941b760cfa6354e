"""Demo corpus: rendered from the real Debian sources (fluidsynth + soundfonts,
flite, festival, a word list), deterministic, cached, and one clear error
when a source is missing or corrupt."""

import csv
import json
import os
import struct

import numpy as np
import pytest
import soundfile as sf

from matpac_jax.data import demo
from matpac_jax.data import frontends
from matpac_jax.data import loader
from matpac_jax.data import midi
from matpac_jax.data import toy_sounds
from matpac_jax.data.demo import corpus
from matpac_jax.data.demo import sources

NUM = 12
FLUIDR3 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


def _rows(directory):
    with open(os.path.join(directory, "meta.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _waves(directory):
    return {r["file"]: sf.read(os.path.join(directory, r["file"]), dtype="float32")
            for r in _rows(directory)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same 12-clip corpus twice (seed 0) and once with seed 1."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        d = str(tmp_path_factory.mktemp(f"demo_{name}"))
        assert demo.write_demo_audio(d, NUM, seed) == os.path.join(d, "meta.csv")
        out[name] = d
    return out


def test_small_corpus_clips_decode_with_valid_lengths_and_all_kinds(small):
    d = small["a"]
    rows = _rows(d)
    info = json.load(open(os.path.join(d, "corpus.json")))
    assert len(rows) + info["skipped"] == NUM and len(rows) >= NUM - 1
    assert {r["label"] for r in rows} == set(demo.KINDS)
    for rel, (wave, sr) in _waves(d).items():
        assert sr == frontends.SR and wave.ndim == 1, rel
        assert demo.corpus.MIN_SECONDS * sr - 1 <= wave.size <= demo.corpus.MAX_SECONDS * sr
        for fe in ("matpac", "m2d", "beats"):
            assert frontends.num_frames(fe, wave.size) >= 608
        assert np.isfinite(wave).all()
        peak = np.abs(wave).max()
        assert 0.1 < peak <= 1.0, (rel, peak)  # Peak-normalised to -18..-1 dB.
        assert np.sqrt(np.mean(wave**2)) > 1e-3, rel  # Not silent.
    # Both soundfonts and both TTS engines were used.
    clips = json.load(open(os.path.join(d, "clips.json")))
    comps = [p for c in clips for p in c["components"]]
    assert {p["font"] for p in comps if p["type"] == "midi"} == {"fluidr3", "musescore"}
    assert {p["engine"] for p in comps if p["type"] == "tts"} == {"flite", "festival"}
    assert info["per_source"]["fluidsynth:musescore"]["parts"] > 0


def test_same_seed_same_files_other_seed_other_audio(small):
    a, b, c = (_waves(small[k]) for k in "abc")
    assert list(a) == list(b) and _rows(small["a"]) == _rows(small["b"])
    for rel in a:
        np.testing.assert_array_equal(a[rel][0], b[rel][0], err_msg=rel)
        with open(os.path.join(small["a"], rel), "rb") as fa, \
                open(os.path.join(small["b"], rel), "rb") as fb:
            assert fa.read() == fb.read(), rel
    for (ra, (wa, _)), (rc, (wc, _)) in zip(a.items(), c.items()):
        assert wa.size != wc.size or not np.array_equal(wa, wc), (ra, rc)


def test_ensure_demo_shards_loads_and_reuses_shards_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATPAC_JAX_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    shard_dir = demo.ensure_demo_shards(str(work), "matpac", num_clips=8, seed=3)
    assert shard_dir == str(work / "shards_matpac")
    (cached,) = [p for p in (tmp_path / "cache" / "demo_corpus").iterdir() if p.is_dir()]
    stamps = [os.path.getmtime(p) for p in (cached / "corpus.json", work / "demo.json",
                                             work / "shards_matpac" / "manifest.json")]
    batch = next(loader.make_loader(shard_dir, frontend="matpac", crop_frames=304, batch_size=4,
                                    seed=0, shard_index=0, shard_count=1, short_clips="drop"))
    assert batch["x"].shape == (4, 80, 304) and np.isfinite(batch["x"]).all()
    assert abs(float(batch["x"].mean())) < 3
    # Second call: nothing is rendered or prepared again.
    assert demo.ensure_demo_shards(str(work), "matpac", num_clips=8, seed=3) == shard_dir
    assert stamps == [os.path.getmtime(p) for p in (
        cached / "corpus.json", work / "demo.json", work / "shards_matpac" / "manifest.json")]
    # Another workdir and front end reuse the cached audio.
    other = demo.ensure_demo_shards(str(tmp_path / "other"), "beats", num_clips=8, seed=3)
    assert os.path.getmtime(cached / "corpus.json") == stamps[0]
    assert json.load(open(os.path.join(other, "manifest.json")))["num_examples"] == len(
        _rows(cached))
    # A changed parameter regenerates (here without the cache: into the workdir).
    monkeypatch.setenv("MATPAC_JAX_CACHE", "off")
    demo.ensure_demo_shards(str(work), "matpac", num_clips=6, seed=3)
    assert json.load(open(work / "demo.json"))["num_clips"] == 6
    assert not os.path.islink(work / "audio") and len(_rows(work)) >= 5


def test_missing_sources_one_clear_error_with_install_command(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MATPAC_DEMO_SOUNDFONTS", str(empty))
    monkeypatch.setenv("MATPAC_DEMO_BIN_PATH", str(empty))
    monkeypatch.setenv("MATPAC_DEMO_WORDS", str(empty / "words"))
    out = tmp_path / "out"
    with pytest.raises(demo.DemoSourceError) as err:
        demo.ensure_demo_shards(str(out), "matpac", num_clips=8)
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in msg
    for name in ("FluidR3_GM.sf2", "MuseScore_General", "'fluidsynth'", "'flite'", "'festival'",
                 str(empty / "words")):
        assert name in msg
    sudo = "" if os.geteuid() == 0 else "sudo "  # as root (containers) no sudo is named
    assert "bash launch/demo_packages.sh" in msg
    assert (f"{sudo}apt-get install -y fluidsynth fluid-soundfont-gm musescore-general-soundfont "
            "flite festival wamerican") in msg
    assert (" sudo apt-get" in msg) == (os.geteuid() != 0)
    assert not out.exists()  # Nothing was done.
    # Only the word list missing: only it is named.
    monkeypatch.delenv("MATPAC_DEMO_SOUNDFONTS")
    monkeypatch.delenv("MATPAC_DEMO_BIN_PATH")
    with pytest.raises(demo.DemoSourceError, match=r"apt-get install -y wamerican\b") as err:
        demo.write_demo_audio(str(out), 4)
    assert err.value.packages == ["wamerican"] and not out.exists()
    # The command line prints the message, no traceback, and exits 2.
    assert demo.main(["--output", str(out), "--num_clips", "4"]) == 2


def test_truncated_soundfont_is_reported_corrupt(tmp_path, monkeypatch):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    with open(FLUIDR3, "rb") as f:
        (fonts / "FluidR3_GM.sf2").write_bytes(f.read(1 << 20))
    (fonts / "MuseScore_General.sf3").symlink_to(
        sources.find_sources().soundfonts[1].path)
    monkeypatch.setenv("MATPAC_DEMO_SOUNDFONTS", str(fonts))
    with pytest.raises(demo.DemoSourceError) as err:
        demo.write_demo_audio(str(tmp_path / "out"), 4)
    msg = str(err.value)
    assert f"{fonts / 'FluidR3_GM.sf2'} (package fluid-soundfont-gm) is corrupt" in msg
    assert "truncated" in msg and "MuseScore" not in msg
    assert "apt-get install -y --reinstall fluid-soundfont-gm" in msg
    (fonts / "FluidR3_GM.sf2").write_bytes(b"not a soundfont at all")
    with pytest.raises(demo.DemoSourceError, match="not a RIFF sfbk"):
        sources.find_sources()


def _fake_soundfont(title: bytes) -> bytes:
    """A structurally valid SoundFont with 128 GM presets and one drum kit."""
    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)

    def lst(kind, *chunks):
        return chunk(b"LIST", kind + b"".join(chunks))

    phdr = b"".join(struct.pack("<20sHHHIII", b"p", p, 0, 0, 0, 0, 0) for p in range(128))
    phdr += struct.pack("<20sHHHIII", b"kit", 0, 128, 0, 0, 0, 0)
    phdr += struct.pack("<20sHHHIII", b"EOP", 0, 0, 0, 0, 0, 0)
    body = (lst(b"INFO", chunk(b"INAM", title + b"\0")) + lst(b"sdta", chunk(b"smpl", b"\0" * 64))
            + lst(b"pdta", chunk(b"phdr", phdr)))
    return chunk(b"RIFF", b"sfbk" + body)


def test_soundfont_reader_and_timgm_exclusion(tmp_path, monkeypatch):
    title, melodic, kits = sources.read_soundfont(FLUIDR3)
    assert "Fluid" in title and len(melodic) == 128 and 0 in kits
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    (fonts / "FluidR3_GM.sf2").write_bytes(_fake_soundfont(b"TimGM6mb"))
    (fonts / "MuseScore_General.sf3").write_bytes(_fake_soundfont(b"Some GM bank"))
    monkeypatch.setenv("MATPAC_DEMO_SOUNDFONTS", str(fonts))
    with pytest.raises(demo.DemoSourceError, match="TimGM6mb, which is excluded") as err:
        sources.find_sources()
    assert "MuseScore" not in str(err.value)


def test_silent_or_nan_parts_are_skipped_and_counted(tmp_path):
    src = sources.find_sources()
    clips = corpus.plan(5, 0, src)  # One of each kind.
    (tmp_path / "audio").mkdir()
    writer = corpus._Writer(clips, str(tmp_path), None)
    for clip in clips:
        for comp in clip["components"]:
            if comp["type"] == "noise":
                continue
            n = clip["samples"]
            wave = {"music": np.zeros(n), "speech": None, "mixture": np.full(n, np.nan)}.get(
                clip["label"], np.random.default_rng(0).standard_normal(n) * 0.1)
            writer.deliver(comp["id"], wave)
        if all(p["type"] == "noise" for p in clip["components"]):
            writer.finish(clip["index"])
    assert sorted(clips[i]["label"] for i in writer.skipped) == ["mixture", "music", "speech"]
    assert "silent" in writer.skipped[0] and "nothing" in writer.skipped[1]
    assert "NaN" in writer.skipped[2]
    assert sorted(os.listdir(tmp_path / "audio")) == ["00003_drums.flac", "00004_noise.flac"]


def test_midi_writer_roundtrip_structure():
    ev = [midi.program(0.0, 0, 40)] + midi.note(0.0, 0.5, 0, 60, 100) + midi.note(
        0.5, 200.0, midi.DRUM_CHANNEL, 36, 90)
    data = midi.encode_smf(ev)
    assert data[:4] == b"MThd" and struct.unpack(">IHHH", data[4:14]) == (6, 0, 1, 480)
    assert data[14:18] == b"MTrk" and struct.unpack(">I", data[18:22])[0] == len(data) - 22
    assert data.endswith(b"\x00\xff\x2f\x00")
    # Variable-length deltas (the SMF spec's examples), e.g. the 200-s note's note-off.
    assert [midi._vlq(n) for n in (0, 127, 128, 8192, 0x0FFFFFFF)] == [
        b"\x00", b"\x7f", b"\x81\x00", b"\xc0\x00", b"\xff\xff\xff\x7f"]
    assert midi._vlq(200 * midi.TICKS_PER_SECOND) + bytes([0x89, 36, 0]) in data


def test_toy_sounds():
    """Every class: a seeded, normalised, non-silent clip; and the classes sound
    different: a nearest-centroid classifier on each clip's log-mel mean and
    standard deviation over time tells held-out clips apart far above chance
    (1/12; it measured 0.67 when written)."""
    assert toy_sounds.SR == frontends.SR == 16000

    def clip(label, seed):
        return toy_sounds.synthesize(label, np.random.default_rng(seed), 1.0)

    feats = {}
    for label in toy_sounds.ALL_CLASSES:
        x = clip(label, 0)
        assert x.shape == (16000,) and x.dtype == np.float32 and np.isfinite(x).all()
        assert np.isclose(np.abs(x).max(), 0.5, rtol=1e-6)  # peak-normalised
        assert np.sqrt(np.mean(x ** 2)) > 0.01  # not silence under the noise floor
        np.testing.assert_array_equal(x, clip(label, 0))  # the seed fixes the clip
        assert not np.array_equal(x, clip(label, 1))
        feats[label] = [np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in (
            frontends.matpac_logmel(clip(label, seed)) for seed in range(8))]
    centroids = {k: np.mean(v[:5], axis=0) for k, v in feats.items()}
    right = [min(centroids, key=lambda c: np.linalg.norm(f - centroids[c])) == label
             for label, fs in feats.items() for f in fs[5:]]
    assert np.mean(right) > 0.4, np.mean(right)
    with pytest.raises(ValueError, match="unknown toy sound class"):
        toy_sounds.synthesize("theremin", np.random.default_rng(0), 0.1)
