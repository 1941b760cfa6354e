"""`matpac_jax.plan`: the real step compiled for a TPU slice this machine does not have.

libtpu (the `dev` extra) brings XLA's TPU compiler; `get_topology_desc`
gives compile-only devices of a v5p / v5e slice. Tiny configs of every
method compile in seconds. What must agree with training is checked against
training's own build on the CPU: the FLOPs of the program and the shardings.
The CUDA target needs 3.2 GB of wheels and stays out of CI
(benchmarks/plan_gpu.sh).
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matpac_jax import methods, plan
from matpac_jax.planning import analysis, hlo_stats, targets
from matpac_jax.training import sharding, step

from helpers import override
from test_training import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: pip install -e '.[dev]' brings it (Linux x86-64)",
                allow_module_level=True)


def _tpu(name):
    try:
        target = targets.parse(name)
        return target, targets.devices(target)
    except Exception as e:  # libtpu present but unable to load here
        pytest.skip(f"libtpu cannot build a {name} topology on this machine: {e}")


def config(name, **overrides):
    """configs/<name>.py:demo at test size (one layer, 64-frame crops, batch 16)."""
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("demo" if name != "finetune_esc50" else None)
    c.lock()
    c.batch_size, c.data.crop_frames = 16, 64
    if "encoder_layers" in c.model:
        c.model.encoder_layers = 1
    for key in ("predictor_layers", "estimator_layers"):
        if key in c.get("objective", {}):
            c.objective[key] = 1
    return override(c, overrides)


METHOD_CONFIGS = {
    "matpac": lambda: tiny_config("/unused", batch_size=16),
    "matpacpp": lambda: config("matpacpp_as2m", **{
        "model.dim": 32, "model.depth": 1, "model.num_heads": 2, "model.pred_dim": 32,
        "model.pred_depth": 1, "model.pred_heads": 2, "model.head_out_dim": 32,
        "model.head_hidden_dim": 32, "model.head_bottleneck_dim": 16}),
    "beats_iter1": lambda: config("beats_iter1_as2m"),
    "beats_tokenizer": lambda: config("beats_tokenizer_as2m",
                                      teacher_checkpoint="gs://not-read/beats_iter1"),
    "finetune": lambda: config("finetune_esc50", **{
        "finetune.checkpoint": str(ROOT / "tests" / "fixtures" / "m2d_checkpoint-300.pth")}),
}


@pytest.mark.slow  # a TPU compile each (~30 s on 2 cores)
@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_every_method_compiles_for_a_tpu_slice(name):
    target, devices = _tpu("v5p-8")
    p = analysis.analyse(METHOD_CONFIGS[name](), target, devices)
    assert p["devices"] == 4 and p["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert p["fits"] and 0 < p["peak_bytes_per_device"] < p["hbm_bytes_per_device"]
    assert p["peak_bytes_per_device"] >= p["argument_bytes_per_device"]
    assert p["flops_per_step"] > 0 and p["xla_flops_per_step"] > 0
    # Data parallel: the gradients are all-reduced over the 4 chips, and no
    # device computes more than its share of the batch (a gather indexed by
    # arange(B) once made XLA replicate BEATs' whole step on every device).
    assert p["collectives"]["all-reduce"]["group"] == 4
    assert p["xla_flops_per_step"] < 2 * p["flops_per_step"]
    assert p["roofline_step_s"] >= p["roofline"]["compute_s"] > 0


@pytest.mark.slow  # a TPU and a CPU compile
def test_plan_flops_and_shardings_agree_with_the_training_build():
    """FSDP over a 2 x 2 mesh: every leaf's partition spec is training's, and the
    FLOPs counted from the lowered program are XLA:CPU's for the same step."""
    target, devices = _tpu("v5p-8")
    overrides = {"fsdp": True, "mesh.data": 2, "mesh.fsdp": 2, "model.dim": 64,
                 "model.num_heads": 2}
    c = tiny_config("/unused", batch_size=16, **overrides)
    abstract = step.build(c, methods.get(c), devices, materialize=False)
    real = step.build(c, methods.get(c), jax.devices()[:4])
    specs = lambda run: [s.spec for s in jax.tree.leaves(
        run.state_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))]
    assert specs(abstract) == specs(real)
    assert any(sharding.MESH_AXES[1] in str(s) for s in specs(real))  # something is sharded
    assert [a.sharding.spec for a in jax.tree.leaves(abstract.state)] == specs(real)

    p = analysis.analyse(c, target, devices)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=sharding.batch_sharding(real.mesh, len(v.shape)))
             for k, v in step.abstract_batch(real).items()}
    lowered = real.step_fn.lower(real.state, batch, jax.random.key(0))
    cpu_flops = lowered.compile().cost_analysis()["flops"] * 4
    assert hlo_stats.matmul_flops(lowered.as_text(dialect="hlo")) == p["flops_per_step"]
    # XLA:CPU counts every elementwise op too; the matmuls are most of it.
    assert 0.5 * cpu_flops < p["flops_per_step"] <= cpu_flops
    # TPU's count after its own fusion and rematerialisation: the same program.
    assert p["xla_flops_per_step"] == pytest.approx(cpu_flops, rel=0.25)
    placed = p["placement"]
    assert placed["batch.x"]["specs"] == {"(('data', 'fsdp'), None, None)": 1}
    assert placed["model.student"]["bytes_per_device"] < placed["model.student"]["bytes"]


