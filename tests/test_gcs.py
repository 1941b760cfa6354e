"""Everything on Cloud Storage, against a real GCS server (fake-gcs-server on
localhost; conftest.gcs_server): STORAGE_EMULATOR_HOST alone sends every gs://
path of the project there, in this process and in the CLIs it starts."""
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from matpac_jax import errors, restore, storage
from matpac_jax.data import demo, loader
from matpac_jax.data import shards as shard_files
from matpac_jax.training import metrics

import test_training as tt


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory):
    return demo.ensure_demo_shards(str(tmp_path_factory.mktemp("demo")), "matpac", num_clips=16)


def _upload(local: str, remote: str) -> str:
    for path in storage.find(local):
        storage.copy_file(path, storage.join(remote, os.path.relpath(path, local)))
    return remote


def test_paths_of_other_schemes_are_one_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("s3://bucket/x", "http://host/x", "hf://datasets/x"):
        with pytest.raises(errors.PathError, match="scheme is not supported"):
            storage.check(bad, "--output")
    with pytest.raises(errors.PathError, match="needs a bucket"):
        storage.check("gs://", "--workdir")
    with pytest.raises(errors.PathError, match="did you mean gs://"):
        storage.check("gs:/bucket/x", "--out")
    with pytest.raises(errors.PathError):
        tt.train(tt.tiny_config("unused"), "s3://bucket/run")
    assert list(tmp_path.iterdir()) == []  # nothing named after the scheme


class _Forbidden(http.server.BaseHTTPRequestHandler):
    """A storage server that refuses every request, as GCS does to a caller
    without access."""

    def _refuse(self):
        body = b'{"error": {"code": 403, "message": "caller has no storage.objects.get access"}}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args):
        pass


