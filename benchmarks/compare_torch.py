"""Same-machine comparisons with PyTorch, interleaved: training steps against
the replica, or clip embeddings against the official inference paths.

  python benchmarks/compare_torch.py                      # MATPAC, M2D, BEATs iter1; 3 rounds
  python benchmarks/compare_torch.py --methods=matpac --rounds=1 --steps=1 --batch=1  # smoke run
  python benchmarks/compare_torch.py --mode=embed         # M2D, BEATs; batch 1 and 16; 3 rounds
  python benchmarks/compare_torch.py --mode=embed --methods=m2d --batches=1 --rounds=1 --steps=1

For each method: the PyTorch replica (benchmarks/torch_reference.py `bench
--serve`, in its own environment) and our jitted step (benchmarks/bench_step.py)
are built and warmed up once, then run in turn, torch, ours, torch, ours ...,
`--steps` timed steps each per round, so both see the same machine minute by
minute. It prints every time, the medians over all rounds, the speed-up
(torch median / ours), versions, thread counts and load averages: the table
docs/BENCHMARKS.md quotes.

`--mode=embed`: random ViT-B weights in the official M2D and BEATs layouts
(torch_reference.py `checkpoints`, in a temporary folder) and 10-s clips of
noise; per method and `--batches` entry, the official path (torch_reference.py
`embed --serve`: M2D's portable runtime, BEATs.py's `extract_features`), our
`matpac_jax.load(path).clip_embeddings` and the HEAR API
(`hear.get_scene_embeddings`) on the same file and clips are built and their
embeddings checked against each other, then `--rounds` rounds of `--steps`
calls each, ours, official, HEAR, ... It prints clips/s (median call time),
the ratio ours / official and the load averages.

The torch environment: `--torch_python`, else $MATPAC_TORCH_PYTHON, else the
venv at `--torch_venv`, created with `pip install torch==--torch_version numpy`
when it has no torch (the project itself never depends on torch); --mode=embed
adds scipy and nnAudio (M2D's front end) to it.
"""
from __future__ import annotations

import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from matpac_jax import cli  # noqa: E402

FLAGS = flags.FlagValues()
_MODE = flags.DEFINE_enum("mode", "train", ["train", "embed"],
                          "train: training steps; embed: clip embeddings.", flag_values=FLAGS)
_METHODS = flags.DEFINE_list("methods", None, "train: matpac, m2d, beats_iter1 (default all); "
                             "embed: m2d, beats (default both).", flag_values=FLAGS)
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "embed: clips per call, one row each.",
                             flag_values=FLAGS)
_SECONDS = flags.DEFINE_float("seconds", 10.0, "embed: clip length.", flag_values=FLAGS)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (torch, ours) per method.",
                               flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (embed: calls) per framework per round.",
                              flag_values=FLAGS)
_BATCH = flags.DEFINE_integer("batch", 4, "Batch (one CPU device).", flag_values=FLAGS)
_THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: the CPU count).",
                                flag_values=FLAGS)
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "A Python that imports torch.",
                                    flag_values=FLAGS)
_TORCH_VENV = flags.DEFINE_string("torch_venv", "~/.cache/matpac_jax/torch-venv",
                                  "Venv to use, or to create when it has no torch.",
                                  flag_values=FLAGS)
