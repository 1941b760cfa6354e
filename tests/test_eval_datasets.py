"""The evaluation datasets as released (`--task=NAME:PATH`), read from tiny replicas of
each release layout (tests/replicas.py): split sizes, folds, label sets, crops."""
import collections
import json
import os

import numpy as np
import pytest
import soundfile as sf

import replicas
from matpac_jax import errors
from matpac_jax.data import audio
from matpac_jax.evaluation import datasets, embeddings, protocol


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("releases")


def read(name, root):
    task = datasets.parse(f"{name}:{root}")
    assert task.name == task.kind == name
    return task


def counts(values) -> dict:
    return dict(collections.Counter(np.asarray(values).tolist()))


def test_esc50(data):
    rows = replicas.esc50(data / "ESC-50-master", seconds=5.0)
    task = read("esc50", data / "ESC-50-master")
    assert task.split is None and task.folds() == [1, 2, 3, 4, 5]
    assert counts(task.fold) == {k: 8 for k in range(1, 6)}
    assert task.classes == sorted({r[3] for r in rows}) and not task.multilabel
    assert [ls[0] for ls in task.labels] == [r[3] for r in rows]
    assert len(audio.load_audio(task.files[0])) == 80000  # 44.1 kHz, 5 s -> 16 kHz
    assert protocol.for_task(task).unit_sec == 5.0


def test_us8k_mixed_rates_and_channels(data):
    rows, formats = replicas.us8k(data / "UrbanSound8K")
    task = read("us8k", data / "UrbanSound8K")
    assert task.folds() == list(range(1, 11)) and counts(task.fold) == {k: 4 for k in range(1, 11)}
    assert task.classes == sorted(replicas.US8K_CLASSES)
    assert {f"fold{r[5]}" for r in rows} == {f.split("/")[-2] for f in task.files}
    audio.check_files(task.files, "us8k")
    for f, (sr, ch), r in list(zip(task.files, formats, rows))[:6]:
        info = sf.info(f)
        assert (info.samplerate, info.channels) == (sr, ch)
        assert abs(len(audio.load_audio(f)) - 16000 * r[3]) <= 1  # mono at 16 kHz
    assert protocol.for_task(task).unit_sec == 4.0


def test_spcv2_35_words_without_background_noise(data):
    valid, test = replicas.spcv2(data / "speech_commands_v0.02")
    task = read("spcv2", data / "speech_commands_v0.02")
    assert task.classes == sorted(replicas.SPCV2_WORDS) and len(task.classes) == 35
    assert not any("_background_noise_" in f for f in task.files)
    assert counts(task.split) == {"train": 35, "valid": 35, "test": 35}
    rel = {f.split("speech_commands_v0.02/")[1]: s for f, s in zip(task.files, task.split)}
    assert {k for k, s in rel.items() if s == "valid"} == set(valid)
    assert {k for k, s in rel.items() if s == "test"} == set(test)
    assert protocol.for_task(task).unit_sec == 1.0


def test_vc1_identification_split_and_crops(data):
    lines = replicas.vc1(data / "VoxCeleb1", seconds=9.0)
    task = read("vc1", data / "VoxCeleb1")
    assert counts(task.split) == {"train": 9, "valid": 3, "test": 3}
    assert task.classes == ["id10001", "id10002", "id10003"]
    assert [f.split("/wav/")[1] for f in task.files] == [ln.split()[1] for ln in lines]
    plan = protocol.for_task(task)
    seen = []
    emb = embeddings.embed_task(lambda w: seen.extend(w) or np.zeros((len(w), 1)), task, plan)
    assert plan.unit_sec == 8.2 and {len(w) for w in seen} == {131200}  # int(16000 * 8.2)
    assert len(seen) == 15 and (emb.start_row[task.split == "test"] >= 0).all()


def test_cremad_speaker_split_as_evar(data):
    made = replicas.cremad(data / "CREMA-D", seconds=0.5)
    task = read("cremad", data / "CREMA-D")
    names = [f.split("/")[-1] for f in task.files]
    assert "1076_ITS_NEU_XX.wav" not in names and sorted(names) == sorted(made)
    assert [made[n] for n in names] == task.split.tolist()
    assert counts(task.split) == {"train": 16, "valid": 8, "test": 8}
    assert task.classes == ["ANG", "HAP", "NEU", "SAD"]
    splits = [ln.split(",")[1] for ln in datasets._stored("cremad_speaker_splits.csv")[1:]]
    assert counts(splits) == {"train": 63, "valid": 9, "test": 19}  # EVAR's 91 speakers