def test_oversized_batch_is_reported_as_not_fitting():
    """XLA's TPU compiler refuses a step no rematerialisation fits (in seconds);
    the plan reports it with the memory it asked for."""
    target, devices = _tpu("v5e-4")
    c = tiny_config("/unused", batch_size=4 * 2**20)
    p = analysis.analyse(c, target, devices)
    assert not p["fits"] and p["margin_bytes"] < 0
    assert p["peak_bytes_per_device"] > 2 * p["memory_budget_bytes"]
    assert p["collectives"] == {} and p["flops_per_step"] > 0
    assert "DOES NOT FIT, over by" in analysis.format_plan(p)


def test_fit_stops_at_the_first_plan_that_fits_in_expected_speed_order():
    target, devices = _tpu("v5p-8")
    order = analysis.candidates(tiny_config("/unused", batch_size=512), 4)
    assert order[0] == ("none", 1, False) and order[1] == ("none", 1, True)
    # Microbatches cost little compute; recomputing activations costs more ...
    assert order.index(("none", 2, False)) < order.index(("dots", 1, False)) \
        < order.index(("full", 1, False))
    # ... unless they get tiny (2 examples per device here).
    order = analysis.candidates(tiny_config("/unused", batch_size=16), 4)
    assert order.index(("dots", 1, False)) < order.index(("none", 2, False))
    assert {accum for _, accum, _ in order} == {1, 2, 4}  # whole microbatches only
    best, tried = analysis.fit(tiny_config("/unused", batch_size=16), target, devices, 0.1,
                           report=lambda s: None)
    assert tried == [best] and (best["remat"], best["grad_accum_steps"], best["fsdp"]) == \
        ("none", 1, False)
    over = dict(best, fits=False, temp_bytes_per_device=10 * best["memory_budget_bytes"],
                peak_bytes_per_device=10 * best["memory_budget_bytes"])
    assert analysis._predicted_over([over], "none", 2, False, target, 0.1)  # 5x budget: skip
    assert not analysis._predicted_over([over], "none", 2, True, target, 0.1)  # unknown: compile
    fsdp = analysis.command("configs/m2d_as2m.py", dict(best, remat="dots", grad_accum_steps=4,
                                                    fsdp=True), ["--config.batch_size=16"])
    assert fsdp == ("python -m matpac_jax.main --config=configs/m2d_as2m.py --workdir=WORKDIR "
                    "--config.batch_size=16 --config.model.remat=dots "
                    "--config.grad_accum_steps=4 --config.fsdp=True --config.mesh.data=1 "
                    "--config.mesh.fsdp=-1")


def test_hlo_counts_of_a_known_program():
    """2 x 64 x 32 x 16 FLOPs for (64, 32) @ (32, 16), twice through a while-free call;
    an all-reduce of 4 KiB over 4 devices is 6 KiB of ring traffic."""
    f = jax.jit(lambda x, w: jax.nn.relu(x @ w) @ w.T)
    lowered = f.lower(jax.ShapeDtypeStruct((64, 32), np.float32),
                      jax.ShapeDtypeStruct((32, 16), np.float32))
    assert hlo_stats.matmul_flops(lowered.as_text(dialect="hlo")) == 2 * (2 * 64 * 32 * 16)
    hlo = ("  %all-reduce.1 = f32[1024]{0} all-reduce(f32[1024]{0} %p), "
           "replica_groups=[1,4]<=[4], to_apply=%add\n")
    got = hlo_stats.collectives(hlo, 4)
    assert got == {"all-reduce": {"count": 1, "bytes": 4096, "group": 4}}
    assert hlo_stats.ring_bytes("all-reduce", 4096, 4) == 6144