# 2.13.0: this workplace's local wheel of it is the CPU build; 2.14.1's is the
# ~5 GB CUDA build (it runs on the CPU too, but takes minutes and disk to install).
_TORCH_VERSION = flags.DEFINE_string("torch_version", "2.13.0",
                                     "torch version to install into a new venv.",
                                     flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Also write all results here.", flag_values=FLAGS)

LOADED = 2.5  # load average above which a run is not quotable (docs/BENCHMARKS.md)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# our method -> (config file, torch_reference.py --method)
STEPS = {"matpac": ("matpac_as2m.py", "matpac"), "m2d": ("m2d_as2m.py", "m2d"),
         "beats_iter1": ("beats_iter1_as2m.py", "beats_mam")}
EMBED = ("m2d", "beats")  # --mode=embed: torch_reference.py embed --method


def _imports(python: str, modules: list[str]) -> bool:
    return subprocess.run([python, "-c", f"import {', '.join(modules)}"],
                          capture_output=True).returncode == 0


def find_torch_python(extra: tuple[str, ...] = ()) -> str:
    """The interpreter that runs torch_reference.py: it imports torch, numpy and
    `extra` (pip names = module names); creates the venv, or adds `extra`, if needed."""
    modules = ["torch", "numpy", *extra]
    python = _TORCH_PYTHON.value or os.environ.get("MATPAC_TORCH_PYTHON")
    if python:
        if not _imports(python, modules):
            raise SystemExit(f"error: {python} (--torch_python / $MATPAC_TORCH_PYTHON) "
                             f"cannot import {', '.join(modules)}")
        return python
    venv = os.path.expanduser(_TORCH_VENV.value)
    python = os.path.join(venv, "bin", "python")
    if not (os.path.exists(python) and _imports(python, modules[:2])):
        print(f"creating {venv} with torch=={_TORCH_VERSION.value} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"torch=={_TORCH_VERSION.value}",
                        "numpy"], check=True)
    if not _imports(python, modules):  # --no-deps: never let pip swap the torch build
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *extra],
                       check=True)
    return python


