"""AudioSet as it is distributed: parquet shards, WebDataset tars, segment CSVs
and class_labels_indices.csv, read by `prepare` in place, local and on a real
GCS server. Tiny files of each schema are built here with pyarrow and
webdataset, with real FLAC bytes inside."""
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset

from matpac_jax import errors, storage
from matpac_jax.data import audio, frontends, prepare, tfrecord
from matpac_jax.data import shards as shard_files

CLASSES = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"),
           ("/t/dd00088", "Gush")]  # the last one no clip below has: kept anyway


def _flac(seconds: float, sr: int, freq: float) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="FLAC",
             subtype="PCM_24")
    return buf.getvalue()


# (YouTube id, audio bytes, MIDs): 48 kHz and 44.1 kHz FLAC as in agkphysics/AudioSet,
# one undecodable clip and one too short to frame.
CLIPS = [("--PJHxphWEs", _flac(1.0, 48000, 440), ["/m/09x0r"]),
         ("-0Gj8-vB1q4", _flac(1.2, 44100, 660), ["/m/04rlf", "/m/09x0r"]),
         ("bad_flac_id", b"fLaC" + b"\x00" * 300, ["/m/04rlf"]),
         ("0fiHq1kOnfI", _flac(0.8, 48000, 880), ["/m/0jbk"]),
         ("short_clip_", _flac(0.01, 48000, 880), ["/m/0jbk"])]
GOOD = {"--PJHxphWEs", "-0Gj8-vB1q4", "0fiHq1kOnfI"}


def _write(path: str, data: bytes) -> str:
    storage.write_bytes(path, data)
    return path


