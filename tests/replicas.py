"""Tiny replicas of the evaluation datasets as released: the same folder layout, file
names, metadata formats (CSV / JSON / TXT, headers and quoting as published),
sample rates and channel counts as the real sets, with a few short clips of
procedural sound (toy_sounds) whose class follows the label, so a probe can learn.
Each builder returns what the test checks against."""
from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
import soundfile as sf

from matpac_jax.data import audio, toy_sounds
from matpac_jax.evaluation import datasets

TOYS = toy_sounds.ALL_CLASSES
SPCV2_WORDS = ("backward bed bird cat dog down eight five follow forward four go happy house "
               "learn left marvin nine no off on one right seven sheila six stop three tree "
               "two up visual wow yes zero").split()


def write(path, label_index: int, seconds: float, sr: int = 16000, channels: int = 1,
          subtype: str | None = None, seed: int = 0) -> None:
    """A clip of toy class `label_index` at `sr` Hz with `channels` channels."""
    rng = np.random.default_rng([label_index, seed])
    wave = toy_sounds.synthesize(TOYS[label_index % len(TOYS)], rng, seconds=max(seconds, 0.05))
    wave = audio.resample(wave[: int(16000 * seconds)], 16000, sr) if sr != 16000 else \
        wave[: int(16000 * seconds)]
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.5 * data, sr, subtype=subtype)


def _csv(path, header, rows, **kw):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, **kw)
        w.writerow(header)
        w.writerows(rows)