def test_targets_parse_cloud_names_and_refuse_unknown_ones():
    assert (targets.parse("v4-16").chips, targets.parse("v4-16").topology) == (8, "2x2x2")
    assert (targets.parse("v5p-64").chips, targets.parse("v5p-64").topology) == (32, "2x4x4")
    assert (targets.parse("v5e-256").chips, targets.parse("v5e-256").topology) == (256, "16x16")
    assert targets.parse("v6e-8").topology == "2x4"
    h = targets.parse("h100x8x4")
    assert (h.chips, h.hosts, h.per_host, h.topology) == (32, 4, 8, "1x4x8")
    assert h.memory_budget() == pytest.approx(0.75 * h.chip.hbm_bytes)
    for bad in ("v9-8", "tpu", "h100"):
        with pytest.raises(targets.UnknownTarget, match="v5p-64"):  # the known forms
            targets.parse(bad)
    with pytest.raises(targets.UnknownTarget, match="TensorCores"):
        targets.parse("v4-6")
    with pytest.raises(targets.UnknownTarget, match="1 to 8 GPUs"):
        targets.parse("h100x9")


@pytest.mark.slow
def test_cli_plan_json_and_one_line_errors(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "matpac_jax.plan", f"--config={CONFIGS / 'matpac_as2m.py'}:demo",
            "--config.model.depth=1", "--config.model.pred_depth=1", "--config.batch_size=16",
            "--config.data.crop_frames=64"]
    out = tmp_path / "plan.json"
    proc = subprocess.run([*base, "--target=v5p-8", f"--json={out}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = json.loads(out.read_text())
    for key in ("target", "devices", "fits", "peak_bytes_per_device", "hbm_bytes_per_device",
                "flops_per_step", "flops_per_sample", "global_batch", "mesh", "collectives",
                "roofline_step_s", "command"):
        assert key in p
    assert p["command"].startswith("python -m matpac_jax.main --config=") and \
        "--config.model.depth=1" in p["command"]
    assert "run it with:" in proc.stdout and "roofline:" in proc.stdout
    proc = subprocess.run([*base, "--target=v9-8"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown target 'v9-8'")
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        proc = subprocess.run([*base, "--target=h100x8"], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 1
        assert "pip install 'jax[cuda12]==" in proc.stderr.strip().splitlines()[-1]


def test_plan_of_an_init_from_run_has_the_files_architecture(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "matpac_jax.plan", f"--config={CONFIGS / 'm2d_x_further.py'}:demo",
         "--config.batch_size=16", "--config.data.crop_frames=64", "--target=v5p-8",
         f"--json={out}"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.depth: 4 -> 2" in proc.stdout  # the demo's 4 layers -> the file's 2
    assert "--config.data.crop_frames=64" in json.loads(out.read_text())["command"]


def test_traffic_recounts_xla_bytes_and_sorts_them():
    """hlo_bytes counts what XLA's TPU cost analysis counts (every operation's
    operands and result at their tiled sizes, a prefetch as its source and
    result tuple) on small programs, and sorts operations by the
    code that made them: a name scope, a matmul, a prefetch by its consumer."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from matpac_jax.planning import hlo_bytes

    assert hlo_bytes.array_bytes("f32", "190,64", "1,0", "T(8,128)") == 192 * 128 * 4
    assert hlo_bytes.array_bytes("bf16", "8,190,64", "1,2,0", "T(8,128)(2,1)") == 8 * 64 * 256 * 2
    assert hlo_bytes.array_bytes("f32", "", "", "T(128)") == 512  # a scalar fills a tile row
    _, devices = _tpu("v5p-8")
    one = NamedSharding(Mesh(np.array(devices[:1]), ("d",)), PartitionSpec())
    arg = lambda shape, dtype=np.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=one)

    def layer_norm(x):
        with jax.named_scope("layer_norm"):
            m = x.mean(-1, keepdims=True)
            return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-6)

    programs = {
        ("matmuls",): (lambda x, w: x @ w, arg((1024, 768), jnp.bfloat16),
                       arg((768, 3072), jnp.bfloat16)),
        ("layer_norm",): (layer_norm, arg((4096, 768))),
        ("elementwise",): (lambda x, b: jnp.sin(x) + b, arg((4096, 768)), arg((768,))),
        ("elementwise", "layout"): (lambda x: x[:, :100] * 2, arg((4096, 768))),  # reads its slice
    }
    for categories, (fn, *args) in programs.items():
        compiled = jax.jit(fn).lower(*args).compile()
        t = hlo_bytes.traffic(compiled.as_text())
        # (XLA counts a prefetch's completion flag as a few KB more)
        assert t["bytes"] == pytest.approx(compiled.cost_analysis()["bytes accessed"],
                                           rel=1e-3), categories
        assert set(t["categories"]) == set(categories), t["categories"]
        assert 0 < t["hbm_bytes"] <= t["bytes"]


@pytest.mark.slow  # two TPU compiles
def test_a_step_with_the_attention_kernel_counts_its_bytes_and_flops(tmp_path):
    """attention='pallas': the kernels are custom calls, which XLA's own FLOP
    count and the lowered program's dots do not see; the plan counts the
    kernels' FLOPs (the attention maths they replace: the same model FLOPs
    as attention='xla') and at least the bytes of their q | k | v and output,
    and the attention category holds them."""
    target, devices = _tpu("v5p-8")
    base = dict(batch_size=16, **{"model.dtype": "bfloat16"})
    hlo = tmp_path / "step.hlo"
    kernel = analysis.analyse(tiny_config("/unused", **base, **{"model.attention": "pallas"}),
                          target, devices, hlo_path=str(hlo))
    xla = analysis.analyse(tiny_config("/unused", **base), target, devices)
    assert kernel["flops_per_step"] == pytest.approx(xla["flops_per_step"], rel=1e-9)
    calls = [c for c in kernel["traffic"]["custom_calls"] if c["name"].startswith("attention_")]
    assert {c["name"].split(".")[0] for c in calls} == {"attention_fwd", "attention_bwd"}
    comps, _ = hlo_stats._computations(hlo.read_text())
    lines = {m[1]: m for m in map(hlo_stats._INSTR.match,
                                  (line for c in comps.values() for line in c)) if m}
    for c in calls:  # operands (q | k | v, ...) and results, untiled, are the least it moves
        _, result, _, rest = lines[c["name"]].groups()
        shapes = hlo_stats.shapes(result) + [s for o in hlo_stats._operands(rest)
                                             for s in hlo_stats.shapes(lines[o][2])]
        assert c["bytes"] >= sum(hlo_stats.nbytes(s) for s in shapes) > 0
    attention = kernel["traffic"]["categories"]["attention"]["bytes"]
    assert attention >= sum(c["bytes"] for c in calls)
    assert kernel["hbm_bytes_accessed_per_device"] >= kernel["traffic"]["bytes"] * 0.9
    assert kernel["traffic"]["categories"]["attention"]["bytes"] < xla["traffic"][
        "categories"]["attention"]["bytes"]


def test_suite_table_puts_the_measured_step_beside_the_plan(tmp_path):
    """benchmarks/suite_table.py (the end of gpu_suite.sh / tpu_suite.sh): a
    run's measured step and MFU beside its plan's roofline; the machine's
    devices named as plan's targets."""
    from benchmarks import suite_table

    name = "matpac_as2m_bfloat16_pallas_remat_none_act_bfloat16"
    (tmp_path / f"{name}.json").write_text(json.dumps(
        {"device": "TPU v5", "devices": 8, "global_batch": 2048, "step_s": 0.064, "mfu": 0.8,
         "measured_peak_bytes": 20 * 2**30}))
    (tmp_path / f"plan_{name}.json").write_text(json.dumps(
        {"roofline": {"compute_s": 0.0512, "hbm_s": 0.044, "collectives_s": 0.0007},
         "roofline_step_s": 0.0512, "roofline_mfu": 1.0, "flops_per_step": 188e12,
         "devices": 8, "hbm_bytes_accessed_per_device": 121e9,
         "peak_bytes_per_device": 22 * 2**30}))
    row = suite_table.rows(tmp_path)[-1]
    assert row.startswith(f"| {name} | TPU v5 x8 | 2048 | 0.0640 / 0.0512 | 80.0% / 100% | "
                          "compute | 194 | 20.0 / 22.0 |"), row
    assert targets.name_of("TPU v5 lite", 16) == "v5e-16"
    assert targets.name_of("TPU v5", 8) == "v5p-16"  # v5p slices count TensorCores
    assert targets.name_of("NVIDIA H100 80GB HBM3", 16, 2) == "h100x8x2"
    assert targets.name_of("cpu", 1) is None


def test_importing_the_planning_code_sets_no_environment_variables():
    """The command sets libtpu's compile-only variables when it starts
    (plan.COMPILE_ONLY_ENV); importing planning/ or the command sets nothing
    (what its dependencies set on import is imported first)."""
    code = ("import os, matpac_jax.inference, matpac_jax.methods.init_from, "
            "matpac_jax.training.step, matpac_jax.training.xla_flags, ml_collections.config_flags;"
            "before = dict(os.environ);"
            "import matpac_jax.planning.analysis, matpac_jax.plan;"
            "print(sorted(k for k in os.environ if os.environ.get(k) != before.get(k)))")
    env = {k: v for k, v in os.environ.items() if k not in plan.COMPILE_ONLY_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_keeps_jax_off_the_accelerators_though_jax_is_imported_first():
    """JAX reads JAX_PLATFORMS when imported, before the command sets it: on a
    GPU host a plan would otherwise start CUDA (and preallocate its memory)."""
    code = ("import jax, matpac_jax.plan as p\n"
            "try:\n    p.main(['--target=v5p-8'])\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print(jax.config.jax_platforms)")
    env = {k: v for k, v in os.environ.items() if k not in plan.COMPILE_ONLY_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.stdout.split() == ["ConfigError", "cpu"], done.stderr[-2000:]
