"""The training step compiled for hardware this machine does not have, and
what it needs: placement, memory against HBM, FLOPs, collectives, memory
traffic per category, the roofline (`analyse`); the fastest plan that fits
(`fit`). `python -m matpac_jax.plan` is its command (matpac_jax/plan.py),
which sets up the compile-only environment; importing this sets nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import time

import jax
from flax import nnx

from matpac_jax import errors, inference, methods, storage
from matpac_jax.planning import hlo_bytes, hlo_stats, targets
from matpac_jax.training import sharding, step

GiB = 2**30
REMAT_COST = {"none": 1.0, "dots": 1.15, "full": 1.33}  # rough step-time factors, for ordering


# -- the method, without reading pretrained files ------------------------------
def plan_method(config):
    """The config's method for planning (`Method.for_planning`): a pretrained
    part on this machine is read as training reads it; one that is not (a
    gs:// path, the config's placeholder) takes the shapes the config says."""
    return methods.get_class(config).for_planning(config, inference.encoder_with_architecture)


# -- one compiled plan -----------------------------------------------------------
def analyse(config, target: targets.Target, devices, headroom: float = 0.1,
            hlo_path: str | None = None) -> dict:
    """Build and compile `config`'s step for `devices`; the facts of the plan.
    `hlo_path`: also write the compiled (partitioned, optimised) HLO there."""
    t0 = time.perf_counter()
    method = plan_method(config)
    step.validate(config, devices, method)
    run = step.build(config, method, devices, materialize=False)
    batch = step.abstract_batch(run)
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(run.mesh))
    lowered = run.step_fn.lower(run.state, batch, key)
    flops_program = (lowered if run.flops_step_fn is run.step_fn
                     else run.flops_step_fn.lower(run.state, batch, key))
    flops = hlo_stats.matmul_flops(flops_program.as_text(dialect="hlo"))
    n = len(devices)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        compiled, mem = None, _out_of_memory(str(e))
        if mem is None:
            raise
    else:
        mem = compiled.memory_analysis()
    compile_s = time.perf_counter() - t0

    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    budget = target.memory_budget()
    cost = compiled.cost_analysis() if compiled is not None else {}
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    xla_flops = float(cost["flops"]) * n if cost.get("flops") else None
    if run.flops_step_fn is not run.step_fn:
        xla_flops = None  # a loop body counts once: per microbatch, not per step
    hlo = compiled.as_text() if compiled is not None else ""
    traffic = hlo_bytes.traffic(hlo) if hlo else None
    xla_bytes = float(cost.get("bytes accessed", 0.0)) or None
    # XLA's count (TPU; a loop body once), else the same rule recounted (GPU, loops)
    looped = run.flops_step_fn is not run.step_fn
    hbm_bytes = (traffic["bytes"] if traffic else None) if looped or not xla_bytes else xla_bytes
    colls = hlo_stats.collectives(hlo, n)
    if hlo_path and hlo:
        storage.write_text(hlo_path, hlo)
    chip = target.chip
    roof = targets.roofline(target, flops / n, hbm_bytes,
                            traffic["hbm_bytes"] if traffic else None, colls)
    compute_s, memory_s, comm_s = roof["compute_s"], roof["hbm_s"], roof["collectives_s"]
    bound = max(compute_s, memory_s or 0.0, comm_s)
    accum = config.grad_accum_steps
    fits = peak <= (1 - headroom) * budget
    return {
        "target": target.name,
        "chip": chip.name,
        "devices": n,
        "hosts": target.hosts,
        "mesh": {k: int(v) for k, v in run.mesh.shape.items()},
        "fsdp": bool(config.fsdp),
        "remat": config.model.remat,
        "grad_accum_steps": accum,
        "global_batch": config.batch_size,
        "total_steps": config.total_steps,
        "per_device_batch": config.batch_size // sharding.data_parallel_size(run.mesh),
        "microbatch_per_device": config.batch_size // sharding.data_parallel_size(run.mesh)
        // accum,
        "dtype": config.model.dtype,
        "attention": config.model.attention,
        "placement": placement(run),
        "argument_bytes_per_device": int(mem.argument_size_in_bytes),
        "temp_bytes_per_device": int(mem.temp_size_in_bytes),
        "output_bytes_per_device": int(mem.output_size_in_bytes),
        "alias_bytes_per_device": int(mem.alias_size_in_bytes),
        "peak_bytes_per_device": int(peak),
        "hbm_bytes_per_device": int(chip.hbm_bytes),
        "memory_budget_bytes": int(budget),
        "headroom": headroom,
        "fits": bool(fits),
        "margin_bytes": int((1 - headroom) * budget - peak),
        "flops_per_step": flops,
        "flops_per_sample": flops / config.batch_size,
        "xla_flops_per_step": xla_flops,
        "hbm_bytes_accessed_per_device": hbm_bytes,
        "hbm_bytes_source": "xla" if xla_bytes and hbm_bytes == xla_bytes else "hlo_bytes",
        "traffic": traffic,
        "collectives": colls,
        "roofline": roof,
        "roofline_step_s": bound,
        "roofline_mfu": compute_s / bound if bound else None,  # the MFU the bound allows
        "roofline_samples_per_s": config.batch_size / bound if bound else None,
        "compile_s": round(compile_s, 1),
    }