def test_a_refusing_server_is_one_error_line_not_a_missing_file(tmp_path):
    """gcsfs's own exists() answers False when the server refuses; a user would
    read "no such input" and look for a typo instead of their credentials."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, storage.EMULATOR_ENV: f"http://127.0.0.1:{server.server_address[1]}"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "matpac_jax.data.prepare", "--input=gs://bucket/audio",
             f"--output={tmp_path}/out", "--frontend=matpac"],
            capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.shutdown()
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(
        "error: gs://bucket/audio: Cloud Storage refused or did not answer ("), done.stderr
    assert "Forbidden" in last and "credentials" in last
    assert "Traceback" not in done.stderr


def test_loader_gives_the_same_batches_from_gs_as_from_disk(local_shards, gcs_bucket):
    remote = _upload(local_shards, storage.join(gcs_bucket, "shards"))
    kwargs = dict(frontend="matpac", crop_frames=64, batch_size=4, seed=3, num_epochs=2,
                  shard_index=0, shard_count=1, with_ids=True, read_threads=2)
    here = list(loader.make_loader(local_shards, **kwargs))
    there = list(loader.make_loader(remote, **kwargs))
    assert len(here) == len(there) == 8
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a["x"], b["x"])
        assert list(a["id"]) == list(b["id"])


def test_prepare_gs_audio_folder_to_gs_shards_lists_a_bad_file(gcs_bucket, tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    src = storage.join(gcs_bucket, "audio")
    for name, sr in (("a.wav", 16000), ("sub/b.flac", 44100)):
        local = tmp_path / os.path.basename(name)
        sf.write(local, 0.1 * rng.standard_normal(sr), sr)
        storage.copy_file(str(local), storage.join(src, name))
    storage.write_bytes(storage.join(src, "broken.wav"), b"RIFF0000WAVEnot audio")
    from matpac_jax.data import prepare

    m = prepare.prepare(src, storage.join(gcs_bucket, "shards"), "m2d")
    assert m["num_examples"] == 2 and [s["file"] for s in m["skipped"]] == [
        storage.join(src, "broken.wav")]
    ids = shard_files.record_ids(shard_files.find_shards(storage.join(gcs_bucket, "shards")))
    assert sorted(ids) == ["a.wav", "sub/b.flac"]


def _launch(workdir, shards, tmp_path, total_steps, kill_at=None):
    """2 processes x 4 CPU devices (real jax.distributed) training with gs://
    data and workdir; with `kill_at`, SIGKILL both once that step's checkpoint
    is complete."""
    import portpicker

    port = portpicker.pick_unused_port()
    procs, logs = [], [tmp_path / f"log_{time.time_ns()}_{i}.txt" for i in range(2)]
    for i, path in enumerate(logs):
        cmd, env = tt.cli(workdir, shards, env_extra={
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
            total_steps=total_steps, checkpoint_every=2)
        cmd += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}"]
        with open(path, "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.time() + 600
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() or re.search("^(error: |Traceback)", f.read_text(), re.M)
               for p, f in zip(procs, logs)):
            break
        if kill_at is not None and kill_at in restore.finished_steps(workdir):
            for p in procs:
                p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None and kill_at is None:
            p.kill()
        p.wait()
    outs = [f.read_text() for f in logs]
    if kill_at is None:
        assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outs)
    return outs


@pytest.mark.slow
def test_two_processes_on_gs_sigkill_resume_bitwise_then_export_embed(
        local_shards, gcs_bucket, tmp_path):
    """Real jax.distributed on localhost (2 processes x 4 CPU devices, gloo
    collectives), data and workdir on the bucket; also the project's
    multi-process resume test (each process restores its own data state)."""
    shards = _upload(local_shards, storage.join(gcs_bucket, "shards"))
    ref, run = storage.join(gcs_bucket, "ref"), storage.join(gcs_bucket, "run")
    _launch(ref, shards, tmp_path, total_steps=6)
    _launch(run, shards, tmp_path, total_steps=6, kill_at=2)
    killed_at = restore.finished_steps(run)[0]
    assert killed_at < 6
    outs = _launch(run, shards, tmp_path, total_steps=6)  # the same command again
    assert "process 0 of 2, 4 local / 8 global devices" in outs[0]
    assert all(f"Resuming from step {killed_at}" in o for o in outs)
    (ref_step, ref_params), (step, params) = tt._params(ref), tt._params(run)
    assert step == ref_step == 6
    for a, b in zip(ref_params, params):
        np.testing.assert_array_equal(a, b)
    # Both processes' data-iterator states and TensorBoard's events are in the bucket.
    assert {p.rpartition("/")[2] for p in storage.listdir(f"{run}/checkpoints/6/data")} >= {
        "process_0-of-2.json", "process_1-of-2.json"}
    scalars = metrics.read_scalars(f"{ref}/tensorboard")
    assert [s for s, _ in scalars["loss"]] == [2, 4, 6]
    # Export to gs:// and read back; embed from the gs:// workdir with the CLI.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    exported = f"{gcs_bucket}/exports/matpac.pt"
    done = subprocess.run([sys.executable, "-m", "matpac_jax.export", f"--checkpoint={ref}",
                           f"--out={exported}"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    from matpac_jax import export
    from matpac_jax.conversion import torch_pickle

    local = export.export(ref, tmp_path / "matpac.pt").path
    got, want = torch_pickle.load(exported), torch_pickle.load(local)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    import matpac_jax

    wave = [0.1 * np.random.default_rng(1).standard_normal(16000).astype(np.float32)]
    clip = storage.join(gcs_bucket, "clip.flac")
    import soundfile as sf

    sf.write(tmp_path / "clip.flac", wave[0], 16000)
    storage.copy_file(str(tmp_path / "clip.flac"), clip)
    out = f"{gcs_bucket}/emb.npz"
    done = subprocess.run([sys.executable, "-m", "matpac_jax.embed", f"--checkpoint={ref}",
                           f"--out={out}", clip], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    import io

    with np.load(io.BytesIO(storage.read_bytes(out))) as z:
        np.testing.assert_allclose(z["clip"], matpac_jax.load(ref).clip_embeddings([clip]),
                                   rtol=1e-5, atol=1e-6)
        assert list(z["files"]) == [clip]
    jax.clear_caches()


def test_evaluate_a_gs_checkpoint_on_a_gs_release_folder(gcs_bucket, fixtures_dir, tmp_path):
    """ESC-50 as released, in the bucket; the official file too; results back there."""
    import json

    import replicas
    from matpac_jax import evaluate

    replicas.esc50(tmp_path / "ESC-50-master", per_fold=2)
    task = _upload(str(tmp_path / "ESC-50-master"), f"{gcs_bucket}/ESC-50-master")
    ckpt = f"{gcs_bucket}/matpac_flat.pt"
    storage.copy_file(str(fixtures_dir / "matpac_flat.pt"), ckpt)
    out = f"{gcs_bucket}/results/esc50.json"
    assert evaluate.main([f"--checkpoint={ckpt}", f"--task=esc50:{task}", f"--out={out}",
                          "--seeds=42", "--cache_dir="]) == 0
    r = json.loads(storage.read_text(out))["tasks"]["esc50"]
    assert [f["test_fold"] for f in r["folds"]] == [1, 2, 3, 4, 5]
    assert r["protocol"]["unit_sec"] == 5.0
