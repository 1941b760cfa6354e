"""Faults and bad input end in one clear line, fall back where they can, lose nothing.

Real faults on real parts: a truncated array file in an orbax checkpoint
written by our Checkpointer, a file-size limit (`RLIMIT_FSIZE`) hit while
saving, a lock held through another open file (and, slow, another process),
a full tmpfs (slow, where mounting one is allowed).
"""
import errno
import glob
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import logging as absl_logging
from flax import nnx

from matpac_jax import cli, embed, errors, evaluate, methods, restore
from matpac_jax.training import checkpoint as ckpt
from matpac_jax.training import step as step_lib
from matpac_jax.training import trainer, workdir_lock

from test_training import CONFIG, build, cli as train_cli, shards, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def saved(tmp_path_factory, shards):
    """A workdir with real checkpoints 4 and 8 of the tiny model (the train
    state as built; the data iterator one batch further at 8)."""
    config = tiny_config(shards)
    run = build(config)
    data = trainer.make_data(config, run.method, shards)
    wd = tmp_path_factory.mktemp("saved") / "wd"
    c = ckpt.Checkpointer(str(wd), every=4, keep=3, asynchronous=False)
    c.save(4, run.state, data, config, architecture=run.method.architecture(), force=True)
    data_state_4 = data.get_state()
    next(data)
    c.save(8, run.state, data, config, architecture=run.method.architecture(), force=True)
    c.close()
    return wd, config, run, data_state_4


def _copy(saved, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(saved[0], wd)
    return wd


def _truncate_largest_array(step_dir):
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(1000)


def _abstract(run):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        run.state, run.state_shardings)