@dataclasses.dataclass
class _Memory:
    """memory_analysis()'s fields, for a program the compiler refused."""
    argument_size_in_bytes: int
    output_size_in_bytes: int = 0
    alias_size_in_bytes: int = 0
    temp_size_in_bytes: int = 0


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory(message: str) -> _Memory | None:
    """The sizes in XLA's out-of-memory refusal (the TPU compiler refuses a
    step that no rematerialisation fits: "the total memory required for HLO
    temporaries (153.32G) exceeds available HBM (15.75G)"); None otherwise."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    m = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)", message)
    if m:
        return _Memory(0, temp_size_in_bytes=int(float(m[1]) * _UNITS[m[2]]))
    m = re.search(r"Used ([\d.]+)([KMGT]?) of", message)
    return _Memory(int(float(m[1]) * _UNITS[m[2]])) if m else None


def placement(run) -> dict:
    """Bytes per device and partition specs of each part of the state, and the batch's."""
    groups: dict[str, dict] = {}
    for path, leaf in nnx.to_flat_state(run.state):
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        group = ".".join(keys[:2]) if keys[0] in ("model", "optimizer") else keys[0]
        if keys[0] == "optimizer":
            group = "optimizer" + (".step" if keys[1] == "step" else ".opt_state")
        spec = value.sharding.spec
        size = value.dtype.itemsize * math.prod(value.shape)
        split = math.prod(run.mesh.shape[a] for axes in spec if axes
                          for a in ((axes,) if isinstance(axes, str) else axes))
        g = groups.setdefault(group, {"bytes": 0, "bytes_per_device": 0, "specs": {}})
        g["bytes"] += size
        g["bytes_per_device"] += size // split
        label = str(tuple(spec))
        g["specs"][label] = g["specs"].get(label, 0) + 1
    for k, shape in run.batch_shapes.items():
        spec = sharding.batch_sharding(run.mesh, len(shape)).spec
        size = 4 * math.prod(shape)  # float32 features
        groups[f"batch.{k}"] = {"bytes": size,
                                "bytes_per_device": size // sharding.data_parallel_size(run.mesh),
                                "specs": {str(tuple(spec)): 1}}
    return groups


# -- the search ------------------------------------------------------------------
def candidates(config, devices: int):
    """(remat, grad_accum_steps, fsdp) settings in order of expected step time:
    microbatches cost a little per halving (smaller matmuls, a loop), a lot
    below 16 examples per device; recomputation costs its FLOPs; FSDP its
    all-gathers."""
    out = []
    for accum in (1, 2, 4, 8, 16, 32):
        if config.batch_size % (devices * accum):
            continue
        micro = config.batch_size // (devices * accum)
        for remat in ("none", "dots", "full"):
            for fsdp in (False, True):
                cost = (REMAT_COST[remat] * (1 + 0.02 * math.log2(accum))
                        * (1.3 if micro < 16 and accum > 1 else 1) * (1.02 if fsdp else 1))
                out.append((cost, remat, accum, fsdp))
    return [c[1:] for c in sorted(out)]


def configured(config, remat: str, accum: int, fsdp: bool):
    c = copy.deepcopy(config)
    c.model.remat, c.grad_accum_steps = remat, accum
    if fsdp:
        c.fsdp = True
        c.mesh.update({"data": 1, "fsdp": -1})
    return c


def fit(config, target, devices, headroom: float, report=print) -> tuple[dict | None, list]:
    """The first candidate (fastest expected) whose plan fits; every plan compiled.
    A candidate is compiled only if the compiled plans predict it can fit
    (temporaries scale with the microbatch)."""
    tried = []

    splits = methods.get_class(config).supports_grad_accum  # a whole-batch update does not
    for remat, accum, fsdp in candidates(config, len(devices)):
        if accum > 1 and not splits:
            continue
        if _predicted_over(tried, remat, accum, fsdp, target, headroom):
            continue
        report(f"  compiling remat={remat} grad_accum_steps={accum} fsdp={fsdp} ...")
        try:
            p = analyse(configured(config, remat, accum, fsdp), target, devices, headroom)
        except errors.ConfigError as e:
            report(f"    skipped: {e}")
            continue
        tried.append(p)
        report(f"    peak {p['peak_bytes_per_device'] / GiB:.2f} GiB of "
               f"{p['memory_budget_bytes'] / GiB:.2f}: {'fits' if p['fits'] else 'does not fit'}"
               f" (compiled in {p['compile_s']} s)")
        if p["fits"]:
            return p, tried
    return None, tried


def _predicted_over(tried, remat, accum, fsdp, target, headroom) -> bool:
    """True when a compiled plan of the same remat and FSDP setting, scaled to
    this microbatch, leaves no doubt that it would not fit (>15 % over)."""
    for p in tried:
        if p["remat"] == remat and p["fsdp"] == fsdp:
            temp = p["temp_bytes_per_device"] * p["grad_accum_steps"] / accum
            peak = p["peak_bytes_per_device"] - p["temp_bytes_per_device"] + temp
            if peak > 1.15 * (1 - headroom) * p["memory_budget_bytes"]:
                return True
    return False