def test_gtzan_fault_filtered_split_of_au_files(data):
    replicas.gtzan(data / "GTZAN")
    task = read("gtzan", data / "GTZAN")
    assert counts(task.split) == {"train": 443, "valid": 197, "test": 290}
    assert task.classes == sorted(replicas.GENRES)
    assert all(f.endswith(".au") and "/genres/" in f for f in task.files)
    assert len(set(task.files)) == 930  # 70 of the 1000 clips are not in the split
    assert len(audio.load_audio(task.files[0])) == 800  # 0.05 s at 22,050 Hz
    assert protocol.for_task(task).unit_sec == 30.0


def test_nsynth_examples_json(data):
    expected = replicas.nsynth(data / "nsynth", seconds=0.2)
    task = read("nsynth", data / "nsynth")
    got = {f.split("/")[-1][:-4]: (ls[0], s) for f, ls, s in
           zip(task.files, task.labels, task.split)}
    assert got == expected and task.classes == sorted(replicas.NSYNTH_FAMILIES)
    assert counts(task.split) == {"train": 12, "valid": 4, "test": 4}


def test_surge_tone_split(data):
    chosen = replicas.surge(data / "surge", seconds=0.2)
    task = read("surge", data / "surge")
    tone = [f.split("/")[-2] for f in task.files]
    assert all(t in chosen[s] for t, s in zip(tone, task.split))
    assert task.classes == ["48", "60", "72"] and counts(task.split) == {"train": 6,
                                                                        "valid": 6, "test": 6}
    splits = [ln.split(",")[1] for ln in datasets._stored("surge_tone_splits.csv")[1:]]
    assert counts(splits) == {"train": 1692, "valid": 195, "test": 197}
    assert abs(len(audio.load_audio(task.files[0])) - 3200) <= 2  # Ogg Vorbis at 44.1 kHz


def test_fsd50k_multilabel(data):
    rows = replicas.fsd50k(data / "FSD50K")
    task = read("fsd50k", data / "FSD50K")
    assert task.multilabel and task.classes == ["Bark", "Rain", "Speech"]
    assert counts(task.split) == {"train": 7, "valid": 2, "test": 3}
    assert task.labels[0] == ["Bark", "Rain"] and task.targets()[0].tolist() == [1, 1, 0]
    assert len(task.files) == len(rows["dev"]) + len(rows["eval"])
    assert protocol.for_task(task).unit_sec == pytest.approx(7.6358)


def test_openmic_known_labels(data):
    keys, labels = replicas.openmic(data / "openmic-2018")
    task = read("openmic", data / "openmic-2018")
    assert task.classes == replicas.OPENMIC_CLASSES and counts(task.split) == {"train": 30,
                                                                              "test": 10}
    col = {c: i for i, c in enumerate(task.classes)}
    expect_known = np.zeros_like(task.known)
    expect_pos = np.zeros(task.known.shape, np.float32)
    for key, inst, rel, _ in labels:
        expect_known[keys.index(key), col[inst]] = True
        expect_pos[keys.index(key), col[inst]] = rel >= 0.5
    np.testing.assert_array_equal(task.known, expect_known)
    np.testing.assert_array_equal(task.targets(), expect_pos)
    assert task.files[0].endswith("audio/000/000000_3840.ogg")
    assert sf.info(task.files[0]).channels == 2
    plan = protocol.for_task(task)
    assert plan.unit_sec is None and "not an EVAR task" in plan.describe(task)["note"]


def test_mtt_top50_split(data):
    rows, made = replicas.mtt(data / "MagnaTagATune")
    task = read("mtt", data / "MagnaTagATune")
    assert counts(task.split) == {"train": 15244, "valid": 1529, "test": 4332}
    assert len(task.classes) == 50 and "no vocals" in task.classes and task.multilabel
    by_path = {r[-1]: r for r in rows}
    for f, ls in list(zip(task.files, task.labels))[::997]:
        r = by_path[f.split("MagnaTagATune/")[1]]
        assert ls == [t for t, v in zip(task.classes, r[2:-1]) if v]
    assert abs(len(audio.load_audio(data / "MagnaTagATune" / made[0])) - 16000) < 1200  # mp3