def test_damaged_newest_checkpoint_moved_aside_and_older_one_restored(saved, tmp_path, caplog):
    wd = _copy(saved, tmp_path)
    _, config, run, data_state_4 = saved
    _truncate_largest_array(wd / "checkpoints" / "8")
    files_8 = sorted(p.relative_to(wd / "checkpoints" / "8")
                     for p in (wd / "checkpoints" / "8").rglob("*"))
    # Readers (embed, evaluate, fine-tuning) fall back and rename nothing.
    with caplog.at_level("WARNING"):
        _, model, _ = methods.load_workdir(str(wd))
    assert any("checkpoints/8 is damaged" in r.getMessage() and "OUT_OF_RANGE" in r.getMessage()
               for r in caplog.records)
    assert (wd / "checkpoints" / "8").exists()
    # Training's restore moves step 8 aside (all its files kept) and restores 4.
    data = trainer.make_data(config, run.method, config.data.path)
    c = ckpt.Checkpointer(str(wd), every=4, keep=3)
    caplog.clear()
    with caplog.at_level("WARNING"):
        step, state = c.restore_latest(_abstract(run), data)
    c.close()
    assert step == 4
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and "step 8" in warnings[0] and "resuming from step 4" in warnings[0]
    moved = glob.glob(str(wd / "checkpoints" / "8.corrupt-*"))
    assert len(moved) == 1 and moved[0] in warnings[0]
    assert sorted(p.relative_to(moved[0]) for p in pathlib.Path(moved[0]).rglob("*")) == files_8
    assert restore.latest_checkpoint(str(wd))[0] == 4
    assert data.get_state() == data_state_4
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(run.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(state["model"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_intact_checkpoint_is_one_line_and_moves_nothing(saved, tmp_path, capsys):
    wd = _copy(saved, tmp_path)
    _, config, run, _ = saved
    for step in ("4", "8"):
        _truncate_largest_array(wd / "checkpoints" / step)
    c = ckpt.Checkpointer(str(wd), every=4, keep=3)
    with pytest.raises(errors.CheckpointError, match="no checkpoint restores: step 8: .*OUT_OF"
                                                     ".*; step 4: .*Nothing was moved"):
        c.restore_latest(_abstract(run), None)
    c.close()
    assert sorted(os.listdir(wd / "checkpoints")) == ["4", "8"]
    audio = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(audio, np.zeros(16000, np.float32), 16000)
    assert cli.run(embed.main, [f"--checkpoint={wd}", f"--out={tmp_path / 'e.npz'}",
                                str(audio)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {wd}: no intact checkpoint (") and "Traceback" not in err


def test_resume_with_a_state_changing_config_is_refused_before_anything_is_built(
        saved, tmp_path):
    wd = _copy(saved, tmp_path)
    _, config, _, _ = saved
    changed = tiny_config(config.data.path, **{"model.dim": 64, "objective.mask_ratio": 0.6})
    with pytest.raises(errors.ConfigError) as err:
        trainer.train(changed, str(wd), methods.get(changed))
    message = str(err.value)
    assert "model.dim: 32 -> 64" in message and "objective.mask_ratio: 0.7 -> 0.6" in message
    assert "checkpoint step 8" in message and "Use a new workdir" in message
    assert "total_steps" in message  # the keys that may change are listed
    # Keys safe on resume pass; keys that only one side has are not compared.
    saved_config = restore.load_config(wd / "checkpoints" / "8").to_dict()
    del saved_config["data"]["corrupt_records"]
    safe = tiny_config(config.data.path, total_steps=100, log_every=1, checkpoint_every=7,
                       **{"data.workers": 2, "data.path": "/elsewhere", "model.remat": "full",
                          "data.corrupt_records": "skip", "mesh.data": 4, "mesh.fsdp": 2})
    ckpt.check_resume_config(saved_config, safe, "wd")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's tasks
def test_failed_save_names_step_cause_and_last_checkpoint_then_resumes(tmp_path, caplog):
    """The disk refuses a write (RLIMIT_FSIZE: EFBIG, the same path through
    tensorstore as ENOSPC; the slow test fills a real tmpfs)."""
    config = ml_collections.ConfigDict({"a": 1})
    big = {"w": jax.random.normal(jax.random.key(0), (256, 256))}
    c = ckpt.Checkpointer(str(tmp_path), every=1, keep=3)
    c.save(1, {"w": jnp.ones((4,))}, None, config, force=True)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(errors.CheckpointError) as err:
            c.save(2, big, None, config, force=True)
            c.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    c.close(quiet=True)
    assert str(err.value) == (
        f"saving checkpoint step 2 failed: file too large (the file system's or `ulimit -f`'s "
        f"limit) (the disk holding {tmp_path}/checkpoints). Nothing was lost: the last complete "
        f"checkpoint is step 1 ({tmp_path}/checkpoints/1); re-running the same command resumes "
        "from it.")
    assert restore.finished_steps(str(tmp_path)) == [1]
    assert any(".orbax-checkpoint-tmp" in p for p in os.listdir(tmp_path / "checkpoints"))
    # The next run ignores the half-written folder and saves that step again.
    c = ckpt.Checkpointer(str(tmp_path), every=1, keep=3)
    assert c.latest_step() == 1
    c.save(2, big, None, config, force=True)
    c.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_disk_errors_are_recognised_through_orbax_wrapping():
    wrapped = ValueError("RESOURCE_EXHAUSTED: ... Failed to write 94541 bytes to file 9: "
                         "No space left on device [os_error_code='28']")
    assert ckpt._disk_error(RuntimeError("x").with_traceback(None)) is None
    outer = RuntimeError("save failed")
    outer.__cause__ = wrapped
    assert ckpt._disk_error(outer) == "no space left on device"
    assert ckpt._disk_error(OSError(errno.EDQUOT, "quota")) == "disk quota exceeded"


def test_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path, shards):
    wd = str(tmp_path / "wd")
    with workdir_lock.WorkdirLock(wd):  # an open file of its own: as another process
        config = tiny_config(shards)
        with pytest.raises(errors.LockError) as err:
            trainer.train(config, wd, methods.get(config))
    message = str(err.value)
    assert message.startswith(f"{wd} is in use by another run (host {socket.gethostname()}, "
                              f"pid {os.getpid()}, since 20")
    assert "use another --workdir" in message
    with workdir_lock.WorkdirLock(wd):  # released: the next run takes it
        pass
    with workdir_lock.WorkdirLock("gs://bucket/run"):  # object stores: no lock, a warning
        pass
    with workdir_lock.WorkdirLock(wd, primary=False):  # other hosts of a run: no lock
        with workdir_lock.WorkdirLock(wd):
            pass


@pytest.mark.parametrize("overrides, message", [
    ({"objective.mask_ratio": 1.0}, "config.objective.mask_ratio=1.0: must be in (0, 1), "
                                    "leaving at least one of the 20 patches visible"),
    ({"data.crop_frames": 70}, "config.data.crop_frames=70: must be a whole number (>= 1) "
                               "of model.patch=16 frames"),
    ({"objective.ema_start": 1.5}, "config.objective.ema_start=1.5: must be in [0, 1]"),
    ({"objective.alpha": -0.1}, "config.objective.alpha=-0.1: must be in [0, 1]"),
    ({"objective.student_temp": 0.0}, "config.objective.student_temp=0.0: must be > 0"),
    ({"opt.b2": 1.0}, "config.opt.b2=1.0: must be in [0, 1)"),
    ({"log_every": 0}, "config.log_every=0: must be >= 1"),
    ({"data.corrupt_records": "maybe"}, "config.data.corrupt_records='maybe': must be "
                                        "'stop' or 'skip'"),
    ({"nonfinite": "ignore"}, "config.nonfinite='ignore': must be 'stop' or 'skip'"),
    ({"batch_size": 12}, "config.batch_size=12 is not divisible by the data-parallel size 8"),
    ({"model.num_heads": 3}, "config.model.dim=32: must be divisible by model.num_heads=3"),
])
def test_config_values_are_refused_naming_key_and_range(shards, overrides, message):
    config = tiny_config(shards, **overrides)
    with pytest.raises(errors.ConfigError) as err:
        step_lib.validate(config, method=methods.get(config))
    assert str(err.value).startswith(message)


def test_beats_config_values_are_validated():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "beats_config", pathlib.Path(CONFIG).parent / "beats_iter1_as2m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("demo")
    method = methods.get(config)
    method.validate_config(config)
    config.objective.mask_ratio = 0.0
    with pytest.raises(errors.ConfigError, match=r"config.objective.mask_ratio=0.0: must be "
                                                 r"in \(0, 1\)"):
        method.validate_config(config)
    config.objective.mask_ratio, config.data.crop_frames = 0.75, 300
    with pytest.raises(errors.ConfigError, match="config.data.crop_frames=300: must be a whole "
                                                 "number"):
        method.validate_config(config)


def test_cli_errors_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import soundfile as sf

    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(16000, np.float32), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    task = tmp_path / "task"
    task.mkdir()
    rows = ["file,label,split", f"{good},a,train", f"{good},b,test"]
    rows += [f"missing{i}.wav,a,train" for i in range(7)]
    rows += [f"{tmp_path / 'empty.wav'},b,test", f"{tmp_path / 'junk.wav'},a,test"]
    (task / "meta.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "new" / "folder" / "r.json"
    argv = ["--checkpoint=logmel-baseline", f"--task={task}", f"--out={out}", "--cache_dir="]
    assert cli.run(evaluate.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {task}/meta.csv: 9 of 11 audio files cannot be used: "
                             f"{task}/missing0.wav (no such file), ")
    assert err[0].endswith(", and 4 more")
    assert out.parent.is_dir()  # output folder made before the work, too
    # The traceback on demand.
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(errors.AudioError):
        cli.run(evaluate.main, argv)
    monkeypatch.delenv(cli.TRACEBACK_ENV)
    # An output path that cannot be created fails first, in one line.
    (tmp_path / "afile").write_text("")
    assert cli.run(embed.main, ["--checkpoint=x.pt", f"--out={tmp_path}/afile/e.npz",
                                str(good)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}/afile/e.npz: cannot create "
                                               "its folder")
    # A missing task folder's meta.csv and a missing .pt: one line each.
    assert cli.run(evaluate.main, ["--checkpoint=logmel-baseline", f"--task={tmp_path}/none",
                                   f"--out={out}"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}/none/meta.csv: no such file (a task folder holds meta.csv: "
        "file,label,split; or give NAME:PATH for a released dataset, python -m "
        "matpac_jax.evaluate --help)")
    assert cli.run(embed.main, [f"--checkpoint={tmp_path}/none.pt", f"--out={out}",
                                str(good)]) == 1
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path}/none.pt"


def test_third_party_info_logs_are_off_ours_and_warnings_stay():
    import orbax.checkpoint

    cli.quiet_third_party_logs()
    handler = absl_logging.get_absl_handler()
    orbax_file = orbax.checkpoint.__file__
    ours = trainer.__file__

    def passes(path, level, exc_info=None):
        import logging

        record = logging.LogRecord("absl", level, path, 1, "m", (), exc_info)
        return handler.filter(record)

    assert not passes(orbax_file, absl_logging.converter.STANDARD_INFO)
    assert passes(orbax_file, absl_logging.converter.STANDARD_WARNING)
    assert passes(ours, absl_logging.converter.STANDARD_INFO)
    try:
        raise ValueError("save failed")
    except ValueError:
        info = sys.exc_info()
    assert passes("/usr/lib/python3/asyncio/base_events.py", 40, info)  # not orbax's
    assert not passes(orbax_file, 40, info)  # orbax's traceback; we report it in one line
    # asyncio on a failed write's future that orbax's abandoned save never awaited.
    write = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
                       'file "/wd/checkpoints/8.orbax-checkpoint-tmp/state.orbax-checkpoint-'
                       'tmp/ocdbt.process_0/": ... No space left on device')
    assert not passes("/usr/lib/python3/asyncio/base_events.py", 40, (ValueError, write, None))


def test_orbax_work_abandoned_after_a_failure_is_not_reported_other_unraisables_are(
        monkeypatch):
    """The two records Python reports, one per array, for the work orbax's
    closed event loop left behind after a failed save or restore, made here the
    same way: tensorstore's completion callback on the closed loop, and an
    orbax read coroutine closed when collected."""
    import asyncio
    import gc

    import tensorstore as ts
    from orbax.checkpoint._src.serialization import limits, serialization

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    cli._drop_abandoned_orbax_work()
    loop = asyncio.new_event_loop()
    loop.close()
    promise, future = ts.Promise.new()
    future.add_done_callback(loop.call_soon_threadsafe)  # as tensorstore's Future.__await__
    promise.set_result(1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        read = serialization._read_array_index_and_device_put(
            jax.devices()[:1], (slice(0, 4),), ts.array(np.zeros(4, np.float32)),
            global_shape=(4,), new_shard_shape=(4,), dtype=None,
            byte_limiter=limits.get_byte_limiter(), strict=True, dll=None, memory_kind=None)
        read.send(None)  # suspended in the tensorstore read, as when orbax's loop closed
        del read
        gc.collect()  # closed: GeneratorExit -> orbax's "Encountered error while reading"
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert seen == []
    promise, future = ts.Promise.new()
    future.add_done_callback(lambda f: 1 / 0)
    promise.set_result(1)
    assert [u.exc_type for u in seen] == [ZeroDivisionError]


# --- Slow: the commands as a user runs them, in subprocesses --------------------------


def _run(cmd, env, timeout=240):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors_ = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors_) == 1 and proc.stderr.rstrip().endswith(errors_[0]), proc.stderr[-3000:]
    return errors_[0]


@pytest.mark.slow
def test_cli_lock_held_by_another_process_and_released_by_sigkill(shards, tmp_path):
    wd = tmp_path / "wd"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from matpac_jax.training import workdir_lock; "
         f"workdir_lock.WorkdirLock({str(wd)!r}).acquire(); print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    cmd, env = train_cli(wd, shards, **{"objective.mask_ratio": 1.0})
    proc = _run(cmd, env)
    line = _one_error_line(proc)
    assert line.startswith("error: config.objective.mask_ratio=1.0: must be in (0, 1)")
    cmd, env = train_cli(wd, shards)
    line = _one_error_line(_run(cmd, env))
    assert line.startswith(f"error: {wd} is in use by another run (host {socket.gethostname()}, "
                           f"pid {holder.pid}, since ")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workdir_lock.WorkdirLock(str(wd)):  # a SIGKILLed holder does not block
        pass


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


_LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")


def _unlogged(proc, config):
    """Lines of stderr that are neither absl log lines nor lines of the config
    the run logs: tracebacks, orbax's 'Event loop is closed', error lines."""
    logged = set(str(config).splitlines()) | {""}
    return [l for l in proc.stderr.splitlines() if not _LOG_LINE.match(l) and l not in logged]


def _only_error_line(proc, config):
    """The one error line, checked to be the last line of stderr and its only
    line that is not a log line."""
    line = _one_error_line(proc)
    assert _unlogged(proc, config) == [line], proc.stderr[-3000:]
    assert "Event loop is closed" not in proc.stderr
    return line


@pytest.mark.slow
def test_cli_full_disk_while_saving_then_resume_once_space_is_back(saved, shards, tmp_path):
    disk = tmp_path / "small_disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        wd = disk / "wd"
        shutil.copytree(saved[0] / "checkpoints" / "4", wd / "checkpoints" / "4")
        # Fill the disk but for less than one checkpoint of the tiny model.
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (free - 300_000))
        cmd, env = train_cli(wd, shards)
        proc = _run(cmd, env)
        line = _only_error_line(proc, tiny_config(shards))
        assert line == (
            f"error: saving checkpoint step 8 failed: no space left on device (the disk "
            f"holding {wd}/checkpoints). Nothing was lost: the last complete checkpoint is step "
            f"4 ({wd}/checkpoints/4); re-running the same command resumes from it once space "
            "is free.")
        assert "orbax" not in proc.stderr
        os.remove(disk / "filler")
        proc = _run(cmd, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Resuming from step 4" in proc.stderr
        assert sorted(os.listdir(wd / "checkpoints")) == ["4", "8"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_cli_corrupt_newest_checkpoint_and_skipped_records_on_resume(shards, tmp_path):
    """A run that stopped at a corrupt record resumes with corrupt_records=skip
    past a damaged newest checkpoint; the count is logged and in TensorBoard.
    One record has a flipped payload byte, one a flipped length-header byte
    (its shard's index is then rebuilt from the headers)."""
    from matpac_jax.data import tfrecord
    from matpac_jax.data import shards as shard_files
    from matpac_jax.training import metrics

    bad = tmp_path / "bad_shards"
    shutil.copytree(shards, bad)
    shard = shard_files.find_shards(str(bad))[0]
    offsets = tfrecord.build_index(shard)[:, 0]
    data = bytearray(open(shard, "rb").read())
    data[offsets[1] + 40] ^= 0xFF  # payload
    data[offsets[3] + 3] ^= 0xFF  # length header
    open(shard, "wb").write(bytes(data))
    os.utime(shard, ns=(os.stat(f"{shard}.index.npy").st_mtime_ns + 10**9,) * 2)
    wd = tmp_path / "wd"
    cmd, env = train_cli(wd, str(bad))
    line = _one_error_line(_run(cmd, env))
    assert line.startswith(f"error: corrupt TFRecord {shard} at byte offset {offsets[3]}: "
                           "length checksum mismatch")  # met indexing, before any step
    cmd, env = train_cli(wd, str(bad), **{"data.corrupt_records": "skip"})
    proc = _run(cmd, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data/corrupt_records=" in proc.stdout
    assert proc.stderr.count("skipped (config.data.corrupt_records='skip')") == 2  # once each
    _truncate_largest_array(wd / "checkpoints" / "8")
    overrides = {"total_steps": 12, "data.corrupt_records": "skip"}
    cmd, env = train_cli(wd, str(bad), **overrides)
    proc = _run(cmd, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 8 is damaged" in proc.stderr and "Resuming from step 4" in proc.stderr
    assert _unlogged(proc, tiny_config(str(bad), **overrides)) == [], proc.stderr[-3000:]
    assert len(glob.glob(str(wd / "checkpoints" / "8.corrupt-*"))) == 1
    # 16 clips, 8 a step: each record is met once per 2 steps; the resumed run
    # continues from step 4's count.
    counts = dict(metrics.read_scalars(str(wd / "tensorboard"))["data/corrupt_records"])
    assert counts == {2: 2, 4: 4, 6: 6, 8: 8, 10: 10, 12: 12}