def _parquet(rows, row_group_size=2) -> bytes:
    """The agkphysics/AudioSet schema (Hugging Face `Audio` feature: {bytes, path})."""
    table = pa.table({
        "video_id": [r[0] for r in rows],
        "audio": pa.array([{"bytes": r[1], "path": f"audio/bal_train/{r[0]}.flac"} for r in rows],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "labels": pa.array([r[2] for r in rows], pa.list_(pa.string())),
        "human_labels": pa.array([[dict(CLASSES)[m] for m in r[2]] for r in rows],
                                 pa.list_(pa.string())),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def _tar(rows, label_ids=True) -> bytes:
    """confit/audioset-16khz-wds: `<key>.flac` + `<key>.json` (id, label names, label_id)."""
    index = {m: i for i, (m, _) in enumerate(CLASSES)}
    buf = io.BytesIO()
    with webdataset.TarWriter(buf, mtime=0) as tar:
        for n, (ytid, data, mids) in enumerate(rows):
            meta = {"id": ytid, "label": [dict(CLASSES)[m] for m in mids]}
            if label_ids:
                meta["label_id"] = [index[m] for m in mids]
            tar.write({"__key__": f"{n:06d}", "flac": data, "json": json.dumps(meta).encode()})
    return buf.getvalue()


def _classes_csv(root: str) -> str:
    lines = ["index,mid,display_name"] + [f'{i},{m},"{n}"' for i, (m, n) in enumerate(CLASSES)]
    return _write(storage.join(root, "class_labels_indices.csv"), "\n".join(lines).encode())


def _segments_csv(path: str, rows) -> str:
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             "# num_ytids=2, num_segs=2, num_unique_labels=2, num_positive_labels=2",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{y}, 30.000, 40.000, "{",".join(m)}"' for y, m in rows]
    return _write(path, "\n".join(lines).encode())


def _records(output: str) -> dict[str, dict]:
    return {ex["id"]: ex for s in shard_files.find_shards(output)
            for ex in map(tfrecord.decode_example, tfrecord.read_records(s))}


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_bucket")


def test_parquet_shards_with_a_bad_clip_inside_a_row_group(root):
    src = storage.join(root, "AudioSet", "data", "bal_train")
    _write(storage.join(src, "00.parquet"), _parquet(CLIPS[:3]))
    _write(storage.join(src, "01.parquet"), _parquet(CLIPS[3:]))
    out = storage.join(root, "shards")
    m = prepare.prepare(src, out, "matpac", classes=_classes_csv(root))
    recs = _records(out)
    assert set(recs) == GOOD and len(m["shards"]) == 2  # one shard per parquet file
    assert {s["reason"].split(" ")[0] for s in m["skipped"]} == {"unreadable", "too"}
    assert any(s["file"].endswith("00.parquet#row=2") for s in m["skipped"])
    assert recs["-0Gj8-vB1q4"]["label"] == "/m/04rlf;/m/09x0r"  # the rows' own labels
    assert m["classes"] == [c for c, _ in CLASSES]  # official order, unseen Gush kept
    assert m["class_names"][3] == "Gush"
    # The stored features are the front end's, from the 48 kHz FLAC bytes.
    want = frontends.compute("matpac", audio.decode(CLIPS[0][1], "x.flac"))
    np.testing.assert_array_equal(recs["--PJHxphWEs"]["logmel"], want.astype(np.float16))
    # Re-running resumes: nothing rewritten, the same manifest.
    again = prepare.prepare(src, out, "matpac", classes=storage.join(root,
                                                                    "class_labels_indices.csv"))
    assert again["shards"] == m["shards"] and again["skipped"] == m["skipped"]


def test_webdataset_tars_label_ids_names_and_a_truncated_tar(root):
    src = storage.join(root, "wds", "2m", "train")
    _write(storage.join(src, "shard-000000.tar"), _tar(CLIPS[:3]))
    whole = _tar(CLIPS[3:], label_ids=False)
    _write(storage.join(src, "shard-000001.tar"), whole[:len(whole) // 3])  # cut mid-member
    out = storage.join(root, "shards")
    m = prepare.prepare(src, out, "beats", classes=_classes_csv(root))
    recs = _records(out)
    assert GOOD - {"0fiHq1kOnfI"} <= set(recs)  # ids from the JSON's `id`
    assert recs["-0Gj8-vB1q4"]["label"] == "/m/04rlf;/m/09x0r"  # label_id -> MIDs
    if "0fiHq1kOnfI" in recs:  # before the cut: its display-name label became the MID
        assert recs["0fiHq1kOnfI"]["label"] == "/m/0jbk"
    reasons = [s["reason"] for s in m["skipped"]]
    assert any(r.startswith("unreadable (") for r in reasons)  # the bad FLAC member
    assert any("unreadable tar from here on" in r for r in reasons)  # the cut
    assert all(s["file"].startswith(src) for s in m["skipped"])


def test_segment_csvs_label_folder_clips_and_eval_is_scored_on_the_official_classes(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for ytid, data, _ in CLIPS:  # a folder dump named Y<id>_<start>_<end>.flac
        (folder / f"Y{ytid}_30.000_40.000.flac").write_bytes(data)
    bal = _segments_csv(str(tmp_path / "balanced_train_segments.csv"),
                        [("--PJHxphWEs", ["/m/09x0r"])])
    unbal = _segments_csv(str(tmp_path / "unbalanced_train_segments.csv"),
                          [("-0Gj8-vB1q4", ["/m/04rlf"]), ("--PJHxphWEs", ["/m/0jbk"])])
    classes = _classes_csv(str(tmp_path))
    m = prepare.prepare(str(folder), str(tmp_path / "as2m"), "matpac", labels=[bal, unbal],
                        classes=classes)
    recs = {k.split("_30")[0][1:]: v for k, v in _records(str(tmp_path / "as2m")).items()}
    assert recs["--PJHxphWEs"]["label"] == "/m/09x0r;/m/0jbk"  # in both CSVs: the union
    assert set(recs) == {"--PJHxphWEs", "-0Gj8-vB1q4"}
    assert sum(s["reason"] == "no label in the --labels CSV" for s in m["skipped"]) == 1
    assert m["classes"] == [c for c, _ in CLASSES]


def test_a_missing_labels_or_classes_file_is_named(tmp_path):
    for flag, kw in (("--labels", {"labels": [str(tmp_path / "no.csv")]}),
                     ("--classes", {"classes": str(tmp_path / "no.csv")})):
        with pytest.raises(errors.TaskFileError, match=f"^{flag} .*no.csv: no such file$"):
            prepare.prepare(str(tmp_path), str(tmp_path / "out"), "matpac", **kw)


def test_adding_to_an_existing_output_and_refusals(tmp_path):
    src = tmp_path / "src"
    for part, rows in (("bal", CLIPS[:2]), ("unbal", CLIPS[3:4])):
        (src / part).mkdir(parents=True)
        (src / part / "0.parquet").write_bytes(_parquet(rows))
    out = str(tmp_path / "out")
    prepare.prepare(str(src / "bal"), out, "matpac", name="bal")
    m = prepare.prepare(str(src / "unbal"), out, "matpac", name="unbal")
    assert sorted(m["parts"]) == ["bal", "unbal"] and m["num_examples"] == 3
    assert set(_records(out)) == {"--PJHxphWEs", "-0Gj8-vB1q4", "0fiHq1kOnfI"}
    with pytest.raises(errors.DataError, match="--name=bal already holds 1 shards of"):
        prepare.prepare(str(src / "unbal"), out, "matpac", name="bal")
    with pytest.raises(errors.DataError, match="holds shards of another front end"):
        prepare.prepare(str(src / "unbal"), out, "beats", name="other")


def test_held_out_split_is_deterministic_and_close_to_its_fraction():
    ids = [f"clip{i:06d}" for i in range(20000)]
    a = shard_files.held_out(ids, 0.1)
    assert abs(a.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(a, shard_files.held_out(list(reversed(ids)), 0.1)[::-1])
    assert not (shard_files.held_out(ids, 0.05) & ~a).any()  # nested: a smaller split is inside


@pytest.mark.slow
def test_cli_on_gs_refuses_other_schemes_without_local_folders(gcs_bucket, tmp_path):
    src = storage.join(gcs_bucket, "in")
    _write(storage.join(src, "a.parquet"), _parquet(CLIPS[:2]))
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "matpac_jax.data.prepare", *args], capture_output=True,
        text=True, cwd=tmp_path)
    done = run(f"--input={src}", f"--output={gcs_bucket}/out", "--frontend=matpac")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["num_examples"] == 2
    assert storage.exists(f"{gcs_bucket}/out/manifest.json")
    bad = run(f"--input={src}", "--output=s3://bucket/x", "--frontend=matpac")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "error: --output s3://bucket/x: the s3:// scheme is not supported (paths are local "
        "or gs://BUCKET/...)")
    assert list(tmp_path.iterdir()) == []  # no ./s3: folder