def test_as20k_present_segments(data):
    present = replicas.as20k(data / "AudioSet")
    task = read("as20k", data / "AudioSet")
    assert counts(task.split) == {"train": 8, "test": 3}
    assert task.classes == ["/m/09x0r", "/m/05tny_", "/m/06mb1"]
    got = {f.split("/")[-1][:11]: ls for f, ls in zip(task.files, task.labels)}
    assert got == present and any(len(ls) == 2 for ls in got.values())
    assert protocol.for_task(task).unit_sec == 10.0


def test_evar_metadata_files(tmp_path):
    """EVAR's own CSVs: an unnamed index column, `split` or else `fold`, comma-separated
    multi-labels; the task is named after the file and gets EVAR's duration for it."""
    replicas.write(tmp_path / "wav" / "a.wav", 0, 0.3)
    (tmp_path / "voxforge.csv").write_text(
        ",file_name,label,split\n" + "".join(f"{i},wav/a.wav,{'xy'[i % 2]},"
                                             f"{['train', 'valid', 'test'][i % 3]}\n"
                                             for i in range(6)))
    task = datasets.parse(f"evar:{tmp_path / 'voxforge.csv'}@{tmp_path}")
    assert task.name == "voxforge" and task.classes == ["x", "y"] and not task.multilabel
    assert protocol.for_task(task).unit_sec == 5.8
    (tmp_path / "mine.csv").write_text(
        "file_name,label,fold\n" + "".join(f"wav/a.wav,\"p,q\",{1 + i % 2}\n" for i in range(4)))
    task = datasets.parse(f"evar:{tmp_path / 'mine.csv'}@{tmp_path}")
    assert task.multilabel and task.folds() == [1, 2] and task.labels[0] == ["p", "q"]
    plan = protocol.for_task(task)
    assert plan.unit_sec is None and "no duration" in plan.describe(task)["note"]


def test_bad_releases_get_one_line_naming_the_file(tmp_path):
    with pytest.raises(errors.TaskFileError, match=r"ESC-50/meta/esc50\.csv: no such file"):
        datasets.parse(f"esc50:{tmp_path / 'ESC-50'}")
    (tmp_path / "us8k" / "metadata").mkdir(parents=True)
    (tmp_path / "us8k" / "metadata" / "UrbanSound8K.csv").write_text("slice_file_name,fold\n"
                                                                     "a.wav,1\n")
    with pytest.raises(errors.TaskFileError, match=r"UrbanSound8K\.csv: needs columns .* "
                                                   r"\(missing \['class'\]\)"):
        datasets.parse(f"us8k:{tmp_path / 'us8k'}")
    with pytest.raises(errors.TaskFileError, match="unknown dataset 'esc-50'.*known: esc50"):
        datasets.parse(f"esc-50:{tmp_path}")
    with pytest.raises(errors.TaskFileError, match="expected evar:META.csv@AUDIO_DIR"):
        datasets.parse(f"evar:{tmp_path / 'x.csv'}")
    (tmp_path / "surge" / "not-a-surge-tone").mkdir(parents=True)
    replicas.write(tmp_path / "surge" / "not-a-surge-tone" / "60.ogg", 0, 0.1,
                   subtype="VORBIS")
    with pytest.raises(errors.TaskFileError, match="tones not in EVAR's Surge split.*"
                                                   "not-a-surge-tone"):
        datasets.parse(f"surge:{tmp_path / 'surge'}")


def test_split_lists_name_their_sources():
    text = open(os.path.join(datasets.SPLITS_DIR, "README.md")).read()
    stored = sorted(set(os.listdir(datasets.SPLITS_DIR)) - {"README.md"})
    assert len(stored) == 10 and all(f"`{name}`" in text for name in stored)
    assert len(datasets._stored("mtt_top50_tags.txt")) == 50
    assert json.dumps(datasets._stored("gtzan_test_filtered.txt")[:1]) == \
        '["blues/blues.00012.wav"]'
