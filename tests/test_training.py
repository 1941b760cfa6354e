"""Training system: meshes, resume after SIGKILL, SIGTERM, non-finite guard, config errors.

Runs the real CLI (`python -m matpac_jax.main`) in subprocesses where a
process has to die, with a tiny model so each run compiles in seconds.
"""
import functools
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from matpac_jax import methods, restore
from matpac_jax.data import demo
from matpac_jax.training import metrics, trainer
from matpac_jax.training import step as step_lib

from helpers import override

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "matpac_as2m.py")

TINY = {
    "model.dim": 32, "model.depth": 1, "model.num_heads": 2, "model.pred_dim": 32,
    "model.pred_depth": 1, "model.pred_heads": 2, "model.head_out_dim": 32,
    "model.head_hidden_dim": 32, "model.head_bottleneck_dim": 16,
    "data.crop_frames": 64, "batch_size": 8, "total_steps": 8, "checkpoint_every": 4,
    "log_every": 2, "opt.warmup_steps": 2,
}


def tiny_config(shards: str, **overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_file", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("demo")
    config.lock()  # as main.py does: unknown keys are errors
    return override(config, {**TINY, "data.path": shards, **overrides})


def build(config, devices=None):
    return step_lib.build(config, methods.get(config), devices)


def train(config, workdir):
    return trainer.train(config, workdir, methods.get(config))


def cli(workdir, shards, env_extra=None, **overrides):
    flags = [f"--config.{k}={v}" for k, v in {**TINY, "data.path": shards, **overrides}.items()]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    cmd = [sys.executable, "-m", "matpac_jax.main", f"--config={CONFIG}:demo",
           f"--workdir={workdir}", *flags]
    return cmd, env


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return demo.ensure_demo_shards(str(tmp_path_factory.mktemp("demo")), "matpac", num_clips=16)


def _params(workdir):
    """Step and every model array (student, teacher, center) of the latest checkpoint."""
    from flax import nnx

    step, _ = restore.latest_checkpoint(str(workdir))
    _, model, _ = methods.load_workdir(str(workdir))
    return step, [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.mark.slow
def test_same_loss_on_1_and_8_devices_in_several_meshes(shards):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 80, 64)).astype(np.float32)
    losses = {}
    for name, mesh, devices in [
        ("1 device", {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
        ("data 8", {"data": -1, "fsdp": 1, "tensor": 1}, None),
        ("fsdp 8", {"data": 1, "fsdp": 8, "tensor": 1}, None),
    ]:  # data 2 x fsdp 2 x tensor 2: test_grad_accumulation_is_the_mean_of_its_microbatches
        config = tiny_config(shards, mesh=mesh, fsdp=mesh["fsdp"] > 1)
        run = build(config, devices)
        out = []
        for step in range(2):
            gx = trainer._to_global(run, x)
            run.state, m = run.step_fn(run.state, gx, jax.random.fold_in(jax.random.key(0), step))
            out.append(float(m["loss"]))
        losses[name] = out
    ref = losses.pop("1 device")
    for name, out in losses.items():
        np.testing.assert_allclose(out, ref, rtol=2e-5, err_msg=name)


@pytest.mark.slow
def test_config_errors_before_compilation(shards, tmp_path):
    with pytest.raises(ValueError, match="needs 6 devices"):
        step_lib.validate(tiny_config(shards, mesh={"data": 3, "fsdp": 2, "tensor": 1}))
    with pytest.raises(ValueError, match="batch_size=12 is not divisible"):
        step_lib.validate(tiny_config(shards, batch_size=12))
    with pytest.raises((AttributeError, KeyError)):
        tiny_config(shards, **{"opt.no_such_field": 1})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no .*shards"):
        train(tiny_config(str(empty)), str(tmp_path / "wd"))
    cmd, env = cli(tmp_path / "wd2", shards, **{"model.no_such_field": 1})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no_such_field" in proc.stderr


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(shards, tmp_path):
    # Uninterrupted reference.
    ref_dir = tmp_path / "ref"
    train(tiny_config(shards), str(ref_dir))
    # Killed right after its first checkpoint finished (mid-run), then resumed.
    run_dir = tmp_path / "killed"
    cmd, env = cli(run_dir, shards)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while restore.latest_checkpoint(str(run_dir)) is None:
        assert proc.poll() is None, "training exited before writing a checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = restore.latest_checkpoint(str(run_dir))[0]
    assert killed_at < 8
    train(tiny_config(shards), str(run_dir))  # same command, same workdir
    ref_step, ref_params = _params(ref_dir)
    step, params = _params(run_dir)
    assert step == ref_step == 8
    for a, b in zip(ref_params, params):
        np.testing.assert_array_equal(a, b)
    # TensorBoard scalars were written and are readable.
    scalars = metrics.read_scalars(str(ref_dir / "tensorboard"))
    for tag in ("loss", "loss_pred", "loss_cls", "lr", "ema_momentum", "teacher_temp",
                "center_entropy", "teacher_perplexity", "grad_norm", "samples_per_s"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["loss"]] == [2, 4, 6, 8]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(shards, tmp_path):
    cmd, env = cli(tmp_path / "wd", shards, total_steps=100000, checkpoint_every=100000,
                   log_every=1)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:  # wait until training steps run
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:]  # errors.Preempted: not a finished run
    step, _ = restore.latest_checkpoint(str(tmp_path / "wd"))
    assert 2 <= step < 100000
    assert out.strip().splitlines()[-1] == (
        f"preempted: at step {step} of 100000 (SIGTERM); its checkpoint is saved in "
        f"{tmp_path / 'wd'}: re-run the same command to resume (exit status 75)")


@pytest.mark.slow
def test_terminal_progress_bar_and_profile_trace(shards, tmp_path):
    """On a terminal (a real pty) the run shows a progress bar with an ETA under
    the metric lines, and `profile.num_steps` writes a jax.profiler trace into
    the workdir even when the run ends inside the profiled window."""
    import fcntl
    import pty
    import struct
    import termios

    wd = tmp_path / "wd"
    cmd, env = cli(wd, shards, total_steps=6, checkpoint_every=6,
                   **{"profile.start_step": 4, "profile.num_steps": 5})  # ends inside it
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 0x0 hides tqdm
    proc = subprocess.Popen(cmd, env=env, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(primary)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    bar = [line for line in out.replace("\r", "\n").splitlines() if "6/6" in line]
    assert bar and "<00:" in bar[-1] and "loss=" in bar[-1], out[-2000:]  # elapsed<ETA
    assert "step 2/6 " in out and "loss_pred=" in out, out[-2000:]  # metric lines above the bar
    traces = list((wd / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_nonfinite_stops_with_step_or_skips(shards, tmp_path):
    config = tiny_config(shards, total_steps=4, log_every=1)
    run = build(config)
    x = np.full((8, 80, 64), np.nan, np.float32)
    before = [np.array(a) for a in jax.tree.leaves(run.state["model"])]
    run.state, _ = run.step_fn(run.state, trainer._to_global(run, x), jax.random.key(0))
    with pytest.raises(trainer.NonFiniteError, match="step 0"):
        trainer._check_finite(run, config)

    config = tiny_config(shards, total_steps=4, nonfinite="skip")
    run = build(config)
    before = [np.array(a) for a in jax.tree.leaves(run.state["model"])]
    run.state, _ = run.step_fn(run.state, trainer._to_global(run, x), jax.random.key(0))
    trainer._check_finite(run, config)  # no raise
    after = [np.asarray(a) for a in jax.tree.leaves(run.state["model"])]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(run.state["optimizer"]["step"][...]) == 1


@pytest.mark.slow
def test_bench_reports_flops_and_mfu(shards):
    from benchmarks import bench_step as bench

    config = tiny_config(shards, peak_flops=1e12)
    result = bench.benchmark(config, per_device_batch=1, steps=1)
    assert result["global_batch"] == jax.device_count()
    assert result["flop_per_step"] > 0 and result["step_s"] > 0
    assert 0 < result["mfu"] < 1 and np.isfinite(result["loss"])
    assert result["temp_bytes"] > 0 and result["argument_bytes"] > 0
    planned = bench.benchmark(tiny_config(shards), per_device_batch=1, steps=1, compile_only=True)
    assert planned["flop_per_step"] == result["flop_per_step"] and "step_s" not in planned
    # XLA counts a loop body once; accumulation must still report the whole step.
    # (It is then read before fusion: 0.5 % lower at ViT-B, 8 % at this toy size.)
    plain, accum = (bench.benchmark(tiny_config(shards, grad_accum_steps=k), per_device_batch=4,
                                    steps=1, compile_only=True) for k in (1, 4))
    assert abs(accum["flop_per_step"] / plain["flop_per_step"] - 1) < 0.15


def test_gradient_clipping_follows_torch_clip_grad_norm():
    """g * min(1, max_norm / (norm + 1e-6)): unchanged below the limit, scaled above."""
    from matpac_jax.training import optim

    tx = optim.clip_by_global_norm(3.0)
    small = {"a": np.full((4,), 0.5, np.float32), "b": np.ones((2, 2), np.float32)}  # norm 2.236
    out, _ = tx.update(jax.tree.map(jax.numpy.asarray, small), tx.init(small))
    for k in small:
        np.testing.assert_array_equal(np.asarray(out[k]), small[k])
    big = jax.tree.map(lambda x: x * 10, small)  # norm 22.36
    out, _ = tx.update(jax.tree.map(jax.numpy.asarray, big), tx.init(big))
    norm = np.sqrt(sum(float(np.sum(np.square(v))) for v in big.values()))
    for k in big:
        np.testing.assert_allclose(np.asarray(out[k]), big[k] * 3.0 / (norm + 1e-6), rtol=1e-6)
    out_norm = np.sqrt(sum(float(np.sum(np.square(np.asarray(v)))) for v in out.values()))
    assert abs(out_norm - 3.0) < 1e-5



def test_a_step_updates_only_the_student(shards):
    """With the EMA momenta at 1 the teacher, its head and nothing but the
    student's parameters are left as they were by a real training step: the
    optimiser holds state for the student's parameters alone, and its update
    reaches every one of them."""
    from flax import nnx

    config = tiny_config(shards, **{"objective.ema_start": 1.0, "objective.ema_end": 1.0,
                                    "objective.head_ema_start": 1.0,
                                    "objective.head_ema_end": 1.0})
    run = build(config, jax.devices()[:1])
    model = nnx.merge(run.graphdef, run.state).model
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    student = {k for k in before if k[0] == "student"}
    assert student and {k for k in before if k[0] == "teacher"}
    x = np.random.default_rng(0).standard_normal((8, 80, 64)).astype(np.float32)
    state = run.state
    for i in range(2):  # the warm-up's lr is 0 at step 0
        state, _ = run.step_fn(state, trainer._to_global(run, x), jax.random.key(i))
    after = {k: np.asarray(v) for k, v in
             nnx.to_flat_state(nnx.state(nnx.merge(run.graphdef, state).model, nnx.Param))}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= student
    assert len(changed) >= len(student) - 2  # all but parameters the loss does not reach
    moments = {tuple(str(p) for p in k) for k, _ in nnx.to_flat_state(state["optimizer"])}
    assert any("student" in k for k in moments) and not any("teacher" in k for k in moments)


def _one_step(config, x):
    """Loss and updated model arrays of one step on 1 device, and the FLOPs and
    rematerialisation barriers of the step as lowered (before XLA optimises)."""
    run = build(config, jax.devices()[:1])
    gx = trainer._to_global(run, x)
    key = jax.random.key(0)
    lowered = run.step_fn.lower(run.state, gx, key)
    program = (lowered.cost_analysis()["flops"], lowered.as_text().count("optimization_barrier"))
    state, m = run.step_fn(run.state, gx, key)
    return float(m["loss"]), [np.asarray(a) for a in jax.tree.leaves(state["model"])], program


@pytest.mark.slow
@pytest.mark.parametrize("method", ["matpac", "beats_mam"])
def test_remat_recomputes_layers_and_gives_the_same_update(shards, method):
    """Memory itself is the backend's business (XLA:CPU merges the recomputation
    back; docs/BENCHMARKS.md has GPU-relevant numbers); here: same numbers, and
    the recomputation is in the program handed to XLA."""
    if method == "matpac":
        make = lambda remat: tiny_config(shards, **{"model.depth": 2, "model.remat": remat})
        x = np.random.default_rng(0).standard_normal((8, 80, 64)).astype(np.float32)
    else:
        from test_beats_training import config as beats_config

        def make(remat):
            c = beats_config("beats_iter1_as2m")
            c.model.remat = remat
            return c
        x = np.random.default_rng(0).standard_normal((8, 64, 128)).astype(np.float32)
    loss, params, (flops, barriers) = _one_step(make("none"), x)
    assert barriers == 0
    # "dots" keeps a subset of what "full" recomputes; once per method suffices.
    for remat in ("dots", "full") if method == "matpac" else ("full",):
        loss_r, params_r, (flops_r, barriers_r) = _one_step(make(remat), x)
        assert loss_r == loss, remat
        for a, b in zip(params_r, params):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=remat)
        assert barriers_r > 0, remat
        if remat == "full":  # the forward of every layer runs again in the backward
            assert flops_r > 1.1 * flops
    with pytest.raises(ValueError, match="model.remat='some'"):
        step_lib.validate(make("some"))


@pytest.mark.slow
def test_grad_accumulation_is_the_mean_of_its_microbatches(shards):
    """Loss, gradients and MATPAC's center: k microbatches give the mean of k
    separate half-batch computations (strided rows, keys fold_in(rng, i))."""
    from flax import nnx

    run = build(tiny_config(shards), jax.devices()[:1])
    x = np.random.default_rng(0).standard_normal((8, 80, 64)).astype(np.float32)
    key, step = jax.random.key(3), 5

    @functools.partial(jax.jit, static_argnums=3)  # op by op, this test took a minute
    def compute(state, xb, k, accum):
        model = nnx.merge(run.graphdef, state).model  # a copy
        (loss, aux), grads = step_lib.loss_and_grads(run.method, model, {"x": xb}, k, step, accum)
        return loss, aux, grads, model.center[...]

    loss, aux, grads, center = compute(run.state, x, key, 2)
    parts = [compute(run.state, x[i::2], jax.random.fold_in(key, i), 1) for i in range(2)]
    mean = lambda *a: (a[0] + a[1]) / 2
    np.testing.assert_allclose(loss, mean(parts[0][0], parts[1][0]), rtol=1e-6)
    np.testing.assert_allclose(
        aux["loss_cls"], mean(parts[0][1]["loss_cls"], parts[1][1]["loss_cls"]), rtol=1e-6)
    np.testing.assert_allclose(center, mean(parts[0][3], parts[1][3]), rtol=1e-6, atol=1e-9)
    ref = jax.tree.map(mean, parts[0][2], parts[1][2])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(parts[0][3], parts[1][3])  # the center really depends on the batch

    # Sharded over data, fsdp and tensor axes, the same microbatches and losses.
    x16 = np.random.default_rng(1).standard_normal((16, 80, 64)).astype(np.float32)
    losses = []
    for mesh, devices in [({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
                          ({"data": 2, "fsdp": 2, "tensor": 2}, None)]:
        run = build(tiny_config(shards, batch_size=16, grad_accum_steps=2, mesh=mesh,
                                        fsdp=mesh["fsdp"] > 1), devices)
        out = []
        for i in range(2):
            run.state, m = run.step_fn(run.state, trainer._to_global(run, x16), jax.random.key(i))
            out.append(float(m["loss"]))
        losses.append(out)
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-5)

    # The divisibility check, before compiling. (The training loop calls
    # `step_fn`, run above; the CLI tests cover the loop.)
    with pytest.raises(ValueError, match="grad_accum_steps=2 microbatches"):
        step_lib.validate(tiny_config(shards, batch_size=8, grad_accum_steps=2))


def test_peak_flops_by_device_kind():
    """MFU's denominator: the most specific known name in the device kind wins."""
    from types import SimpleNamespace as Device

    assert metrics.peak_flops(Device(device_kind="NVIDIA H100 80GB HBM3")) == 989e12
    assert metrics.peak_flops(Device(device_kind="NVIDIA H100 PCIe")) == 756e12
    assert metrics.peak_flops(Device(device_kind="TPU v5 lite")) == 197e12
    assert metrics.peak_flops(Device(device_kind="TPU v5p")) == 459e12
    assert metrics.peak_flops(Device(device_kind="cpu")) is None
    assert metrics.peak_flops(Device(device_kind="cpu"), override=1e12) == 1e12