class TorchReplica:
    """torch_reference.py `bench|embed ... --serve` in a subprocess: idle until asked."""

    def __init__(self, python: str, args: list[str]):
        cmd = [python, os.path.join(ROOT, "benchmarks", "torch_reference.py"), *args, "--serve",
               "--threads", str(_THREADS.value or os.cpu_count())]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.info: dict = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch replica exited ({self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def wait_ready(self) -> dict:
        self.info = self._read()
        return self.info

    def __call__(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        return self._read()["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def our_config(name: str):
    path = os.path.join(ROOT, "configs", STEPS[name][0])
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.dtype = "float32"  # the replica is float32
    return config


def environment(torch_info: dict) -> dict:
    import flax
    import jax
    import jaxlib

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch_info.get("torch"), "torch_threads": torch_info.get("threads"),
        "torch_interop_threads": torch_info.get("interop_threads"),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        # XLA:CPU runs a step's ops on an intra-op pool of one thread per core.
        "xla_cpu_threads": os.cpu_count(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def load() -> float:
    return round(os.getloadavg()[0], 2)


def compare(name: str, python: str) -> dict:
    """Build both, then `--rounds` rounds of torch steps followed by ours."""
    from benchmarks import bench_step

    torch_step = TorchReplica(python, ["bench", "--method", STEPS[name][1],
                                       "--batch", str(_BATCH.value)])
    # Build ours while the replica builds (setup is not timed).
    built = {}
    builder = threading.Thread(target=lambda: built.update(
        zip(("result", "steps"), bench_step.prepare(our_config(name), _BATCH.value))))
    builder.start()
    torch_info = torch_step.wait_ready()
    builder.join()
    if "steps" not in built:
        torch_step.close()
        raise RuntimeError(f"building our {name} step failed (traceback above)")
    ours = built["steps"]
    ours(0)  # warm-up
    rounds = []
    for r in range(_ROUNDS.value):
        row = {"load_before": load()}
        row["torch_s"] = torch_step(_STEPS.value)
        row["ours_s"] = ours(_STEPS.value)
        row["load_after"] = load()
        rounds.append(row)
        print(f"  {name} round {r + 1}: torch {_fmt(row['torch_s'])}  ours {_fmt(row['ours_s'])}"
              f"  load {row['load_before']}-{row['load_after']}", flush=True)
    torch_step.close()
    t = statistics.median(s for row in rounds for s in row["torch_s"])
    o = statistics.median(s for row in rounds for s in row["ours_s"])
    per_round = [statistics.median(row["torch_s"]) / statistics.median(row["ours_s"])
                 for row in rounds]
    out = {"method": name, "batch": _BATCH.value, "rounds": rounds, "torch_median_s": t,
           "ours_median_s": o, "speedup": t / o, "speedup_per_round": per_round,
           "gflop_per_step_xla": (built["result"]["flop_per_step"] or 0) / 1e9,
           "torch_info": torch_info}
    del built, ours
    gc.collect()
    return out


def _fmt(times) -> str:
    return " ".join(f"{s:.3f}" for s in times)


def _machine(env: dict, python: str, title: str, torch_side: str) -> list[str]:
    """The report's header: machine, both frameworks' versions and threads."""
    return [
        f"{title} {env['date_utc']} UTC | {env['cpu']}, {env['cpu_count']} CPUs "
        f"(affinity {env['affinity']}) | python {env['python']}",
        f"{torch_side}: torch {env['torch']} ({python}), {env['torch_threads']} intra-op / "
        f"{env['torch_interop_threads']} inter-op threads",
        f"matpac_jax: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
        f"{env['jax_devices']}, XLA:CPU pool {env['xla_cpu_threads']} threads, "
        f"XLA_FLAGS={env['XLA_FLAGS'] or '(none)'}",
    ]


def report(env: dict, results: list[dict], python: str) -> str:
    lines = _machine(env, python, "compare_torch", "PyTorch replica") + [
        f"fp32, batch {_BATCH.value}, {_ROUNDS.value} rounds x {_STEPS.value} steps each, "
        "interleaved torch, ours, torch, ours ...",
        "",
        "| step | PyTorch replica (s), per round | matpac_jax (s), per round | torch median | "
        "ours median | speed-up (per round) | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rounds = r["rounds"]
        loads = [x for row in rounds for x in (row["load_before"], row["load_after"])]
        lines.append(
            f"| {r['method']} | {' / '.join(_fmt(row['torch_s']) for row in rounds)} "
            f"| {' / '.join(_fmt(row['ours_s']) for row in rounds)} "
            f"| {r['torch_median_s']:.3f} | {r['ours_median_s']:.3f} "
            f"| **{r['speedup']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['speedup_per_round'])}) "
            f"| {min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines + _load_warning(results))


def compare_embed(name: str, path: str, waves_path: str, batch: int, python: str) -> dict:
    """One method and batch: the official path, ours and HEAR built and checked
    against each other, then `--rounds` rounds of `--steps` calls each."""
    import numpy as np

    import matpac_jax
    from matpac_jax import hear

    official = TorchReplica(python, ["embed", "--method", name, "--checkpoint", path,
                                     "--waves", waves_path, "--batch", str(batch)])
    torch_info = official.wait_ready()  # then ours: building both at once loads the CPUs
    ref = np.asarray(torch_info.pop("embeddings"), np.float32)
    waves = np.load(waves_path)[:batch]
    embedder = matpac_jax.load(path)
    model = hear.load_model(path, torch_module=False)
    calls = {"ours": lambda: embedder.clip_embeddings(list(waves)),
             "hear": lambda: hear.get_scene_embeddings(waves, model)}
    outs = {k: f() for k, f in calls.items()}  # warm-up: compiles the shapes
    diff = {k: float(np.abs(o - ref).max() / np.abs(ref).max()) for k, o in outs.items()}
    rounds = []
    for r in range(_ROUNDS.value):
        row = {"load_before": load(), "ours_s": _calls(calls["ours"]),
               "torch_s": official(_STEPS.value), "hear_s": _calls(calls["hear"])}
        row["load_after"] = load()
        rounds.append(row)
        print(f"  {name} batch {batch} round {r + 1}: ours {_fmt(row['ours_s'])}  official "
              f"{_fmt(row['torch_s'])}  hear {_fmt(row['hear_s'])}  load "
              f"{row['load_before']}-{row['load_after']}", flush=True)
    official.close()
    med = {k: statistics.median(s for row in rounds for s in row[f"{k}_s"])
           for k in ("ours", "torch", "hear")}
    return {"method": name, "batch": batch, "rounds": rounds, "max_rel_diff": diff,
            "clips_per_s": {k: batch / v for k, v in med.items()},
            "speedup": med["torch"] / med["ours"], "torch_info": torch_info,
            "speedup_per_round": [statistics.median(row["torch_s"]) /
                                  statistics.median(row["ours_s"]) for row in rounds]}


def _calls(fn) -> list[float]:
    times = []
    for _ in range(_STEPS.value):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def report_embed(env: dict, results: list[dict], python: str) -> str:
    lines = _machine(env, python, "compare_torch --mode=embed",
                     "official paths (inference_mode)") + [
        f"fp32, {_SECONDS.value:g}-s clips, random ViT-B weights, {_ROUNDS.value} rounds x "
        f"{_STEPS.value} calls each, interleaved ours, official, HEAR ...; load at start "
        f"{env['load_at_start']}",
        "",
        "| method | batch | ours clips/s | official clips/s | ours / official (per round) | "
        "HEAR clips/s | max rel. diff ours, HEAR vs official | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, d = r["clips_per_s"], r["max_rel_diff"]
        loads = [x for row in r["rounds"] for x in (row["load_before"], row["load_after"])]
        lines.append(
            f"| {r['method']} | {r['batch']} | {c['ours']:.2f} | {c['torch']:.2f} "
            f"| **{r['speedup']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['speedup_per_round'])}) "
            f"| {c['hear']:.2f} | {d['ours']:.1e}, {d['hear']:.1e} "
            f"| {min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines + _load_warning(results))


def _load_warning(results: list[dict]) -> list[str]:
    top = max(x for r in results for row in r["rounds"] for x in (row["load_before"],
                                                                 row["load_after"]))
    if top <= LOADED:
        return []
    return ["", f"WARNING: load average reached {top:.1f} (> {LOADED}): other jobs shared "
            "the CPUs. torch's OpenMP threads slow down far more than XLA:CPU's pool "
            "under oversubscription; do not quote these numbers."]


def run_embed(python: str) -> list[dict]:
    import numpy as np

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([python, os.path.join(ROOT, "benchmarks", "torch_reference.py"),
                              "checkpoints", tmp], check=True, capture_output=True, text=True)
        paths = json.loads(out.stdout.strip().splitlines()[-1])
        waves = os.path.join(tmp, "waves.npy")
        batches = [int(b) for b in _BATCHES.value]
        rng = np.random.default_rng(0)
        np.save(waves, (0.1 * rng.standard_normal((max(batches), int(_SECONDS.value * 16000))))
                .astype(np.float32))
        for name in _METHODS.value:
            for batch in batches:
                print(f"{name}, batch {batch}: building both", flush=True)
                results.append(compare_embed(name, paths[name], waves, batch, python))
                gc.collect()
    return results


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python benchmarks/compare_torch.py", __doc__)
    known = STEPS if _MODE.value == "train" else EMBED
    methods = _METHODS.value or list(known)
    unknown = [m for m in methods if m not in known]
    if unknown:
        print(f"error: --methods {unknown}; known for --mode={_MODE.value}: {sorted(known)}",
              file=sys.stderr)
        return 2
    FLAGS.methods = methods
    if (_ROUNDS.value < 1 or _STEPS.value < 1 or _BATCH.value < 1
            or not all(b.isdigit() and int(b) >= 1 for b in _BATCHES.value)):
        print("error: --rounds, --steps, --batch and --batches must be >= 1", file=sys.stderr)
        return 2
    import jax

    jax.config.update("jax_platforms", "cpu")  # the replica is a CPU step
    python = find_torch_python(() if _MODE.value == "train" else ("scipy", "nnAudio"))
    start_load = load()
    if _MODE.value == "embed":
        results = run_embed(python)
    else:
        results = []
        for name in _METHODS.value:
            print(f"{name}: building both steps", flush=True)
            results.append(compare(name, python))
    env = environment(results[0]["torch_info"])
    env["load_at_start"] = start_load
    print()
    print((report if _MODE.value == "train" else report_embed)(env, results, python))
    if _JSON.value:
        with open(cli.output_folder(_JSON.value), "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)
    return 0

if __name__ == "__main__":
    sys.exit(main())