def esc50(root, categories=("dog", "rain", "crying_baby", "clock_tick"), per_fold=2,
          seconds=5.0):
    """meta/esc50.csv + audio/{fold}-{src}-{take}-{target}.wav, 44.1 kHz mono, 5 folds."""
    rows = []
    for fold in range(1, 6):
        for target, cat in enumerate(categories):
            for k in range(per_fold):
                src = 100000 + 100 * fold + 10 * target + k
                name = f"{fold}-{src}-A-{target}.wav"
                write(f"{root}/audio/{name}", target, seconds, 44100, seed=src)
                rows.append([name, fold, target, cat, target < 2, src, "A"])
    _csv(f"{root}/meta/esc50.csv",
         ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return rows


US8K_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark")
# (sample rate, channels, subtype): the mix the real set has (mostly 44.1/48 kHz,
# some 96, 22.05, 11.025 and 8 kHz; stereo; 16-bit, 24-bit, float and 8-bit).
US8K_FORMATS = [(44100, 2, "PCM_16"), (48000, 2, "PCM_24"), (96000, 1, "PCM_24"),
                (22050, 1, "PCM_U8"), (11025, 2, "FLOAT"), (8000, 1, "PCM_16")]


def us8k(root, per_fold=1, seconds=(4.0, 2.5)):
    """metadata/UrbanSound8K.csv + audio/foldN/{fsID}-{classID}-0-{k}.wav, 10 folds."""
    rows, formats = [], []
    for fold in range(1, 11):
        for cid, cls in enumerate(US8K_CLASSES):
            for k in range(per_fold):
                fs_id = 1000 * fold + 10 * cid + k
                name = f"{fs_id}-{cid}-0-{k}.wav"
                sr, ch, sub = US8K_FORMATS[len(rows) % len(US8K_FORMATS)]
                dur = seconds[len(rows) % len(seconds)]
                write(f"{root}/audio/fold{fold}/{name}", cid, dur, sr, ch, sub, seed=fs_id)
                rows.append([name, fs_id, 0.0, dur, 1, fold, cid, cls])
                formats.append((sr, ch))
    _csv(f"{root}/metadata/UrbanSound8K.csv", ["slice_file_name", "fsID", "start", "end",
                                               "salience", "fold", "classID", "class"], rows)
    return rows, formats


def spcv2(root, per_word=3):
    """<word>/<hash>_nohash_<n>.wav for EVAR's 35 words, _background_noise_/,
    validation_list.txt and testing_list.txt; the last clip of a word is test,
    the one before valid."""
    valid, test = [], []
    for w, word in enumerate(SPCV2_WORDS):
        for k in range(per_word):
            rel = f"{word}/{w:04x}{k:04x}_nohash_{k}.wav"
            write(f"{root}/{rel}", w, 1.0 if k else 0.8, seed=k)
            (test if k == per_word - 1 else valid if k == per_word - 2 else []).append(rel)
    write(f"{root}/_background_noise_/white_noise.wav", 0, 1.5)
    (pathlib.Path(root) / "README.md").write_text("Speech Commands v0.02\n")
    (pathlib.Path(root) / "LICENSE").write_text("CC BY 4.0\n")
    (pathlib.Path(root) / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (pathlib.Path(root) / "testing_list.txt").write_text("\n".join(test) + "\n")
    return valid, test


def vc1(root, speakers=("id10001", "id10002", "id10003"), seconds=9.0):
    """iden_split.txt (`N path`) + wav/<speaker>/<video>/<nnnnn>.wav, 16 kHz."""
    lines = []
    for s, spk in enumerate(speakers):
        for k, split in enumerate((1, 1, 1, 2, 3)):
            rel = f"{spk}/vid{k % 2}Xy_{s}/{k + 1:05d}.wav"
            write(f"{root}/wav/{rel}", s, seconds, seed=k)
            lines.append(f"{split} {rel}")
    (pathlib.Path(root) / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return lines


def cremad(root, seconds=3.0):
    """AudioWAV/<speaker>_<sentence>_<emotion>_<level>.wav, 16 kHz, for two train
    speakers, one valid and one test speaker of EVAR's split, plus a clip EVAR
    leaves out."""
    splits = dict(ln.split(",") for ln in datasets._stored("cremad_speaker_splits.csv")[1:])
    pick = {s: [k for k, v in sorted(splits.items()) if v == s] for s in ("train", "valid", "test")}
    speakers = pick["train"][:2] + pick["valid"][:1] + pick["test"][:1]
    names = []
    for spk in speakers:
        for e, emo in enumerate(("ANG", "HAP", "NEU", "SAD")):
            for sent in ("DFA", "IEO"):
                level = "XX" if sent == "DFA" or emo == "NEU" else "HI"
                names.append(f"{spk}_{sent}_{emo}_{level}.wav")
                write(f"{root}/AudioWAV/{names[-1]}", e, seconds, seed=int(spk))
    write(f"{root}/AudioWAV/1076_ITS_NEU_XX.wav", 2, seconds)  # not in EVAR's list
    return {n: splits[n.split("_")[0]] for n in names}


GENRES = "blues classical country disco hiphop jazz metal pop reggae rock".split()


def gtzan(root, seconds=0.05):
    """genres/<genre>/<genre>.000NN.au: the original tarball's 1000 clips, 22,050 Hz AU."""
    for g, genre in enumerate(GENRES):
        for k in range(100):
            write(f"{root}/genres/{genre}/{genre}.{k:05d}.au", g, seconds, 22050, seed=k)


NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar")


def nsynth(root, per_family=(3, 1, 1), seconds=4.0):
    """nsynth-{train,valid,test}/examples.json + audio/<note id>.wav, 16 kHz, 4 s."""
    expected = {}
    for s, n in zip(("train", "valid", "test"), per_family):
        examples = {}
        for f, fam in enumerate(NSYNTH_FAMILIES):
            for k in range(n):
                key = f"{fam}_acoustic_{k:03d}-0{60 + k}-100"
                write(f"{root}/nsynth-{s}/audio/{key}.wav", f, seconds, seed=k)
                examples[key] = {"note": 1000 * f + k, "note_str": key, "instrument": 10 * f,
                                 "instrument_str": f"{fam}_acoustic_{k:03d}", "pitch": 60 + k,
                                 "velocity": 100, "sample_rate": 16000, "qualities": [0] * 10,
                                 "qualities_str": [], "instrument_family": f,
                                 "instrument_family_str": fam, "instrument_source": 0,
                                 "instrument_source_str": "acoustic"}
                expected[key] = (fam, s)
        path = pathlib.Path(root) / f"nsynth-{s}" / "examples.json"
        path.write_text(json.dumps(examples, indent=4))
    return expected


def surge(root, pitches=(48, 60, 72), seconds=4.5):
    """<tone>/<pitch>.ogg (Ogg Vorbis, 44.1 kHz) for two tones of each split of EVAR's list."""
    tones = [ln.split(",") for ln in datasets._stored("surge_tone_splits.csv")[1:]]
    chosen = {s: [t for t, sp in tones if sp == s][:2] for s in ("train", "valid", "test")}
    for s, ts in chosen.items():
        for tone in ts:
            for p, pitch in enumerate(pitches):
                write(f"{root}/{tone}/{pitch}.ogg", p, seconds, 44100, subtype="VORBIS")
    return chosen


def fsd50k(root, seconds=0.5):
    """FSD50K.ground_truth/{dev,eval,vocabulary}.csv + FSD50K.{dev,eval}_audio/<id>.wav."""
    vocab = [("Bark", "/m/05tny_"), ("Rain", "/m/06mb1"), ("Speech", "/m/09x0r")]
    rows = {"dev": [], "eval": []}
    for i in range(12):
        labs = [vocab[i % 3]] + ([vocab[(i + 1) % 3]] if i % 4 == 0 else [])
        part, split = ("eval", None) if i >= 9 else ("dev", "val" if i in (7, 8) else "train")
        fname = str(20000 + i)
        write(f"{root}/FSD50K.{part}_audio/{fname}.wav", i % 3, seconds, 44100, seed=i)
        row = [fname, ",".join(v[0] for v in labs), ",".join(v[1] for v in labs)]
        rows[part].append(row + ([split] if split else []))
    _csv(f"{root}/FSD50K.ground_truth/dev.csv", ["fname", "labels", "mids", "split"], rows["dev"])
    _csv(f"{root}/FSD50K.ground_truth/eval.csv", ["fname", "labels", "mids"], rows["eval"])
    _csv(f"{root}/FSD50K.ground_truth/vocabulary.csv", [0, *vocab[0]], vocab[1:])
    return rows


OPENMIC_CLASSES = ["accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums",
                   "flute", "guitar", "mallet_percussion", "mandolin", "organ", "piano",
                   "saxophone", "synthesizer", "trombone", "trumpet", "ukulele", "violin",
                   "voice"]


def openmic(root, n=40, n_train=30, seconds=1.0):
    """openmic-2018-aggregated-labels.csv, class-map.json, partitions/split01_*.csv
    (one sample key a line) + audio/<key[:3]>/<key>.ogg (Ogg Vorbis, 44.1 kHz stereo)."""
    root = pathlib.Path(root)
    keys = [f"{k:06d}_{3840 * (k + 1)}" for k in range(n)]
    labels = []
    for k, key in enumerate(keys):
        write(root / "audio" / key[:3] / f"{key}.ogg", k % 3, seconds, 44100, 2, "VORBIS")
        for inst in ("guitar", "piano", "voice")[: 2 + k % 2]:
            rel = 0.9 if ("guitar", "piano", "voice")[k % 3] == inst else 0.1
            labels.append([key, inst, rel, 3])
    _csv(root / "openmic-2018-aggregated-labels.csv",
         ["sample_key", "instrument", "relevance", "num_responses"], labels)
    (root / "class-map.json").write_text(json.dumps({c: i for i, c in
                                                     enumerate(OPENMIC_CLASSES)}))
    (root / "partitions").mkdir()
    (root / "partitions" / "split01_train.csv").write_text("\n".join(keys[:n_train]) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(keys[n_train:]) + "\n")
    return keys, labels


def mtt(root, audio_clips=2):
    """annotations_final.csv (tab-separated, every field quoted: clip_id, tags,
    mp3_path) for every clip of the stored split, and the first `audio_clips`
    mp3s of each split (16 kHz mono)."""
    tags = datasets._stored("mtt_top50_tags.txt")
    header = ["clip_id", "no singer", *tags, "mp3_path"]
    rows, made = [], []
    for s in ("train", "valid", "test"):
        for k, path in enumerate(datasets._stored(f"mtt_{s}.txt.gz")):
            on = {len(rows) % 50, (len(rows) * 7) % 50}
            rows.append([len(rows), 0, *[int(t in on) for t in range(50)], path])
            if k < audio_clips:
                write(f"{root}/{path}", len(rows) % 50, 1.0, subtype="MPEG_LAYER_III")
                made.append(path)
    _csv(f"{root}/annotations_final.csv", header, rows, delimiter="\t", quoting=csv.QUOTE_ALL)
    return rows, made


def as20k(root, seconds=0.5):
    """Google's segment CSVs (3 comment lines, quoted MID lists) and
    class_labels_indices.csv, audio named <YTID>_<start>.wav; one listed
    segment of each subset has no file (a deleted video)."""
    root = pathlib.Path(root)
    mids = [("/m/09x0r", "Speech"), ("/m/05tny_", "Bark"), ("/m/06mb1", "Rain")]
    _csv(root / "class_labels_indices.csv", ["index", "mid", "display_name"],
         [[i, m, d] for i, (m, d) in enumerate(mids)])
    present = {}
    for subset, n in (("balanced_train_segments", 9), ("eval_segments", 4)):
        lines = ["# Segments csv created Sun Mar  5 10:54:25 2017",
                 f"# num_ytids={n}, num_segs={n}, num_unique_labels=3, num_positive_labels={n}",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for k in range(n):
            ytid = f"{subset[:2]}-{k:02d}aBcDeF"[:11]
            labs = [mids[k % 3][0]] + ([mids[(k + 1) % 3][0]] if k % 3 == 0 else [])
            lines.append(f'{ytid}, {10.0 * k:.3f}, {10.0 * k + 10:.3f}, "{",".join(labs)}"')
            if k != n - 1:
                write(root / subset / f"{ytid}_{10.0 * k:.3f}.wav", k % 3, seconds, 44100)
                present[ytid] = labs
        (root / f"{subset}.csv").write_text("\n".join(lines) + "\n")
    return present


def folder(root, labels=("chirp", "clicks"), per_class=9, n_train=6, seconds=1.0):
    """This project's meta.csv form: file,label,split."""
    os.makedirs(f"{root}/audio", exist_ok=True)
    rows = []
    for label in labels:
        for i in range(per_class):
            wave = toy_sounds.synthesize(label, np.random.default_rng([len(label), i]),
                                         seconds=seconds)
            rel = f"audio/{label}_{i}.wav"
            sf.write(f"{root}/{rel}", wave, 16000)
            rows.append([rel, label, "train" if i < n_train else "test"])
    _csv(f"{root}/meta.csv", ["file", "label", "split"], rows)
    return rows
