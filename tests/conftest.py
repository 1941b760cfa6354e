"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the dev extra) compiles for TPU topologies in tests/test_plan.py:
# both pytest workers may load it, and there is no TPU metadata server here.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# Tests (and the training subprocesses they start) compile the same tiny
# steps many times: a persistent XLA cache shared by all of them saves minutes.
# Every executable is kept, not only those that took over a second to build:
# a CLI run of the tiny config takes 16 s warm against 23 s with JAX's default
# threshold and 37 s cold (2-core VM, 2026-12-02). (A size cap would need
# the `filelock` package; the directory is in the temp folder.)
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"matpac_jax_test_xla_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ holds code some tests share (trajectory inputs)
    sys.path.insert(0, str(ROOT))

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
DATASETS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def datasets_dir() -> pathlib.Path:
    if not DATASETS.exists():
        pytest.skip(f"real-audio datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def gcs_server():
    """A real GCS server (fake-gcs-server, the `dev` extra) on localhost for the
    session; STORAGE_EMULATOR_HOST points every gs:// path of this process and
    of the subprocesses it starts at it."""
    from benchmarks import gcs_emulator

    url, proc = gcs_emulator.start()
    yield url
    proc.terminate()
    proc.wait()


@pytest.fixture()
def gcs_bucket(gcs_server, request) -> str:
    """gs://<a new bucket for this test>."""
    import re
    import uuid

    from benchmarks import gcs_emulator

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return gcs_emulator.make_bucket(f"{name}-{uuid.uuid4().hex[:8]}")