def command(config_arg: str, p: dict, overrides: list[str]) -> str:
    """The training command that runs plan `p`."""
    keep = [o for o in overrides if not o.startswith(("--config.model.remat",
                                                        "--config.grad_accum_steps",
                                                        "--config.fsdp", "--config.mesh."))]
    parts = ["python -m matpac_jax.main", f"--config={config_arg}", "--workdir=WORKDIR", *keep]
    if p["remat"] != "none":
        parts.append(f"--config.model.remat={p['remat']}")
    if p["grad_accum_steps"] != 1:
        parts.append(f"--config.grad_accum_steps={p['grad_accum_steps']}")
    if p["fsdp"]:
        parts += ["--config.fsdp=True", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
    return " ".join(parts)


# -- printing --------------------------------------------------------------------
def format_plan(p: dict) -> str:
    g = lambda b: f"{b / GiB:.2f} GiB"
    r = p["roofline"]
    lines = [
        f"target {p['target']}: {p['devices']} x {p['chip']} on {p['hosts']} host(s); "
        f"mesh {p['mesh']}; {p['dtype']}, remat {p['remat']}, attention {p['attention']}, "
        f"grad_accum_steps {p['grad_accum_steps']}, fsdp {p['fsdp']}",
        f"batch: global {p['global_batch']}, {p['per_device_batch']} per device"
        + (f" ({p['microbatch_per_device']} per microbatch)" if p["grad_accum_steps"] > 1 else ""),
        "placement (per device / total, partition specs):",
    ]
    for name, gr in p["placement"].items():
        specs = ", ".join(f"{s} x{c}" for s, c in gr["specs"].items())
        lines.append(f"  {name:<22} {g(gr['bytes_per_device']):>11} / {g(gr['bytes']):>11}  {specs}")
    lines += [
        f"memory per device: arguments {g(p['argument_bytes_per_device'])}, temporaries "
        f"{g(p['temp_bytes_per_device'])}, peak {g(p['peak_bytes_per_device'])} of "
        f"{g(p['memory_budget_bytes'])} usable ({g(p['hbm_bytes_per_device'])} HBM, "
        f"{int(p['headroom'] * 100)} % kept free): "
        + ("fits, margin " + g(p["margin_bytes"]) if p["fits"]
           else "DOES NOT FIT, over by " + g(-p["margin_bytes"])),
        f"FLOPs: {p['flops_per_step'] / 1e12:.2f} TFLOP per step, "
        f"{p['flops_per_sample'] / 1e9:.1f} GFLOP per sample (matmuls, convolutions, "
        "attention as written)"
        + (f"; XLA's count after partitioning and remat {p['xla_flops_per_step'] / 1e12:.2f}"
           " TFLOP" if p["xla_flops_per_step"] else ""),
        "collectives per device per step:"
        + ("" if p["collectives"] else " none"),
    ]
    for kind, c in sorted(p["collectives"].items()):
        lines.append(f"  {kind:<19} x{c['count']:<4} {c['bytes'] / 2**20:10.1f} MiB "
                     f"(group {c['group']}, ring {c['ring_bytes'] / 2**20:.1f} MiB sent, "
                     f"{c['seconds'] * 1e3:.2f} ms)")
    if p.get("traffic"):
        lines += hlo_bytes.format_traffic(
            p["traffic"], p["hbm_bytes_accessed_per_device"] if p["hbm_bytes_source"] == "xla"
            else None, p["microbatch_per_device"], p["flops_per_step"] / p["devices"])
    hbm = f"{r['hbm_s'] * 1e3:.1f} ms" if r["hbm_s"] is not None else "n/a (no byte count)"
    if r.get("hbm_resident_s"):
        hbm += (f" ({r['hbm_resident_s'] * 1e3:.1f} ms for the arrays in HBM: MFU <= "
                f"{100 * r['resident_mfu']:.0f} %)")
    lines += [
        f"roofline: compute {r['compute_s'] * 1e3:.1f} ms, HBM {hbm}, collectives "
        f"{r['collectives_s'] * 1e3:.1f} ms -> step >= {p['roofline_step_s'] * 1e3:.1f} ms, "
        f"<= {p['roofline_samples_per_s']:.0f} samples/s, MFU <= {100 * p['roofline_mfu']:.0f} % "
        f"(at 40 % / 60 % MFU: {_at_mfu(p, 0.4):.0f} / {_at_mfu(p, 0.6):.0f} samples/s)",
        f"  figures: {r['source']}",
        f"compiled in {p['compile_s']} s",
    ]
    return "\n".join(lines)


def _at_mfu(p: dict, mfu: float) -> float:
    """Samples/s at `mfu` of the chips' peak."""
    per_sample = p["flops_per_sample"]
    return mfu * p["devices"] * p["roofline"]["peak_flops_per_chip"] / per_sample


# -- command line ----------------------------------------------------------------
